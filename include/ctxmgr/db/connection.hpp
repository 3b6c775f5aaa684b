// ctxmgr/db/connection.hpp: the part of a database connection that every back end shares
// (db::basic_connection: the typed calls, transaction(), enter() and exit()), and the concept
// db::connection that generic code (the pool among it) relies on.
//
// A connection is its own context manager: its exit closes it (a failure chained to the
// block's exception, release.hpp). Statements bind their parameters ($1, $2, ...) and
// throw the typed errors of errors.hpp. Thread-compatible. Part of <ctxmgr/db.hpp>.
//
//   template <ctxmgr::db::connection C>
//   std::int64_t count(C& c) {
//       return c.template query_value<std::int64_t>("SELECT count(*) FROM t");
//   }
#pragma once

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <optional>
#include <source_location>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../detail/db_values.hpp"
#include "../errors.hpp"
#include "../protocol.hpp"
#include "../release.hpp"
#include "../tracking.hpp"
#include "param.hpp"
#include "rows.hpp"
#include "transaction.hpp"

// The private part of a back end's connection class, the same in each: the friends that call
// its hooks, its state (`struct impl`, defined in the back end's source), the constructor from
// that state, and the hooks. Written inside the class, after `private:`.
#define CTXMGR_DB_BACKEND_HOOKS(Connection)                                                       \
    friend class ::ctxmgr::db::basic_connection<Connection>;                                      \
    friend class ::ctxmgr::db::transaction<Connection>;                                           \
    struct impl;                                                                                  \
    Connection(std::unique_ptr<impl> state, std::string description, std::source_location where); \
    std::int64_t run(std::string_view sql, std::span<const ::ctxmgr::db::param> params);          \
    ::ctxmgr::db::detail::cursor* open(                                                           \
        std::string_view sql, std::span<const ::ctxmgr::db::param> params, bool copy_parameters); \
    void fetch_first(std::string_view sql, std::span<const ::ctxmgr::db::param> params,           \
                     ::ctxmgr::db::detail::first_value& value);                                   \
    void begin(const ::ctxmgr::db::transaction_options& options);                                 \
    impl& live(std::string_view operation) const;                                                 \
    std::unique_ptr<impl> impl_

namespace ctxmgr::db {

// The part of a connection that is the same for every back end: the typed calls that bind
// their parameters and hand them to the back end, transaction(), enter() and exit().
// Derived (sqlite::connection, postgres::connection) provides, to this class and to
// db::transaction, as friends, the members CTXMGR_DB_BACKEND_HOOKS declares:
//   std::int64_t run(std::string_view sql, std::span<const param>)
//   detail::cursor* open(std::string_view sql, std::span<const param>, bool copy_parameters)
//   void fetch_first(std::string_view sql, std::span<const param>, detail::first_value&)
//   void begin(const transaction_options&)
// and bool closed() const noexcept, and the public members of the concept below (close,
// is_open, execute_script, ...).
template <class Derived>
class basic_connection {
  public:
    // Runs one statement to its end and returns the number of rows it inserted, updated or
    // deleted, or, for a statement that returns rows (SELECT), the number of rows it
    // returned; 0 for other statements. Throws db::error (and subclasses), closed_error
    // after close().
    template <bindable... Params>
    std::int64_t execute(std::string_view sql, const Params&... params) {
        const std::array<param, sizeof...(Params)> bound{param(params)...};
        return execute(sql, std::span<const param>(bound));
    }
    std::int64_t execute(std::string_view sql, std::span<const param> params) {
        return naming("execute", [&] { return self().run(sql, params); });
    }

    // The rows of one statement, fetched as they are iterated (SQLite) or all at once
    // (PostgreSQL). Text and bytes parameters are copied: the rows may outlive them.
    template <bindable... Params>
    [[nodiscard]] rows query(std::string_view sql, const Params&... params) {
        const std::array<param, sizeof...(Params)> bound{param(params)...};
        return query(sql, std::span<const param>(bound));
    }
    [[nodiscard]] rows query(std::string_view sql, std::span<const param> params) {
        return naming("query",
                      [&] { return rows(detail::cursor_lease(self().open(sql, params, true))); });
    }

