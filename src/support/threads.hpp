// What the layers of src/ share about threads and processes (internal): one spin lock, one
// numbering of threads, one count of forks. One of each, so that "thread 3" names the same
// thread in a leak report and in a lock-order report, and every component agrees on whether
// a process is the one that made an object or a child that inherited it.
#pragma once

#include <pthread.h>

#include <atomic>
#include <cstdint>
#include <thread>

namespace ctxmgr::detail {

inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
}

// Test-and-test-and-set: uncontended it is one exchange; waiting, it reads the cached line
// and yields the CPU after a while, so a reader holding it for a long list does not burn the
// owner's core. Constant-initialized and trivially destructible: usable during start-up and
// exit, and in the atfork handlers.
class spin_lock {
  public:
    void lock() noexcept {
        while (locked_.exchange(true, std::memory_order_acquire)) {
            for (int spins = 0; locked_.load(std::memory_order_relaxed); ++spins) {
                if (spins < 64) {
                    cpu_relax();
                } else {
                    std::this_thread::yield();
                }
            }
        }
    }
    void unlock() noexcept { locked_.store(false, std::memory_order_release); }

  private:
    std::atomic<bool> locked_{false};
};

inline constinit std::atomic<std::uint64_t> next_thread_number{1};
inline constinit thread_local std::uint64_t this_thread_number = 0;

// ctxmgr's number for the calling thread, from 1, given in the order threads first ask.
inline std::uint64_t thread_number() noexcept {
    if (this_thread_number == 0) {
        this_thread_number = next_thread_number.fetch_add(1, std::memory_order_relaxed);
    }
    return this_thread_number;
}

inline constinit std::atomic<std::uint32_t> forks_seen{0};

inline void count_fork_in_child() noexcept {
    forks_seen.fetch_add(1, std::memory_order_relaxed);
}

// How many forks lie between the first process and this one: 0 in a process that never
// forked from one that used ctxmgr. An object that records it at creation knows, when the
// count differs, that it was inherited by a child.
inline std::uint32_t fork_generation() noexcept {
    [[maybe_unused]] static const bool installed =
        ::pthread_atfork(nullptr, nullptr, &count_fork_in_child) == 0;
    return forks_seen.load(std::memory_order_relaxed);
}

}  // namespace ctxmgr::detail
