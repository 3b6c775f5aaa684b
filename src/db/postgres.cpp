// ctxmgr::postgres: connections on libpq.
#include <libpq-fe.h>
#include <poll.h>
#include <ctxmgr/postgres.hpp>

#include <algorithm>
#include <array>
#include <bit>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <limits>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "db/libpq_statement_cache.hpp"
#include "db/libpq_support.hpp"
#include "db/libpq_values.hpp"
#include "db/sql_text.hpp"

namespace ctxmgr::postgres {

// --- shared with distributed_lock.cpp (libpq_support.hpp) ------------------------------------

namespace detail {

std::string indent_lines(const char* text) {
    std::string out;
    bool line_start = false;
    for (const char* p = text; p != nullptr && *p != '\0'; ++p) {
        if (*p == '\n') {
            line_start = true;
        } else if (line_start && (*p == '\t' || *p == ' ')) {
            // libpq indents some continuations with a tab: one indentation for all.
        } else {
            if (line_start && !out.empty()) out += "\n  ";
            line_start = false;
            out += *p;
        }
    }
    return out;
}

bool lost(PGconn* conn) noexcept {
    return conn == nullptr || PQstatus(conn) == CONNECTION_BAD;
}

db::transaction_state transaction_state_of(PGconn* conn) noexcept {
    if (conn == nullptr) return db::transaction_state::unknown;
    switch (PQtransactionStatus(conn)) {
        case PQTRANS_IDLE:
            return db::transaction_state::idle;
        case PQTRANS_ACTIVE:
        case PQTRANS_INTRANS:
            return db::transaction_state::active;
        case PQTRANS_INERROR:
            return db::transaction_state::failed;
        default:
            return db::transaction_state::unknown;
    }
}

std::string sqlstate_of(const PGresult* result) {
    const char* state = result != nullptr ? PQresultErrorField(result, PG_DIAG_SQLSTATE) : nullptr;
    return state != nullptr ? state : "";
}

[[noreturn]] void fail(PGconn* conn, const PGresult* result, std::string_view sql,
                       std::string_view context) {
    std::string sqlstate;
    std::string message;
    if (result != nullptr) {
        sqlstate = sqlstate_of(result);
        if (const char* primary = PQresultErrorField(result, PG_DIAG_MESSAGE_PRIMARY)) {
            message = primary;
            // psql's layout, each part on a line of its own, indented under the first.
            const auto add = [&](int field, std::string_view label) {
                if (const char* text = PQresultErrorField(result, field)) {
                    message += label;
                    message += indent_lines(text);
                }
            };
            add(PG_DIAG_MESSAGE_DETAIL, "\n  DETAIL:  ");
            add(PG_DIAG_MESSAGE_HINT, "\n  HINT:  ");
        } else {
            message = indent_lines(PQresultErrorMessage(result));
        }
    }
    if (message.empty())
        message = indent_lines(conn != nullptr ? PQerrorMessage(conn) : "no connection");
    if (message.empty()) message = "unknown error";
    if (!context.empty()) message = std::string(context) + ": " + message;
    std::string statement(sql);
    const std::string_view category = std::string_view(sqlstate).substr(0, 2);
    // 08P01 with a working link is a protocol error of one message (a parameter count), not
    // a lost connection.
    if (lost(conn) || (category == "08" && sqlstate != "08P01") || sqlstate == "57P01" ||
        sqlstate == "57P02" || sqlstate == "57P03") {
        throw db::connection_error(std::string(backend_name), std::move(sqlstate), 0,
                                   std::move(message), std::move(statement));
    }
    if (category == "23") {
        throw db::constraint_violation(std::string(backend_name), std::move(sqlstate), 0,
                                       std::move(message), std::move(statement));
    }
    if (sqlstate == "40001" || sqlstate == "40P01") {
        throw db::serialization_failure(std::string(backend_name), std::move(sqlstate), 0,
                                        std::move(message), std::move(statement));
    }
    throw db::error(std::string(backend_name), std::move(sqlstate), 0, std::move(message),
                    std::move(statement));
}

void throw_commit_outcome_unknown(const std::exception_ptr& failure, std::string_view connection) {
    const std::string prefix =
        "the outcome of COMMIT on " + std::string(connection) + " is unknown, the link was lost: ";
    try {
        std::rethrow_exception(failure);
    } catch (const db::connection_error& e) {
        throw db::commit_outcome_unknown(e.backend(), e.sqlstate(), e.code(), prefix + e.message(),
                                         e.sql());
    } catch (const std::exception& e) {
        throw_chained(db::commit_outcome_unknown(std::string(backend_name), "", 0,
                                                 prefix + e.what(), std::string(commit_statement)),
                      failure);
    }
}

bool wait_socket(PGconn* conn, bool for_reading, const deadline& deadline) {
    pollfd descriptor{PQsocket(conn), static_cast<short>(for_reading ? POLLIN : POLLOUT), 0};
    for (;;) {
        const int timeout = deadline.poll_timeout();
        if (timeout == 0) return false;
        const int ready = ::poll(&descriptor, 1, timeout);
        if (ready > 0) return true;
        if (ready < 0 && errno != EINTR) return true;  // let libpq report the error
    }
}

}  // namespace detail

namespace {

using detail::backend_name;
using detail::fail;
using detail::indent_lines;
using detail::lost;
using detail::result_ptr;
using detail::wait_socket;

using detail::bound_parameters;
using detail::refusal_sqlstate;
using detail::result_cursor;
using detail::succeeded;

}  // namespace

// Asks the server to cancel what runs on `conn` (PQcancel: a connection of its own to the
// postmaster), waiting until `deadline`; true when the postmaster took the request. libpq 15's
// PQcancel cannot be bounded, and a stopped postmaster never answers it: it runs on a thread
// of its own, left to end by itself (when the server resumes or dies) past the deadline.
bool request_cancel(PGconn* conn, const detail::deadline& deadline) {
    struct outcome {
        std::mutex mutex;
        std::condition_variable done_cv;
        bool done = false;
        bool sent = false;
    };
    const auto shared = std::make_shared<outcome>();
    const bool started = detail::cancel_in_background(conn, [shared](bool sent) {
        const std::lock_guard lock(shared->mutex);
        shared->done = true;
        shared->sent = sent;
        shared->done_cv.notify_all();
    });
    if (!started) return false;
    std::unique_lock lock(shared->mutex);
    shared->done_cv.wait_until(lock, deadline.time_point(), [&] { return shared->done; });
    return shared->sent;
}

namespace detail {

bool cancel_in_background(PGconn* conn, std::function<void(bool sent)> done) {
    PGcancel* cancel = PQgetCancel(conn);
    if (cancel == nullptr) return false;
    try {
        std::thread([cancel, done = std::move(done)] {
            std::array<char, 256> error{};
            const bool sent = PQcancel(cancel, error.data(), static_cast<int>(error.size())) != 0;
            PQfreeCancel(cancel);
            if (done) done(sent);
        }).detach();
    } catch (const std::system_error&) {
        PQfreeCancel(cancel);
        return false;
    }
    return true;
}

}  // namespace detail

struct connection::impl {
    PGconn* handle = nullptr;
    int backend_pid = 0;  // kept: libpq forgets it once the link breaks
    detail::statement_cache statements;
    bound_parameters bound;
    std::unique_ptr<result_cursor> spare;
    // The client's deadline for a statement (0: none), and how long a cancel may take.
    std::chrono::milliseconds client_timeout{0};
    std::chrono::milliseconds cancel_grace{0};
    std::string description;  // the connection's, for timeout messages
    // A statement outlived its deadline and its cancel: the session must be closed.
    bool abandoned = false;

