// The pool's mutex (src/support/threads.hpp): mutual exclusion under more threads than cores,
// sleepers woken, try_lock.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

#include "support/threads.hpp"

namespace {

using namespace std::chrono_literals;
using ctxmgr::detail::futex_mutex;

TEST(FutexMutex, ExcludesUnderMoreThreadsThanCores) {
    futex_mutex mutex;
    std::uint64_t counter = 0;  // not atomic: the mutex alone orders the increments
    constexpr int threads = 16;
    constexpr int rounds = 20'000;
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t) {
        workers.emplace_back([&] {
            for (int i = 0; i < rounds; ++i) {
                std::lock_guard lock(mutex);
                ++counter;
            }
        });
    }
    for (auto& w : workers) w.join();
    EXPECT_EQ(counter, std::uint64_t{threads} * rounds);
}

TEST(FutexMutex, AThreadAsleepOnItIsWokenByUnlock) {
    futex_mutex mutex;
    mutex.lock();
    std::atomic<bool> taken{false};
    std::thread waiter([&] {
        std::lock_guard lock(mutex);  // beyond the tries: asleep in the kernel
        taken = true;
    });
    std::this_thread::sleep_for(50ms);
    EXPECT_FALSE(taken.load());
    mutex.unlock();
    waiter.join();
    EXPECT_TRUE(taken.load());
}

TEST(FutexMutex, TryLockFailsWhileHeldAndSucceedsAfter) {
    futex_mutex mutex;
    ASSERT_TRUE(mutex.try_lock());
    std::thread other([&] { EXPECT_FALSE(mutex.try_lock()); });
    other.join();
    mutex.unlock();
    std::thread again([&] {
        EXPECT_TRUE(mutex.try_lock());
        mutex.unlock();
    });
    again.join();
}

}  // namespace
