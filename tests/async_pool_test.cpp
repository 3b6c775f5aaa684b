#include <ctxmgr/async_pool.hpp>
#include <ctxmgr/async_with.hpp>
#include <ctxmgr/sqlite.hpp>

#include <gtest/gtest.h>
#include <asio/bind_cancellation_slot.hpp>
#include <asio/cancellation_signal.hpp>
#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/io_context.hpp>
#include <asio/post.hpp>
#include <asio/steady_timer.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <future>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <type_traits>
#include <vector>

#include "async_recording.hpp"
#include "eventually.hpp"
#include "recording.hpp"
#include "temp_directory.hpp"

namespace {

using namespace std::chrono_literals;
using namespace asio::experimental::awaitable_operators;
using ctxmgr::testing::contains;
using ctxmgr::testing::eventually;
using ctxmgr::testing::holds_system_error;
using ctxmgr::testing::pause;
using ctxmgr::testing::run_awaitable;
using ctxmgr::testing::test_error;
namespace sqlite = ctxmgr::sqlite;
using sqlite_pool = ctxmgr::pool<sqlite::connection>;
using async_borrow = ctxmgr::async_pooled_connection<sqlite::connection>;

template <class T>
using task = asio::awaitable<T>;

static_assert(ctxmgr::async_context_manager<async_borrow>);
static_assert(!std::is_copy_constructible_v<async_borrow>);
static_assert(std::is_nothrow_move_constructible_v<async_borrow>);

// Pools of SQLite connections to one file.
class AsyncPool : public ::testing::Test {
  protected:
    sqlite_pool make(ctxmgr::pool_options options = {}) {
        if (options.name == "pool") options.name = "async";
        return sqlite_pool([this] { return sqlite::connect(file_, {.busy_timeout = 10s}); },
                           std::move(options));
    }
    // Makes one connection and leaves it idle.
    static void warm(sqlite_pool& pool) {
        ctxmgr::with(pool.connection(), [](sqlite::connection&) {});
    }
    // Nothing lent, nobody waiting, `idle` connections kept, and a connection still lent at
    // once.
    static void expect_settled(sqlite_pool& pool, std::size_t idle) {
        const auto s = pool.stats();
        EXPECT_EQ(s.idle, idle);
        EXPECT_EQ(s.in_use, 0U);
        EXPECT_EQ(s.waiting, 0U);
        ctxmgr::with(pool.connection(0ns), [](sqlite::connection& c) { EXPECT_TRUE(c.is_open()); });
    }