    explicit impl(std::size_t statement_cache_size) : statements(statement_cache_size) {}
    impl(const impl&) = delete;
    impl& operator=(const impl&) = delete;
    ~impl() {
        spare.reset();
        if (handle != nullptr) PQfinish(handle);
    }

    // Deallocates the statements the cache has forgotten. DEALLOCATE is refused in a failed
    // transaction: they wait until the next statement is prepared outside one.
    void flush_deallocations() {
        if (!statements.deallocations_due(handle)) return;
        const std::string sql = statements.take_deallocations();
        PQclear(PQexec(handle, sql.c_str()));  // a lost link shows on the next statement
    }

    // A statement as PQexec runs it (`exec`), or, under a client deadline, sent (`send`) and
    // waited for no longer than `timeout` (client_timeout by default): then cancelled on the
    // server, the session usable again when the server answers within cancel_grace, abandoned
    // otherwise (the caller closes it); timeout_error either way, unless the statement finished
    // first.
    template <class Exec, class Send>
    result_ptr exchange(std::string_view sql, Exec&& exec, Send&& send) {
        return exchange(sql, client_timeout, std::forward<Exec>(exec), std::forward<Send>(send));
    }
    template <class Exec, class Send>
    result_ptr exchange(std::string_view sql, std::chrono::milliseconds timeout, Exec&& exec,
                        Send&& send) {
        if (timeout.count() <= 0) [[likely]]
            return result_ptr(exec());
        return exchange_within(sql, timeout, std::forward<Send>(send));
    }
    // exchange() under a deadline, out of line: the statements without one stay short.
    template <class Send>
    [[gnu::noinline]] result_ptr exchange_within(std::string_view sql,
                                                 std::chrono::milliseconds timeout, Send&& send) {
        const auto start = std::chrono::steady_clock::now();
        const auto limit = detail::deadline::after(timeout, start);
        if (!send()) return nullptr;  // the link is broken: the caller reports PQerrorMessage
        result_ptr last;
        const auto keep = [&](result_ptr result) { last = std::move(result); };
        if (detail::collect_results(handle, limit, keep)) return last;
        const auto grace = detail::deadline::after(cancel_grace);
        const bool answered =
            request_cancel(handle, grace) && detail::collect_results(handle, grace, keep);
        if (answered && succeeded(last.get())) return last;
        abandoned = !answered;
        throw timeout_error(
            "statement " + db::error::shorten(std::string(sql)) + " on " + description +
                (answered ? " (cancelled on the server)"
                          : " (no answer to its cancel within " + format_duration(cancel_grace) +
                                ": the session is closed)"),
            std::chrono::steady_clock::now() - start);
    }

