// ctxmgr/sqlite.hpp: SQLite connections, the embedded default (link ctxmgr::sqlite).
//
// sqlite::connect(path, options) opens a database file (or ":memory:", or a `file:` URI)
// and returns a move-only connection that is its own manager: exit closes it. It offers
// everything of db::connection (see <ctxmgr/db.hpp>): execute, query, query_one,
// query_value, transaction, with `$1`, `$2`, ... parameters.
//
//   ctxmgr::with(ctxmgr::sqlite::connect(path, {.busy_timeout = 2s, .wal = true}),
//                [](ctxmgr::sqlite::connection& db) {
//                    ctxmgr::with(db.transaction(), [](auto& tx) {
//                        tx.execute("INSERT INTO log (at, line) VALUES ($1, $2)", 1700000000, "x");
//                    });
//                });
//
// Parameters: `$N` is rewritten to SQLite's `?N` once, when the statement is prepared,
// outside string literals, quoted identifiers and comments; SQLite's own `?`, `:name`,
// `@name` and `$name` are refused, so that a statement means the same on PostgreSQL.
// Statements are prepared once and kept per connection, up to options.statement_cache_size
// (128 by default, as Python's sqlite3; the least recently used is finalized beyond that).
//
// Errors: db::error with SQLite's extended result code (code()), its name (code_name(),
// "SQLITE_CONSTRAINT_PRIMARYKEY", also in what()) and message; SQLITE_CONSTRAINT
// is constraint_violation, SQLITE_BUSY and SQLITE_LOCKED (the busy timeout ran out:
// retry the transaction) serialization_failure, SQLITE_CANTOPEN connection_error.
//
// Guarantees: see db.hpp. The connection is opened in SQLite's multi-thread mode
// (SQLITE_OPEN_NOMUTEX): thread-compatible, one thread at a time, no lock per call.
// Leak tracking: kind "sqlite connection", described by its quoted path.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <source_location>
#include <span>
#include <string>
#include <string_view>

#include "db.hpp"

struct sqlite3;

namespace ctxmgr::sqlite {

struct options {
    // How long a statement waits for a lock held by another connection before failing with
    // SQLITE_BUSY (serialization_failure). Python's sqlite3 waits 5 s too.
    std::chrono::milliseconds busy_timeout{5000};
    // PRAGMA journal_mode = WAL: readers and a writer no longer block each other. Persistent
    // in the file; ignored for in-memory databases. Off by default, as in SQLite.
    bool wal = false;
    // PRAGMA foreign_keys = ON. SQLite leaves them off for compatibility; a schema that
    // declares them expects them enforced, as on PostgreSQL.
    bool foreign_keys = true;
    // Open read-only (SQLITE_OPEN_READONLY); writes fail with SQLITE_READONLY.
    bool read_only = false;
    // Create the file if it does not exist (ignored when read_only).
    bool create = true;
    // Prepared statements kept per connection; 0 prepares every statement afresh.
    std::size_t statement_cache_size = 128;
};

class connection;

// Opens `path` (":memory:" for a private in-memory database; `file:` URIs are understood),
// a std::filesystem::path as open() and file_lock take; a string converts to one.
// Throws db::connection_error (SQLITE_CANTOPEN) naming the path when it cannot be opened,
// db::error when a pragma of `opts` fails.
[[nodiscard]] connection connect(const std::filesystem::path& path, const options& opts = {},
                                 std::source_location where = std::source_location::current());

// An open SQLite database. Members not marked noexcept may throw db::error (or a
// subclass); every member that talks to the database throws closed_error after close().
class connection : public db::basic_connection<connection> {
  public:
    connection(connection&& other) noexcept;
    // Closes this connection first, which may throw: not noexcept (as fmt's file).
    connection& operator=(connection&& other);
    connection(const connection&) = delete;
    connection& operator=(const connection&) = delete;
    // Closes; a failure goes to the unraisable hook.
    ~connection();

    // Finalizes the statements and closes the database; idempotent. An open transaction is
    // rolled back (SQLite does so). If statements not made by ctxmgr are still open
    // (native_handle()), SQLite closes once they are finalized and close() throws db::error
    // (SQLITE_BUSY) saying so; the connection counts as closed either way.
    void close();

    // Closed by close() or exit() (or moved from); is_open() also asks whether the link
    // still works.
    [[nodiscard]] bool closed() const noexcept { return impl_ == nullptr; }
    [[nodiscard]] bool is_open() const noexcept;
    // SQLite has no link to lose: is_open().
    [[nodiscard]] bool ping() noexcept;
    [[nodiscard]] db::transaction_state transaction_state() const noexcept;
    // ROLLBACK when a transaction is open; returns whether one was.
    bool rollback_any();

    // Runs several statements separated by `;`, without parameters and without caching
    // (schema scripts, transaction control). Stops at the first error, which it throws.
    void execute_script(std::string_view sql);

    // The rowid of the last row inserted by this connection (0 if none).
    [[nodiscard]] std::int64_t last_insert_rowid() const;

    [[nodiscard]] static constexpr std::string_view backend() noexcept { return "sqlite"; }
    [[nodiscard]] static constexpr std::string_view kind() noexcept { return "sqlite connection"; }
    // description(), from db::basic_connection: "\"/tmp/app.db\"", the path as given.

    // The sqlite3 handle, for what ctxmgr does not wrap (user functions, backups, ...);
    // nullptr once closed. Do not close it.
    [[nodiscard]] ::sqlite3* native_handle() const noexcept;

    // How many prepared statements this connection keeps.
    [[nodiscard]] std::size_t cached_statements() const noexcept;

  private:
    friend connection connect(const std::filesystem::path&, const options&, std::source_location);
    CTXMGR_DB_BACKEND_HOOKS(connection);
};

static_assert(db::connection<connection>);

}  // namespace ctxmgr::sqlite
