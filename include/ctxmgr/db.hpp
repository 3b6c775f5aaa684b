// ctxmgr/db.hpp: what every database connection of ctxmgr offers, whatever its back end.
//
// The concept db::connection, the parameter and row types shared by the SQLite and the
// PostgreSQL back ends (<ctxmgr/sqlite.hpp>, <ctxmgr/postgres.hpp>), and the transaction
// manager, written once for both: `BEGIN` on enter, `COMMIT` on a clean exit, `ROLLBACK`
// when the block throws, and a `SAVEPOINT` when a transaction is already open, as in
// psycopg 3. Unlike Python's sqlite3, where `with conn:` commits but leaves the connection
// open, a connection is its own manager and its exit closes it.
//
//   ctxmgr::with(ctxmgr::sqlite::connect("app.db"), [](ctxmgr::sqlite::connection& db) {
//       db.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, name TEXT)");
//       ctxmgr::with(db.transaction(), [](auto& tx_db) {
//           tx_db.execute("INSERT INTO t (id, name) VALUES ($1, $2)", 1, "one");
//       });                                                   // COMMIT (ROLLBACK on throw)
//       for (auto row : db.query("SELECT id, name FROM t WHERE id >= $1", 0))
//           std::cout << row.get<std::int64_t>(0) << ' ' << row.get<std::string>("name");
//       auto name = db.query_value<std::optional<std::string>>("SELECT name FROM t");
//   });                                                       // closed, even on an exception
//
// Parameters are always bound, never spliced into the SQL: `$1`, `$2`, ... on both back ends,
// in any order, repeated as often as needed. Bindable: integers (any that a 64-bit signed
// integer holds; a larger unsigned value is refused with conversion_error), double, bool,
// text (std::string, std::string_view, const char*), bytes
// (std::span<const std::byte>, db::bytes), std::nullopt and std::optional<T> for NULL. A
// std::span<const db::param> binds a list built at run time. Column indexes start at 0.
//
// Reading a value with row.get<T>: T is one of the bindable types (or a narrower integer or
// float, range-checked) and std::optional<T> reads NULL as std::nullopt. The value must
// have T's kind in the back end: an integer column for integers, a real or an exactly
// representable integer for double, a boolean (SQLite: 0 or 1) for bool, text (or, read as
// text, any value but bytes: a number, a PostgreSQL date) for strings, bytes or text for
// db::bytes. Anything else, NULL into a non-optional included, throws db::conversion_error
// naming the column and the statement: no silent coercion, no data lost.
//
// Guarantees:
//   - Every failure is typed (errors.hpp): db::error and its subclasses carry the back end,
//     the SQLSTATE or SQLite's extended code, the server's message and the statement. A
//     statement that throws connection_error has found its session gone: is_open() is then
//     false, and the connection can only be closed.
//   - A transaction whose block throws is rolled back and the block's exception propagates
//     unchanged; one whose COMMIT fails throws and leaves no transaction open. On a
//     connection already lost, exit does not try a rollback that can only fail: the
//     block's exception alone propagates, and the server discards the transaction.
//   - Rows (db::rows, and the db::row values they yield) borrow from the connection: destroy
//     them before closing or destroying it. A row from query_one owns its data.
//   - Thread-compatible: one connection, and what it returned, on one thread at a time.
//     Distinct connections may be used by distinct threads.
#pragma once

#include <array>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <iterator>
#include <limits>
#include <memory>
#include <optional>
#include <source_location>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "detail/db_values.hpp"
#include "detail/entry_check.hpp"
#include "errors.hpp"
#include "protocol.hpp"
#include "release.hpp"
#include "tracking.hpp"
#include "unraisable.hpp"

