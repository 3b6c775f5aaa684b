// ctxmgr::postgres async connections: libpq's non-blocking calls, its socket watched by Asio.
#include <fcntl.h>
#include <libpq-fe.h>
#include <poll.h>
#include <unistd.h>
#include <ctxmgr/async_postgres.hpp>

#include <asio/bind_cancellation_slot.hpp>
#include <asio/cancellation_signal.hpp>
#include <asio/experimental/deferred.hpp>
#include <asio/experimental/parallel_group.hpp>
#include <asio/posix/stream_descriptor.hpp>
#include <asio/redirect_error.hpp>
#include <asio/steady_timer.hpp>
#include <asio/system_error.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <memory>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "db/libpq_statement_cache.hpp"
#include "db/libpq_support.hpp"
#include "db/libpq_values.hpp"
#include "db/sql_text.hpp"

namespace ctxmgr::postgres {

namespace {

using detail::backend_name;
using detail::deadline;
using detail::fail;
using detail::indent_lines;
using detail::lost;
using detail::result_cursor;
using detail::result_ptr;
using detail::succeeded;

// libpq's socket, watched by Asio through a duplicate descriptor of its own. libpq closes its
// descriptor when the link breaks, and its number may then be reused at once by another
// thread's new connection: Asio's deregistration (epoll_ctl on that number) would then remove
// the new connection's registration. The duplicate keeps the number this watch registered
// until the watch itself closes it.
class watched_socket {
  public:
    explicit watched_socket(const asio::any_io_executor& executor) : descriptor_(executor) {}
    watched_socket(const watched_socket&) = delete;
    watched_socket& operator=(const watched_socket&) = delete;
    ~watched_socket() { forget(); }

    // Watches `fd`, registered afresh: while connecting, libpq may close a socket and open
    // another under the same number, which the registration of the old one would not see.
    void watch(int fd) {
        forget();
        const int own = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
        if (own < 0) throw std::system_error(errno, std::generic_category(), "dup libpq's socket");
        try {
            descriptor_.assign(own);
        } catch (...) {
            ::close(own);
            throw;
        }
    }
    void forget() noexcept {
        asio::error_code ignored;
        if (descriptor_.is_open()) descriptor_.close(ignored);
    }
    asio::posix::stream_descriptor& get() noexcept { return descriptor_; }

