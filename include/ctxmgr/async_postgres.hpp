// ctxmgr/async_postgres.hpp: PostgreSQL connections for Asio coroutines (link
// ctxmgr::async_postgres).
//
// postgres::async_connect(executor, conninfo, options) is an async manager: its async_enter
// connects (libpq's non-blocking PQconnectPoll, its socket watched by the executor, within
// options.connect_timeout) and gives the body the async_connection; its exit closes it. The
// connection's statements are awaitables with the synchronous connection's parameters, rows,
// errors and password redaction (postgres.hpp, db.hpp):
//
//   co_await ctxmgr::async_with(
//       ctxmgr::postgres::async_connect(executor, "host=db dbname=app"),
//       [](ctxmgr::postgres::async_connection& db) -> asio::awaitable<void> {
//           co_await ctxmgr::async_with(db.async_transaction(), [&]() -> asio::awaitable<void> {
//               co_await db.async_execute("UPDATE t SET n = n + $1", 1);
//           });
//           auto n = co_await db.async_query_value<std::int64_t>("SELECT count(*) FROM t");
//       });
//
// Statements are prepared on first use and kept per connection as the synchronous connection
// keeps them (options.statement_cache_size, the least recently used deallocated beyond it; 0
// sends each one unprepared); a cancelled prepare is kept only if the server answered it. One
// statement at a time per connection: a second operation started while one is in flight
// throws protocol_error. The SQL and the parameters must live until the co_await completes,
// as they do when the call is co_awaited in the expression that makes it.
//
// Cancellation (Asio's per-operation cancellation: `||` with a timer, a cancellation slot)
// of a statement in flight sends a cancel request to the server (PQcancel, on a thread of its
// own) and waits options.cancel_grace for the statement to end: then the connection is
// drained and usable (a transaction open around the statement has failed, as with 57014) and
// the statement throws asio::system_error(operation_aborted), or returns normally when it had
// finished first; without an answer in time the connection is closed. options.statement_timeout
// is enforced by the server and by the client as for the synchronous connection (timeout_error).
// A COMMIT whose connection is lost or closed that way throws db::commit_outcome_unknown.
//
// Caution: GCC 12 destroys some temporaries of a co_await expression twice (a braced
// `{.connect_timeout = 1s}` passed to async_connect inside co_await async_with(...) crashes);
// name the options in a variable first.
//
// Guarantees: a connection is never left with a statement in flight: drained or closed.
// Thread-compatible: one connection on one thread at a time, its executor's; the executor's
// io_context must outlive it. Leak tracking: kind "postgresql async connection", described
// by the connection string without its password, at the line that called async_connect.
#pragma once

#include <asio/any_io_executor.hpp>
#include <asio/awaitable.hpp>

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <source_location>
#include <span>
#include <string>
#include <string_view>

#include "async_protocol.hpp"
#include "db.hpp"
#include "detail/entry_check.hpp"
#include "postgres.hpp"
#include "tracking.hpp"

namespace ctxmgr::postgres {

class async_connection;
class async_transaction_manager;

namespace detail {
// Every statement's result of a script (internal to the library: the advisory lock's).
struct script_results;
// Sends `sql` (statements separated by ';', the simple protocol) and keeps every statement's
// result in `out`, failed ones included. Throws what the connection's statements throw when
// the script cannot be sent or its answer is not heard (timeout, cancellation, a lost link).
asio::awaitable<void> async_run_script(async_connection& c, std::string_view sql,
                                       script_results& out);
}  // namespace detail

// A session with a PostgreSQL server whose statements are awaited. Made by async_connect.
// Members not marked noexcept may throw db::error (or a subclass); every member that talks to
// the server throws closed_error after close().
class async_connection {
  public:
    // Connects now, blocking the calling thread for up to opts.connect_timeout (libpq's
    // PQconnectPoll and poll(2)), and returns the connection, its statements awaited on
    // `executor`. For a pool's factory, which the pool calls on a thread of its own:
    //   ctxmgr::pool pool([ex] { return postgres::async_connection::open(ex, "dbname=app"); },
    //                     {.max_size = 8});
    // A coroutine connects with async_connect instead. Throws what async_connect's
    // async_enter throws, except for the cancellation.
    [[nodiscard]] static async_connection open(
        asio::any_io_executor executor, std::string_view conninfo, const options& opts,
        std::source_location where = std::source_location::current());
    [[nodiscard]] static async_connection open(
        asio::any_io_executor executor, std::string_view conninfo,
        std::source_location where = std::source_location::current());

