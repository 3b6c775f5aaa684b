// The code the pool benchmarks measure, shared by pool_bench.cpp (Google Benchmark, wall
// time) and pool_instructions.cpp (fixed iterations, for callgrind's instruction counts):
// one borrow and return through ctxmgr::pool (leak tracking on, as the library is built),
// through SOCI's connection_pool (a soci::session made from the pool leases, its destructor
// gives back), through mutex_pool (the floor: what a pool that only lends and takes back
// costs), and, for the other side of the ratio, opening and closing a connection per request.
#pragma once

#include <libpq-fe.h>
#include <ctxmgr/pool.hpp>
#include <ctxmgr/postgres.hpp>
#include <ctxmgr/sqlite.hpp>
#include <ctxmgr/with.hpp>

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(CTXMGR_BENCH_SOCI)
// Debian's SOCI is configured with Boost, whose headers libsoci-dev does not pull in. Boost
// only adds templates for Boost.Fusion sequences, which nothing here uses: without Boost,
// leave them out.
#include <soci/soci-config.h>
#if !__has_include(<boost/version.hpp>)
#undef SOCI_HAVE_BOOST
#endif
#include <soci/connection-pool.h>
#include <soci/postgresql/soci-postgresql.h>
#include <soci/soci.h>
#include <soci/sqlite3/soci-sqlite3.h>
#endif

#define CTXMGR_KERNEL __attribute__((noinline))

namespace kernels {

using sqlite_pool = ctxmgr::pool<ctxmgr::sqlite::connection>;
using postgres_pool = ctxmgr::pool<ctxmgr::postgres::connection>;

// The baseline a pool is held up to: idle connections in a vector under one mutex, a borrower
// waiting on one condition variable, a return pushing and waking one waiter. Nothing else: no
// deadline, no fairness (a waiter may be overtaken any number of times), no checks, no leak
// tracking, no metrics.
template <class Connection>
class mutex_pool {
  public:
    explicit mutex_pool(std::vector<Connection> connections) : idle_(std::move(connections)) {}
    Connection borrow() {
        std::unique_lock lock(mutex_);
        returned_.wait(lock, [&] { return !idle_.empty(); });
        Connection c = std::move(idle_.back());
        idle_.pop_back();
        return c;
    }
    void give_back(Connection c) {
        {
            std::lock_guard lock(mutex_);
            idle_.push_back(std::move(c));
        }
        returned_.notify_one();
    }

  private:
    std::mutex mutex_;
    std::condition_variable returned_;
    std::vector<Connection> idle_;
};

using sqlite_mutex_pool = mutex_pool<ctxmgr::sqlite::connection>;
using postgres_mutex_pool = mutex_pool<ctxmgr::postgres::connection>;

// Borrow, touch the connection, give back.
CTXMGR_KERNEL inline void pool_cycle_sqlite(sqlite_pool& pool, int& work) {
    ctxmgr::with(pool.connection(), [&](ctxmgr::sqlite::connection& c) { work += c.is_open(); });
}

CTXMGR_KERNEL inline void pool_cycle_postgres(postgres_pool& pool, int& work) {
    ctxmgr::with(pool.connection(), [&](ctxmgr::postgres::connection& c) { work += c.is_open(); });
}

CTXMGR_KERNEL inline void mutex_pool_cycle_sqlite(sqlite_mutex_pool& pool, int& work) {
    ctxmgr::sqlite::connection c = pool.borrow();
    work += c.is_open();
    pool.give_back(std::move(c));
}

#if defined(CTXMGR_BENCH_SOCI)
CTXMGR_KERNEL inline void soci_cycle(soci::connection_pool& pool, int& work) {
    soci::session s(pool);
    work += s.get_backend() != nullptr;
}
#endif

// A connection per request, as code without a pool does.
CTXMGR_KERNEL inline void connect_postgres(const std::string& conninfo, int& work) {
    ctxmgr::with(ctxmgr::postgres::connect(conninfo),
                 [&](ctxmgr::postgres::connection& c) { work += c.is_open(); });
}

CTXMGR_KERNEL inline void connect_postgres_raw(const std::string& conninfo, int& work) {
    PGconn* c = PQconnectdb(conninfo.c_str());
    work += PQstatus(c) == CONNECTION_OK;
    PQfinish(c);
}

CTXMGR_KERNEL inline void connect_sqlite(int& work) {
    ctxmgr::with(ctxmgr::sqlite::connect(":memory:"),
                 [&](ctxmgr::sqlite::connection& c) { work += c.is_open(); });
}

// One request of the throughput benchmarks.
inline std::int64_t select_one(ctxmgr::postgres::connection& c) {
    return c.query_value<std::int64_t>("SELECT 1");
}

}  // namespace kernels