    // The statement for `sql` with the bound parameters' types, prepared if need be.
    detail::prepared& statement_for(std::string_view sql, std::size_t given) {
        if (detail::prepared* found = statements.find(sql, bound.types)) return *found;
        detail::check_parameter_count(sql, given);
        statements.make_room();
        flush_deallocations();
        std::string name = statements.next_name();
        const std::string text(sql);
        const int count = static_cast<int>(bound.types.size());
        result_ptr result = exchange(
            sql,
            [&] {
                return PQprepare(handle, name.c_str(), text.c_str(), count, bound.types.data());
            },
            [&] {
                return PQsendPrepare(handle, name.c_str(), text.c_str(), count,
                                     bound.types.data()) != 0;
            });
        if (!succeeded(result.get())) fail(handle, result.get(), sql);
        return statements.add(sql, std::move(name), bound.types);
    }

    // Binds, prepares if need be and executes; returns the successful result.
    result_ptr execute(std::string_view sql, std::span<const db::param> params) {
        bound.bind(params, sql);
        const int n = static_cast<int>(params.size());
        if (statements.capacity() == 0) {
            detail::check_parameter_count(sql, params.size());
            const std::string text(sql);
            result_ptr result = exchange(
                sql,
                [&] {
                    return PQexecParams(handle, text.c_str(), n, bound.types.data(),
                                        bound.values.data(), bound.lengths.data(),
                                        bound.formats.data(), 0);
                },
                [&] {
                    return PQsendQueryParams(handle, text.c_str(), n, bound.types.data(),
                                             bound.values.data(), bound.lengths.data(),
                                             bound.formats.data(), 0) != 0;
                });
            if (!succeeded(result.get())) fail(handle, result.get(), sql);
            return result;
        }
        for (int attempt = 0;; ++attempt) {
            // A cached statement has these very parameter types, so their count was checked
            // when it was prepared.
            const detail::prepared& statement = statement_for(sql, params.size());
            result_ptr result = exchange(
                sql,
                [&] {
                    return PQexecPrepared(handle, statement.name.c_str(), n, bound.values.data(),
                                          bound.lengths.data(), bound.formats.data(), 0);
                },
                [&] {
                    return PQsendQueryPrepared(handle, statement.name.c_str(), n,
                                               bound.values.data(), bound.lengths.data(),
                                               bound.formats.data(), 0) != 0;
                });
            if (succeeded(result.get())) return result;
            // The server forgot the statement (DISCARD ALL, DEALLOCATE by hand): prepared
            // again, once, when no transaction was open that the error has now aborted.
            if (attempt == 0 && detail::forgotten_statement(handle, result.get())) {
                statements.drop(sql, bound.types);
                continue;
            }
            fail(handle, result.get(), sql);
        }
    }