    // The first row, owning its data, or std::nullopt when there is none; the rest are
    // ignored.
    template <bindable... Params>
    [[nodiscard]] std::optional<row> query_one(std::string_view sql, const Params&... params) {
        const std::array<param, sizeof...(Params)> bound{param(params)...};
        return query_one(sql, std::span<const param>(bound));
    }
    [[nodiscard]] std::optional<row> query_one(std::string_view sql,
                                               std::span<const param> params) {
        return naming("query_one", [&]() -> std::optional<row> {
            detail::cursor_lease cursor(self().open(sql, params, false));
            if (!cursor->next()) return std::nullopt;
            return row(cursor->snapshot());
        });
    }

    // The first column of the first row as T. No row at all reads as NULL: std::nullopt for
    // a std::optional T, db::conversion_error otherwise.
    template <class T, bindable... Params>
    [[nodiscard]] T query_value(std::string_view sql, const Params&... params) {
        const std::array<param, sizeof...(Params)> bound{param(params)...};
        return query_value<T>(sql, std::span<const param>(bound));
    }
    template <class T>
    [[nodiscard]] T query_value(std::string_view sql, std::span<const param> params) {
        return naming("query_value", [&] { return first_value<T>(sql, params); });
    }

    // A manager for a transaction on this connection: BEGIN (or SAVEPOINT inside one) on
    // enter, COMMIT (RELEASE) on a clean exit, ROLLBACK (ROLLBACK TO) when the block throws.
    // enter() returns this connection. See db::transaction.
    [[nodiscard]] db::transaction<Derived> transaction(
        transaction_options options = {},
        std::source_location where = std::source_location::current()) noexcept {
        return db::transaction<Derived>(self(), options, where);
    }

    // The quoted path or the connection string without its password, as the leak tracker
    // and the error messages show it.
    [[nodiscard]] const std::string& description() const noexcept { return description_; }

    // A connection is its own manager: enter() returns it, exit() closes it (what close()
    // throws is chained to a pending exception). Throws closed_error when already closed.
    Derived& enter() {
        if (self().closed()) throw_closed("enter");
        return self();
    }
    void exit(const std::exception_ptr& e) {
        release_on_exit(e, [&] { self().close(); });
    }

  protected:
    // Registers the connection with the leak tracker as `kind`, described by `description`
    // (never a password), acquired at `where`.
    basic_connection(std::string_view kind, std::string description, std::source_location where)
        : description_(std::move(description)), tracked_(kind, description_, where) {}
    basic_connection(basic_connection&& other) noexcept
        : description_(std::move(other.description_)),
          tracked_(std::move(other.tracked_)),
          depth_(std::exchange(other.depth_, 0)),
          savepoints_(std::exchange(other.savepoints_, 0)),
          epoch_(std::exchange(other.epoch_, other.epoch_ + 1)) {}
    // Closes this connection first (what close() throws propagates, and nothing is moved),
    // so that Derived's defaulted move assignment is right. Not noexcept: closing may fail.
    basic_connection& operator=(basic_connection&& other) {
        if (this == &other) return *this;
        self().close();
        description_ = std::move(other.description_);
        tracked_ = std::move(other.tracked_);
        depth_ = std::exchange(other.depth_, 0);
        savepoints_ = std::exchange(other.savepoints_, 0);
        epoch_ = std::exchange(other.epoch_, other.epoch_ + 1);
        return *this;
    }
    ~basic_connection() = default;

    // The connection is closed: it leaves the leak tracker, and the transactions entered
    // so far are over.
    void mark_closed() noexcept {
        tracked_.release();
        forget_transactions();
    }

    // Every transaction entered so far is over (rollback_any, close): their exits and
    // destructors must not touch whatever transaction the session has later.
    void forget_transactions() noexcept {
        depth_ = 0;
        ++epoch_;
    }

    // "<operation> on closed sqlite connection \"/tmp/x\"".
    [[noreturn, gnu::cold, gnu::noinline]] void throw_closed(std::string_view operation) const {
        throw closed_error(std::string(operation) + " on closed " + std::string(Derived::kind()) +
                           ' ' + description_);
    }

  private:
    template <class>
    friend class db::transaction;

    Derived& self() noexcept { return static_cast<Derived&>(*this); }

    // Runs `call`, naming `operation` in a db::error that comes out of it (the same object
    // rethrown: its type and identity are kept).
    template <class Call>
    static decltype(auto) naming(std::string_view operation, Call&& call) {
        try {
            return std::forward<Call>(call)();
        } catch (error& e) {
            e.name_operation(operation);
            throw;
        }
    }