  private:
    asio::posix::stream_descriptor descriptor_;
};

// The data is there already: Asio's edge-triggered registration would not report it again.
// libpq may leave bytes in the kernel's buffer when its own fills up.
bool readable_now(int fd) noexcept {
    pollfd descriptor{fd, POLLIN, 0};
    int ready = 0;
    do {
        ready = ::poll(&descriptor, 1, 0);
    } while (ready < 0 && errno == EINTR);
    return ready != 0;  // an error too: libpq's next call reports it
}

[[noreturn]] void throw_aborted(const std::string& what) {
    throw asio::system_error(asio::error::operation_aborted, what);
}

// An empty slot: what the caller is cancelled with does not reach the operation.
auto shielded_token() {
    return asio::bind_cancellation_slot(asio::cancellation_slot(), asio::use_awaitable);
}

// The socket's readiness, awaited by the caller: no coroutine of its own. A failure goes to
// `error`.
asio::awaitable<void> socket_wait(watched_socket& socket,
                                  asio::posix::descriptor_base::wait_type type,
                                  asio::error_code& error) {
    return socket.get().async_wait(type, asio::redirect_error(asio::use_awaitable, error));
}

// Waits until the socket is ready for reading (or writing): true; or until `limit` passes:
// false. Unless `shielded`, a cancellation of the caller throws
// asio::system_error(operation_aborted). A failed wait reads as ready, so that libpq's next call
// reports the error.
asio::awaitable<bool> wait_ready(watched_socket& socket, asio::steady_timer& timer, bool reading,
                                 const deadline& limit, bool shielded) {
    using asio::posix::descriptor_base;
    const auto type = reading ? descriptor_base::wait_read : descriptor_base::wait_write;
    auto& descriptor = socket.get();
    asio::error_code socket_error;
    if (!limit.timed()) {
        if (shielded) {
            co_await descriptor.async_wait(
                type, asio::bind_cancellation_slot(
                          asio::cancellation_slot(),
                          asio::redirect_error(asio::use_awaitable, socket_error)));
        } else {
            co_await socket_wait(socket, type, socket_error);
        }
        if (socket_error == asio::error::operation_aborted) throw_aborted("wait for the server");
        co_return true;
    }
    if (limit.expired()) co_return false;
    timer.expires_at(limit.time_point());
    auto group = asio::experimental::make_parallel_group(
        descriptor.async_wait(type, asio::experimental::deferred),
        timer.async_wait(asio::experimental::deferred));
    std::array<std::size_t, 2> order{};
    asio::error_code timer_error;
    if (shielded) {
        std::tie(order, socket_error, timer_error) =
            co_await group.async_wait(asio::experimental::wait_for_one(), shielded_token());
    } else {
        std::tie(order, socket_error, timer_error) =
            co_await group.async_wait(asio::experimental::wait_for_one(), asio::use_awaitable);
    }
    const asio::error_code& first = order[0] == 0 ? socket_error : timer_error;
    if (first == asio::error::operation_aborted) throw_aborted("wait for the server");
    co_return order[0] == 0;
}

std::string savepoint_name(std::uint64_t id) {
    return "ctxmgr_" + std::to_string(id);
}

}  // namespace

struct async_connection::impl {
    impl(const asio::any_io_executor& executor, std::size_t statement_cache_size)
        : socket(executor), timer(executor), statements(statement_cache_size) {}
    impl(const impl&) = delete;
    impl& operator=(const impl&) = delete;
    ~impl() { abandon(); }

    PGconn* handle = nullptr;
    watched_socket socket;
    asio::steady_timer timer;
    int backend_pid = 0;  // kept: libpq forgets it once the link breaks
    std::chrono::milliseconds client_timeout{0};
    std::chrono::milliseconds cancel_grace{0};
    std::string description;
    detail::bound_parameters bound;
    detail::statement_cache statements;
    std::uint64_t savepoints = 0;
    bool busy = false;
    // Set by async_run_script: every result but the last is kept here, the last returned.
    std::vector<result_ptr>* gather = nullptr;

    // Ends the session at once (a statement still in flight on it): PQfinish.
    void abandon() noexcept {
        socket.forget();
        if (handle != nullptr) PQfinish(std::exchange(handle, nullptr));
    }