    async_connection(async_connection&& other) noexcept;
    // Closes this connection first.
    async_connection& operator=(async_connection&& other) noexcept;
    async_connection(const async_connection&) = delete;
    async_connection& operator=(const async_connection&) = delete;
    ~async_connection();

    // Runs one statement to its end; the rows it changed or returned (db.hpp's execute).
    template <db::bindable... Params>
    asio::awaitable<std::int64_t> async_execute(std::string_view sql, const Params&... params) {
        const std::array<db::param, sizeof...(Params)> bound{db::param(params)...};
        co_return co_await run(sql, bound);
    }
    // The rows of one statement, all received: they own their result and may outlive the
    // connection.
    template <db::bindable... Params>
    asio::awaitable<db::rows> async_query(std::string_view sql, const Params&... params) {
        const std::array<db::param, sizeof...(Params)> bound{db::param(params)...};
        co_return db::rows(db::detail::cursor_lease(co_await open_cursor(sql, bound)));
    }
    // The first row, or std::nullopt.
    template <db::bindable... Params>
    asio::awaitable<std::optional<db::row>> async_query_one(std::string_view sql,
                                                            const Params&... params) {
        const std::array<db::param, sizeof...(Params)> bound{db::param(params)...};
        db::detail::cursor_lease cursor(co_await open_cursor(sql, bound));
        if (!cursor->next()) co_return std::nullopt;
        co_return db::row(cursor->snapshot());
    }
    // The first column of the first row as T (db.hpp's query_value).
    template <class T, db::bindable... Params>
    asio::awaitable<T> async_query_value(std::string_view sql, const Params&... params) {
        static_assert(
            !std::same_as<T, std::string_view> && !std::same_as<T, std::optional<std::string_view>>,
            "async_query_value<std::string_view> would refer to a result already gone; "
            "read a std::string");
        const std::array<db::param, sizeof...(Params)> bound{db::param(params)...};
        using U = typename db::detail::unwrap_optional<T>::type;
        db::detail::first_storage_t<U> value{};
        db::detail::first_value v{&db::detail::first_request_for<T>, &value,
                                  std::same_as<T, std::int64_t>};
        co_await fetch_first(sql, bound, v);
        if (!v.row || v.null) {
            if constexpr (db::detail::is_optional_v<T>) {
                co_return std::nullopt;
            } else {
                db::detail::throw_no_row(backend(), v.request->description, sql);
            }
        }
        co_return static_cast<U>(std::move(value));
    }
    // One or several statements separated by `;`, without parameters (simple query protocol).
    asio::awaitable<void> async_execute_script(std::string_view sql);

    // A manager for a transaction: see async_transaction.
    [[nodiscard]] async_transaction_manager async_transaction(
        db::transaction_options options = {},
        std::source_location where = std::source_location::current()) noexcept;

    // Rolls back whatever transaction is open (savepoints included): true when there was one
    // (postgres::connection::rollback_any). Throws connection_error when the session is lost,
    // closed_error when closed.
    asio::awaitable<bool> async_rollback_any();
    // A round trip (an empty query), answered within `timeout`: true. Never throws for the
    // server's sake: a lost session, or one that has not answered in time (then it is closed),
    // is false. Throws asio::system_error(operation_aborted) when cancelled.
    asio::awaitable<bool> async_ping(std::chrono::milliseconds timeout);
    // The session is still there as far as can be told without a round trip: not closed or
    // lost, no operation in flight, and nothing from the server says it has ended it
    // (postgres::connection::alive). May be called from any thread while the connection is
    // idle (a pool's threads do).
    [[nodiscard]] bool alive() noexcept;

    // Ends the session (PQfinish); idempotent, never fails. Must not be called while an
    // operation of this connection is suspended.
    void close() noexcept;
    [[nodiscard]] bool closed() const noexcept { return impl_ == nullptr; }
    // Open and libpq has not seen the link break (no I/O).
    [[nodiscard]] bool is_open() const noexcept;
    [[nodiscard]] db::transaction_state transaction_state() const noexcept;
    [[nodiscard]] int backend_pid() const noexcept;
    [[nodiscard]] const std::string& description() const noexcept { return description_; }
    [[nodiscard]] ::pg_conn* native_handle() const noexcept;
    // How many prepared statements this connection keeps.
    [[nodiscard]] std::size_t cached_statements() const noexcept;
    [[nodiscard]] static constexpr std::string_view backend() noexcept { return "postgresql"; }
    [[nodiscard]] static constexpr std::string_view kind() noexcept {
        return "postgresql async connection";
    }