    ctxmgr::testing::temp_directory directory_;
    std::string file_ = directory_.file("async_pool.db");
};

// What a coroutine's borrow ended with.
std::exception_ptr outcome_of(asio::io_context& io, task<void> borrow) {
    std::exception_ptr outcome;
    bool done = false;
    asio::co_spawn(io, std::move(borrow), [&](std::exception_ptr e) {
        outcome = e;
        done = true;
    });
    io.run();
    EXPECT_TRUE(done);
    return outcome;
}

TEST_F(AsyncPool, LendsAConnectionToACoroutineAndTakesItBack) {
    auto pool = make();
    sqlite::connection* lent = nullptr;
    run_awaitable(
        ctxmgr::async_with(pool.async_connection(), [&](sqlite::connection& c) -> task<void> {
            lent = &c;
            co_await pause();
            EXPECT_EQ(c.query_value<std::int64_t>("SELECT $1 + 1", 41), 42);
            EXPECT_EQ(pool.stats().in_use, 1U);
        }));
    auto s = pool.stats();
    EXPECT_EQ(s.in_use, 0U);
    EXPECT_EQ(s.idle, 1U);
    // The same connection serves the synchronous borrowers: one pool.
    ctxmgr::with(pool.connection(), [&](sqlite::connection& c) { EXPECT_EQ(&c, lent); });
    EXPECT_EQ(pool.stats().created, 1U);
}

TEST_F(AsyncPool, ABorrowServedAtOnceIsAWaitOfZeroAndOneAfterAWaitIsTimed) {
    auto pool = make({.max_size = 1});
    warm(pool);  // waited for the creator
    asio::io_context io;
    // A connection idle for 1 ms or more is looked at before it is lent (the borrow is then
    // timed, as a synchronous one is): on a slow machine (a sanitizer's), the borrow may come
    // that late. One of several tries, each right after the connection came back, is enough.
    bool zero = false;
    for (int attempt = 0; attempt < 20 && !zero; ++attempt) {
        ctxmgr::with(pool.connection(), [](sqlite::connection&) {});
        const auto before = pool.metrics().wait_time;
        EXPECT_EQ(outcome_of(
                      io, ctxmgr::async_with(pool.async_connection(),
                                             [](sqlite::connection&) -> task<void> { co_return; })),
                  nullptr);
        io.restart();
        const auto after = pool.metrics().wait_time;
        EXPECT_EQ(after.count, before.count + 1);
        zero = after.sum == before.sum && after.buckets[0] == before.buckets[0] + 1;
    }
    EXPECT_TRUE(zero) << "no borrow served at once was counted as a wait of zero";

    // A coroutine that finds the one connection lent waits its turn, and that wait is timed.
    const auto before = pool.metrics().wait_time;
    auto held = std::async(std::launch::async, [&] {
        ctxmgr::with(pool.connection(), [&](sqlite::connection&) {
            EXPECT_TRUE(eventually([&] { return pool.stats().waiting == 1; }));
            std::this_thread::sleep_for(30ms);
        });
    });
    ASSERT_TRUE(eventually([&] { return pool.stats().in_use == 1; }));
    EXPECT_EQ(
        outcome_of(io, ctxmgr::async_with(pool.async_connection(),
                                          [](sqlite::connection&) -> task<void> { co_return; })),
        nullptr);
    held.get();
    const auto after = pool.metrics().wait_time;
    EXPECT_EQ(after.count, before.count + 2);  // the thread's borrow and the coroutine's
    EXPECT_GE(after.sum - before.sum, 30ms);
}

TEST_F(AsyncPool, ABodyThatThrowsHasItsTransactionRolledBackAndItsExceptionKept) {
    auto pool = make();
    ctxmgr::with(pool.connection(),
                 [](sqlite::connection& c) { c.execute("CREATE TABLE t (n INTEGER)"); });
    const test_error thrown("body");
    std::exception_ptr caught;
    try {
        run_awaitable(
            ctxmgr::async_with(pool.async_connection(), [&](sqlite::connection& c) -> task<void> {
                c.execute("BEGIN");
                c.execute("INSERT INTO t VALUES (1)");
                co_await pause();
                throw thrown;
            }));
    } catch (const test_error&) {
        caught = std::current_exception();
    }
    ASSERT_TRUE(caught);
    ctxmgr::with(pool.connection(), [](sqlite::connection& c) {
        EXPECT_EQ(c.transaction_state(), ctxmgr::db::transaction_state::idle);
        EXPECT_EQ(c.query_value<std::int64_t>("SELECT count(*) FROM t"), 0);
    });
}

TEST_F(AsyncPool, ManyCoroutinesShareAFewConnectionsWithoutBlockingTheirThread) {
    auto pool = make({.max_size = 2});
    asio::io_context io;
    std::size_t most_in_use = 0;
    int served = 0;
    int ticks = 0;
    bool waiting_seen = false;
    for (int i = 0; i < 40; ++i) {
        asio::co_spawn(io,
                       ctxmgr::async_with(pool.async_connection(5s),
                                          [&](sqlite::connection& c) -> task<void> {
                                              const auto s = pool.stats();
                                              most_in_use = std::max(most_in_use, s.in_use);
                                              waiting_seen = waiting_seen || s.waiting > 0;
                                              co_await pause(1ms);  // holds it across a suspension
                                              EXPECT_EQ(c.query_value<std::int64_t>("SELECT 7"), 7);
                                              ++served;
                                          }),
                       asio::detached);
    }
    // Runs on the same thread while the borrowers wait: nobody sleeps in the pool.
    asio::co_spawn(
        io,
        [&]() -> task<void> {
            while (served < 40) {
                ++ticks;
                co_await pause(1ms);
            }
        },
        asio::detached);
    io.run();
    EXPECT_EQ(served, 40);
    EXPECT_EQ(most_in_use, 2U);
    EXPECT_TRUE(waiting_seen);
    EXPECT_GT(ticks, 5);
    const auto s = pool.stats();
    EXPECT_EQ(s.in_use, 0U);
    EXPECT_EQ(s.waiting, 0U);
    EXPECT_LE(s.created, 2U);
}

TEST_F(AsyncPool, CoroutinesAndThreadsAreServedInTheOrderTheyAsked) {
    auto pool = make({.max_size = 1});
    warm(pool);
    std::mutex order_mutex;
    std::vector<std::string> order;
    auto served = [&](const std::string& who) {
        std::lock_guard lock(order_mutex);
        order.push_back(who);
    };
    std::promise<void> release_first;
    std::thread holder([&] {
        ctxmgr::with(pool.connection(), [&](sqlite::connection&) {
            served("holder");
            release_first.get_future().wait();
        });
    });
    ASSERT_TRUE(eventually([&] { return pool.stats().in_use == 1; }));
    std::thread first_waiter(
        [&] { ctxmgr::with(pool.connection(5s), [&](sqlite::connection&) { served("thread"); }); });
    ASSERT_TRUE(eventually([&] { return pool.stats().waiting == 1; }));
    asio::io_context io;
    asio::co_spawn(io,
                   ctxmgr::async_with(pool.async_connection(5s),
                                      [&](sqlite::connection&) -> task<void> {
                                          served("coroutine");
                                          co_return;
                                      }),
                   asio::detached);
    io.poll();  // the coroutine queues behind the thread
    ASSERT_TRUE(eventually([&] { return pool.stats().waiting == 2; }));
    release_first.set_value();
    holder.join();
    first_waiter.join();
    io.run();
    EXPECT_EQ(order, (std::vector<std::string>{"holder", "thread", "coroutine"}));
}

TEST_F(AsyncPool, AWaitThatOutlivesItsTimeoutThrowsTimeoutErrorNamingThePool) {
    auto pool = make({.name = "reports", .max_size = 1});
    warm(pool);
    std::exception_ptr outcome;
    ctxmgr::with(pool.connection(), [&](sqlite::connection&) {
        asio::io_context io;
        outcome = outcome_of(
            io, ctxmgr::async_with(pool.async_connection(30ms),
                                   [](sqlite::connection&) -> task<void> { co_return; }));
    });
    ASSERT_TRUE(outcome);
    try {
        std::rethrow_exception(outcome);
    } catch (const ctxmgr::timeout_error& e) {
        EXPECT_TRUE(contains(e.what(), "pool \"reports\"")) << e.what();
        EXPECT_TRUE(contains(e.what(), "async_pool_test.cpp")) << e.what();  // the borrower
    }
    const auto m = pool.metrics();
    EXPECT_EQ(m.timeouts, 1U);
    EXPECT_EQ(m.pending, 0U);
    EXPECT_EQ(m.idle, 1U);
}

TEST_F(AsyncPool, WaitersWithDifferentDeadlinesEachTimeOutAtTheirOwn) {
    // One timer serves every wait of an io_context, set to the earliest deadline: a wait
    // queued later with an earlier deadline, or one whose deadline is still far when an earlier
    // one passes, times out at its own deadline, not at another's.
    auto pool = make({.max_size = 1});
    warm(pool);
    auto held = pool.connection();
    held.enter();
    asio::io_context io;
    const auto start = std::chrono::steady_clock::now();
    std::vector<std::pair<std::chrono::milliseconds, std::chrono::steady_clock::duration>> ended;
    for (const auto timeout : {400ms, 100ms, 250ms}) {
        asio::co_spawn(io,
                       ctxmgr::async_with(pool.async_connection(timeout),
                                          [](sqlite::connection&) -> task<void> { co_return; }),
                       [&, timeout](std::exception_ptr e) {
                           EXPECT_TRUE(ctxmgr::holds<ctxmgr::timeout_error>(e));
                           ended.emplace_back(timeout, std::chrono::steady_clock::now() - start);
                       });
    }
    io.run();
    held.exit(nullptr);
    ASSERT_EQ(ended.size(), 3U);
    EXPECT_EQ(ended[0].first, 100ms);
    EXPECT_EQ(ended[1].first, 250ms);
    EXPECT_EQ(ended[2].first, 400ms);
    for (const auto& [timeout, after] : ended) EXPECT_GE(after, timeout);
    EXPECT_EQ(pool.metrics().timeouts, 3U);
    EXPECT_EQ(pool.stats().waiting, 0U);
}

TEST_F(AsyncPool, AServedWaitLeavesNoTimerKeepingTheIoContextRunning) {
    auto pool = make({.max_size = 1});
    warm(pool);
    asio::io_context io;
    {
        auto held = pool.connection();
        held.enter();
        bool served = false;
        asio::co_spawn(io,
                       ctxmgr::async_with(pool.async_connection(60s),
                                          [&](sqlite::connection&) -> task<void> {
                                              served = true;
                                              co_return;
                                          }),
                       [](std::exception_ptr e) {
                           if (e) std::rethrow_exception(e);
                       });
        io.poll();
        ASSERT_EQ(pool.stats().waiting, 1U);
        held.exit(nullptr);  // hands it to the waiter
        const auto start = std::chrono::steady_clock::now();
        io.run();  // returns once the borrow is over, long before the 60 s deadline
        EXPECT_TRUE(served);
        EXPECT_LT(std::chrono::steady_clock::now() - start, 30s);
    }
}

TEST_F(AsyncPool, ACancelledWaiterLeavesTheQueueAndTakesNothing) {
    auto pool = make({.max_size = 1});
    warm(pool);
    std::exception_ptr outcome;
    bool timer_won = false;
    {
        auto held = pool.connection();
        held.enter();
        asio::io_context io;
        asio::co_spawn(
            io,
            [&]() -> task<void> {
                asio::steady_timer timer(co_await asio::this_coro::executor, 30ms);
                auto borrow =
                    ctxmgr::async_with(pool.async_connection(10s),
                                       [](sqlite::connection&) -> task<void> { co_return; });
                auto winner = co_await (std::move(borrow) || timer.async_wait(asio::use_awaitable));
                timer_won = winner.index() == 1;
            },
            [&](std::exception_ptr e) { outcome = e; });
        io.run();
        EXPECT_EQ(pool.stats().waiting, 0U);
        held.exit(nullptr);
    }
    EXPECT_FALSE(outcome);
    EXPECT_TRUE(timer_won);
    const auto s = pool.stats();
    EXPECT_EQ(s.idle, 1U);
    EXPECT_EQ(s.in_use, 0U);
    EXPECT_EQ(pool.metrics().timeouts, 0U);
}

TEST_F(AsyncPool, AConnectionHandedToAWaiterCancelledAtThatMomentGoesBackUnused) {
    auto pool = make({.max_size = 1});
    warm(pool);
    pool.suspend();
    asio::io_context io;
    asio::cancellation_signal cancel;
    std::exception_ptr outcome;
    bool body_ran = false;
    asio::co_spawn(
        io,
        ctxmgr::async_with(pool.async_connection(10s),
                           [&](sqlite::connection&) -> task<void> {
                               body_ran = true;
                               co_return;
                           }),
        asio::bind_cancellation_slot(cancel.slot(), [&](std::exception_ptr e) { outcome = e; }));
    io.poll();
    ASSERT_EQ(pool.stats().waiting, 1U);
    // The cancellation lands first, then resume() hands the idle connection to the waiter,
    // which still sits in the queue: it must give it back.
    asio::post(io, [&] {
        cancel.emit(asio::cancellation_type::terminal);
        pool.resume();
    });
    io.run();
    EXPECT_FALSE(body_ran);
    EXPECT_TRUE(holds_system_error(outcome, asio::error::operation_aborted));
    expect_settled(pool, 1);
}

TEST_F(AsyncPool, AnIoContextDestroyedWithCoroutinesWaitingTakesThemOutOfTheQueue) {
    auto pool = make({.max_size = 1});
    warm(pool);
    pool.suspend();
    bool finished = false;
    {
        asio::io_context io;
        for (int i = 0; i < 3; ++i) {
            asio::co_spawn(io,
                           ctxmgr::async_with(pool.async_connection(10s),
                                              [](sqlite::connection&) -> task<void> { co_return; }),
                           [&](std::exception_ptr) { finished = true; });
        }
        io.poll();
        ASSERT_EQ(pool.stats().waiting, 3U);
        // The first waiter is handed the connection; its resumption is posted and never runs.
        pool.resume();
        ASSERT_EQ(pool.stats().waiting, 2U);
        ASSERT_EQ(pool.stats().in_use, 1U);
    }
    // Every coroutine was destroyed with its io_context: none finished, none is left waiting,
    // and the connection handed to the first went back.
    EXPECT_FALSE(finished);
    expect_settled(pool, 1);
}

TEST_F(AsyncPool, AWakeToAWaiterDestroyedBeforeItLookedGoesToTheNext) {
    // The first waiter, a coroutine, is woken to look at the connection given back; its
    // io_context is destroyed before it looks. The thread waiting behind it is woken instead,
    // at once, not at the end of its 10 s.
    auto pool = make({.max_size = 1});
    warm(pool);
    auto held = pool.connection();
    held.enter();
    auto io = std::make_unique<asio::io_context>();
    asio::co_spawn(*io,
                   ctxmgr::async_with(pool.async_connection(10s),
                                      [](sqlite::connection&) -> task<void> { co_return; }),
                   asio::detached);
    io->poll();
    ASSERT_EQ(pool.stats().waiting, 1U);
    std::chrono::steady_clock::duration waited{};
    std::thread second([&] {
        const auto asked = std::chrono::steady_clock::now();
        ctxmgr::with(pool.connection(10s), [](sqlite::connection&) {});
        waited = std::chrono::steady_clock::now() - asked;
    });
    ASSERT_TRUE(eventually([&] { return pool.stats().waiting == 2; }));
    held.exit(nullptr);  // the coroutine is woken to look; its resumption never runs
    io.reset();
    second.join();
    EXPECT_LT(waited, 5s);
    EXPECT_EQ(pool.stats().waiting, 0U);
    EXPECT_EQ(pool.stats().in_use, 0U);
}

TEST_F(AsyncPool, AWaiterWokenFromAnotherThreadBeforeItsWaitBeganIsServed) {
    // The queue hands the connection over from the returning thread, possibly between the
    // waiter's queueing and the start of its wait: many rounds on two threads.
    auto pool = make({.max_size = 1});
    warm(pool);
    asio::io_context io;
    int served = 0;
    std::atomic<bool> stop{false};
    std::thread other([&] {
        while (!stop.load()) {
            ctxmgr::with(pool.connection(10s), [](sqlite::connection&) {});
        }
    });
    for (int i = 0; i < 200; ++i) {
        asio::co_spawn(io,
                       ctxmgr::async_with(pool.async_connection(10s),
                                          [&](sqlite::connection&) -> task<void> {
                                              ++served;
                                              co_return;
                                          }),
                       [](std::exception_ptr e) {
                           if (e) std::rethrow_exception(e);
                       });
    }
    io.run();
    stop = true;
    other.join();
    EXPECT_EQ(served, 200);
    const auto s = pool.stats();
    EXPECT_EQ(s.waiting, 0U);
    EXPECT_EQ(s.in_use, 0U);
}

TEST_F(AsyncPool, ClosingThePoolEndsTheWaitWithClosedError) {
    auto pool = make({.max_size = 1});
    pool.suspend();
    asio::io_context io;
    std::exception_ptr outcome;
    asio::co_spawn(io,
                   ctxmgr::async_with(pool.async_connection(10s),
                                      [](sqlite::connection&) -> task<void> { co_return; }),
                   [&](std::exception_ptr e) { outcome = e; });
    io.poll();
    ASSERT_EQ(pool.stats().waiting, 1U);
    std::thread closer([&] { pool.close(1s); });
    io.run();  // returns once the waiter has its answer
    closer.join();
    ASSERT_TRUE(outcome);
    EXPECT_THROW(std::rethrow_exception(outcome), ctxmgr::closed_error);
}

TEST_F(AsyncPool, MaxWaitingTurnsAwayACoroutineBeyondIt) {
    auto pool = make({.max_size = 1, .max_waiting = 1});
    pool.suspend();
    asio::io_context io;
    std::exception_ptr first;
    std::exception_ptr second;
    auto borrow = [&] {
        return ctxmgr::async_with(pool.async_connection(10s),
                                  [](sqlite::connection&) -> task<void> { co_return; });
    };
    asio::co_spawn(io, borrow(), [&](std::exception_ptr e) { first = e; });
    asio::co_spawn(io, borrow(), [&](std::exception_ptr e) { second = e; });
    io.poll();
    ASSERT_TRUE(second);
    EXPECT_THROW(std::rethrow_exception(second), ctxmgr::too_many_waiters);
    pool.resume();
    io.run();
    EXPECT_FALSE(first);
    EXPECT_EQ(pool.metrics().refused, 1U);
}

TEST_F(AsyncPool, EnteredTwiceIsAProtocolErrorAndNeverEnteredIsReported) {
    auto pool = make();
    run_awaitable([&]() -> task<void> {
        auto borrow = pool.async_connection();
        co_await borrow.async_enter();
        EXPECT_FALSE(borrow.closed());
        EXPECT_THROW(co_await borrow.async_enter(), ctxmgr::protocol_error);
        borrow.exit(nullptr);
        EXPECT_TRUE(borrow.closed());
        EXPECT_THROW(borrow.exit(nullptr), ctxmgr::protocol_error);
    }());
    ctxmgr::testing::unraisable_log log;
    const unsigned line = __LINE__ + 1;
    { auto unused = pool.async_connection(); }
    const auto reports = log.reports();
    ASSERT_EQ(reports.size(), 1U);
    EXPECT_TRUE(ctxmgr::testing::reports_never_entered(reports[0], "pool::async_connection",
                                                       "async_pool_test.cpp", line))
        << reports[0];
    EXPECT_EQ(pool.stats().in_use, 0U);
}

// Threads borrowing synchronously and coroutines on a two-thread io_context, on one pool:
// never more lent than max_size, every borrow served.
TEST_F(AsyncPool, ThreadsAndCoroutinesOnSeveralThreadsShareOnePool) {
    auto pool = make({.max_size = 2});
    std::atomic<int> lent{0};
    std::atomic<int> most{0};
    std::atomic<int> borrows{0};
    auto begin_use = [&] {
        const int now = ++lent;
        int seen = most.load();
        while (now > seen && !most.compare_exchange_weak(seen, now)) {
        }
        ++borrows;
    };
    constexpr int rounds = 50;
    asio::io_context io;
    for (int i = 0; i < 8; ++i) {
        asio::co_spawn(
            io,
            [&]() -> task<void> {
                for (int r = 0; r < rounds; ++r) {
                    co_await ctxmgr::async_with(pool.async_connection(10s),
                                                [&](sqlite::connection&) -> task<void> {
                                                    begin_use();
                                                    co_await pause();
                                                    --lent;
                                                });
                }
            },
            asio::detached);
    }
    std::vector<std::thread> threads;
    for (int i = 0; i < 2; ++i) threads.emplace_back([&] { io.run(); });
    for (int i = 0; i < 2; ++i) {
        threads.emplace_back([&] {
            for (int r = 0; r < rounds; ++r) {
                ctxmgr::with(pool.connection(10s), [&](sqlite::connection&) {
                    begin_use();
                    std::this_thread::sleep_for(100us);
                    --lent;
                });
            }
        });
    }
    for (auto& t : threads) t.join();
    EXPECT_EQ(borrows.load(), 10 * rounds);
    EXPECT_LE(most.load(), 2);
    const auto s = pool.stats();
    EXPECT_EQ(s.in_use, 0U);
    EXPECT_EQ(s.waiting, 0U);
}

}  // namespace
