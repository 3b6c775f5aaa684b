// The code the database benchmarks measure, shared by db_bench.cpp (Google Benchmark, wall
// time) and db_instructions.cpp (fixed iterations, for callgrind's instruction counts), so
// both measure the same functions. Each ctxmgr kernel has its baselines next to it: the
// same call sequence on the C library (sqlite3, libpq), and the C++ wrapper a user would
// pick instead (SQLiteCpp, libpqxx) when it is installed. Every variant checks errors as
// real code must.
#pragma once

#include <libpq-fe.h>
#include <sqlite3.h>
#include <ctxmgr/postgres.hpp>
#include <ctxmgr/sqlite.hpp>
#include <ctxmgr/with.hpp>

#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>

#if defined(CTXMGR_BENCH_SQLITECPP)
#include <SQLiteCpp/SQLiteCpp.h>
#endif
#if defined(CTXMGR_BENCH_PQXX)
#include <pqxx/pqxx>
#endif

#define CTXMGR_KERNEL __attribute__((noinline))

namespace kernels {

inline constexpr const char* point_query = "SELECT v FROM t WHERE id = $1";
inline constexpr const char* point_query_sqlite = "SELECT v FROM t WHERE id = ?1";
inline constexpr const char* insert_row = "INSERT INTO u (a, b) VALUES ($1, $2)";
inline constexpr const char* insert_row_sqlite = "INSERT INTO u (a, b) VALUES (?1, ?2)";
inline constexpr const char* payload = "a short text payload";
inline constexpr int table_rows = 1000;
// The flags ctxmgr opens with, given to every variant so that they compare like for like.
inline constexpr int sqlite_flags =
    SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;

[[noreturn]] inline void fail(const char* what) {
    throw std::runtime_error(what);
}

// The schema and rows every SQLite variant works on: t (1000 rows to look up) and u (to
// insert into).
inline void create_sqlite_schema(sqlite3* db) {
    const std::string sql =
        "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v INTEGER NOT NULL);"
        "CREATE TABLE IF NOT EXISTS u (a INTEGER, b TEXT);"
        "DELETE FROM t; DELETE FROM u;"
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < " +
        std::to_string(table_rows) + ") INSERT INTO t SELECT i, i * 7 FROM n;";
    if (sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr) != SQLITE_OK) fail("schema");
}

inline std::int64_t next_id(std::int64_t id) {
    return id % table_rows + 1;
}

// ---- SQLite: one prepared point query --------------------------------------------------

CTXMGR_KERNEL inline std::int64_t sqlite_ctxmgr_query(ctxmgr::sqlite::connection& db,
                                                      std::int64_t id) {
    return db.query_value<std::int64_t>(point_query, id);
}

CTXMGR_KERNEL inline std::int64_t sqlite_raw_query(sqlite3_stmt* stmt, std::int64_t id) {
    if (sqlite3_bind_int64(stmt, 1, id) != SQLITE_OK) fail("bind");
    if (sqlite3_step(stmt) != SQLITE_ROW) {
        sqlite3_reset(stmt);
        fail("step");
    }
    const std::int64_t v = sqlite3_column_int64(stmt, 0);
    sqlite3_reset(stmt);
    return v;
}

#if defined(CTXMGR_BENCH_SQLITECPP)
CTXMGR_KERNEL inline std::int64_t sqlite_sqlitecpp_query(SQLite::Statement& query,
                                                         std::int64_t id) {
    query.bind(1, id);
    if (!query.executeStep()) fail("no row");
    const std::int64_t v = query.getColumn(0).getInt64();
    query.reset();
    return v;
}
#endif

// ---- SQLite: one prepared insert (inside an open transaction) ----------------------------

CTXMGR_KERNEL inline void sqlite_ctxmgr_insert(ctxmgr::sqlite::connection& db, std::int64_t a) {
    db.execute(insert_row, a, payload);
}

CTXMGR_KERNEL inline void sqlite_raw_insert(sqlite3_stmt* stmt, std::int64_t a) {
    if (sqlite3_bind_int64(stmt, 1, a) != SQLITE_OK ||
        sqlite3_bind_text(stmt, 2, payload, -1, SQLITE_STATIC) != SQLITE_OK) {
        fail("bind");
    }
    const int rc = sqlite3_step(stmt);
    sqlite3_reset(stmt);
    if (rc != SQLITE_DONE) fail("step");
}

#if defined(CTXMGR_BENCH_SQLITECPP)
CTXMGR_KERNEL inline void sqlite_sqlitecpp_insert(SQLite::Statement& insert, std::int64_t a) {
    insert.bind(1, a);
    insert.bind(2, payload);
    insert.exec();
    insert.reset();
}
#endif

// ---- SQLite: n rows in one transaction ------------------------------------------------

CTXMGR_KERNEL inline void sqlite_ctxmgr_insert_many(ctxmgr::sqlite::connection& db, int n) {
    ctxmgr::with(db.transaction(), [&](ctxmgr::sqlite::connection& tx) {
        for (int i = 0; i < n; ++i) tx.execute(insert_row, i, payload);
    });
}

CTXMGR_KERNEL inline void sqlite_raw_insert_many(sqlite3* db, sqlite3_stmt* stmt, int n) {
    if (sqlite3_exec(db, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr) != SQLITE_OK) fail("begin");
    try {
        for (int i = 0; i < n; ++i) sqlite_raw_insert(stmt, i);
    } catch (...) {
        sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
        throw;
    }
    if (sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr) != SQLITE_OK) fail("commit");
}

