// ctxmgr/postgres.hpp: PostgreSQL connections on libpq (link ctxmgr::postgres).
//
// postgres::connect(conninfo, options) opens a session (a libpq connection string or a
// postgresql:// URI) and returns a move-only connection that is its own manager: exit
// closes it, so the server never keeps a forgotten session until an administrator kills it.
// It offers everything of db::connection (see <ctxmgr/db.hpp>).
//
//   ctxmgr::with(ctxmgr::postgres::connect("host=db dbname=app", {.statement_timeout = 5s}),
//                [](ctxmgr::postgres::connection& db) {
//                    ctxmgr::with(db.transaction({.isolation =
//                    ctxmgr::db::isolation_level::serializable}),
//                                 [](auto& tx) { tx.execute("UPDATE t SET n = n + $1", 1); });
//                });
//
// Statements are prepared on first use (PQprepare, one round trip) and kept per connection,
// up to options.statement_cache_size (128 by default; the least recently used is
// deallocated beyond that). Parameters travel typed, in binary, as psycopg 3 sends them:
// an integer as integer (int4) when it fits and bigint otherwise (PostgreSQL casts up
// implicitly, never down: substr(text, $1) wants an integer), double as float8, bool,
// bytes as bytea; text as `unknown`, so that the server reads it as the column's type (a
// date, a numeric, JSON). A statement is prepared for the parameter types of its call; the
// same SQL called with other types (a value past 2^31, a NULL) is another cached statement. Results
// come in text format and are converted by row.get<T> (db.hpp's rules: an integer from int2, int4,
// int8, oid or an integral numeric; double from float4, float8, numeric or an integer type; bool
// from bool; text from anything but bytea; bytes from bytea or text).
//
// Errors: db::error with the SQLSTATE, the server's message (and DETAIL) and the statement.
// Class 23 is constraint_violation; 40001 and 40P01 serialization_failure; class 08,
// 57P01-57P03 and a broken link (PQstatus CONNECTION_BAD) connection_error. A refused
// connection carries 53300 (too many clients) or 57P03 (starting up, shutting down) when
// the server said so in English, since libpq gives no SQLSTATE before a session exists.
// Server notices (NOTICE, WARNING) are discarded.
//
// Guarantees: see db.hpp. Thread-compatible, as libpq's connections. Leak tracking: kind
// "postgresql connection", described by the connection string without its password.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <source_location>
#include <span>
#include <string>
#include <string_view>

#include "db.hpp"

struct pg_conn;

namespace ctxmgr::postgres {

struct options {
    // The whole connection attempt (every host of the string, authentication included) ends
    // by then with connection_error, measured by ctxmgr, in milliseconds, whatever the
    // string's connect_timeout says: libpq has none by default and waits forever for a
    // server that accepts TCP but never answers.
    std::chrono::milliseconds connect_timeout{10000};
    // The server cancels statements running longer (SQLSTATE 57014); 0 keeps the server's
    // and sets no deadline. The client keeps it too, for a server that cannot (a stopped or
    // unreachable backend): a statement without an answer cancel_grace past it is cancelled
    // (PQcancel) and throws timeout_error naming the statement and the connection; the
    // connection stays usable when the server answers the cancel within cancel_grace (a
    // transaction open around the statement has failed, as with 57014), and is closed
    // otherwise. A statement finished by the time the cancel is answered returns normally.
    std::chrono::milliseconds statement_timeout{0};
    // How long past statement_timeout the client waits for the server's own cancel, and then
    // for the answer to its own.
    std::chrono::milliseconds cancel_grace{1000};
    // Shown in pg_stat_activity; empty keeps the string's, or "ctxmgr" when it has none.
    std::string application_name{};
    // Prepared statements kept per connection; 0 prepares every statement afresh.
    std::size_t statement_cache_size = 128;
};

class connection;

// The connection string or URI without its passwords, as descriptions and messages name a
// connection. A string libpq reads is written anew from libpq's reading of it, as key=value
// pairs (host, hostaddr, port, user, password, dbname, then libpq's order), every secret option
// (password, sslpassword) shown as ***; one it rejects is kept up to where a password could start
// (after `password`, the `:` of a URI's userinfo, a URI's `?`) and hidden from there on.
//   redact_secrets("host=db password='p w' user=a")  ->  "host=db user=a password=***"
//   redact_secrets("postgresql://bob:s3cret@db/app") ->  "host=db user=bob password=*** dbname=app"
[[nodiscard]] std::string redact_secrets(std::string_view conninfo);

// Connects. Throws db::connection_error, whose message names the connection string without
// its password, when the server cannot be reached, refuses, or does not answer within
// options.connect_timeout; db::error for a malformed connection string.
[[nodiscard]] connection connect(std::string_view conninfo, const options& opts = {},
                                 std::source_location where = std::source_location::current());

// A session with a PostgreSQL server. Members not marked noexcept may throw db::error (or a
// subclass); every member that talks to the server throws closed_error after close().
class connection : public db::basic_connection<connection> {
  public:
    connection(connection&& other) noexcept;
    // Closes this connection first: not noexcept, as every close of the library.
    connection& operator=(connection&& other);
    connection(const connection&) = delete;
    connection& operator=(const connection&) = delete;
    ~connection();

