// ctxmgr::postgres::advisory_lock, lease and advisory_xact_lock (distributed_lock.hpp).
//
// Taking a session lock is one round trip, a simple-protocol script:
//   BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL lock_timeout = N; SET LOCAL statement_timeout =
//   0; SELECT pg_advisory_lock(K); INSERT INTO ctxmgr_fencing_tokens ... RETURNING token; COMMIT
// READ COMMITTED gives the INSERT a snapshot taken after the lock was granted, so it increments
// the token the previous holder committed (ON CONFLICT DO UPDATE reads the latest row anyway;
// under REPEATABLE READ it would fail instead). A session-level lock outlives the rollback of
// the transaction that took it: when anything after the lock fails, it is unlocked explicitly.
// The script is sent asynchronously and waited for with a deadline, so that a server that does
// not answer cannot keep enter() past its timeout (plus a grace for the server's own timeout
// to fire and its answer to arrive). The key is spliced into the SQL as a decimal integer,
// formatted here: nothing from outside reaches the SQL text.
#include "ctxmgr/distributed_lock.hpp"
#include "ctxmgr/release.hpp"

#include <libpq-fe.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "db/libpq_support.hpp"
#include "pool/advisory_lock_support.hpp"

namespace ctxmgr::postgres {

namespace {

using detail::backend_name;
using detail::result_ptr;
using detail::sqlstate_of;
using steady = std::chrono::steady_clock;

// Throws the failure `result` stands for, typed as every statement's failure is.
[[noreturn]] void fail(connection& session, const PGresult* result, const std::string& context,
                       std::string_view sql) {
    detail::fail(session.native_handle(), result, sql, context);
}

using namespace detail::advisory;

bool failed(const PGresult* result) {
    const ExecStatusType status = PQresultStatus(result);
    return status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK;
}

// Sends `sql` (one or several statements, simple protocol) and collects every result, or
// returns nothing when the deadline passes first (the statement is then still running).
// Throws connection_error when it cannot be sent.
std::optional<std::vector<result_ptr>> run_until(connection& session, const std::string& sql,
                                                 const detail::deadline& deadline,
                                                 const std::string& context) {
    PGconn* conn = session.native_handle();
    if (conn == nullptr) throw closed_error(context + ": the session is closed");
    if (PQsendQuery(conn, sql.c_str()) == 0) {
        throw db::connection_error(std::string(backend_name), "", 0,
                                   context + ": " + detail::indent_lines(PQerrorMessage(conn)),
                                   sql);
    }
    std::vector<result_ptr> results;
    const bool in_time = detail::collect_results(
        conn, deadline, [&](result_ptr result) { results.push_back(std::move(result)); });
    if (!in_time) return std::nullopt;
    return results;
}

// The next token of `key`; creates the table when it is missing. Throws db::error.
std::int64_t next_token(connection& session, std::int64_t key) {
    try {
        return session.query_value<std::int64_t>(next_token_statement("$1"), key);
    } catch (const db::error& e) {
        if (e.sqlstate() != undefined_table_sqlstate) throw;
    }
    try {
        session.execute_script(create_table);
    } catch (const db::error& e) {
        // Made by another session at the same moment (CREATE TABLE IF NOT EXISTS races).
        if (!created_meanwhile(e.sqlstate())) throw;
    }
    return session.query_value<std::int64_t>(next_token_statement("$1"), key);
}

detail::deadline answer_deadline(steady::time_point started, std::chrono::milliseconds timeout) {
    if (timeout >= lock_options::forever) return {};
    return detail::deadline::after(std::max(timeout, std::chrono::milliseconds(0)) + answer_grace,
                                   started);
}

// A quoted SQL literal of a value the server gave (a setting), for a script.
std::string literal(connection& session, const std::string& value) {
    std::unique_ptr<char, decltype(&PQfreemem)> quoted(
        PQescapeLiteral(session.native_handle(), value.c_str(), value.size()), &PQfreemem);
    if (!quoted) throw std::bad_alloc();
    return quoted.get();
}

// Runs a lock script, waiting at most `timeout` (plus the grace) from `started`, and returns
// every statement's result. A server that has not answered by then gets the session closed
// (whatever it grants later goes with the session) and timeout_error.
std::vector<result_ptr> run_lock_script(connection& session, const std::string& script,
                                        steady::time_point started,
                                        std::chrono::milliseconds timeout,
                                        const std::string& context) {
    auto results = run_until(session, script, answer_deadline(started, timeout), context);
    if (!results) {
        session.close();
        throw no_answer(context, steady::now() - started);
    }
    return std::move(*results);
}

}  // namespace

// --- session_watch -------------------------------------------------------------------------

namespace detail {

session_watch::session_watch(int socket, std::chrono::milliseconds keep_alive,
                             std::stop_source lost)
    : socket_(socket), lost_(std::move(lost)) {
    wake_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (wake_ < 0) throw std::system_error(errno, std::generic_category(), "eventfd");
    probe(keep_alive);
    try {
        thread_ = std::thread([this] { watch(); });
    } catch (...) {
        restore();
        ::close(wake_);
        throw;
    }
}

session_watch::~session_watch() {
    const std::uint64_t one = 1;
    static_cast<void>(::write(wake_, &one, sizeof one));
    thread_.join();
    restore();
    ::close(wake_);
}

namespace {
bool get(int fd, int level, int name, auto& value) noexcept {
    socklen_t size = sizeof value;
    return ::getsockopt(fd, level, name, &value, &size) == 0;
}
void set(int fd, int level, int name, auto value) noexcept {
    static_cast<void>(::setsockopt(fd, level, name, &value, sizeof value));
}
}  // namespace

// TCP only (a Unix-domain session has no network to lose: its end is seen at once).
void session_watch::probe(std::chrono::milliseconds keep_alive) noexcept {
    int domain = 0;
    if (!get(socket_, SOL_SOCKET, SO_DOMAIN, domain) || (domain != AF_INET && domain != AF_INET6)) {
        return;
    }
    tcp_settings before;
    if (!get(socket_, SOL_SOCKET, SO_KEEPALIVE, before.keep_alive) ||
        !get(socket_, IPPROTO_TCP, TCP_KEEPIDLE, before.idle) ||
        !get(socket_, IPPROTO_TCP, TCP_KEEPINTVL, before.interval) ||
        !get(socket_, IPPROTO_TCP, TCP_KEEPCNT, before.count) ||
        !get(socket_, IPPROTO_TCP, TCP_USER_TIMEOUT, before.user_timeout)) {
        return;
    }
    saved_ = before;
    const auto seconds = std::clamp<std::chrono::milliseconds::rep>(
        std::chrono::ceil<std::chrono::seconds>(keep_alive).count(), 1, 3600);
    const int interval = static_cast<int>(seconds);
    set(socket_, SOL_SOCKET, SO_KEEPALIVE, 1);
    set(socket_, IPPROTO_TCP, TCP_KEEPIDLE, interval);
    set(socket_, IPPROTO_TCP, TCP_KEEPINTVL, interval);
    set(socket_, IPPROTO_TCP, TCP_KEEPCNT, probes);
    // Data sent and never acknowledged ends the connection within the same bound.
    set(socket_, IPPROTO_TCP, TCP_USER_TIMEOUT,
        static_cast<unsigned>(interval * (probes + 1) * 1000));
}

void session_watch::restore() noexcept {
    if (!saved_) return;
    set(socket_, SOL_SOCKET, SO_KEEPALIVE, saved_->keep_alive);
    set(socket_, IPPROTO_TCP, TCP_KEEPIDLE, saved_->idle);
    set(socket_, IPPROTO_TCP, TCP_KEEPINTVL, saved_->interval);
    set(socket_, IPPROTO_TCP, TCP_KEEPCNT, saved_->count);
    set(socket_, IPPROTO_TCP, TCP_USER_TIMEOUT, saved_->user_timeout);
}

void session_watch::watch() noexcept {
    std::array<pollfd, 2> watched{{{socket_, POLLRDHUP, 0}, {wake_, POLLIN, 0}}};
    for (;;) {
        if (::poll(watched.data(), watched.size(), -1) < 0) {
            if (errno == EINTR) continue;
            return;
        }
        if (watched[1].revents != 0) return;  // the lease is done with the session
        if ((watched[0].revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0) {
            lost_.request_stop();
            return;
        }
    }
}

namespace advisory {

bool created_meanwhile(std::string_view sqlstate) noexcept {
    return sqlstate == "23505" || sqlstate == "42P07";
}

std::string label(const lock_key& key) {
    if (key.name().empty()) return std::to_string(key.value());
    return '"' + key.name() + "\" (key " + std::to_string(key.value()) + ')';
}

std::string context(const lock_key& key, std::string_view session) {
    return key.describe() + " on " + std::string(session);
}

std::string tracked_description(const lock_key& key, bool shared, std::string_view session) {
    return label(key) + (shared ? " shared" : "") + " on " + std::string(session);
}

std::string next_token_statement(std::string_view key) {
    return "INSERT INTO ctxmgr_fencing_tokens AS f (key, token) VALUES (" + std::string(key) +
           ", 1) ON CONFLICT (key) DO UPDATE SET token = f.token + 1 RETURNING token";
}

std::string lock_timeout_setting(std::chrono::milliseconds timeout) {
    const auto ms = timeout >= lock_options::forever ? 0 : timeout.count();
    return "SET LOCAL lock_timeout = " + std::to_string(ms);
}

std::string suffix(bool shared) {
    return shared ? "_shared" : "";
}

std::string lock_statements(std::int64_t key, bool shared, std::chrono::milliseconds timeout) {
    return "BEGIN ISOLATION LEVEL READ COMMITTED; " + lock_timeout_setting(timeout) +
           "; SET LOCAL statement_timeout = 0; SELECT pg_advisory_lock" + suffix(shared) + '(' +
           std::to_string(key) + ')';
}

std::string lock_script(std::int64_t key, bool shared, std::chrono::milliseconds timeout) {
    return lock_statements(key, shared, timeout) + "; " +
           next_token_statement(std::to_string(key)) + "; COMMIT";
}

std::size_t first_failed(const std::vector<result_ptr>& results) {
    std::size_t at = 0;
    while (at < results.size() && !failed(results[at].get())) ++at;
    return at;
}

lock_script_answer read_lock_script(const std::vector<result_ptr>& results, bool session_open) {
    using outcome = lock_script_answer::outcome;
    constexpr std::size_t lock_statement = lock_statement_index;
    constexpr std::size_t token_statement = lock_statement + 1;
    const std::size_t failed_at = first_failed(results);
    if (failed_at == results.size()) {
        if (results.size() > token_statement && PQntuples(results[token_statement].get()) == 1) {
            return {outcome::granted, std::stoll(PQgetvalue(results[token_statement].get(), 0, 0)),
                    nullptr};
        }
        return {outcome::granted_without_token, 0, nullptr};
    }
    const PGresult* failure = results[failed_at].get();
    const auto answer = [&](outcome what) { return lock_script_answer{what, 0, failure}; };
    if (!session_open) return answer(outcome::session_gone);
    if (failed_at < lock_statement) return answer(outcome::failed_before_lock);
    if (failed_at == lock_statement) {
        return answer(sqlstate_of(failure) == lock_timeout_sqlstate ? outcome::timed_out
                                                                    : outcome::failed_at_lock);
    }
    if (failed_at == token_statement && sqlstate_of(failure) == undefined_table_sqlstate) {
        return answer(outcome::token_table_missing);
    }
    return answer(outcome::failed_after_lock);
}

bool lock_granted(const std::vector<result_ptr>& results) {
    return results.size() > lock_statement_index && !failed(results[lock_statement_index].get());
}

db::error failed_after_lock(const lock_script_answer& answer, const std::string& context,
                            const std::string& script) {
    const char* primary = PQresultErrorField(answer.failure, PG_DIAG_MESSAGE_PRIMARY);
    return db::error(std::string(backend_name), sqlstate_of(answer.failure), 0,
                     context + ": " + (primary != nullptr ? primary : "failed"), script);
}

std::string try_lock_statement(bool shared) {
    return "SELECT pg_try_advisory_lock" + suffix(shared) + "($1)";
}

std::string unlock_statement(std::string_view key, bool shared) {
    return "SELECT pg_advisory_unlock" + suffix(shared) + '(' + std::string(key) + ')';
}

timeout_error held_elsewhere(const std::string& context, std::chrono::nanoseconds waited) {
    return timeout_error(context + " (tried once: it is held elsewhere)", waited);
}

timeout_error lock_timed_out(const std::string& context, std::chrono::nanoseconds waited) {
    return timeout_error(context, waited);
}

timeout_error no_answer(const std::string& context, std::chrono::nanoseconds waited) {
    return timeout_error(context + " (the server did not answer; session closed)", waited);
}

db::connection_error session_lost(const std::string& context, int pid, const std::string& why,
                                  const std::string& sql) {
    return db::connection_error(
        std::string(backend_name), "", 0,
        context + ": the session holding it (backend pid " + std::to_string(pid) + ") was lost" +
            why +
            "; the server released the lock then, and another holder may have had it while this "
            "one still ran",
        sql);
}

db::error unlock_refused(const std::string& context, int pid, const std::string& sql) {
    return db::error(std::string(backend_name), "", 0,
                     context + ": pg_advisory_unlock answered false: the session (backend pid " +
                         std::to_string(pid) +
                         ") no longer held the lock; it was released behind the lease's back "
                         "(pg_advisory_unlock_all, an unlock by hand)",
                     sql);
}

db::connection_error unlock_unanswered(const std::string& context, const std::string& sql) {
    return db::connection_error(std::string(backend_name), "", 0,
                                context + ": the server did not answer the unlock within " +
                                    format_duration(unlock_wait) +
                                    "; session closed, which releases the lock",
                                sql);
}

db::error no_token(const std::string& context, const std::string& sql) {
    return db::error(std::string(backend_name), "", 0,
                     context + ": unexpected answer to the lock script", sql);
}

}  // namespace advisory

}  // namespace detail

// --- lock_key ------------------------------------------------------------------------------

std::string lock_key::describe() const {
    return "advisory lock " + label(*this);
}

// --- lease ---------------------------------------------------------------------------------

lease::lease(lock_key key, bool shared) : key_(std::move(key)), shared_(shared) {
}

lease::~lease() = default;

bool lease::lost() noexcept {
    if (!lost_) {
        lost_ = lost_signal_.stop_requested() || session_ == nullptr || !session_->alive();
        if (lost_) lost_signal_.request_stop();
    }
    return lost_;
}

// --- advisory_lock -------------------------------------------------------------------------

advisory_lock::advisory_lock(pool<connection>& source, lock_key key, lock_options options,
                             std::source_location where)
    : pool_(&source), key_(std::move(key)), options_(options), check_(where) {
}

advisory_lock::advisory_lock(std::string_view conninfo, lock_key key, lock_options options,
                             std::source_location where)
    : conninfo_(conninfo), key_(std::move(key)), options_(options), check_(where) {
}

advisory_lock::advisory_lock(advisory_lock&&) noexcept = default;

advisory_lock::~advisory_lock() {
    if (!lease_) return;
    release_in_destructor([&] { unlock(); }, [&] { return key_.describe(); }, "advisory lock",
                          "unlock in the destructor");
}

lease& advisory_lock::enter() {
    check_.entered();
    if (lease_) throw protocol_error(key_.describe() + ": entered twice");
    const auto started = steady::now();
    std::unique_ptr<lease> held(new lease(key_, options_.shared));
    if (pool_ != nullptr) {
        held->session_ = &held->borrowed_.emplace(pool_->connection(check_.where())).enter();
    } else {
        held->session_ =
            &held->owned_.emplace(connect(conninfo_, own_session_options, check_.where()));
    }
    connection& session = *held->session_;
    const std::string context = detail::advisory::context(key_, session.description());

    // The lock is held from here: anything that fails must unlock before it throws.
    auto unlock_after_failure = [&] {
        try {
            if (session.is_open() && session.transaction_state() != db::transaction_state::idle) {
                session.execute_script("ROLLBACK");
            }
            if (session.is_open() &&
                !session.query_value<bool>(unlock_statement("$1", options_.shared), key_.value())) {
                session.close();  // could not unlock: ending the session releases the lock
            }
        } catch (...) {
            session.close();
        }
    };

    if (options_.timeout.count() <= 0) {
        if (!session.query_value<bool>(try_lock_statement(options_.shared), key_.value())) {
            throw held_elsewhere(context, steady::now() - started);
        }
        try {
            held->token_ = next_token(session, key_.value());
        } catch (...) {
            unlock_after_failure();
            throw;
        }
    } else {
        using outcome = lock_script_answer::outcome;
        const std::string script = lock_script(key_.value(), options_.shared, options_.timeout);
        const std::vector<result_ptr> results =
            run_lock_script(session, script, started, options_.timeout, context);
        const lock_script_answer answer = read_lock_script(results, session.is_open());
        switch (answer.what) {
            case outcome::granted:
                held->token_ = answer.token;
                break;
            case outcome::granted_without_token:
                unlock_after_failure();
                throw no_token(context, script);
            case outcome::session_gone:
                fail(session, answer.failure, context, script);  // the lock went with it
            case outcome::failed_before_lock:
            case outcome::failed_at_lock:
                session.execute_script("ROLLBACK");
                fail(session, answer.failure, context, script);
            case outcome::timed_out:
                session.execute_script("ROLLBACK");
                throw lock_timed_out(context, steady::now() - started);
            case outcome::token_table_missing:
                // The lock is held (a session lock outlives the rollback); the table is made
                // and the token taken outside the script.
                try {
                    session.execute_script("ROLLBACK");
                    held->token_ = next_token(session, key_.value());
                } catch (...) {
                    unlock_after_failure();
                    throw;
                }
                break;
            case outcome::failed_after_lock:
                unlock_after_failure();
                throw failed_after_lock(answer, context, script);
        }
    }
    held->pid_ = session.backend_pid();
    if constexpr (tracking_enabled) {
        try {
            held->tracked_ = tracked(
                "advisory lock", tracked_description(key_, options_.shared, session.description()),
                check_.where());
        } catch (...) {
            unlock_after_failure();
            throw;
        }
    }
    // Last: nothing after it can fail, so no failure path closes the socket it watches.
    if (options_.keep_alive.count() > 0) {
        try {
            held->watch_ = std::make_unique<detail::session_watch>(
                PQsocket(session.native_handle()), options_.keep_alive, held->lost_signal_);
        } catch (...) {
            unlock_after_failure();
            throw;
        }
    }
    lease_ = std::move(held);
    return *lease_;
}

void advisory_lock::unlock() {
    if (!lease_) return;
    const std::unique_ptr<lease> held = std::move(lease_);
    held->watch_.reset();  // before anything closes the socket it watches
    held->tracked_.release();
    connection& session = *held->session_;
    const std::string context = detail::advisory::context(key_, session.description());
    const std::string sql = unlock_statement(std::to_string(key_.value()), held->shared_);
    std::exception_ptr failure;
    try {
        auto lost = [&](const std::string& why) {
            return session_lost(context, held->pid_, why, sql);
        };
        if (!session.is_open()) throw lost("");
        std::optional<std::vector<result_ptr>> results;
        try {
            results = run_until(session, sql, detail::deadline::after(unlock_wait), context);
        } catch (const db::connection_error& e) {
            throw lost(" (" + e.message() + ')');
        }
        if (!results) {
            session.close();
            throw unlock_unanswered(context, sql);
        }
        const PGresult* answer = results->empty() ? nullptr : results->front().get();
        if (!session.is_open())
            throw lost(answer != nullptr
                           ? " (" + detail::indent_lines(PQresultErrorMessage(answer)) + ')'
                           : "");
        if (answer == nullptr || failed(answer)) {
            fail(session, answer, context, sql);
        }
        if (std::string_view(PQgetvalue(answer, 0, 0)) != "t") {
            throw unlock_refused(context, held->pid_, sql);
        }
    } catch (...) {
        failure = std::current_exception();
    }
    // Give the session back: a lost one is closed by the pool on return.
    if (held->borrowed_) {
        try {
            held->borrowed_->exit(nullptr);
        } catch (...) {
            if (!failure) failure = std::current_exception();
        }
    } else if (held->owned_) {
        held->owned_->close();
    }
    if (failure) std::rethrow_exception(failure);
}

void advisory_lock::exit(const std::exception_ptr& e) {
    release_on_exit(e, [&] { unlock(); });
}

// --- advisory_xact_lock --------------------------------------------------------------------

connection& advisory_xact_lock::enter() {
    check_.entered();
    connection& session = *connection_;
    const std::string context = detail::advisory::context(key_, session.description());
    if (session.transaction_state() != db::transaction_state::active) {
        throw protocol_error(context +
                             ": advisory_xact_lock needs an open transaction (the lock ends with "
                             "it; outside one it would end with the statement)");
    }
    const auto started = steady::now();
    const std::string shared = suffix(options_.shared);
    if (options_.timeout.count() <= 0) {
        if (!session.query_value<bool>("SELECT pg_try_advisory_xact_lock" + shared + "($1)",
                                       key_.value())) {
            throw held_elsewhere(context, steady::now() - started);
        }
        return session;
    }
    // The transaction's own settings come back once the lock is granted.
    const auto settings = session.query_one(
        "SELECT current_setting('lock_timeout'), current_setting('statement_timeout')");
    const std::string restore =
        "SET LOCAL lock_timeout = " + literal(session, settings->get<std::string>(0)) +
        "; SET LOCAL statement_timeout = " + literal(session, settings->get<std::string>(1));
    const std::string script =
        "SAVEPOINT ctxmgr_advisory_lock; " + lock_timeout_setting(options_.timeout) +
        "; SET LOCAL statement_timeout = 0; SELECT pg_advisory_xact_lock" + shared + '(' +
        std::to_string(key_.value()) + "); " + restore + "; RELEASE SAVEPOINT ctxmgr_advisory_lock";
    constexpr std::size_t lock_statement = 3;  // the savepoint takes BEGIN's place
    const std::vector<result_ptr> results =
        run_lock_script(session, script, started, options_.timeout, context);
    const std::size_t failed_at = first_failed(results);
    if (failed_at == results.size()) return session;
    const PGresult* failure = results[failed_at].get();
    if (!session.is_open()) fail(session, failure, context, script);
    const bool timed_out =
        failed_at == lock_statement && sqlstate_of(failure) == lock_timeout_sqlstate;
    // Back to the savepoint: the transaction goes on as it was, settings included.
    session.execute_script(
        "ROLLBACK TO SAVEPOINT ctxmgr_advisory_lock; RELEASE SAVEPOINT ctxmgr_advisory_lock");
    if (timed_out) throw lock_timed_out(context, steady::now() - started);
    fail(session, failure, context, script);
}

}  // namespace ctxmgr::postgres