    template <class T>
    T first_value(std::string_view sql, std::span<const param> params) {
        static_assert(
            !std::same_as<T, std::string_view> && !std::same_as<T, std::optional<std::string_view>>,
            "query_value<std::string_view> would refer to a result already gone; "
            "read a std::string");
        using U = typename detail::unwrap_optional<T>::type;
        detail::first_storage_t<U> value{};
        detail::first_value v{&detail::first_request_for<T>, &value, std::same_as<T, std::int64_t>};
        self().fetch_first(sql, params, v);
        if (!v.row || v.null) [[unlikely]] {
            if constexpr (detail::is_optional_v<T>) {
                return std::nullopt;
            } else {
                detail::throw_no_row(self().backend(), v.request->description, sql);
            }
        }
        return static_cast<U>(std::move(value));
    }

    // Bookkeeping of db::transaction only: how many of ours are entered (to check they exit
    // in reverse order) and a counter naming savepoints. Whether a transaction is open is
    // asked of the back end.
    std::string description_;
    [[no_unique_address]] tracked tracked_;
    int depth_ = 0;
    std::uint64_t savepoints_ = 0;
    std::uint64_t epoch_ = 0;
};

// What generic code, the pool among it, may rely on from a database connection. Satisfied
// by ctxmgr::sqlite::connection and ctxmgr::postgres::connection. Beyond the members
// checked here, each documents:
//   - is_open(): holds a session that, as far as the client knows without any I/O, still
//     works: not closed, not moved from, and (PostgreSQL) libpq has not seen the link
//     break. noexcept. libpq learns of a break only when it next uses the link: until a
//     statement (or ping) meets it, is_open() and transaction_state() report what was
//     last known.
//   - ping(): asks the server (a round trip: an empty query, answered even inside a failed
//     transaction; SQLite: is_open()), true when it answers. Never throws: a lost
//     connection is `false` (and is_open() is false from then on).
//   - close(): releases the session; idempotent; does not commit (an open transaction is
//     rolled back by the back end). PostgreSQL's never fails; SQLite's throws db::error
//     only when statements made through native_handle() are still open, and the connection
//     counts as closed all the same.
//   - transaction_state(): from the back end (see transaction_state); unknown once closed
//     or lost. noexcept.
//   - rollback_any(): rolls back whatever transaction is open, savepoints included, and
//     returns whether there was one; throws connection_error when the session is lost,
//     closed_error when closed. Transaction managers entered before it are over: their
//     exit and destructor will not touch the session again.
//   - a statement that finds the session gone throws connection_error (PostgreSQL: the
//     link broke, SQLSTATE class 08 or 57P01-57P03), after which is_open() is false.
//   - backend(): "sqlite" or "postgresql"; kind(): "sqlite connection", ...;
//     description(): the quoted path or the redacted connection string (no password).
template <class C>
concept connection =
    std::move_constructible<C> && !std::copy_constructible<C> && context_manager<C> &&
    requires(C & c, const C& cc, std::string_view sql, std::span<const param> params) {
    { c.enter() } -> std::same_as<C&>;
    { c.execute(sql) } -> std::same_as<std::int64_t>;
    { c.execute(sql, params) } -> std::same_as<std::int64_t>;
    { c.execute(sql, 1, "text", std::nullopt) } -> std::same_as<std::int64_t>;
    c.execute_script(sql);
    { c.query(sql, params) } -> std::same_as<rows>;
    { c.query_one(sql, params) } -> std::same_as<std::optional<row>>;
    { c.template query_value<std::int64_t>(sql, params) } -> std::same_as<std::int64_t>;
    { c.transaction() } -> std::same_as<transaction<C>>;
    { c.transaction(transaction_options{}) } -> std::same_as<transaction<C>>;
    { cc.is_open() }
    noexcept->std::same_as<bool>;
    { c.ping() }
    noexcept->std::same_as<bool>;
    c.close();
    { cc.transaction_state() }
    noexcept->std::same_as<transaction_state>;
    { c.rollback_any() } -> std::same_as<bool>;
    { cc.backend() }
    noexcept->std::same_as<std::string_view>;
    { cc.kind() }
    noexcept->std::same_as<std::string_view>;
    { cc.description() }
    noexcept->std::same_as<const std::string&>;
};

}  // namespace ctxmgr::db
