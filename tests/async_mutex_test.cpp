#include <ctxmgr/async_mutex.hpp>
#include <ctxmgr/async_with.hpp>

#include <gtest/gtest.h>
#include <asio/bind_cancellation_slot.hpp>
#include <asio/cancellation_signal.hpp>
#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/io_context.hpp>
#include <asio/post.hpp>
#include <asio/strand.hpp>

#include <atomic>
#include <chrono>
#include <exception>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "async_recording.hpp"
#include "recording.hpp"

namespace {

using ctxmgr::testing::contains;
using ctxmgr::testing::pause;
using ctxmgr::testing::run_awaitable;
using ctxmgr::testing::test_error;
using namespace std::chrono_literals;

template <class T>
using task = asio::awaitable<T>;

// Whether nobody holds `m`: it is taken and given back at once.
::testing::AssertionResult is_free(ctxmgr::async_mutex& m) {
    if (!m.try_lock()) return ::testing::AssertionFailure() << "the async_mutex is held";
    m.unlock();
    return ::testing::AssertionSuccess();
}

TEST(AsyncMutex, HeldAcrossAwaitsAndReleasedByAsyncWithOnEveryPath) {
    ctxmgr::async_mutex m;
    static_assert(ctxmgr::async_context_manager<ctxmgr::async_lock_guard>);
    run_awaitable(ctxmgr::async_with(m.lock(), [&]() -> task<void> {
        co_await pause();
        EXPECT_FALSE(m.try_lock());
    }));
    EXPECT_TRUE(is_free(m));
    EXPECT_THROW(run_awaitable(ctxmgr::async_with(ctxmgr::async_lock(m, 1s),
                                                  []() -> task<void> {
                                                      co_await pause();
                                                      throw test_error("x");
                                                  })),
                 test_error);
    EXPECT_TRUE(is_free(m));
}

TEST(AsyncMutex, WaitersAreServedInArrivalOrder) {
    ctxmgr::async_mutex m;
    asio::io_context io;
    std::vector<int> order;
    ASSERT_TRUE(m.try_lock());
    auto waiter = [&](int id) -> task<void> {
        co_await ctxmgr::async_with(m.lock(), [&]() -> task<void> {
            order.push_back(id);
            co_await pause(1ms);
        });
    };
    for (int id = 1; id <= 4; ++id) asio::co_spawn(io, waiter(id), asio::detached);
    // Let all four queue up, then release: a newcomer arriving now must queue behind them.
    asio::co_spawn(
        io,
        [&]() -> task<void> {
            co_await pause(5ms);
            asio::co_spawn(io, waiter(5), asio::detached);
            m.unlock();
        },
        asio::detached);
    io.run();
    EXPECT_EQ(order, (std::vector<int>{1, 2, 3, 4, 5}));
    EXPECT_TRUE(is_free(m));
}

TEST(AsyncMutex, AWaitThatTimesOutThrowsTimeoutErrorAndLeavesTheQueue) {
    ctxmgr::async_mutex m;
    ASSERT_TRUE(m.try_lock());
    try {
        run_awaitable(m.async_lock(20ms));
        FAIL() << "expected timeout_error";
    } catch (const ctxmgr::timeout_error& e) {
        EXPECT_TRUE(contains(e.what(), "timed out after 20 ms waiting for async_mutex 0x"))
            << e.what();
        EXPECT_EQ(e.waited(), 20ms);
    }
    m.unlock();  // nobody left waiting: the lock is free
    EXPECT_TRUE(is_free(m));
}

TEST(AsyncMutex, AWaitCanBeCancelled) {
    ctxmgr::async_mutex m;
    ASSERT_TRUE(m.try_lock());
    asio::io_context io;
    asio::cancellation_signal signal;
    std::exception_ptr outcome;
    bool done = false;
    bool body_ran = false;
    auto main = [&]() -> task<void> {
        co_await ctxmgr::async_with(m.lock(), [&]() -> task<void> {
            body_ran = true;
            co_return;
        });
    };
    asio::co_spawn(io, main(),
                   asio::bind_cancellation_slot(signal.slot(), [&](std::exception_ptr e) {
                       outcome = e;
                       done = true;
                   }));
    asio::post(io, [&] { signal.emit(asio::cancellation_type::terminal); });
    io.run();
    ASSERT_TRUE(done);
    EXPECT_TRUE(ctxmgr::holds<std::system_error>(outcome)) << ctxmgr::describe(outcome);
    EXPECT_FALSE(body_ran);
    m.unlock();
    EXPECT_TRUE(is_free(m));
}

TEST(AsyncMutex, WaitersOfADestroyedIoContextLeaveTheQueueAndPassOnTheLock) {
    ctxmgr::async_mutex m;
    ASSERT_TRUE(m.try_lock());
    bool any_ran = false;
    {
        asio::io_context io;
        for (int i = 0; i < 3; ++i) {
            asio::co_spawn(io,
                           ctxmgr::async_with(m.lock(10s),
                                              [&]() -> task<void> {
                                                  any_ran = true;
                                                  co_return;
                                              }),
                           asio::detached);
        }
        io.poll();
        m.unlock();  // handed to the first waiter, whose resumption never runs
    }
    EXPECT_FALSE(any_ran);
    // The waiter handed the lock passed it on as it was destroyed; the others had left.
    EXPECT_TRUE(is_free(m));
}

TEST(AsyncMutex, AWaiterCancelledTwiceLeavesTheQueueOnceAndTheOthersKeepTheirPlaces) {
    ctxmgr::async_mutex m;
    ASSERT_TRUE(m.try_lock());
    asio::io_context io;
    asio::cancellation_signal cancel;
    std::exception_ptr first_outcome;
    bool second_got_it = false;
    asio::co_spawn(io, m.async_lock(10s),
                   asio::bind_cancellation_slot(cancel.slot(),
                                                [&](std::exception_ptr e) { first_outcome = e; }));
    asio::co_spawn(
        io,
        [&]() -> task<void> {
            co_await m.async_lock(10s);
            second_got_it = true;
            m.unlock();
        },
        asio::detached);
    io.poll();
    // Two cancellations before the first one's outcome has run: one withdrawal.
    asio::post(io, [&] {
        cancel.emit(asio::cancellation_type::terminal);
        cancel.emit(asio::cancellation_type::terminal);
    });
    io.poll();
    m.unlock();  // the second waiter, still queued, is handed the lock
    io.run();
    EXPECT_TRUE(ctxmgr::holds<std::system_error>(first_outcome)) << ctxmgr::describe(first_outcome);
    EXPECT_TRUE(second_got_it);
    EXPECT_TRUE(is_free(m));
}

TEST(AsyncMutex, EnteringAHeldGuardAgainIsAProtocolError) {
    ctxmgr::async_mutex m;
    run_awaitable([&]() -> task<void> {
        auto guard = m.lock();
        co_await guard.async_enter();
        EXPECT_THROW(co_await guard.async_enter(), ctxmgr::protocol_error);
        guard.exit(nullptr);
    }());
    EXPECT_TRUE(is_free(m));
}

// Coroutines on strands of a two-thread pool: never two inside at once, none lost.
TEST(AsyncMutex, ExcludesCoroutinesOnOtherStrandsAndThreads) {
    ctxmgr::async_mutex m;
    asio::io_context io;
    constexpr int strands = 4;
    constexpr int rounds = 100;
    int counter = 0;  // guarded by m only
    std::atomic<int> inside{0};
    std::atomic<int> overlaps{0};
    auto worker = [&]() -> task<void> {
        auto executor = co_await asio::this_coro::executor;
        for (int i = 0; i < rounds; ++i) {
            co_await ctxmgr::async_with(m.lock(5s), [&]() -> task<void> {
                if (inside.fetch_add(1) != 0) overlaps.fetch_add(1);
                const int seen = counter;
                co_await asio::post(executor, asio::use_awaitable);  // hold it across a suspension
                counter = seen + 1;
                inside.fetch_sub(1);
            });
        }
    };
    for (int s = 0; s < strands; ++s) {
        asio::co_spawn(asio::make_strand(io), worker(), [](std::exception_ptr e) {
            if (e) std::rethrow_exception(e);
        });
    }
    std::thread second([&] { io.run(); });
    io.run();
    second.join();
    EXPECT_EQ(counter, strands * rounds);
    EXPECT_EQ(overlaps.load(), 0);
}

}  // namespace
