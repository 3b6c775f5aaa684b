// Instructions per `SELECT 1` on the client's side, awaited against blocking (bench/instructions
// counts the kernels under callgrind; the server named by CTXMGR_POSTGRES):
//   async_query         co_spawn a coroutine awaiting async_query_value on an async connection,
//                       run the io_context until it is done
//   sync_query          query_value on a postgres::connection
//   async_pool_query    the same coroutine borrowing its connection from a pool of one
//                       async connection (pool.async_connection())
//   sync_pool_query     with(pool.connection(), query_value) on a pool of one connection
//   async_pool_1000     1,000 such coroutines at once on a pool of 8 async connections (an
//                       iteration is 1,000 statements, most borrowers waiting in the queue)
// e.g. (one line)
//   CTXMGR_POSTGRES=... bench/instructions build/default/bench/async_postgres_instructions
//   async_query sync_query 2000
#include <ctxmgr/async_pool.hpp>
#include <ctxmgr/async_postgres.hpp>
#include <ctxmgr/async_with.hpp>
#include <ctxmgr/pool.hpp>
#include <ctxmgr/postgres.hpp>
#include <ctxmgr/with.hpp>

#include <asio/co_spawn.hpp>
#include <asio/io_context.hpp>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <optional>
#include <string>
#include <thread>

#include "instructions_main.hpp"

#define CTXMGR_KERNEL __attribute__((noinline))

// Outside namespace kernels: callgrind's --toggle-collect switches counting off again on
// entering a nested function whose name matches (a lambda of a kernel would).
namespace bodies {

namespace postgres = ctxmgr::postgres;

inline void rethrow(const std::exception_ptr& e) {
    if (e) std::rethrow_exception(e);
}

inline asio::awaitable<void> select(postgres::async_connection& c, int& work) {
    work += static_cast<int>(co_await c.async_query_value<std::int64_t>("SELECT 1"));
}

inline asio::awaitable<void> borrow_and_select(ctxmgr::pool<postgres::async_connection>& pool,
                                               int& work) {
    co_await ctxmgr::async_with(pool.async_connection(),
                                [&](postgres::async_connection& c) { return select(c, work); });
}

inline void select_on(postgres::connection& c, int& work) {
    work += static_cast<int>(c.query_value<std::int64_t>("SELECT 1"));
}

struct select_into {
    int& work;
    void operator()(postgres::connection& c) const { select_on(c, work); }
};

}  // namespace bodies

namespace kernels {

namespace postgres = ctxmgr::postgres;

CTXMGR_KERNEL inline void async_query(asio::io_context& io, postgres::async_connection& c,
                                      int& work) {
    asio::co_spawn(io, bodies::select(c, work), bodies::rethrow);
    io.run();
    io.restart();
}

CTXMGR_KERNEL inline void sync_query(postgres::connection& c, int& work) {
    bodies::select_on(c, work);
}

CTXMGR_KERNEL inline void async_pool_query(asio::io_context& io,
                                           ctxmgr::pool<postgres::async_connection>& pool,
                                           int& work) {
    asio::co_spawn(io, bodies::borrow_and_select(pool, work), bodies::rethrow);
    io.run();
    io.restart();
}

CTXMGR_KERNEL inline void sync_pool_query(ctxmgr::pool<postgres::connection>& pool, int& work) {
    ctxmgr::with(pool.connection(), bodies::select_into{work});
}

CTXMGR_KERNEL inline void async_pool_1000(asio::io_context& io,
                                          ctxmgr::pool<postgres::async_connection>& pool,
                                          int& work) {
    for (int i = 0; i < 1000; ++i) {
        asio::co_spawn(io, bodies::borrow_and_select(pool, work), bodies::rethrow);
    }
    io.run();
    io.restart();
}

}  // namespace kernels

int main(int argc, char** argv) {
    const char* conninfo_env = std::getenv("CTXMGR_POSTGRES");
    if (conninfo_env == nullptr) {
        std::fprintf(stderr, "%s: needs CTXMGR_POSTGRES (a connection string)\n", argv[0]);
        return 2;
    }
    const std::string conninfo = conninfo_env;
    namespace postgres = ctxmgr::postgres;
    asio::io_context io;
    auto async_connection = postgres::async_connection::open(io.get_executor(), conninfo);
    auto connection = postgres::connect(conninfo);
    // One connection each, made before counting; never idle long enough to be pinged.
    ctxmgr::pool async_pool(
        [ex = io.get_executor(), conninfo] {
            return postgres::async_connection::open(ex, conninfo);
        },
        {.max_size = 1, .min_idle = 1, .validate_after_idle = std::chrono::minutes(1)});
    ctxmgr::pool sync_pool(
        [conninfo] { return postgres::connect(conninfo); },
        {.max_size = 1, .min_idle = 1, .validate_after_idle = std::chrono::minutes(1)});
    while (async_pool.stats().idle < 1 || sync_pool.stats().idle < 1) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    // Made only for async_pool_1000: no other kernel waits for its connections.
    std::optional<ctxmgr::pool<postgres::async_connection>> crowd;
    int work = 0;
    const kernels::kernel_cases cases = {
        {"async_query", [&] { kernels::async_query(io, async_connection, work); }},
        {"sync_query", [&] { kernels::sync_query(connection, work); }},
        {"async_pool_query", [&] { kernels::async_pool_query(io, async_pool, work); }},
        {"sync_pool_query", [&] { kernels::sync_pool_query(sync_pool, work); }},
        {"async_pool_1000",
         [&] {
             if (!crowd) {  // its 8 connections made on first use, outside the kernel
                 crowd.emplace(
                     [ex = io.get_executor(), conninfo] {
                         return postgres::async_connection::open(ex, conninfo);
                     },
                     ctxmgr::pool_options{.max_size = 8,
                                          .min_idle = 8,
                                          .validate_after_idle = std::chrono::minutes(1)});
                 while (crowd->stats().idle < 8) {
                     std::this_thread::sleep_for(std::chrono::milliseconds(1));
                 }
             }
             kernels::async_pool_1000(io, *crowd, work);
         }},
    };
    return kernels::run_kernel(argc, argv, cases, work);
}
