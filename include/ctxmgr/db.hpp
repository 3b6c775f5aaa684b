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
//
// The parts, each a header of its own under <ctxmgr/db/>: param.hpp (parameters),
// rows.hpp (rows and their values), transaction.hpp (the transaction manager and its
// options), connection.hpp (the shared connection base and the db::connection concept),
// retry.hpp (db::retry: a transaction run again on serialization failures).
#pragma once

#include "db/connection.hpp"
#include "db/param.hpp"
#include "db/retry.hpp"
#include "db/rows.hpp"
#include "db/transaction.hpp"