namespace ctxmgr::db {

// db::bytes, the value of a bytea / BLOB column or parameter (std::vector<std::byte>), is
// declared with the internals in detail/db_values.hpp.

// Where the session's transaction stands, as the back end itself reports it (libpq's
// PQtransactionStatus, sqlite3_get_autocommit), never from ctxmgr's bookkeeping:
//   idle     no transaction open (autocommit)
//   active   inside a transaction block
//   failed   inside a transaction block that an error aborted (PostgreSQL only: only
//            ROLLBACK, or ROLLBACK TO a savepoint, is accepted until then)
//   unknown  no session to ask: closed, or the connection is lost
enum class transaction_state { idle, active, failed, unknown };

[[nodiscard]] constexpr std::string_view to_string(transaction_state state) noexcept {
    switch (state) {
        case transaction_state::idle:
            return "idle";
        case transaction_state::active:
            return "active";
        case transaction_state::failed:
            return "failed";
        case transaction_state::unknown:
            return "unknown";
    }
    return "?";
}

// PostgreSQL's isolation levels. SQLite's transactions are always serializable, which every
// level allows (the SQL standard lets a level be stronger than asked for).
enum class isolation_level { server_default, read_committed, repeatable_read, serializable };

// How conn.transaction() begins. Applies to an outermost transaction; a nested one is a
// savepoint inside it and inherits its mode.
struct transaction_options {
    // SQLite: BEGIN DEFERRED instead of BEGIN IMMEDIATE (which takes the write lock at once,
    // so that a busy writer waits busy_timeout instead of failing on the read-to-write
    // upgrade). PostgreSQL: BEGIN READ ONLY.
    bool read_only = false;
    isolation_level isolation = isolation_level::server_default;
};

// T can be bound as a parameter.
template <class T>
concept bindable = detail::bindable_value<std::remove_cvref_t<T>>::value;

// One bound parameter: a view of the caller's value (text and bytes are not copied), valid
// while that value lives. Implicit from every bindable type, so that a run-time list reads
// like a call: std::vector<db::param> p{1, "x", std::nullopt}; conn.execute(sql, p);
class param {
  public:
    enum class kind : unsigned char { null, integer, real, boolean, text, blob, out_of_range };

    // NULL.
    constexpr param() noexcept = default;

    // A null `const char*` binds NULL, as it would in C.
    template <class T>
    requires bindable<T> &&(!std::same_as<std::remove_cvref_t<T>, param>)constexpr param(
        const T& value) noexcept  // NOLINT: implicit on purpose
        : declared_(kind_of<std::remove_cvref_t<T>>()) {
        using U = std::remove_cvref_t<T>;
        if constexpr (detail::is_optional_v<U>) {
            if (value) *this = param(*value);
        } else if constexpr (std::same_as<U, std::nullopt_t>) {
        } else if constexpr (std::same_as<U, bool>) {
            kind_ = kind::boolean;
            boolean_ = value;
        } else if constexpr (detail::integer<U>) {
            kind_ = kind::integer;
            if constexpr (std::is_unsigned_v<U> && sizeof(U) >= sizeof(std::int64_t)) {
                if (value > static_cast<U>(std::numeric_limits<std::int64_t>::max())) {
                    kind_ = kind::out_of_range;
                    unsigned_ = value;
                    return;
                }
            }
            integer_ = static_cast<std::int64_t>(value);
        } else if constexpr (std::floating_point<U>) {
            kind_ = kind::real;
            real_ = static_cast<double>(value);
        } else if constexpr (detail::text_like<U>) {
            if constexpr (std::is_pointer_v<U>) {
                if (value == nullptr) return;
            }
            kind_ = kind::text;
            view_ = std::string_view(value);
            // A C string, a char array (cut at its first NUL) and std::string end in a NUL:
            // a back end that needs one (libpq's text format) can then skip a copy.
            terminated_ =
                std::is_pointer_v<U> || std::is_array_v<U> || std::same_as<U, std::string>;
        } else {
            kind_ = kind::blob;
            const std::span<const std::byte> data(value);
            view_ = std::string_view(reinterpret_cast<const char*>(data.data()), data.size());
        }
    }

    // What the value is; kind::null for NULL.
    [[nodiscard]] constexpr kind type() const noexcept { return kind_; }
    // For NULL, the kind of the optional it came from (so PostgreSQL can type it);
    // otherwise type(). kind::null for std::nullopt itself.
    [[nodiscard]] constexpr kind declared_type() const noexcept { return declared_; }