    // Ends the session (PQfinish); idempotent, never fails. An open transaction is rolled
    // back by the server.
    void close() noexcept;

    // Closed by close() or exit() (or moved from); is_open() also asks whether the link
    // still works.
    [[nodiscard]] bool closed() const noexcept { return impl_ == nullptr; }
    // Open and libpq has not seen the link break (no I/O).
    [[nodiscard]] bool is_open() const noexcept;
    // Whether an idle session is still there, without a round trip: false once the server
    // has ended it (pg_terminate_backend, a shutdown or restart, a crash: the socket shows
    // the goodbye or the end of the stream) or a statement is still running on it. Reads what
    // arrived (a NOTIFY stays queued). What the pool asks before lending an idle connection
    // (pool.hpp) and what lease::lost() asks. Never throws.
    [[nodiscard]] bool alive() noexcept;
    // An empty query, one round trip: true when the server answers. Never throws.
    [[nodiscard]] bool ping() noexcept;
    // The same, waiting at most `timeout` for the answer. A server that has not answered by
    // then (stopped, or a network that drops packets silently) gets the connection closed,
    // since a query is still in flight on it, and false.
    [[nodiscard]] bool ping(std::chrono::milliseconds timeout) noexcept;
    // PQtransactionStatus.
    [[nodiscard]] db::transaction_state transaction_state() const noexcept;
    // ROLLBACK when a transaction is open or failed; returns whether one was.
    bool rollback_any();

    // Runs one or several statements separated by `;` through the simple query protocol,
    // without parameters and without preparing (schema scripts, transaction control).
    void execute_script(std::string_view sql);
    // The same under a deadline of the client's for this call only, instead of the
    // connection's (options.statement_timeout): past `timeout` the script is cancelled as
    // described there (timeout_error; the session closed when the cancel is not answered
    // within options.cancel_grace). 0 sets no deadline.
    void execute_script(std::string_view sql, std::chrono::milliseconds timeout);

    // The server process serving this session (PQbackendPID), as pg_stat_activity.pid and
    // pg_terminate_backend know it; still known after the link broke, 0 once closed.
    [[nodiscard]] int backend_pid() const noexcept;
    // The server's version as an integer, 150004 for 15.4; 0 once closed.
    [[nodiscard]] int server_version() const noexcept;

    [[nodiscard]] static constexpr std::string_view backend() noexcept { return "postgresql"; }
    [[nodiscard]] static constexpr std::string_view kind() noexcept {
        return "postgresql connection";
    }
    // description(), from db::basic_connection: redact_secrets(conninfo).

    // The libpq handle, for what ctxmgr does not wrap (LISTEN, COPY, ...); nullptr once
    // closed. Do not close it.
    [[nodiscard]] ::pg_conn* native_handle() const noexcept;

    // How many prepared statements this connection keeps.
    [[nodiscard]] std::size_t cached_statements() const noexcept;

  private:
    friend connection connect(std::string_view, const options&, std::source_location);
    CTXMGR_DB_BACKEND_HOOKS(connection);
};

static_assert(db::connection<connection>);

}  // namespace ctxmgr::postgres
