// Runs one database kernel a fixed number of times, for callgrind's instruction counts:
//   db_instructions <kernel> [iterations]
// bench/instructions runs it under callgrind and compares a kernel with its baseline, e.g.
//   bench/instructions build/default/bench/db_instructions sqlite_ctxmgr_query sqlite_raw_query
// The postgres_* kernels need CTXMGR_POSTGRES (a connection string); they count the client's
// instructions only (libpq included), not the server's nor the time on the wire.
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "db_kernels.hpp"

int main(int argc, char** argv) {
    const std::string kernel = argc > 1 ? argv[1] : "";
    const long iterations = argc > 2 ? std::atol(argv[2]) : 100000;

    auto ctx = ctxmgr::sqlite::connect(":memory:");
    kernels::create_sqlite_schema(ctx.native_handle());
    sqlite3* raw = nullptr;
    sqlite3_open_v2(":memory:", &raw, kernels::sqlite_flags, nullptr);
    kernels::create_sqlite_schema(raw);
    sqlite3_stmt* raw_query = nullptr;
    sqlite3_stmt* raw_insert = nullptr;
    sqlite3_prepare_v3(raw, kernels::point_query_sqlite, -1, SQLITE_PREPARE_PERSISTENT, &raw_query,
                       nullptr);
    sqlite3_prepare_v3(raw, kernels::insert_row_sqlite, -1, SQLITE_PREPARE_PERSISTENT, &raw_insert,
                       nullptr);
    ctx.execute_script("BEGIN");
    sqlite3_exec(raw, "BEGIN", nullptr, nullptr, nullptr);
#if defined(CTXMGR_BENCH_SQLITECPP)
    SQLite::Database cpp(":memory:", kernels::sqlite_flags);
    kernels::create_sqlite_schema(cpp.getHandle());
    SQLite::Statement cpp_query(cpp, kernels::point_query_sqlite);
    SQLite::Statement cpp_insert(cpp, kernels::insert_row_sqlite);
    cpp.exec("BEGIN");
#endif

    std::int64_t id = 1;
    std::int64_t sum = 0;
    std::map<std::string, std::function<void()>> cases = {
        {"sqlite_ctxmgr_query", [&] { sum += kernels::sqlite_ctxmgr_query(ctx, id); }},
        {"sqlite_raw_query", [&] { sum += kernels::sqlite_raw_query(raw_query, id); }},
        {"sqlite_ctxmgr_insert", [&] { kernels::sqlite_ctxmgr_insert(ctx, id); }},
        {"sqlite_raw_insert", [&] { kernels::sqlite_raw_insert(raw_insert, id); }},
#if defined(CTXMGR_BENCH_SQLITECPP)
        {"sqlite_sqlitecpp_query", [&] { sum += kernels::sqlite_sqlitecpp_query(cpp_query, id); }},
        {"sqlite_sqlitecpp_insert", [&] { kernels::sqlite_sqlitecpp_insert(cpp_insert, id); }},
#endif
    };

    std::unique_ptr<ctxmgr::postgres::connection> pg;
    PGconn* pg_raw = nullptr;
#if defined(CTXMGR_BENCH_PQXX)
    std::unique_ptr<pqxx::connection> pqxx_conn;
    std::unique_ptr<pqxx::nontransaction> pqxx_tx;  // destroyed before its connection
#endif
    if (kernel.rfind("postgres_", 0) == 0) {
        const char* conninfo = std::getenv("CTXMGR_POSTGRES");
        if (conninfo == nullptr) {
            std::fprintf(stderr, "%s: the postgres kernels need CTXMGR_POSTGRES\n", argv[0]);
            return 2;
        }
        pg = std::make_unique<ctxmgr::postgres::connection>(ctxmgr::postgres::connect(conninfo));
        kernels::create_postgres_schema(*pg);
        pg_raw = PQconnectdb(conninfo);
        kernels::prepare_raw_postgres(pg_raw);
        cases.emplace("postgres_ctxmgr_query",
                      [&] { sum += kernels::postgres_ctxmgr_query(*pg, id); });
        cases.emplace("postgres_raw_query",
                      [&] { sum += kernels::postgres_raw_query(pg_raw, id); });
        cases.emplace("postgres_ctxmgr_insert", [&] { kernels::postgres_ctxmgr_insert(*pg, id); });
        cases.emplace("postgres_raw_insert", [&] { kernels::postgres_raw_insert(pg_raw, id); });
#if defined(CTXMGR_BENCH_PQXX)
        pqxx_conn = std::make_unique<pqxx::connection>(conninfo);
        pqxx_conn->prepare("point", kernels::point_query);
        pqxx_conn->prepare("insert", kernels::insert_row);
        pqxx_tx = std::make_unique<pqxx::nontransaction>(*pqxx_conn);
        cases.emplace("postgres_pqxx_query",
                      [&] { sum += kernels::postgres_pqxx_query(*pqxx_tx, id); });
        cases.emplace("postgres_pqxx_insert", [&] { kernels::postgres_pqxx_insert(*pqxx_tx, id); });
#endif
    }

    if (cases.count(kernel) == 0) {
        std::fprintf(stderr, "usage: %s <kernel> [iterations]; kernels:", argv[0]);
        for (const auto& [name, _] : cases) std::fprintf(stderr, " %s", name.c_str());
        std::fprintf(stderr,
                     " postgres_ctxmgr_query postgres_raw_query postgres_ctxmgr_insert "
                     "postgres_raw_insert postgres_pqxx_query postgres_pqxx_insert\n");
        return 2;
    }
    const auto& run = cases.at(kernel);
    for (long i = 0; i < iterations; ++i) {
        run();
        id = kernels::next_id(id);
    }
    std::printf("%s: %ld iterations, sum %lld\n", kernel.c_str(), iterations,
                static_cast<long long>(sum));
    sqlite3_finalize(raw_query);
    sqlite3_finalize(raw_insert);
    sqlite3_close(raw);
    PQfinish(pg_raw);
    return 0;
}