    [[nodiscard]] constexpr std::int64_t integer() const noexcept { return integer_; }
    [[nodiscard]] constexpr double real() const noexcept { return real_; }
    [[nodiscard]] constexpr bool boolean() const noexcept { return boolean_; }
    // Text, or the bytes of a bytes value.
    [[nodiscard]] constexpr std::string_view view() const noexcept { return view_; }
    // True when view().data()[view().size()] is a NUL that the caller's value owns.
    [[nodiscard]] constexpr bool nul_terminated() const noexcept { return terminated_; }
    // The value of an unsigned parameter above INT64_MAX (kind::out_of_range): binding it
    // throws db::conversion_error naming the parameter.
    [[nodiscard]] constexpr std::uint64_t unsigned_value() const noexcept { return unsigned_; }

  private:
    template <class U>
    static constexpr kind kind_of() noexcept {
        if constexpr (detail::is_optional_v<U>) {
            return kind_of<typename U::value_type>();
        } else if constexpr (std::same_as<U, std::nullopt_t>) {
            return kind::null;
        } else if constexpr (std::same_as<U, bool>) {
            return kind::boolean;
        } else if constexpr (detail::integer<U>) {
            return kind::integer;
        } else if constexpr (std::floating_point<U>) {
            return kind::real;
        } else if constexpr (detail::text_like<U>) {
            return kind::text;
        } else {
            return kind::blob;
        }
    }

    kind kind_ = kind::null;
    kind declared_ = kind::null;
    bool terminated_ = false;
    union {
        std::int64_t integer_ = 0;
        std::uint64_t unsigned_;
        double real_;
        bool boolean_;
    };
    std::string_view view_;
};

// One row of a result. Rows yielded while iterating a db::rows are views: valid until the
// iteration moves on or the rows are destroyed (keep a value, not the row). A row returned
// by query_one owns its data and outlives the connection. Copyable; cheap for views.
class row {
  public:
    explicit row(const detail::cursor* source) noexcept : cursor_(source) {}
    explicit row(std::shared_ptr<const detail::cursor> owned) noexcept
        : cursor_(owned.get()), owner_(std::move(owned)) {}

    // The number of columns.
    [[nodiscard]] std::size_t size() const noexcept { return cursor_->columns(); }

    // The name of column `column`. Throws std::out_of_range past the last column.
    [[nodiscard]] std::string_view name(std::size_t column) const {
        check(column);
        return cursor_->name(column);
    }

    // The index of the first column named exactly `name`. Throws std::out_of_range, listing
    // the columns, when there is none.
    [[nodiscard]] std::size_t index(std::string_view name) const {
        const std::size_t n = cursor_->columns();
        for (std::size_t i = 0; i < n; ++i) {
            if (cursor_->name(i) == name) return i;
        }
        std::string columns;
        for (std::size_t i = 0; i < n; ++i) {
            if (i > 0) columns += ", ";
            columns += cursor_->name(i);
        }
        throw std::out_of_range("no column named \"" + std::string(name) + "\" (columns: " +
                                columns + ") in: " + error::shorten(std::string(cursor_->sql())));
    }

    [[nodiscard]] bool is_null(std::size_t column) const {
        check(column);
        return cursor_->is_null(column);
    }
    [[nodiscard]] bool is_null(std::string_view column) const { return is_null(index(column)); }

    // The value of a column as T (see the rules at the top of this header). Throws
    // std::out_of_range for a column that does not exist and db::conversion_error for a
    // value that is not a T (NULL into a non-optional included). A std::string_view is
    // valid as long as the row.
    template <class T>
    [[nodiscard]] T get(std::size_t column) const {
        check(column);
        return read<T>(column);
    }
    template <class T>
    [[nodiscard]] T get(std::string_view column) const {
        return read<T>(index(column));
    }

  private:
    void check(std::size_t column) const { detail::check_column(*cursor_, column); }
    template <class T>
    T read(std::size_t column) const {
        return detail::read_value<T>(*cursor_, column);
    }