  private:
    struct impl;
    friend class async_connector;
    friend class async_transaction_manager;
    friend asio::awaitable<void> detail::async_run_script(async_connection&, std::string_view,
                                                          detail::script_results&);
    async_connection(std::unique_ptr<impl> state, std::string description,
                     std::source_location where);

    asio::awaitable<std::int64_t> run(std::string_view sql, std::span<const db::param> params);
    asio::awaitable<db::detail::cursor*> open_cursor(std::string_view sql,
                                                     std::span<const db::param> params);
    asio::awaitable<void> fetch_first(std::string_view sql, std::span<const db::param> params,
                                      db::detail::first_value& value);
    impl& live(std::string_view operation) const;

    std::unique_ptr<impl> impl_;
    std::string description_;
    [[no_unique_address]] tracked tracked_;
};

// The manager async_connect returns: async_enter connects and gives the connection (as a
// reference: it lives in the manager), exit closes it. One-shot; move-only until entered.
class [[nodiscard]] async_connector {
  public:
    async_connector(asio::any_io_executor executor, std::string conninfo, options opts,
                    std::source_location where) noexcept;
    async_connector(async_connector&&) noexcept;
    async_connector& operator=(async_connector&&) = delete;
    ~async_connector();

    // Connects. Throws db::connection_error (naming the connection without its password)
    // when the server cannot be reached, refuses, or does not answer within
    // options.connect_timeout; db::error for a malformed string; protocol_error when entered
    // twice; asio::system_error(operation_aborted) when cancelled (nothing is left open).
    asio::awaitable<std::reference_wrapper<async_connection>> async_enter();
    // Closes the connection; never fails.
    void exit(const std::exception_ptr& e) noexcept;

  private:
    asio::any_io_executor executor_;
    std::string conninfo_;
    options options_;
    [[no_unique_address]] ctxmgr::detail::entry_check<"postgres::async_connect"> check_;
    std::optional<async_connection> connection_;
    bool entered_ = false;
};

// The manager that connects on `executor` when entered, with `opts` (postgres.hpp's options:
// connect_timeout, statement_timeout, cancel_grace, application_name, statement_cache_size).
[[nodiscard]] async_connector async_connect(
    asio::any_io_executor executor, std::string conninfo, const options& opts,
    std::source_location where = std::source_location::current());
// With the default options. An overload rather than a default argument: GCC 12 destroys a
// default argument's temporary twice when the call is inside a co_await expression.
[[nodiscard]] async_connector async_connect(
    asio::any_io_executor executor, std::string conninfo,
    std::source_location where = std::source_location::current());

// co_await async_with(c.async_transaction(options), body): db::transaction's rules (db.hpp)
// on an async connection. async_enter: BEGIN (with the isolation level and READ ONLY) when no
// transaction is open, SAVEPOINT otherwise; gives the connection. async_exit(e): without an
// exception COMMIT (RELEASE SAVEPOINT); a transaction an error inside the block aborted is
// rolled back and exit throws db::error 25P02; one already ended throws db::error; a COMMIT
// that loses the link throws db::commit_outcome_unknown. With an exception (a cancellation
// included): ROLLBACK (ROLLBACK TO SAVEPOINT, then RELEASE), nothing on a lost connection, and
// the exception propagates. async_with shields the exit from cancellation, so a COMMIT that
// has started completes. Savepoints must exit in reverse order of entering (async_with does).
class [[nodiscard]] async_transaction_manager {
  public:
    async_transaction_manager(async_connection& connection, db::transaction_options options,
                              std::source_location where = std::source_location::current()) noexcept
        : connection_(&connection), options_(options), check_(where) {}
    async_transaction_manager(async_transaction_manager&& other) noexcept = default;
    async_transaction_manager& operator=(async_transaction_manager&&) = delete;

    asio::awaitable<std::reference_wrapper<async_connection>> async_enter();
    asio::awaitable<void> async_exit(std::exception_ptr e);

    [[nodiscard]] bool is_savepoint() const noexcept { return savepoint_ != 0; }

  private:
    asio::awaitable<void> roll_back();

    async_connection* connection_;
    db::transaction_options options_;
    [[no_unique_address]] ctxmgr::detail::entry_check<"postgres::async_transaction"> check_;
    std::uint64_t savepoint_ = 0;
    bool entered_ = false;
};

inline async_transaction_manager async_connection::async_transaction(
    db::transaction_options options, std::source_location where) noexcept {
    return async_transaction_manager(*this, options, where);
}

static_assert(native_async_context_manager<async_connector>);
static_assert(native_async_context_manager<async_transaction_manager>);

}  // namespace ctxmgr::postgres
