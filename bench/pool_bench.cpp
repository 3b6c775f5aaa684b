// Pool benchmarks: borrow and return through ctxmgr::pool (leak tracking on) next to SOCI's
// connection_pool (when installed) and next to opening a connection per request; borrow and
// return from 1, 8 and 32 threads on a pool of 4 next to SOCI's and to a bare mutex and
// condition variable pool; and `SELECT 1` from 8 threads through a pool of 4 next to 8
// dedicated connections (and SOCI's pool of 4). PostgreSQL: the server named by CTXMGR_POSTGRES,
// else a throwaway cluster started for the run (scripts/postgres-cluster); without one those
// benchmarks are skipped with the reason. Reproduce: see docs/performance.md.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "paired.hpp"
#include "pool_kernels.hpp"
#include "postgres_server.hpp"

namespace {

using bench::run_paired;
using bench::run_result;
using bench::run_threads;
using bench::variant;

// ---- the server -------------------------------------------------------------------------

using bench::postgres_server;
using bench::skip_without_postgres;

kernels::postgres_pool make_postgres_pool(std::size_t size) {
    const std::string conninfo = postgres_server().conninfo;
    kernels::postgres_pool pool([conninfo] { return ctxmgr::postgres::connect(conninfo); },
                                {.name = "bench", .max_size = size, .min_idle = size});
    // Every connection made before measuring.
    while (pool.stats().idle < size) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    return pool;
}

// ---- borrow and return, uncontended -----------------------------------------------------

void pool_cycle_sqlite(benchmark::State& state) {
    kernels::sqlite_pool pool([] { return ctxmgr::sqlite::connect(":memory:"); },
                              {.name = "bench", .max_size = 1});
    int work = 0;
    for (auto _ : state) kernels::pool_cycle_sqlite(pool, work);
    benchmark::DoNotOptimize(work);
}
BENCHMARK(pool_cycle_sqlite);

void pool_cycle_postgres(benchmark::State& state) {
    if (skip_without_postgres(state)) return;
    auto pool = make_postgres_pool(1);
    int work = 0;
    for (auto _ : state) kernels::pool_cycle_postgres(pool, work);
    benchmark::DoNotOptimize(work);
}
BENCHMARK(pool_cycle_postgres);

#if defined(CTXMGR_BENCH_SOCI)
void soci_cycle(benchmark::State& state) {
    if (skip_without_postgres(state)) return;
    soci::connection_pool pool(1);
    pool.at(0).open(soci::postgresql, postgres_server().conninfo);
    int work = 0;
    for (auto _ : state) kernels::soci_cycle(pool, work);
    benchmark::DoNotOptimize(work);
}
BENCHMARK(soci_cycle);
#endif

// ---- a connection per request -----------------------------------------------------------

void connect_postgres(benchmark::State& state) {
    if (skip_without_postgres(state)) return;
    const std::string conninfo = postgres_server().conninfo;
    int work = 0;
    for (auto _ : state) kernels::connect_postgres(conninfo, work);
    benchmark::DoNotOptimize(work);
}
BENCHMARK(connect_postgres)->Unit(benchmark::kMicrosecond);

void connect_postgres_raw(benchmark::State& state) {
    if (skip_without_postgres(state)) return;
    const std::string conninfo = postgres_server().conninfo;
    int work = 0;
    for (auto _ : state) kernels::connect_postgres_raw(conninfo, work);
    benchmark::DoNotOptimize(work);
}
BENCHMARK(connect_postgres_raw)->Unit(benchmark::kMicrosecond);

void connect_sqlite(benchmark::State& state) {
    int work = 0;
    for (auto _ : state) kernels::connect_sqlite(work);
    benchmark::DoNotOptimize(work);
}
BENCHMARK(connect_sqlite)->Unit(benchmark::kMicrosecond);

// ---- SELECT 1 from 8 threads, paired ----------------------------------------------------
// A round trip on this shared 2-core machine (which also runs the server) varies by tens of
// percent from one moment to the next. Each iteration runs every variant once, in an order
// that rotates; the counters are each variant's median throughput, the ratios, and the
// client's context switches per query (getrusage, every thread of this process). Next to the
// goal's pair (8 threads through a pool of 4, 8 threads on 8 dedicated connections): 4
// threads on 4 dedicated connections (what 4 sessions can do at best), 4 threads through the
// pool of 4 (the pool without waiting), 8 threads through mutex_pool over 4 connections (the
// floor of any pool of 4 serving 8 threads: each borrower that finds none idle sleeps), and 8
// threads through SOCI's pool of 4.

// ---- borrow and return from 1, 8, 32 threads, paired ------------------------------------
// A pool of 4 SQLite :memory: connections, each thread borrowing and returning at once: what
// the pool itself costs when threads outnumber connections (and cores). ctxmgr's pool as
// built (deadline, leak tracking, metrics, checks) next to SOCI's connection_pool and next
// to mutex_pool, the bare mutex-and-condition-variable floor. The counters are each
// variant's median in borrows per second, and the ratios of ctxmgr's to the others'.

void borrow_return_paired(benchmark::State& state) {
    const int threads = static_cast<int>(state.range(0));
    // About 20 ms a run at the floor's pace, whatever the number of threads.
    const int per_thread = 400'000 / threads;
    constexpr std::size_t size = 4;
    kernels::sqlite_pool pool([] { return ctxmgr::sqlite::connect(":memory:"); },
                              {.name = "bench", .max_size = size, .min_idle = size});
    while (pool.stats().idle < size) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    std::vector<ctxmgr::sqlite::connection> connections;
    for (std::size_t i = 0; i < size; ++i)
        connections.push_back(ctxmgr::sqlite::connect(":memory:"));
    kernels::sqlite_mutex_pool floor(std::move(connections));
    std::vector<variant> variants = {
        {"ctxmgr",
         [&] {
             return run_threads(threads, per_thread, [&](std::size_t) {
                 int w = 0;
                 kernels::pool_cycle_sqlite(pool, w);
                 benchmark::DoNotOptimize(w);
             });
         }},
        {"mutex_pool",
         [&] {
             return run_threads(threads, per_thread, [&](std::size_t) {
                 int w = 0;
                 kernels::mutex_pool_cycle_sqlite(floor, w);
                 benchmark::DoNotOptimize(w);
             });
         }},
    };
#if defined(CTXMGR_BENCH_SOCI)
    soci::connection_pool soci_pool(size);
    for (std::size_t i = 0; i < size; ++i) soci_pool.at(i).open(soci::sqlite3, ":memory:");
    variants.push_back({"soci", [&] {
                            return run_threads(threads, per_thread, [&](std::size_t) {
                                int w = 0;
                                kernels::soci_cycle(soci_pool, w);
                                benchmark::DoNotOptimize(w);
                            });
                        }});
#endif
    const std::vector<double> rate = run_paired(state, variants, "per_s");
    state.counters["ctxmgr/mutex_pool"] = rate[0] / rate[1];
    if (rate.size() > 2) state.counters["ctxmgr/soci"] = rate[0] / rate[2];
    const auto ns = [](double per_second) { return 1e9 / per_second; };
    state.counters["ctxmgr_ns"] = ns(rate[0]);
    state.counters["mutex_pool_ns"] = ns(rate[1]);
    if (rate.size() > 2) state.counters["soci_ns"] = ns(rate[2]);
}
BENCHMARK(borrow_return_paired)
    ->Arg(1)
    ->Arg(8)
    ->Arg(32)
    ->Iterations(15)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// `count` connections to `conninfo`, for a mutex_pool.
std::vector<ctxmgr::postgres::connection> open_postgres(const std::string& conninfo, int count) {
    std::vector<ctxmgr::postgres::connection> connections;
    for (int i = 0; i < count; ++i) connections.push_back(ctxmgr::postgres::connect(conninfo));
    return connections;
}

// A thread's SELECT 1 through a mutex_pool.
auto through(kernels::postgres_mutex_pool& floor) {
    return [&floor](std::size_t) {
        ctxmgr::postgres::connection c = floor.borrow();
        benchmark::DoNotOptimize(kernels::select_one(c));
        floor.give_back(std::move(c));
    };
}

void select1_8_threads_paired(benchmark::State& state) {
    if (skip_without_postgres(state)) return;
    constexpr int per_thread = 500;
    const std::string conninfo = postgres_server().conninfo;
    auto pool = make_postgres_pool(4);
    std::vector<ctxmgr::postgres::connection> dedicated = open_postgres(conninfo, 8);
    kernels::postgres_mutex_pool floor(open_postgres(conninfo, 4));
    auto through_pool = [&](std::size_t) {
        ctxmgr::with(pool.connection(), [](ctxmgr::postgres::connection& c) {
            benchmark::DoNotOptimize(kernels::select_one(c));
        });
    };
    auto on_dedicated = [&](std::size_t t) {
        benchmark::DoNotOptimize(kernels::select_one(dedicated[t]));
    };
    std::vector<variant> variants = {
        {"pool4", [&] { return run_threads(8, per_thread, through_pool); }},
        {"dedicated8", [&] { return run_threads(8, per_thread, on_dedicated); }},
        {"dedicated4", [&] { return run_threads(4, per_thread, on_dedicated); }},
        {"pool4_4threads", [&] { return run_threads(4, per_thread, through_pool); }},
        {"mutex_pool4", [&] { return run_threads(8, per_thread, through(floor)); }},
    };
#if defined(CTXMGR_BENCH_SOCI)
    soci::connection_pool soci_pool(4);
    for (std::size_t i = 0; i < 4; ++i) soci_pool.at(i).open(soci::postgresql, conninfo);
    variants.push_back({"soci_pool4", [&] {
                            return run_threads(8, per_thread, [&](std::size_t) {
                                soci::session s(soci_pool);
                                long long one = 0;
                                s << "SELECT 1", soci::into(one);
                                benchmark::DoNotOptimize(one);
                            });
                        }});
#endif
    const std::vector<double> qps = run_paired(state, variants, "qps");
    state.counters["pool4/dedicated8"] = qps[0] / qps[1];
    state.counters["pool4/dedicated4"] = qps[0] / qps[2];
    state.counters["pool4_4threads/dedicated4"] = qps[3] / qps[2];
    state.counters["pool4/mutex_pool4"] = qps[0] / qps[4];
    state.counters["mutex_pool4/dedicated8"] = qps[4] / qps[1];
    if (qps.size() > 5) state.counters["pool4/soci_pool4"] = qps[0] / qps[5];
}
BENCHMARK(select1_8_threads_paired)->Iterations(15)->Unit(benchmark::kMillisecond)->UseRealTime();

// The pool's own cost under load, alone: 4 threads through a pool of 4 (no borrower ever
// waits) against 4 threads on 4 dedicated connections, the two alternating, so that neither
// always runs after the same neighbour (in the benchmark above, pool4_4threads always follows
// dedicated4).
void select1_4_threads_paired(benchmark::State& state) {
    if (skip_without_postgres(state)) return;
    constexpr int per_thread = 500;
    const std::string conninfo = postgres_server().conninfo;
    auto pool = make_postgres_pool(4);
    std::vector<ctxmgr::postgres::connection> dedicated = open_postgres(conninfo, 4);
    kernels::postgres_mutex_pool floor(open_postgres(conninfo, 4));
    const std::vector<variant> variants = {
        {"pool4",
         [&] {
             return run_threads(4, per_thread, [&](std::size_t) {
                 ctxmgr::with(pool.connection(), [](ctxmgr::postgres::connection& c) {
                     benchmark::DoNotOptimize(kernels::select_one(c));
                 });
             });
         }},
        {"dedicated4",
         [&] {
             return run_threads(4, per_thread, [&](std::size_t t) {
                 benchmark::DoNotOptimize(kernels::select_one(dedicated[t]));
             });
         }},
        {"mutex_pool4", [&] { return run_threads(4, per_thread, through(floor)); }},
    };
    const std::vector<double> qps = run_paired(state, variants, "qps");
    state.counters["pool4/dedicated4"] = qps[0] / qps[1];
    state.counters["pool4/mutex_pool4"] = qps[0] / qps[2];
    state.counters["mutex_pool4/dedicated4"] = qps[2] / qps[1];
}
BENCHMARK(select1_4_threads_paired)->Iterations(30)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