    const detail::cursor* cursor_;
    std::shared_ptr<const detail::cursor> owner_;
};

// The rows of a query, read as they are iterated: an input range (one pass), move-only.
// Destroy it before the connection is closed; destroying it early ends the statement.
//   for (auto row : conn.query("SELECT a, b FROM t")) use(row.get<int>(0));
class rows {
  public:
    class iterator {
      public:
        using iterator_concept = std::input_iterator_tag;
        using value_type = row;
        using difference_type = std::ptrdiff_t;

        iterator() noexcept = default;
        row operator*() const noexcept { return row(owner_->cursor_.get()); }
        iterator& operator++() {
            owner_->advance();
            return *this;
        }
        void operator++(int) { ++*this; }
        friend bool operator==(const iterator& it, std::default_sentinel_t) noexcept {
            return it.at_end();
        }

      private:
        bool at_end() const noexcept { return owner_ == nullptr || !owner_->on_row_; }
        friend class rows;
        explicit iterator(rows* owner) noexcept : owner_(owner) {}
        rows* owner_ = nullptr;
    };

    explicit rows(detail::cursor_lease cursor) noexcept : cursor_(std::move(cursor)) {}
    rows(rows&&) noexcept = default;
    rows& operator=(rows&&) noexcept = default;
    ~rows() = default;

    // Fetches the first row on the first call; later calls continue where iteration is.
    [[nodiscard]] iterator begin() {
        if (!started_) {
            started_ = true;
            advance();
        }
        return iterator(this);
    }
    [[nodiscard]] std::default_sentinel_t end() const noexcept { return {}; }

    // The result's columns, available before and during iteration.
    [[nodiscard]] std::size_t columns() const noexcept {
        return cursor_.get() != nullptr ? cursor_->columns() : 0;
    }
    [[nodiscard]] std::string_view name(std::size_t column) const {
        if (column >= columns()) {
            throw std::out_of_range("column " + std::to_string(column) + " does not exist");
        }
        return cursor_->name(column);
    }

  private:
    void advance() {
        on_row_ = false;
        if (cursor_.get() == nullptr) return;
        on_row_ = cursor_->next();
    }