    // Sends a statement with `send` and collects its results; the last one is returned.
    // Under options.statement_timeout, or when the caller is cancelled, the statement is
    // cancelled on the server and drained within cancel_grace, or the session abandoned.
    // With `ping_limit`, that is the deadline instead, and a session that has not answered by
    // then is abandoned at once (no cancel): null is returned.
    template <class Send>
    asio::awaitable<result_ptr> exchange(std::string_view sql, Send send,
                                         const deadline* ping_limit = nullptr) {
        if (busy) {
            throw protocol_error("an operation of " + description +
                                 " is still in flight: one statement at a time per connection");
        }
        busy = true;
        struct not_busy {
            bool& flag;
            ~not_busy() { flag = false; }
        } guard{busy};
        if (!send()) fail(handle, nullptr, sql);  // the link is broken
        const auto start = std::chrono::steady_clock::now();
        const deadline limit = ping_limit != nullptr        ? *ping_limit
                               : client_timeout.count() > 0 ? deadline::after(client_timeout, start)
                                                            : deadline();
        result_ptr last;
        bool cancelled = false;
        bool in_time = true;
        try {
            // Sent whole at once (the usual case), the statement has left nothing in libpq's
            // input: its results can only come by the socket.
            const bool sent_at_once = PQflush(handle) == 0;
            if (sent_at_once && !limit.timed()) {
                // The common case, awaited in this frame rather than collect's: one coroutine
                // frame fewer a statement.
                const int fd = PQsocket(handle);
                for (bool read = false;; read = true) {
                    if (read && take_results(last)) break;
                    if (readable_now(fd)) continue;
                    asio::error_code error;
                    co_await socket_wait(socket, asio::posix::descriptor_base::wait_read, error);
                    if (error == asio::error::operation_aborted) {
                        throw_aborted("wait for the server");
                    }
                }
            } else {
                in_time = (sent_at_once || co_await flush(limit, false)) &&
                          co_await collect(limit, last, false, sent_at_once);
            }
        } catch (const asio::system_error& e) {
            if (e.code() != asio::error::operation_aborted) throw;
            cancelled = true;
        }
        if (in_time && !cancelled) co_return last;
        if (ping_limit != nullptr && !cancelled) {
            abandon();
            co_return nullptr;
        }
        // Asio throws at every co_await of a cancelled coroutine (even of cancel_and_drain)
        // unless told not to.
        const bool throwing = co_await asio::this_coro::throw_if_cancelled();
        co_await asio::this_coro::throw_if_cancelled(false);
        std::exception_ptr failure;
        try {
            last = co_await cancel_and_drain(sql, start, cancelled, std::move(last));
        } catch (...) {
            failure = std::current_exception();
        }
        co_await asio::this_coro::throw_if_cancelled(throwing);
        if (failure) std::rethrow_exception(failure);
        co_return last;
    }

    // exchange() of a script (statements separated by ';', the simple protocol). Not a
    // coroutine: the caller awaits exchange's own.
    asio::awaitable<result_ptr> exchange_script(std::string_view sql) {
        return exchange(sql, [this, text = std::string(sql)] {
            return PQsendQuery(handle, text.c_str()) != 0;
        });
    }

    // Sends what libpq keeps of the statement (PQflush).
    asio::awaitable<bool> flush(const deadline& limit, bool shielded) {
        for (;;) {
            const int pending = PQflush(handle);
            if (pending == 0) co_return true;
            if (pending < 0) co_return true;  // broken: the results say so
            if (!co_await wait_ready(socket, timer, false, limit, shielded)) co_return false;
        }
    }

    // Reads what has come into libpq and moves the results it completes into `last` (the
    // earlier ones to `gather` when a script asks for them): true once libpq has none left for
    // the statement. A broken link: PQgetResult hands out the failure next.
    bool take_results(result_ptr& last) {
        static_cast<void>(PQconsumeInput(handle));
        while (PQisBusy(handle) == 0) {
            PGresult* result = PQgetResult(handle);
            if (result == nullptr) return true;
            if (gather != nullptr && last != nullptr) gather->push_back(std::move(last));
            last.reset(result);
        }
        return false;
    }

    // Reads results into `last` until libpq has none left (true) or `limit` passes (false).
    // With `only_socket`, libpq holds no input yet: the first read waits for the socket to say
    // there is some (one system call fewer a statement).
    asio::awaitable<bool> collect(const deadline& limit, result_ptr& last, bool shielded,
                                  bool only_socket = false) {
        const int fd = PQsocket(handle);
        for (bool read = !only_socket;; read = true) {
            if (read && take_results(last)) co_return true;
            if (readable_now(fd)) continue;
            if (!co_await wait_ready(socket, timer, true, limit, shielded)) co_return false;
        }
    }

