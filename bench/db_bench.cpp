// Database benchmarks: a prepared point query and a prepared insert on SQLite (:memory:), a
// prepared point query on PostgreSQL, and 100,000 rows inserted in one transaction on both,
// each through ctxmgr next to the same call sequence on the C library and on the C++ wrapper
// a user would pick instead (SQLiteCpp, libpqxx; left out when not installed). PostgreSQL:
// the server named by CTXMGR_POSTGRES, else a throwaway cluster started for the run
// (scripts/postgres-cluster); without one those benchmarks are skipped with the reason.
// Reproduce: see docs/performance.md.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "db_kernels.hpp"
#include "postgres_server.hpp"

namespace {

constexpr int many_rows = 100000;

// The loop of the point-query benchmarks: ids 1..1000, round and round.
template <class Query>
void run_queries(benchmark::State& state, Query&& query) {
    std::int64_t id = 1;
    for (auto _ : state) {
        benchmark::DoNotOptimize(query(id));
        id = kernels::next_id(id);
    }
}

// The loop of the 100,000-row benchmarks: `insert_many` timed, `clear` (emptying the table)
// not.
template <class InsertMany, class Clear>
void run_many(benchmark::State& state, InsertMany&& insert_many, Clear&& clear) {
    for (auto _ : state) {
        insert_many();
        state.PauseTiming();
        clear();
        state.ResumeTiming();
    }
    state.SetItemsProcessed(state.iterations() * many_rows);
}

// ---- SQLite -----------------------------------------------------------------------------

struct sqlite_setup {
    ctxmgr::sqlite::connection ctx = ctxmgr::sqlite::connect(":memory:");
    sqlite3* raw = nullptr;
    sqlite3_stmt* raw_query = nullptr;
    sqlite3_stmt* raw_insert = nullptr;

    sqlite_setup() {
        kernels::create_sqlite_schema(ctx.native_handle());
        if (sqlite3_open_v2(":memory:", &raw, kernels::sqlite_flags, nullptr) != SQLITE_OK) {
            kernels::fail("open");
        }
        kernels::create_sqlite_schema(raw);
        sqlite3_prepare_v3(raw, kernels::point_query_sqlite, -1, SQLITE_PREPARE_PERSISTENT,
                           &raw_query, nullptr);
        sqlite3_prepare_v3(raw, kernels::insert_row_sqlite, -1, SQLITE_PREPARE_PERSISTENT,
                           &raw_insert, nullptr);
    }
    ~sqlite_setup() {
        sqlite3_finalize(raw_query);
        sqlite3_finalize(raw_insert);
        sqlite3_close(raw);
    }
};

void sqlite_query_ctxmgr(benchmark::State& state) {
    sqlite_setup s;
    run_queries(state, [&](std::int64_t id) { return kernels::sqlite_ctxmgr_query(s.ctx, id); });
}
BENCHMARK(sqlite_query_ctxmgr);

void sqlite_query_raw(benchmark::State& state) {
    sqlite_setup s;
    run_queries(state, [&](std::int64_t id) { return kernels::sqlite_raw_query(s.raw_query, id); });
}
BENCHMARK(sqlite_query_raw);

void sqlite_insert_ctxmgr(benchmark::State& state) {
    sqlite_setup s;
    s.ctx.execute_script("BEGIN");
    std::int64_t a = 0;
    for (auto _ : state) kernels::sqlite_ctxmgr_insert(s.ctx, ++a);
    s.ctx.execute_script("ROLLBACK");
}
BENCHMARK(sqlite_insert_ctxmgr);

void sqlite_insert_raw(benchmark::State& state) {
    sqlite_setup s;
    sqlite3_exec(s.raw, "BEGIN", nullptr, nullptr, nullptr);
    std::int64_t a = 0;
    for (auto _ : state) kernels::sqlite_raw_insert(s.raw_insert, ++a);
    sqlite3_exec(s.raw, "ROLLBACK", nullptr, nullptr, nullptr);
}
BENCHMARK(sqlite_insert_raw);

// 100,000 rows in one transaction, into a file (one commit, so one sync).
std::string scratch_file(const char* name) {
    return std::string("/tmp/ctxmgr-bench-") + std::to_string(::getpid()) + '-' + name + ".db";
}

void sqlite_many_ctxmgr(benchmark::State& state) {
    const auto file = scratch_file("ctxmgr");
    {
        auto db = ctxmgr::sqlite::connect(file);
        kernels::create_sqlite_schema(db.native_handle());
        run_many(
            state, [&] { kernels::sqlite_ctxmgr_insert_many(db, many_rows); },
            [&] { db.execute_script("DELETE FROM u"); });
    }
    std::remove(file.c_str());
}
BENCHMARK(sqlite_many_ctxmgr)->Unit(benchmark::kMillisecond);

void sqlite_many_raw(benchmark::State& state) {
    const auto file = scratch_file("raw");
    sqlite3* db = nullptr;
    sqlite3_open_v2(file.c_str(), &db, kernels::sqlite_flags, nullptr);
    sqlite3_busy_timeout(db, 5000);
    kernels::create_sqlite_schema(db);
    sqlite3_stmt* insert = nullptr;
    sqlite3_prepare_v3(db, kernels::insert_row_sqlite, -1, SQLITE_PREPARE_PERSISTENT, &insert,
                       nullptr);
    run_many(
        state, [&] { kernels::sqlite_raw_insert_many(db, insert, many_rows); },
        [&] { sqlite3_exec(db, "DELETE FROM u", nullptr, nullptr, nullptr); });
    sqlite3_finalize(insert);
    sqlite3_close(db);
    std::remove(file.c_str());
}
BENCHMARK(sqlite_many_raw)->Unit(benchmark::kMillisecond);

#if defined(CTXMGR_BENCH_SQLITECPP)
void sqlite_query_sqlitecpp(benchmark::State& state) {
    SQLite::Database db(":memory:", kernels::sqlite_flags);
    kernels::create_sqlite_schema(db.getHandle());
    SQLite::Statement query(db, kernels::point_query_sqlite);
    run_queries(state, [&](std::int64_t id) { return kernels::sqlite_sqlitecpp_query(query, id); });
}
BENCHMARK(sqlite_query_sqlitecpp);

void sqlite_insert_sqlitecpp(benchmark::State& state) {
    SQLite::Database db(":memory:", kernels::sqlite_flags);
    kernels::create_sqlite_schema(db.getHandle());
    SQLite::Statement insert(db, kernels::insert_row_sqlite);
    db.exec("BEGIN");
    std::int64_t a = 0;
    for (auto _ : state) kernels::sqlite_sqlitecpp_insert(insert, ++a);
    db.exec("ROLLBACK");
}
BENCHMARK(sqlite_insert_sqlitecpp);

void sqlite_many_sqlitecpp(benchmark::State& state) {
    const auto file = scratch_file("sqlitecpp");
    {
        SQLite::Database db(file, kernels::sqlite_flags, 5000);
        kernels::create_sqlite_schema(db.getHandle());
        SQLite::Statement insert(db, kernels::insert_row_sqlite);
        run_many(
            state, [&] { kernels::sqlite_sqlitecpp_insert_many(db, insert, many_rows); },
            [&] { db.exec("DELETE FROM u"); });
    }
    std::remove(file.c_str());
}
BENCHMARK(sqlite_many_sqlitecpp)->Unit(benchmark::kMillisecond);
#endif

// ---- PostgreSQL -------------------------------------------------------------------------

using bench::postgres_server;
using bench::skip_without_postgres;

struct postgres_setup {
    ctxmgr::postgres::connection ctx = ctxmgr::postgres::connect(postgres_server().conninfo);
    PGconn* raw = PQconnectdb(postgres_server().conninfo.c_str());