#if defined(CTXMGR_BENCH_SQLITECPP)
CTXMGR_KERNEL inline void sqlite_sqlitecpp_insert_many(SQLite::Database& db,
                                                       SQLite::Statement& insert, int n) {
    SQLite::Transaction transaction(db);
    for (int i = 0; i < n; ++i) sqlite_sqlitecpp_insert(insert, i);
    transaction.commit();
}
#endif

// ---- PostgreSQL ------------------------------------------------------------------------

inline void create_postgres_schema(ctxmgr::postgres::connection& db) {
    db.execute_script(
        "DROP TABLE IF EXISTS t, u;"
        "CREATE TABLE t (id integer PRIMARY KEY, v bigint NOT NULL);"
        "CREATE TABLE u (a bigint, b text);"
        "INSERT INTO t SELECT i, i * 7 FROM generate_series(1, " +
        std::to_string(table_rows) + ") i;");
}

CTXMGR_KERNEL inline std::int64_t postgres_ctxmgr_query(ctxmgr::postgres::connection& db,
                                                        std::int64_t id) {
    return db.query_value<std::int64_t>(point_query, id);
}

// An integer parameter in libpq's binary format for int4, as ctxmgr sends it.
inline void int4_big_endian(std::int64_t value, char (&out)[4]) {
    const auto narrow = static_cast<std::uint32_t>(value);
    out[0] = static_cast<char>(narrow >> 24);
    out[1] = static_cast<char>(narrow >> 16);
    out[2] = static_cast<char>(narrow >> 8);
    out[3] = static_cast<char>(narrow);
}

// The same call sequence on libpq: a statement prepared once with an integer parameter,
// sent in binary as ctxmgr sends it, the text result parsed.
inline void prepare_raw_postgres(PGconn* conn) {
    const Oid int4 = 23;
    PGresult* r = PQprepare(conn, "point", point_query, 1, &int4);
    const bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    if (!ok) fail("prepare");
    const Oid types[2] = {23, 0};
    r = PQprepare(conn, "insert", insert_row, 2, types);
    const bool inserted = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    if (!inserted) fail("prepare");
}

CTXMGR_KERNEL inline std::int64_t postgres_raw_query(PGconn* conn, std::int64_t id) {
    char value[4];
    int4_big_endian(id, value);
    const char* values[1] = {value};
    const int lengths[1] = {4};
    const int formats[1] = {1};
    PGresult* r = PQexecPrepared(conn, "point", 1, values, lengths, formats, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        PQclear(r);
        fail("query");
    }
    const std::int64_t v = std::strtoll(PQgetvalue(r, 0, 0), nullptr, 10);
    PQclear(r);
    return v;
}

CTXMGR_KERNEL inline void postgres_ctxmgr_insert(ctxmgr::postgres::connection& db, std::int64_t a) {
    db.execute(insert_row, a, payload);
}

// One row inserted with the statement prepare_raw_postgres made; false when it failed.
inline bool postgres_raw_insert_row(PGconn* conn, std::int64_t a) {
    char value[4];
    int4_big_endian(a, value);
    const char* values[2] = {value, payload};
    const int lengths[2] = {4, 0};
    const int formats[2] = {1, 0};
    PGresult* r = PQexecPrepared(conn, "insert", 2, values, lengths, formats, 0);
    const bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    return ok;
}

CTXMGR_KERNEL inline void postgres_raw_insert(PGconn* conn, std::int64_t a) {
    if (!postgres_raw_insert_row(conn, a)) fail("insert");
}

CTXMGR_KERNEL inline void postgres_ctxmgr_insert_many(ctxmgr::postgres::connection& db, int n) {
    ctxmgr::with(db.transaction(), [&](ctxmgr::postgres::connection& tx) {
        for (int i = 0; i < n; ++i) tx.execute(insert_row, i, payload);
    });
}

CTXMGR_KERNEL inline void postgres_raw_insert_many(PGconn* conn, int n) {
    auto command = [&](const char* sql) {
        PGresult* r = PQexec(conn, sql);
        const bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
        PQclear(r);
        return ok;
    };
    if (!command("BEGIN")) fail("begin");
    for (int i = 0; i < n; ++i) {
        if (!postgres_raw_insert_row(conn, i)) {
            command("ROLLBACK");
            fail("insert");
        }
    }
    if (!command("COMMIT")) fail("commit");
}

#if defined(CTXMGR_BENCH_PQXX)
CTXMGR_KERNEL inline std::int64_t postgres_pqxx_query(pqxx::nontransaction& tx, std::int64_t id) {
    return tx.exec_prepared1("point", id)[0].as<std::int64_t>();
}

CTXMGR_KERNEL inline void postgres_pqxx_insert(pqxx::nontransaction& tx, std::int64_t a) {
    tx.exec_prepared("insert", a, payload);
}

CTXMGR_KERNEL inline void postgres_pqxx_insert_many(pqxx::connection& conn, int n) {
    pqxx::work tx(conn);
    for (int i = 0; i < n; ++i) tx.exec_prepared("insert", i, payload);
    tx.commit();
}
#endif

}  // namespace kernels
