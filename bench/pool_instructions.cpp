// Runs one pool kernel a fixed number of times, for callgrind's instruction counts:
//   pool_instructions <kernel> [iterations]
// bench/instructions runs it under callgrind and compares a kernel with its baseline, e.g.
//   bench/instructions build/default/bench/pool_instructions pool_cycle_postgres soci_cycle
//   bench/instructions build/default/bench/pool_instructions pool_cycle_sqlite
//   mutex_pool_cycle_sqlite
// The PostgreSQL kernels need CTXMGR_POSTGRES (a connection string); they count the client's
// instructions only.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "instructions_main.hpp"
#include "pool_kernels.hpp"

int main(int argc, char** argv) {
    const std::string kernel = argc > 1 ? argv[1] : "";
    const char* given = std::getenv("CTXMGR_POSTGRES");
    const std::string conninfo = given != nullptr ? given : "";
    const bool postgres = kernel == "pool_cycle_postgres" || kernel == "soci_cycle";
    if (postgres && conninfo.empty()) {
        std::fprintf(stderr, "%s: the PostgreSQL kernels need CTXMGR_POSTGRES\n", argv[0]);
        return 2;
    }
    kernels::sqlite_pool sqlite([] { return ctxmgr::sqlite::connect(":memory:"); },
                                {.name = "bench", .max_size = 1});
    std::vector<ctxmgr::sqlite::connection> connections;
    connections.push_back(ctxmgr::sqlite::connect(":memory:"));
    kernels::sqlite_mutex_pool floor(std::move(connections));
    std::optional<kernels::postgres_pool> pg;
#if defined(CTXMGR_BENCH_SOCI)
    std::optional<soci::connection_pool> soci_pool;
#endif
    if (postgres) {
        pg.emplace([&] { return ctxmgr::postgres::connect(conninfo); },
                   ctxmgr::pool_options{.name = "bench", .max_size = 1, .min_idle = 1});
        while (pg->stats().idle < 1) std::this_thread::sleep_for(std::chrono::milliseconds(1));
#if defined(CTXMGR_BENCH_SOCI)
        soci_pool.emplace(1);
        soci_pool->at(0).open(soci::postgresql, conninfo);
#endif
    }
    int work = 0;
    const kernels::kernel_cases cases = {
        {"pool_cycle_sqlite", [&] { kernels::pool_cycle_sqlite(sqlite, work); }},
        {"mutex_pool_cycle_sqlite", [&] { kernels::mutex_pool_cycle_sqlite(floor, work); }},
        {"pool_cycle_postgres", [&] { kernels::pool_cycle_postgres(*pg, work); }},
#if defined(CTXMGR_BENCH_SOCI)
        {"soci_cycle", [&] { kernels::soci_cycle(*soci_pool, work); }},
#endif
    };
    return kernels::run_kernel(argc, argv, cases, work);
}