    postgres_setup() {
        kernels::create_postgres_schema(ctx);
        if (PQstatus(raw) != CONNECTION_OK) kernels::fail("connect");
        kernels::prepare_raw_postgres(raw);
    }
    ~postgres_setup() { PQfinish(raw); }
};

void postgres_query_ctxmgr(benchmark::State& state) {
    if (skip_without_postgres(state)) return;
    postgres_setup s;
    run_queries(state, [&](std::int64_t id) { return kernels::postgres_ctxmgr_query(s.ctx, id); });
}
BENCHMARK(postgres_query_ctxmgr);

void postgres_query_raw(benchmark::State& state) {
    if (skip_without_postgres(state)) return;
    postgres_setup s;
    run_queries(state, [&](std::int64_t id) { return kernels::postgres_raw_query(s.raw, id); });
}
BENCHMARK(postgres_query_raw);

void postgres_many_ctxmgr(benchmark::State& state) {
    if (skip_without_postgres(state)) return;
    postgres_setup s;
    run_many(
        state, [&] { kernels::postgres_ctxmgr_insert_many(s.ctx, many_rows); },
        [&] { s.ctx.execute_script("TRUNCATE u"); });
}
BENCHMARK(postgres_many_ctxmgr)->Unit(benchmark::kMillisecond)->Iterations(1);

void postgres_many_raw(benchmark::State& state) {
    if (skip_without_postgres(state)) return;
    postgres_setup s;
    run_many(
        state, [&] { kernels::postgres_raw_insert_many(s.raw, many_rows); },
        [&] { s.ctx.execute_script("TRUNCATE u"); });
}
BENCHMARK(postgres_many_raw)->Unit(benchmark::kMillisecond)->Iterations(1);

#if defined(CTXMGR_BENCH_PQXX)
void postgres_query_pqxx(benchmark::State& state) {
    if (skip_without_postgres(state)) return;
    postgres_setup s;  // the schema
    pqxx::connection conn(postgres_server().conninfo);
    conn.prepare("point", kernels::point_query);
    pqxx::nontransaction tx(conn);
    run_queries(state, [&](std::int64_t id) { return kernels::postgres_pqxx_query(tx, id); });
}
BENCHMARK(postgres_query_pqxx);

void postgres_many_pqxx(benchmark::State& state) {
    if (skip_without_postgres(state)) return;
    postgres_setup s;
    pqxx::connection conn(postgres_server().conninfo);
    conn.prepare("insert", kernels::insert_row);
    run_many(
        state, [&] { kernels::postgres_pqxx_insert_many(conn, many_rows); },
        [&] { s.ctx.execute_script("TRUNCATE u"); });
}
BENCHMARK(postgres_many_pqxx)->Unit(benchmark::kMillisecond)->Iterations(1);
#endif

// ---- PostgreSQL, paired ------------------------------------------------------------
// A round trip on this shared 2-core machine varies by tens of percent from one moment to
// the next, far more than the difference measured. Here every iteration runs each variant
// once, in an order that rotates, and times each: all see the same moments, and the ratios
// (counters) are robust where the separate medians above are not.

template <class Run>
double timed(Run&& run) {
    const auto start = std::chrono::steady_clock::now();
    run();
    return std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - start)
        .count();
}

