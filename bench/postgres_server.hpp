// The PostgreSQL server of a benchmark run: the one CTXMGR_POSTGRES names, else a throwaway
// cluster started on first use (tests/support/postgres_cluster.hpp, on
// scripts/postgres-cluster) and stopped at exit. Without one, the PostgreSQL benchmarks skip
// and say why.
#pragma once

#include <benchmark/benchmark.h>

#include <cstdlib>
#include <string>

#include "postgres_cluster.hpp"

namespace bench {

inline const ctxmgr::testing::postgres_server& postgres_server() {
    static const ctxmgr::testing::postgres_server given = [] {
        const char* conninfo = std::getenv("CTXMGR_POSTGRES");
        return ctxmgr::testing::postgres_server{conninfo != nullptr ? conninfo : "", ""};
    }();
    return given.available() ? given : ctxmgr::testing::own_postgres();
}

// True (and the benchmark marked skipped, with the reason) when there is no server.
inline bool skip_without_postgres(benchmark::State& state) {
    if (postgres_server().available()) return false;
    state.SkipWithError(("no PostgreSQL server: " + postgres_server().unavailable).c_str());
    return true;
}

}  // namespace bench