    detail::cursor_lease cursor_;
    bool started_ = false;
    bool on_row_ = false;
};

template <class Connection>
class transaction;

// The part of a connection that is the same for every back end: the typed calls that bind
// their parameters and hand them to the back end, transaction(), enter() and exit().
// Derived (sqlite::connection, postgres::connection) provides, to this class and to
// db::transaction, as friends:
//   std::int64_t run(std::string_view sql, std::span<const param>)
//   detail::cursor* open(std::string_view sql, std::span<const param>, bool copy_parameters)
//   void fetch_first(std::string_view sql, std::span<const param>, detail::first_value&)
//   void begin(const transaction_options&)
//   bool closed() const noexcept
// and the public members of the concept below (close, is_open, execute_script, ...).
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
        return self().run(sql, std::span<const param>(bound));
    }
    std::int64_t execute(std::string_view sql, std::span<const param> params) {
        return self().run(sql, params);
    }

    // The rows of one statement, fetched as they are iterated (SQLite) or all at once
    // (PostgreSQL). Text and bytes parameters are copied: the rows may outlive them.
    template <bindable... Params>
    [[nodiscard]] rows query(std::string_view sql, const Params&... params) {
        const std::array<param, sizeof...(Params)> bound{param(params)...};
        return rows(detail::cursor_lease(self().open(sql, std::span<const param>(bound), true)));
    }
    [[nodiscard]] rows query(std::string_view sql, std::span<const param> params) {
        return rows(detail::cursor_lease(self().open(sql, params, true)));
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
        detail::cursor_lease cursor(self().open(sql, params, false));
        if (!cursor->next()) return std::nullopt;
        return row(cursor->snapshot());
    }

    // The first column of the first row as T. No row at all reads as NULL: std::nullopt for
    // a std::optional T, db::conversion_error otherwise.
    template <class T, bindable... Params>
    [[nodiscard]] T query_value(std::string_view sql, const Params&... params) {
        const std::array<param, sizeof...(Params)> bound{param(params)...};
        return first_value<T>(sql, std::span<const param>(bound));
    }
    template <class T>
    [[nodiscard]] T query_value(std::string_view sql, std::span<const param> params) {
        return first_value<T>(sql, params);
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

// The transaction manager returned by conn.transaction(options).
//
// enter(): when the back end reports no open transaction, BEGIN (SQLite: BEGIN IMMEDIATE,
// or DEFERRED for read_only; PostgreSQL: BEGIN with the isolation level and READ ONLY);
// otherwise SAVEPOINT ctxmgr_<n>. Returns the connection.
//
// exit(e) with no exception: COMMIT (RELEASE SAVEPOINT). A failing COMMIT throws its error
// (a deferred constraint: constraint_violation; serialization_failure; ...) after rolling
// back whatever it left open, so no transaction stays open. A transaction that an error
// inside the block aborted (PostgreSQL's failed state: the block caught that error and
// went on) is rolled back and exit throws db::error with SQLSTATE 25P02: its work is lost
// and the caller must know. A transaction already ended inside the block (by an explicit
// COMMIT or ROLLBACK, or by SQLite after a disk-full or I/O error) throws db::error too.
//
// exit(e) with an exception: ROLLBACK (ROLLBACK TO SAVEPOINT, then RELEASE), and `e`
// propagates unchanged. When the connection is lost (is_open() is false: the block's
// statement met the broken link), no rollback is attempted: the server discards the
// transaction with the session, and `e` alone propagates. A rollback that finds the link
// broken is no error of its own either. Another failure to roll back is thrown with `e`
// nested in it (throw_chained).
//
// Transactions of one connection exit in reverse order of entering (with() does that):
// otherwise exit throws protocol_error. Entering twice throws protocol_error. After
// rollback_any() or close(), the transactions entered before are over: their exit throws
// db::error when no exception is pending, and neither exit nor destructor touches the
// session again (which may be in another transaction by then, e.g. lent out by a pool).
//
// The destructor of a transaction entered and never exited rolls it back, never throws, and
// reports a failure to the unraisable hook. One never entered began nothing: its destructor
// reports that, naming the line that made it, to the unraisable hook (protocol_error). Move-only;
// holds a pointer to the connection, which must outlive it and not move while it is entered.
// Thread-compatible.
template <class Connection>
class [[nodiscard]] transaction {
  public:
    transaction(Connection& connection, transaction_options options,
                std::source_location where = std::source_location::current()) noexcept
        : connection_(&connection), options_(options), check_(where) {}
    transaction(transaction&& other) noexcept
        : connection_(other.connection_),
          options_(other.options_),
          check_(std::move(other.check_)),
          savepoint_(other.savepoint_),
          depth_(other.depth_),
          epoch_(other.epoch_),
          entered_(std::exchange(other.entered_, false)),
          exited_(other.exited_) {}
    transaction& operator=(transaction&&) = delete;
    transaction(const transaction&) = delete;
    transaction& operator=(const transaction&) = delete;

    ~transaction() {
        if (!entered_ || exited_ || base().epoch_ != epoch_ || !connection_->is_open()) return;
        exited_ = true;
        --base().depth_;
        release_in_destructor(
            [&] { roll_back(); },
            [&] { return std::string(connection_->kind()) + ' ' + connection_->description(); },
            connection_->kind(), "rollback of a transaction never exited");
    }

    Connection& enter() {
        check_.entered();
        if (entered_ || exited_) throw protocol_error("transaction entered twice");
        Connection& c = *connection_;
        if (c.transaction_state() == transaction_state::idle) {
            c.begin(options_);
        } else {
            const std::uint64_t id = base().savepoints_ + 1;
            c.execute_script("SAVEPOINT " + savepoint_name(id));
            base().savepoints_ = id;
            savepoint_ = id;
        }
        depth_ = ++base().depth_;
        epoch_ = base().epoch_;
        entered_ = true;
        return c;
    }

    void exit(const std::exception_ptr& e) {
        if (!entered_ || exited_) throw protocol_error("transaction exited without being entered");
        if (base().epoch_ != epoch_) {
            // rollback_any() or close() ended it: nothing of ours is open any more.
            exited_ = true;
            if (e) return;
            throw_ended(
                "the transaction was already ended by rollback_any() or close(); its "
                "work is lost",
                "", "COMMIT");
        }
        if (base().depth_ != depth_) {
            throw protocol_error(
                "transaction exited out of order: an inner transaction of this connection is "
                "still entered");
        }
        exited_ = true;
        --base().depth_;
        if (!e) {
            commit();
            return;
        }
        // A lost session (PostgreSQL says so once a statement met the broken link): the
        // server discards the transaction with it, and a ROLLBACK could only fail again.
        if (!connection_->is_open()) return;
        release_on_exit(e, [&] {
            try {
                roll_back();
            } catch (const connection_error&) {
                // Lost while rolling back: the server discards the transaction all the same,
                // and the block's exception says what went wrong first.
            }
        });
    }

    // True when this transaction is a savepoint inside another (known once entered).
    [[nodiscard]] bool is_savepoint() const noexcept { return savepoint_ != 0; }

  private:
    static std::string savepoint_name(std::uint64_t id) { return "ctxmgr_" + std::to_string(id); }

    basic_connection<Connection>& base() noexcept { return *connection_; }

    [[noreturn]] void throw_ended(std::string_view what, const char* sqlstate,
                                  std::string_view sql) {
        throw error(std::string(connection_->backend()), sqlstate, 0, std::string(what),
                    std::string(sql));
    }

    void commit() {
        Connection& c = *connection_;
        const transaction_state state = c.transaction_state();
        const std::string statement = savepoint_ != 0
                                          ? "RELEASE SAVEPOINT " + savepoint_name(savepoint_)
                                          : std::string("COMMIT");
        if (state == transaction_state::failed) {
            roll_back();
            throw_ended(savepoint_ != 0 ? "an error inside the savepoint aborted its work, which "
                                          "was rolled back to the savepoint"
                                        : "an error inside the transaction aborted it; rolled back "
                                          "instead of committed",
                        "25P02", statement);
        }
        if (state == transaction_state::idle) {
            throw_ended(
                "the transaction was already ended inside the block (an explicit COMMIT "
                "or ROLLBACK, or a rollback by the back end after an error); its work "
                "may be lost",
                "", statement);
        }
        // Unknown (lost or closed): COMMIT below throws connection_error or closed_error, the
        // clearest errors there are.
        try {
            c.execute_script(statement);
        } catch (const connection_error&) {
            throw;  // nothing left to roll back; the outcome of COMMIT is unknown
        } catch (const error&) {
            // SQLite keeps a transaction open after a failing COMMIT (SQLITE_BUSY, a deferred
            // foreign key); PostgreSQL ends it. Leave none open, then report the failure.
            if (c.transaction_state() != transaction_state::idle) {
                try {
                    roll_back();
                } catch (const connection_error&) {
                    // Lost: nothing stays open on the server.
                } catch (...) {
                    // The commit's failure is the error to throw; this one is reported.
                    report_release_failure(
                        [&] { return std::string(c.kind()) + ' ' + c.description(); }, c.kind(),
                        "rollback after a failed commit");
                }
            }
            throw;
        }
    }

    void roll_back() {
        Connection& c = *connection_;
        const transaction_state state = c.transaction_state();
        if (state == transaction_state::idle) return;  // the back end ended it already
        if (savepoint_ != 0) {
            const std::string name = savepoint_name(savepoint_);
            c.execute_script("ROLLBACK TO SAVEPOINT " + name + "; RELEASE SAVEPOINT " + name);
        } else {
            c.execute_script("ROLLBACK");
        }
    }

    Connection* connection_;
    transaction_options options_;
    [[no_unique_address]] ctxmgr::detail::entry_check<"db::transaction"> check_;
    std::uint64_t savepoint_ = 0;
    int depth_ = 0;
    std::uint64_t epoch_ = 0;
    bool entered_ = false;
    bool exited_ = false;
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