    // After a timeout or a cancellation: asks the server to cancel, waits cancel_grace for
    // the statement to end, shielded from further cancellation; the session is drained then,
    // or abandoned. Awaited with throw_if_cancelled off.
    asio::awaitable<result_ptr> cancel_and_drain(std::string_view sql,
                                                 std::chrono::steady_clock::time_point start,
                                                 bool cancelled, result_ptr last) {
        bool answered = false;
        std::exception_ptr failure;
        try {
            const auto grace = deadline::after(cancel_grace);
            const auto cancel_done = std::make_shared<std::atomic<bool>>(false);
            const bool requested = detail::cancel_in_background(
                handle, [cancel_done](bool) { cancel_done->store(true); });
            answered = co_await flush(grace, true) && co_await collect(grace, last, true);
            // The request's own connection is closed by then too, unless the server keeps it
            // past the grace. Its thread cannot wake an executor it may outlive: polled.
            while (requested && !cancel_done->load() && !grace.expired()) {
                timer.expires_after(std::chrono::milliseconds(1));
                asio::error_code ignored;
                co_await timer.async_wait(asio::bind_cancellation_slot(
                    asio::cancellation_slot(), asio::redirect_error(asio::use_awaitable, ignored)));
            }
        } catch (...) {
            failure = std::current_exception();
        }
        if (failure) {
            abandon();
            std::rethrow_exception(failure);
        }
        if (answered && succeeded(last.get())) co_return last;  // it had finished
        // Its own error, not the cancel's (57014).
        if (answered && last != nullptr && detail::sqlstate_of(last.get()) != "57014") {
            fail(handle, last.get(), sql);
        }
        if (!answered) abandon();
        const std::string what =
            "statement " + db::error::shorten(std::string(sql)) + " on " + description +
            (answered ? " (cancelled on the server)"
                      : " (no answer to its cancel within " + format_duration(cancel_grace) +
                            ": the session is closed)");
        if (cancelled) throw_aborted(what);
        throw timeout_error(what, std::chrono::steady_clock::now() - start);
    }

    // Binds and executes: the statement prepared before, when the cache has it (the usual
    // case), is executed by exchange's own coroutine, so the caller awaits no frame of this
    // one's; otherwise it is prepared first (or sent unnamed, without a cache). The result may
    // be a failure: the caller then awaits retry_or_fail.
    asio::awaitable<result_ptr> execute(std::string_view sql, std::span<const db::param> params) {
        bound.bind(params, sql);
        if (statements.capacity() != 0) {
            if (const detail::prepared* statement = statements.find(sql, bound.types)) {
                return execute_prepared(sql, statement);
            }
        }
        return prepare_and_execute(sql, params.size());
    }

    // After execute() gave the failed `result`: the statement executed again, once, when the
    // server had forgotten it (DISCARD ALL, DEALLOCATE by hand) and no transaction was open
    // that the error has now aborted; otherwise the failure, thrown as its typed error.
    asio::awaitable<result_ptr> retry_or_fail(std::string_view sql, std::size_t given,
                                              result_ptr result) {
        if (statements.capacity() == 0 || !detail::forgotten_statement(handle, result.get())) {
            fail(handle, result.get(), sql);
        }
        statements.drop(sql, bound.types);
        result = co_await prepare_and_execute(sql, given);
        if (!succeeded(result.get())) fail(handle, result.get(), sql);
        co_return result;
    }

    asio::awaitable<result_ptr> execute_prepared(std::string_view sql,
                                                 const detail::prepared* statement) {
        return exchange(sql, [this, statement] {
            return PQsendQueryPrepared(handle, statement->name.c_str(),
                                       static_cast<int>(bound.values.size()), bound.values.data(),
                                       bound.lengths.data(), bound.formats.data(), 0) != 0;
        });
    }

    // execute() of a statement the cache does not have, the parameters bound.
    asio::awaitable<result_ptr> prepare_and_execute(std::string_view sql, std::size_t given) {
        if (statements.capacity() == 0) {
            detail::check_parameter_count(sql, given);
            const std::string text(sql);
            co_return co_await exchange(sql, [&] {
                return PQsendQueryParams(handle, text.c_str(), static_cast<int>(given),
                                         bound.types.data(), bound.values.data(),
                                         bound.lengths.data(), bound.formats.data(), 0) != 0;
            });
        }
        const detail::prepared* statement = co_await prepare(sql, given);
        co_return co_await execute_prepared(sql, statement);
    }

