// The pool's mutex (src/support/threads.hpp): mutual exclusion under more threads than cores,
// sleepers woken, try_lock; and the CPU number its parking spots are chosen by.
#include <gtest/gtest.h>
#include <sched.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "cpu_affinity.hpp"
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

// Where the kernel keeps the thread's CPU in its rseq area, that CPU, followed as the thread
// is moved; elsewhere (valgrind) a number that tells this thread from another.
TEST(CurrentCpuOrThread, IsTheCpuAThreadIsPinnedTo) {
    const std::vector<int> cpus = ctxmgr::testing::allowed_cpus();
    std::exception_ptr thrown;
    std::thread([&] {
        int checked = 0;
        for (const int cpu : cpus) {
            if (checked == 4) break;
            try {
                ctxmgr::testing::pin_this_thread(cpu);
            } catch (...) {
                thrown = std::current_exception();
                return;
            }
            if (::sched_getcpu() != cpu) continue;  // not moved yet: nothing to compare
            const unsigned seen = ctxmgr::detail::current_cpu_or_thread();
#if defined(__x86_64__) && __has_include(<sys/rseq.h>)
            if (__rseq_size != 0) {
                EXPECT_EQ(seen, static_cast<unsigned>(cpu));
            } else {
                EXPECT_EQ(seen, ctxmgr::detail::thread_number());
            }
#else
            EXPECT_EQ(seen, ctxmgr::detail::thread_number());
#endif
            ++checked;
        }
        EXPECT_GT(checked, 0);
    }).join();
    if (thrown) std::rethrow_exception(thrown);
}

}  // namespace
