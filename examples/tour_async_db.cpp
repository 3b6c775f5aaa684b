// Tour chapter 115: databases for coroutines. Six coroutines on one thread borrow from a pool
// of two connections with pool.async_connection(): four wait at once without blocking the
// thread (a heartbeat on the same thread keeps ticking), and one that gives up, cancelled by
// a timer, takes nothing. With CTXMGR_POSTGRES set, five coroutines on one thread then each
// run a 200 ms statement on a connection of their own (postgres::async_connect): the five
// take 200 ms together, not a second, and a transaction commits or rolls back as with.
#include <ctxmgr/async.hpp>
#include <ctxmgr/pool.hpp>
#include <ctxmgr/sqlite.hpp>
#if CTXMGR_TOUR_ASYNC_POSTGRES
#include <ctxmgr/async_postgres.hpp>
#endif

#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/io_context.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>

#include <chrono>
#include <cstdint>
#include <exception>
#include <stdexcept>
#include <string>

#include "tour.hpp"

namespace {

using namespace std::chrono_literals;
using namespace asio::experimental::awaitable_operators;
using tour::say;
namespace sqlite = ctxmgr::sqlite;
template <class T>
using task = asio::awaitable<T>;

task<void> pause(std::chrono::milliseconds delay) {
    asio::steady_timer timer(co_await asio::this_coro::executor, delay);
    co_await timer.async_wait(asio::use_awaitable);
}

// tour: borrow
task<void> request(ctxmgr::pool<sqlite::connection>& pool, int id) {
    co_await ctxmgr::async_with(
        pool.async_connection(2s), [&](sqlite::connection& db) -> task<void> {
            db.execute("INSERT INTO requests (id) VALUES ($1)", id);
            co_await pause(50ms);  // holds the connection across a suspension
            say("  request " + std::to_string(id) + " done");
        });
}
// tour: end

void pool_for_coroutines() {
    ctxmgr::pool pool([] { return sqlite::connect((tour::scratch() / "async.db").string()); },
                      {.name = "async tour", .max_size = 2});
    ctxmgr::with(pool.connection(), [](sqlite::connection& db) {
        db.execute("CREATE TABLE requests (id INTEGER PRIMARY KEY)");
    });
    say("six coroutines on one thread, a pool of two connections:");
    tour::show_code("borrow");
    asio::io_context io;
    int ticks = 0;
    bool done = false;
    for (int id = 1; id <= 5; ++id) asio::co_spawn(io, request(pool, id), asio::detached);
    // The sixth gives up after 20 ms: the timer wins, the wait is cancelled, nothing is taken.
    asio::co_spawn(
        io,
        [&]() -> task<void> {
            asio::steady_timer patience(io, 20ms);
            // tour: give up
            const auto winner =
                co_await (request(pool, 6) || patience.async_wait(asio::use_awaitable));
            // tour: end
            if (winner.index() == 1) {
                const auto s = pool.stats();
                say("  request 6 gave up after 20 ms; " + std::to_string(s.waiting) +
                    " still waiting, " + std::to_string(s.in_use) + " connections in use");
            }
        },
        asio::detached);
    asio::co_spawn(
        io,
        [&]() -> task<void> {
            while (!done) {
                ++ticks;
                co_await pause(10ms);
            }
        },
        asio::detached);
    asio::co_spawn(
        io,
        [&]() -> task<void> {
            while (pool.stats().in_use > 0 || pool.stats().waiting > 0) co_await pause(10ms);
            done = true;
        },
        asio::detached);
    tour::show_code("give up");
    io.run();
    ctxmgr::with(pool.connection(), [&](sqlite::connection& db) {
        say("rows written: " +
            std::to_string(db.query_value<std::int64_t>("SELECT count(*) FROM requests")) +
            "; the heartbeat on the same thread ticked " + std::to_string(ticks) +
            " times meanwhile");
    });
    const auto s = pool.stats();
    say("connections made: " + std::to_string(s.created) +
        ", in use now: " + std::to_string(s.in_use));
}

#if CTXMGR_TOUR_ASYNC_POSTGRES
// tour: five
using async_pool = ctxmgr::pool<ctxmgr::postgres::async_connection>;

task<void> slow_query(async_pool& pool, int id) {
    co_await ctxmgr::async_with(pool.async_connection(2s),
                                [&](ctxmgr::postgres::async_connection& db) -> task<void> {
                                    co_await db.async_execute("SELECT pg_sleep(0.2)");
                                    say("  query " + std::to_string(id) + " answered");
                                });
}
// tour: end

void postgres_for_coroutines(const std::string& conninfo) {
    say("ten coroutines on one thread, a pool of five async connections (made on the pool's");
    say("thread), each query waiting 200 ms for the server without blocking the thread:");
    tour::show_code("five");
    asio::io_context io;
    {
        async_pool pool(
            [ex = io.get_executor(), conninfo] {
                return ctxmgr::postgres::async_connection::open(ex, conninfo);
            },
            {.name = "async tour", .max_size = 5});
        const auto started = std::chrono::steady_clock::now();
        for (int id = 1; id <= 10; ++id) asio::co_spawn(io, slow_query(pool, id), asio::detached);
        io.run();
        const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(
            std::chrono::steady_clock::now() - started);
        say("all ten in " + std::to_string(took.count()) +
            " ms: two rounds of five (one after the other they would take 2000 ms)");
    }

    say("");
    say("a transaction in a coroutine that throws rolls back, as with does:");
    io.restart();  // run() returned when it ran out of work
    asio::co_spawn(
        io,
        [&]() -> task<void> {
            auto executor = co_await asio::this_coro::executor;
            co_await ctxmgr::async_with(
                ctxmgr::postgres::async_connect(executor, conninfo),
                [&](ctxmgr::postgres::async_connection& db) -> task<void> {
                    co_await db.async_execute("CREATE TEMPORARY TABLE tour_async (n bigint)");
                    try {
                        co_await ctxmgr::async_with(db.async_transaction(), [&]() -> task<void> {
                            co_await db.async_execute("INSERT INTO tour_async VALUES (1)");
                            throw std::runtime_error("the request failed");
                        });
                    } catch (const std::runtime_error& e) {
                        say(std::string("  caught: ") + e.what());
                    }
                    const auto rows = co_await db.async_query_value<std::int64_t>(
                        "SELECT count(*) FROM tour_async");
                    say("  rows after the rollback: " + std::to_string(rows));
                });
        },
        [](std::exception_ptr e) {
            if (e) tour::say_exception(e);
        });
    io.run();
}
#endif

void async_databases_chapter() {
    pool_for_coroutines();
#if CTXMGR_TOUR_ASYNC_POSTGRES
    say("");
    if (const std::string conninfo = tour::postgres_from_environment(); !conninfo.empty()) {
        postgres_for_coroutines(conninfo);
    } else if (const auto cluster = tour::throwaway_cluster::start(20)) {
        say("on a throwaway PostgreSQL cluster of the tour's own (CTXMGR_POSTGRES names another):");
        say("");
        postgres_for_coroutines(cluster->conninfo());
    } else {
        say("(No PostgreSQL server could be started here: scripts/setup installs one, or set");
        say("CTXMGR_POSTGRES to a connection string. With one, ten coroutines on one thread share");
        say("a pool of five async connections, and a transaction that throws rolls back.)");
    }
#endif
}

const bool registered = tour::add_chapter(
    115, "Databases for coroutines: waiting without blocking a thread", &async_databases_chapter);

}  // namespace