    // Prepares `sql` for the bound parameters' types (after deallocating what the cache has
    // forgotten) and keeps it; returns it (an awaitable cannot carry a reference). A prepare
    // that fails, or that a cancel stopped on the server, keeps nothing; its name is not given
    // again.
    asio::awaitable<detail::prepared*> prepare(std::string_view sql, std::size_t given) {
        detail::check_parameter_count(sql, given);
        statements.make_room();
        if (statements.deallocations_due(handle)) {
            const std::string deallocate = statements.take_deallocations();
            static_cast<void>(co_await exchange_script(deallocate));
        }
        std::string name = statements.next_name();
        const std::string text(sql);
        const int count = static_cast<int>(bound.types.size());
        result_ptr result = co_await exchange(sql, [&] {
            return PQsendPrepare(handle, name.c_str(), text.c_str(), count, bound.types.data()) !=
                   0;
        });
        if (!succeeded(result.get())) fail(handle, result.get(), sql);
        co_return &statements.add(sql, std::move(name), bound.types);
    }

    // Takes over `conn`, connected, for `executor`; throws db::connection_error when libpq
    // cannot switch it to non-blocking mode.
    void adopt(detail::session_ptr conn, const options& opts, const std::string& redacted) {
        if (PQsetnonblocking(conn.get(), 1) != 0) {
            throw db::connection_error(
                std::string(backend_name), "", 0,
                "connect to " + redacted + ": " + indent_lines(PQerrorMessage(conn.get())), "");
        }
        PQsetNoticeProcessor(
            conn.get(), [](void*, const char*) {}, nullptr);
        socket.watch(PQsocket(conn.get()));
        handle = conn.release();
        backend_pid = PQbackendPID(handle);
        cancel_grace = opts.cancel_grace;
        description = redacted;
        if (opts.statement_timeout.count() > 0) {
            client_timeout = opts.statement_timeout + opts.cancel_grace;
        }
    }
};

// --- async_connection ---------------------------------------------------------------------

async_connection::async_connection(std::unique_ptr<impl> state, std::string description,
                                   std::source_location where)
    : impl_(std::move(state)),
      description_(std::move(description)),
      tracked_(kind(), description_, where) {
}

async_connection::async_connection(async_connection&& other) noexcept = default;

async_connection& async_connection::operator=(async_connection&& other) noexcept {
    if (this != &other) {
        close();
        impl_ = std::move(other.impl_);
        description_ = std::move(other.description_);
        tracked_ = std::move(other.tracked_);
    }
    return *this;
}

async_connection::~async_connection() {
    close();
}

void async_connection::close() noexcept {
    impl_.reset();
    tracked_.release();
}

async_connection::impl& async_connection::live(std::string_view operation) const {
    // A session abandoned by a statement is closed by the statement's caller: see settle().
    if (impl_ == nullptr || impl_->handle == nullptr) [[unlikely]] {
        throw closed_error(std::string(operation) + " on closed " + std::string(kind()) + ' ' +
                           description_);
    }
    return *impl_;
}

bool async_connection::is_open() const noexcept {
    return impl_ != nullptr && !lost(impl_->handle);
}

db::transaction_state async_connection::transaction_state() const noexcept {
    return impl_ == nullptr ? db::transaction_state::unknown
                            : detail::transaction_state_of(impl_->handle);
}

int async_connection::backend_pid() const noexcept {
    return impl_ != nullptr ? impl_->backend_pid : 0;
}

::pg_conn* async_connection::native_handle() const noexcept {
    return impl_ != nullptr ? impl_->handle : nullptr;
}

std::size_t async_connection::cached_statements() const noexcept {
    return impl_ != nullptr ? impl_->statements.size() : 0;
}

namespace {

// Closes `c` when its statement abandoned the session, then rethrows `failure`.
[[noreturn]] void settle(async_connection& c, const std::exception_ptr& failure) {
    if (c.native_handle() == nullptr) c.close();
    std::rethrow_exception(failure);
}

}  // namespace

asio::awaitable<std::int64_t> async_connection::run(std::string_view sql,
                                                    std::span<const db::param> params) {
    impl& state = live("async_execute");
    std::exception_ptr failure;
    try {
        result_ptr result = co_await state.execute(sql, params);
        if (!succeeded(result.get())) {
            result = co_await state.retry_or_fail(sql, params.size(), std::move(result));
        }
        co_return detail::rows_affected(result.get());
    } catch (...) {
        failure = std::current_exception();
    }
    settle(*this, failure);
}

asio::awaitable<db::detail::cursor*> async_connection::open_cursor(
    std::string_view sql, std::span<const db::param> params) {
    impl& state = live("async_query");
    std::exception_ptr failure;
    try {
        result_ptr result = co_await state.execute(sql, params);
        if (!succeeded(result.get())) {
            result = co_await state.retry_or_fail(sql, params.size(), std::move(result));
        }
        auto cursor = std::make_unique<result_cursor>(nullptr);
        cursor->reset(result.release(), sql, false, true);
        co_return cursor.release();
    } catch (...) {
        failure = std::current_exception();
    }
    settle(*this, failure);
}

asio::awaitable<void> async_connection::fetch_first(std::string_view sql,
                                                    std::span<const db::param> params,
                                                    db::detail::first_value& value) {
    impl& state = live("async_query_value");
    std::exception_ptr failure;
    try {
        result_ptr result = co_await state.execute(sql, params);
        if (!succeeded(result.get())) {
            result = co_await state.retry_or_fail(sql, params.size(), std::move(result));
        }
        result_cursor cursor(nullptr);
        cursor.reset(result.release(), sql, false, false);
        if (cursor.next()) {
            value.row = true;
            db::detail::read_first(cursor, value);
        }
        co_return;
    } catch (...) {
        failure = std::current_exception();
    }
    settle(*this, failure);
}

asio::awaitable<void> async_connection::async_execute_script(std::string_view sql) {
    impl& state = live("async_execute_script");
    // A COMMIT that leaves a working link and loses it has an unknown outcome.
    const bool commit = sql == detail::commit_statement && !lost(state.handle);
    std::exception_ptr failure;
    try {
        const result_ptr result = co_await state.exchange_script(sql);
        if (!succeeded(result.get())) fail(state.handle, result.get(), sql);
        co_return;
    } catch (...) {
        failure = std::current_exception();
    }
    if (commit && (native_handle() == nullptr || lost(native_handle()))) {
        // Lost, or abandoned past its deadline or its cancellation.
        const std::exception_ptr outcome = [&] {
            try {
                detail::throw_commit_outcome_unknown(failure, description_);
            } catch (...) {
                return std::current_exception();
            }
        }();
        settle(*this, outcome);
    }
    settle(*this, failure);
}

asio::awaitable<void> detail::async_run_script(async_connection& c, std::string_view sql,
                                               script_results& out) {
    async_connection::impl& state = c.live("async_execute_script");
    std::exception_ptr failure;
    try {
        state.gather = &out.results;
        struct stop_gathering {
            async_connection::impl& state;
            ~stop_gathering() { state.gather = nullptr; }
        } guard{state};
        result_ptr last = co_await state.exchange_script(sql);
        if (last != nullptr) out.results.push_back(std::move(last));
        co_return;
    } catch (...) {
        failure = std::current_exception();
    }
    settle(c, failure);
}

bool async_connection::alive() noexcept {
    return is_open() && !impl_->busy && detail::session_alive(impl_->handle);
}

asio::awaitable<bool> async_connection::async_ping(std::chrono::milliseconds timeout) {
    if (!is_open() || impl_->busy) co_return false;
    impl& state = *impl_;
    const deadline limit = deadline::after(timeout);
    bool answered = false;
    std::exception_ptr failure;
    try {
        const result_ptr result = co_await state.exchange(
            "", [&] { return PQsendQuery(state.handle, "") != 0; }, &limit);
        answered = result != nullptr && PQresultStatus(result.get()) == PGRES_EMPTY_QUERY;
    } catch (const db::error&) {
        // The link broke: not answered.
    } catch (...) {
        failure = std::current_exception();  // cancelled
    }
    if (native_handle() == nullptr) close();  // abandoned: no answer in time
    if (failure) std::rethrow_exception(failure);
    co_return answered&& is_open();
}

asio::awaitable<bool> async_connection::async_rollback_any() {
    impl& state = live("async_rollback_any");
    switch (transaction_state()) {
        case db::transaction_state::idle:
            co_return false;
        case db::transaction_state::unknown:
            detail::throw_lost_before_rollback(state.handle, "async_rollback_any", description_);
        default:
            co_await async_execute_script("ROLLBACK");
            co_return true;
    }
}

async_connection async_connection::open(asio::any_io_executor executor, std::string_view conninfo,
                                        const options& opts, std::source_location where) {
    std::string description = redact_secrets(conninfo);
    const detail::connect_parameters parameters(conninfo, opts, description);
    auto state = std::make_unique<impl>(executor, opts.statement_cache_size);
    state->adopt(detail::connect_session(parameters, opts, description), opts, description);
    return async_connection(std::move(state), std::move(description), where);
}

async_connection async_connection::open(asio::any_io_executor executor, std::string_view conninfo,
                                        std::source_location where) {
    return open(std::move(executor), conninfo, options(), where);
}

// --- async_connect --------------------------------------------------------------------------

async_connector::async_connector(asio::any_io_executor executor, std::string conninfo, options opts,
                                 std::source_location where) noexcept
    : executor_(std::move(executor)),
      conninfo_(std::move(conninfo)),
      options_(std::move(opts)),
      check_(where) {
}

async_connector::async_connector(async_connector&&) noexcept = default;
async_connector::~async_connector() = default;

async_connector async_connect(asio::any_io_executor executor, std::string conninfo,
                              const options& opts, std::source_location where) {
    return async_connector(std::move(executor), std::move(conninfo), opts, where);
}

async_connector async_connect(asio::any_io_executor executor, std::string conninfo,
                              std::source_location where) {
    return async_connector(std::move(executor), std::move(conninfo), options(), where);
}

asio::awaitable<std::reference_wrapper<async_connection>> async_connector::async_enter() {
    check_.entered();
    if (entered_) throw protocol_error("postgres::async_connect entered twice");
    entered_ = true;
    std::string description = redact_secrets(conninfo_);
    const std::string context = "connect to " + description;
    const detail::connect_parameters parameters(conninfo_, options_, description);
    auto state = std::make_unique<async_connection::impl>(executor_, options_.statement_cache_size);
    const auto limit = deadline::after(options_.connect_timeout);
    state->handle = PQconnectStartParams(parameters.keywords.data(), parameters.values.data(), 0);
    if (state->handle == nullptr) throw std::bad_alloc();
    PGconn* conn = state->handle;
    const auto refused = [&]() {
        const std::string message = indent_lines(PQerrorMessage(conn));
        throw db::connection_error(std::string(backend_name), detail::refusal_sqlstate(message), 0,
                                   context + ": " + message, "");
    };
    if (PQstatus(conn) == CONNECTION_BAD) refused();
    PostgresPollingStatusType status = PGRES_POLLING_WRITING;
    while (status != PGRES_POLLING_OK) {
        if (status == PGRES_POLLING_FAILED) refused();
        state->socket.watch(PQsocket(conn));
        if (!co_await wait_ready(state->socket, state->timer, status == PGRES_POLLING_READING,
                                 limit, false)) {
            throw db::connection_error(
                std::string(backend_name), "", 0,
                context + ": no answer within " + format_duration(options_.connect_timeout), "");
        }
        status = PQconnectPoll(conn);
    }
    state->adopt(detail::session_ptr(std::exchange(state->handle, nullptr)), options_, description);
    connection_.emplace(async_connection(std::move(state), std::move(description), check_.where()));
    co_return std::ref(*connection_);
}

void async_connector::exit(const std::exception_ptr&) noexcept {
    if (connection_) connection_->close();
}

// --- async_transaction ---------------------------------------------------------------------

asio::awaitable<std::reference_wrapper<async_connection>> async_transaction_manager::async_enter() {
    check_.entered();
    if (entered_) throw protocol_error("transaction entered twice");
    entered_ = true;
    async_connection& c = *connection_;
    async_connection::impl& state = c.live("async_transaction");
    if (c.transaction_state() == db::transaction_state::idle) {
        co_await c.async_execute_script(detail::begin_statement(options_));
    } else {
        const std::uint64_t id = ++state.savepoints;
        co_await c.async_execute_script("SAVEPOINT " + savepoint_name(id));
        savepoint_ = id;
    }
    co_return std::ref(c);
}

asio::awaitable<void> async_transaction_manager::roll_back() {
    async_connection& c = *connection_;
    if (c.transaction_state() == db::transaction_state::idle) co_return;  // ended already
    if (savepoint_ != 0) {
        const std::string name = savepoint_name(savepoint_);
        co_await c.async_execute_script("ROLLBACK TO SAVEPOINT " + name + "; RELEASE SAVEPOINT " +
                                        name);
    } else {
        co_await c.async_execute_script("ROLLBACK");
    }
}

asio::awaitable<void> async_transaction_manager::async_exit(std::exception_ptr e) {
    if (!entered_) throw protocol_error("transaction exited without being entered");
    async_connection& c = *connection_;
    std::exception_ptr failure;
    if (!e) {
        const db::transaction_state state = c.transaction_state();
        const std::string statement = savepoint_ != 0
                                          ? "RELEASE SAVEPOINT " + savepoint_name(savepoint_)
                                          : std::string(detail::commit_statement);
        if (state == db::transaction_state::failed) {
            co_await roll_back();
            throw db::error(std::string(backend_name), "25P02", 0,
                            savepoint_ != 0 ? "an error inside the savepoint aborted its work, "
                                              "which was rolled back to the savepoint"
                                            : "an error inside the transaction aborted it; "
                                              "rolled back instead of committed",
                            statement);
        }
        if (state == db::transaction_state::idle) {
            throw db::error(std::string(backend_name), "", 0,
                            "the transaction was already ended inside the block (an explicit "
                            "COMMIT or ROLLBACK); its work may be lost",
                            statement);
        }
        // Unknown (lost or closed): the statement throws connection_error or closed_error.
        try {
            co_await c.async_execute_script(statement);
            co_return;
        } catch (const db::connection_error&) {
            throw;  // commit_outcome_unknown for a COMMIT
        } catch (const db::error&) {
            failure = std::current_exception();
        }
        // PostgreSQL ends a transaction whose COMMIT fails; a RELEASE that fails leaves it.
        if (c.transaction_state() != db::transaction_state::idle) {
            try {
                co_await roll_back();
            } catch (...) {
                // The commit's failure is the news; the session is lost or will say so.
            }
        }
        std::rethrow_exception(failure);
    }
    // A lost session: the server discards the transaction with it.
    if (!c.is_open()) co_return;
    try {
        co_await roll_back();
    } catch (const db::connection_error&) {
        // Lost while rolling back: nothing stays open, and e says what went wrong first.
    } catch (...) {
        failure = std::current_exception();
    }
    if (failure) rethrow_chained(failure, e);
}

}  // namespace ctxmgr::postgres