    result_cursor* cursor_for(result_ptr result, std::string_view sql, bool copy_sql) {
        std::unique_ptr<result_cursor> c =
            spare != nullptr ? std::move(spare) : std::make_unique<result_cursor>(&spare);
        c->reset(result.release(), sql, false, copy_sql);
        return c.release();
    }
};

// --- connection ------------------------------------------------------------------------

namespace {

// libpq's parse errors quote the input, password included: a quotation not shown by the
// redacted description becomes "...". A translated message (other quotation marks) is not
// searched and gives way to a plain one.
std::string without_quotations(std::string_view message, std::string_view shown) {
    if (std::any_of(message.begin(), message.end(),
                    [](char c) { return static_cast<unsigned char>(c) >= 0x80; })) {
        return "malformed connection string";
    }
    std::string out;
    std::size_t i = 0;
    while (i < message.size()) {
        const std::size_t open = message.find('"', i);
        if (open == std::string_view::npos) {
            out += message.substr(i);
            break;
        }
        out += message.substr(i, open + 1 - i);
        const std::size_t close = message.find('"', open + 1);
        const std::string_view quoted =
            message.substr(open + 1, close == std::string_view::npos ? close : close - open - 1);
        out += shown.find(quoted) != std::string_view::npos ? quoted : "...";
        out += '"';
        if (close == std::string_view::npos) break;
        i = close + 1;
    }
    return out;
}

}  // namespace

namespace detail {

connect_parameters::connect_parameters(std::string_view conninfo, const options& opts,
                                       const std::string& description) {
    const std::string context = "connect to " + description;
    char* parse_error = nullptr;
    PQconninfoOption* parsed = PQconninfoParse(std::string(conninfo).c_str(), &parse_error);
    if (parsed == nullptr) {
        const std::string message = parse_error != nullptr
                                        ? without_quotations(indent_lines(parse_error), description)
                                        : "out of memory";
        PQfreemem(parse_error);
        throw db::error(std::string(backend_name), "", 0, context + ": " + message, "");
    }
    for (const PQconninfoOption* option = parsed; option->keyword != nullptr; ++option) {
        if (option->val != nullptr) settings.emplace_back(option->keyword, option->val);
    }
    PQconninfoFree(parsed);
    auto setting = [&](std::string_view key) -> std::string* {
        for (auto& [k, v] : settings) {
            if (k == key) return &v;
        }
        return nullptr;
    };
    auto set = [&](std::string_view key, std::string value) {
        if (std::string* existing = setting(key)) {
            *existing = std::move(value);
        } else {
            settings.emplace_back(std::string(key), std::move(value));
        }
    };
    if (!opts.application_name.empty()) set("application_name", opts.application_name);
    if (setting("fallback_application_name") == nullptr) set("fallback_application_name", "ctxmgr");
    if (setting("client_encoding") == nullptr) set("client_encoding", "UTF8");
    if (opts.statement_timeout.count() > 0) {
        std::string server_options = setting("options") != nullptr ? *setting("options") + ' ' : "";
        server_options += "-c statement_timeout=" + std::to_string(opts.statement_timeout.count());
        set("options", std::move(server_options));
    }
    for (const auto& [k, v] : settings) {
        keywords.push_back(k.c_str());
        values.push_back(v.c_str());
    }
    keywords.push_back(nullptr);
    values.push_back(nullptr);
}

}  // namespace detail

namespace detail {

session_ptr connect_session(const connect_parameters& parameters, const options& opts,
                            const std::string& description) {
    const std::string context = "connect to " + description;
    const auto deadline = detail::deadline::after(opts.connect_timeout);
    session_ptr conn(PQconnectStartParams(parameters.keywords.data(), parameters.values.data(), 0));
    if (conn == nullptr) throw std::bad_alloc();
    auto refused = [&]() {
        const std::string message = indent_lines(PQerrorMessage(conn.get()));
        throw db::connection_error(std::string(backend_name), refusal_sqlstate(message), 0,
                                   context + ": " + message, "");
    };
    if (PQstatus(conn.get()) == CONNECTION_BAD) refused();
    PostgresPollingStatusType status = PGRES_POLLING_WRITING;
    while (status != PGRES_POLLING_OK) {
        if (status == PGRES_POLLING_FAILED) refused();
        if (!wait_socket(conn.get(), status == PGRES_POLLING_READING, deadline)) {
            throw db::connection_error(
                std::string(backend_name), "", 0,
                context + ": no answer within " + format_duration(opts.connect_timeout), "");
        }
        status = PQconnectPoll(conn.get());
    }
    PQsetNoticeProcessor(
        conn.get(), [](void*, const char*) {}, nullptr);
    return conn;
}

// An idle session receives nothing unless something happened to it: the server ending it
// (pg_terminate_backend, a shutdown or restart: an ErrorResponse with 57P01, then the end of the
// stream; a crash: the end of the stream or a reset), or a NOTIFY for a LISTENing session. So
// one poll() with a zero timeout says whether to look further: nothing readable, the session
// is as it was left. The peer's end of the stream (POLLRDHUP) or an error on the socket means
// it is gone. Anything else is read by libpq (PQconsumeInput), which marks the connection bad
// when it meets the end of the stream; a NOTIFY stays queued for PQnotifies.
bool session_alive(PGconn* conn) noexcept {
    // A statement still running (started through native_handle()) is no idle session.
    if (PQisBusy(conn) != 0) return false;
    // A few rounds: data may keep arriving (notifications), but a goodbye is followed by the end
    // of the stream at once.
    for (int round = 0; round < 4; ++round) {
        pollfd descriptor{PQsocket(conn), POLLIN | POLLRDHUP, 0};
        const int ready = ::poll(&descriptor, 1, 0);
        if (ready == 0) return true;
        if (ready < 0) {
            if (errno == EINTR) continue;
            return false;
        }
        if ((descriptor.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0) return false;
        if (PQconsumeInput(conn) == 0 || PQstatus(conn) != CONNECTION_OK) return false;
    }
    return PQstatus(conn) == CONNECTION_OK;
}

[[noreturn]] void throw_lost_before_rollback(PGconn* conn, std::string_view operation,
                                             const std::string& description) {
    throw db::connection_error(std::string(backend_name), "", 0,
                               std::string(operation) + " on " + description +
                                   ": the connection is lost; " +
                                   indent_lines(PQerrorMessage(conn)),
                               "ROLLBACK");
}

}  // namespace detail

connection connect(std::string_view conninfo, const options& opts, std::source_location where) {
    std::string description = redact_secrets(conninfo);
    const detail::connect_parameters parameters(conninfo, opts, description);
    detail::session_ptr conn = detail::connect_session(parameters, opts, description);

    auto state = std::make_unique<connection::impl>(opts.statement_cache_size);
    state->handle = conn.release();
    state->backend_pid = PQbackendPID(state->handle);
    state->cancel_grace = opts.cancel_grace;
    state->description = description;
    if (opts.statement_timeout.count() > 0) {
        state->client_timeout = opts.statement_timeout + opts.cancel_grace;
    }
    return connection(std::move(state), std::move(description), where);
}

namespace {

// Runs `f`; a statement abandoned past its deadline closes `c` (it is still in flight on the
// session, which can serve nothing else) before its timeout_error goes on.
template <class F>
decltype(auto) closing_if_abandoned(connection& c, const bool& abandoned, F&& f) {
    try {
        return std::forward<F>(f)();
    } catch (const timeout_error&) {
        if (abandoned) c.close();
        throw;
    }
}

}  // namespace

connection::connection(std::unique_ptr<impl> state, std::string description,
                       std::source_location where)
    : basic_connection(kind(), std::move(description), where), impl_(std::move(state)) {
}

connection::connection(connection&& other) noexcept = default;

// The base closes this connection first.
connection& connection::operator=(connection&& other) = default;

connection::~connection() {
    close();
}

void connection::close() noexcept {
    if (impl_ == nullptr) return;
    impl_.reset();  // PQfinish: the server rolls back what is open
    mark_closed();
}

connection::impl& connection::live(std::string_view operation) const {
    if (impl_ == nullptr) [[unlikely]]
        throw_closed(operation);
    return *impl_;
}

bool connection::is_open() const noexcept {
    return impl_ != nullptr && !lost(impl_->handle);
}

bool connection::ping() noexcept {
    if (!is_open()) return false;
    PGresult* result = PQexec(impl_->handle, "");
    const bool answered = result != nullptr && PQresultStatus(result) == PGRES_EMPTY_QUERY;
    PQclear(result);
    return answered && !lost(impl_->handle);
}

// Is an idle session still there, without a round trip? See detail::session_alive.
bool connection::alive() noexcept {
    return is_open() && detail::session_alive(impl_->handle);
}

bool connection::ping(std::chrono::milliseconds timeout) noexcept {
    if (!is_open()) return false;
    PGconn* conn = impl_->handle;
    // A statement of the user's still running (native_handle()): no ping can be sent.
    if (PQisBusy(conn) != 0) return false;
    const auto deadline = detail::deadline::after(timeout);
    if (PQsendQuery(conn, "") == 0) return false;  // the link is broken
    bool answered = false;
    const bool in_time = detail::collect_results(conn, deadline, [&](result_ptr result) {
        answered = answered || PQresultStatus(result.get()) == PGRES_EMPTY_QUERY;
    });
    if (!in_time) {
        close();
        return false;
    }
    return answered && !lost(conn);
}

db::transaction_state connection::transaction_state() const noexcept {
    return impl_ == nullptr ? db::transaction_state::unknown
                            : detail::transaction_state_of(impl_->handle);
}

bool connection::rollback_any() {
    impl& state = live("rollback_any");
    forget_transactions();
    switch (transaction_state()) {
        case db::transaction_state::idle:
            return false;
        case db::transaction_state::unknown:
            detail::throw_lost_before_rollback(state.handle, "rollback_any", description());
        default:
            execute_script("ROLLBACK");
            return true;
    }
}

void connection::execute_script(std::string_view sql) {
    execute_script(sql, live("execute_script").client_timeout);
}

void connection::execute_script(std::string_view sql, std::chrono::milliseconds timeout) {
    impl& state = live("execute_script");
    const std::string text(sql);
    // A COMMIT that leaves a working link and loses it has an unknown outcome.
    const bool commit = sql == detail::commit_statement && !lost(state.handle);
    try {
        const result_ptr result = closing_if_abandoned(*this, state.abandoned, [&] {
            return state.exchange(
                sql, timeout, [&] { return PQexec(state.handle, text.c_str()); },
                [&] { return PQsendQuery(state.handle, text.c_str()) != 0; });
        });
        if (!succeeded(result.get())) fail(state.handle, result.get(), sql);
    } catch (const db::connection_error&) {
        if (commit) detail::throw_commit_outcome_unknown(std::current_exception(), description());
        throw;
    } catch (const timeout_error&) {
        // Abandoned (the session is closed now): whether the server committed is unknown.
        if (commit && closed()) {
            detail::throw_commit_outcome_unknown(std::current_exception(), description());
        }
        throw;
    }
}

int connection::backend_pid() const noexcept {
    return impl_ != nullptr ? impl_->backend_pid : 0;
}

int connection::server_version() const noexcept {
    return impl_ != nullptr ? PQserverVersion(impl_->handle) : 0;
}

::pg_conn* connection::native_handle() const noexcept {
    return impl_ != nullptr ? impl_->handle : nullptr;
}

std::size_t connection::cached_statements() const noexcept {
    return impl_ != nullptr ? impl_->statements.size() : 0;
}

std::int64_t connection::run(std::string_view sql, std::span<const db::param> params) {
    impl& state = live("execute");
    const result_ptr result =
        closing_if_abandoned(*this, state.abandoned, [&] { return state.execute(sql, params); });
    return detail::rows_affected(result.get());
}

db::detail::cursor* connection::open(std::string_view sql, std::span<const db::param> params,
                                     bool) {
    // The result is complete when PQexecPrepared returns: nothing refers to the parameters.
    impl& state = live("query");
    return state.cursor_for(
        closing_if_abandoned(*this, state.abandoned, [&] { return state.execute(sql, params); }),
        sql, true);
}

void connection::fetch_first(std::string_view sql, std::span<const db::param> params,
                             db::detail::first_value& value) {
    impl& state = live("query");
    result_cursor* c = state.cursor_for(
        closing_if_abandoned(*this, state.abandoned, [&] { return state.execute(sql, params); }),
        sql, false);
    struct release_at_end {
        result_cursor* c;
        ~release_at_end() { c->release(); }
    } guard{c};
    if (!c->next()) return;
    value.row = true;
    db::detail::read_first(*c, value);
}

void connection::begin(const db::transaction_options& options) {
    execute_script(detail::begin_statement(options));
}

namespace detail {

std::string begin_statement(const db::transaction_options& options) {
    std::string sql = "BEGIN";
    switch (options.isolation) {
        case db::isolation_level::server_default:
            break;
        case db::isolation_level::read_committed:
            sql += " ISOLATION LEVEL READ COMMITTED";
            break;
        case db::isolation_level::repeatable_read:
            sql += " ISOLATION LEVEL REPEATABLE READ";
            break;
        case db::isolation_level::serializable:
            sql += " ISOLATION LEVEL SERIALIZABLE";
            break;
    }
    if (options.read_only) sql += " READ ONLY";
    return sql;
}

}  // namespace detail

}  // namespace ctxmgr::postgres