// Reports the median time of each variant and its ratio to the first: medians, because a
// stall of the machine (tens of milliseconds) would weigh on a sum.
template <std::size_t N>
void report_pairs(benchmark::State& state, const std::array<const char*, N>& names,
                  std::array<std::vector<double>, N>& times) {
    std::array<double, N> median{};
    for (std::size_t i = 0; i < N; ++i) {
        auto& t = times[i];
        if (t.empty()) return;
        std::nth_element(t.begin(), t.begin() + static_cast<std::ptrdiff_t>(t.size() / 2), t.end());
        median[i] = t[t.size() / 2];
        state.counters[std::string(names[i]) + "_ns"] = median[i];
        if (i > 0) state.counters[std::string(names[0]) + "/" + names[i]] = median[0] / median[i];
    }
}

// The variants of a paired benchmark: ctxmgr, raw libpq and, when installed, libpqxx.
#if defined(CTXMGR_BENCH_PQXX)
constexpr std::array<const char*, 3> paired_names{"ctxmgr", "raw", "pqxx"};
#else
constexpr std::array<const char*, 2> paired_names{"ctxmgr", "raw"};
#endif

// Runs run(variant, turn) for each variant once per iteration, timed, in an order that
// rotates with `turn`; then after(variant), untimed.
template <class Run, class After>
void run_paired(benchmark::State& state, Run&& run, After&& after) {
    constexpr std::size_t variants = paired_names.size();
    std::array<std::vector<double>, variants> times;
    std::size_t turn = 0;
    for (auto _ : state) {
        for (std::size_t k = 0; k < variants; ++k) {
            const std::size_t which = (turn + k) % variants;
            times[which].push_back(timed([&] { run(which, turn); }));
            after(which);
        }
        ++turn;
    }
    report_pairs(state, paired_names, times);
}

void postgres_query_paired(benchmark::State& state) {
    if (skip_without_postgres(state)) return;
    postgres_setup s;
#if defined(CTXMGR_BENCH_PQXX)
    pqxx::connection conn(postgres_server().conninfo);
    conn.prepare("point", kernels::point_query);
    pqxx::nontransaction tx(conn);
#endif
    run_paired(
        state,
        [&](std::size_t which, std::size_t turn) {
            const auto id = static_cast<std::int64_t>(turn % kernels::table_rows) + 1;
            if (which == 0) {
                benchmark::DoNotOptimize(kernels::postgres_ctxmgr_query(s.ctx, id));
            } else if (which == 1) {
                benchmark::DoNotOptimize(kernels::postgres_raw_query(s.raw, id));
            } else {
#if defined(CTXMGR_BENCH_PQXX)
                benchmark::DoNotOptimize(kernels::postgres_pqxx_query(tx, id));
#endif
            }
        },
        [](std::size_t) {});
}
BENCHMARK(postgres_query_paired)->Iterations(20000);

void postgres_many_paired(benchmark::State& state) {
    if (skip_without_postgres(state)) return;
    postgres_setup s;
#if defined(CTXMGR_BENCH_PQXX)
    pqxx::connection conn(postgres_server().conninfo);
    conn.prepare("insert", kernels::insert_row);
#endif
    run_paired(
        state,
        [&](std::size_t which, std::size_t) {
            if (which == 0) {
                kernels::postgres_ctxmgr_insert_many(s.ctx, many_rows);
            } else if (which == 1) {
                kernels::postgres_raw_insert_many(s.raw, many_rows);
            } else {
#if defined(CTXMGR_BENCH_PQXX)
                kernels::postgres_pqxx_insert_many(conn, many_rows);
#endif
            }
        },
        [&](std::size_t) { s.ctx.execute_script("TRUNCATE u"); });
}
BENCHMARK(postgres_many_paired)->Unit(benchmark::kMillisecond)->Iterations(3);

}  // namespace

BENCHMARK_MAIN();
