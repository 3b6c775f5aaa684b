// The PostgreSQL server of a benchmark run: the one CTXMGR_POSTGRES names, else a throwaway
// cluster started on first use (tests/support/postgres_cluster.hpp, on
// scripts/postgres-cluster) and stopped at exit. Without one, the PostgreSQL benchmarks skip
// and say why.
#pragma once

#include <benchmark/benchmark.h>

#include <cstdlib>
#include <memory>
#include <string>

#include "postgres_cluster.hpp"

namespace bench {

inline const ctxmgr::testing::postgres_server& postgres_server() {
    static std::unique_ptr<ctxmgr::testing::postgres_cluster> own;
    static const ctxmgr::testing::postgres_server server = [] {
        if (const char* given = std::getenv("CTXMGR_POSTGRES"); given != nullptr && *given) {
            return ctxmgr::testing::postgres_server{given, ""};
        }
        std::string why;
        own = ctxmgr::testing::postgres_cluster::start({}, why);
        return own != nullptr ? ctxmgr::testing::postgres_server{own->conninfo(), ""}
                              : ctxmgr::testing::postgres_server{"", why};
    }();
    return server;
}

// True (and the benchmark marked skipped, with the reason) when there is no server.
inline bool skip_without_postgres(benchmark::State& state) {
    if (postgres_server().available()) return false;
    state.SkipWithError(("no PostgreSQL server: " + postgres_server().unavailable).c_str());
    return true;
}

}  // namespace bench
