// What the layers of src/ share about threads and processes (internal): one spin lock, one
// mutex for short sections under contention, one numbering of threads, one count of forks. One of
// each, so that "thread 3" names the same thread in a leak report and in a lock-order report, and
// every component agrees on whether a process is the one that made an object or a child that
// inherited it.
#pragma once

#include <linux/futex.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>
#if __has_include(<sys/rseq.h>)
#include <sys/rseq.h>
#endif

#include <atomic>
#include <cstdint>
#include <ctime>
#include <thread>

namespace ctxmgr::detail {

inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
}

// A futex on `word`, private to the process: futex_wait sleeps while `word` holds `expected`
// (until woken, interrupted, or the CLOCK_MONOTONIC time `until` when given); the caller
// checks the word again in every case. futex_wake_one wakes one thread asleep on it.
inline void futex_wait(std::atomic<std::uint32_t>& word, std::uint32_t expected,
                       const timespec* until = nullptr) noexcept {
    ::syscall(SYS_futex, &word, FUTEX_WAIT_BITSET_PRIVATE, expected, until, nullptr,
              FUTEX_BITSET_MATCH_ANY);
}

inline void futex_wake_one(std::atomic<std::uint32_t>& word) noexcept {
    ::syscall(SYS_futex, &word, FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr, 0);
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

// A mutex for sections of a few dozen instructions taken by more threads than there are
// cores (the pool's). Taken, it is most often held by a thread running on another core that
// lets go within that time: a few tries first, then a sleep on a futex (std::mutex sleeps at
// once, and its wake-up costs a microsecond or more). Uncontended, lock and unlock are one
// atomic instruction each, inline; unlock calls the kernel only when a thread sleeps. The
// three-state futex mutex of Drepper's "Futexes Are Tricky".
class futex_mutex {
  public:
    void lock() noexcept {
        if (try_lock()) [[likely]] {
            return;
        }
        lock_contended();
    }

    [[nodiscard]] bool try_lock() noexcept {
        std::uint32_t expected = unlocked;
        return state_.compare_exchange_strong(expected, locked, std::memory_order_acquire);
    }

    void unlock() noexcept {
        if (state_.exchange(unlocked, std::memory_order_release) == sleepers) [[unlikely]] {
            futex_wake_one(state_);
        }
    }

  private:
    // Tries before sleeping. At 8 threads on a pool of 4 and two cores, the pool's borrow and
    // return took 299-342 ns on a std::mutex and 216-233 ns on this (bench/pool_bench's
    // borrow_return_paired, three runs each); 4 to 256 tries measured alike within the noise.
    static constexpr int tries = 16;
    // locked: held, nobody asleep; sleepers: held, and someone may sleep on it.
    enum : std::uint32_t { unlocked, locked, sleepers };

    void lock_contended() noexcept {
        for (int i = 0; i < tries; ++i) {
            cpu_relax();
            std::uint32_t expected = state_.load(std::memory_order_relaxed);
            if (expected == unlocked &&
                state_.compare_exchange_strong(expected, locked, std::memory_order_acquire)) {
                return;
            }
        }
        // Whoever takes it now marks it as having sleepers: it cannot tell that it has none.
        while (state_.exchange(sleepers, std::memory_order_acquire) != unlocked) {
            futex_wait(state_, sleepers);
        }
    }

    std::atomic<std::uint32_t> state_{unlocked};
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

// The CPU the calling thread runs on, read where the kernel keeps it up to date in the
// thread's restartable-sequences area (which glibc 2.35 and later register for every
// thread): two loads, no call (sched_getcpu() is a call into the C library, and a system
// call where it cannot read that area). Without one (an older glibc or kernel, or a tool
// such as valgrind that does not support rseq), the thread's number instead: its callers
// want threads on different cores told apart, and different threads are.
inline unsigned current_cpu_or_thread() noexcept {
#if defined(__x86_64__) && __has_include(<sys/rseq.h>)
    if (__rseq_size != 0) [[likely]] {
        const char* thread_pointer = nullptr;
        // volatile: never reused across a point where the caller may move to another thread.
        asm volatile("mov %%fs:0, %0" : "=r"(thread_pointer));
        // The kernel's number, or (unsigned) -1 or -2 where this thread has no area.
        const std::uint32_t cpu =
            reinterpret_cast<const volatile rseq*>(thread_pointer + __rseq_offset)->cpu_id;
        if (static_cast<std::int32_t>(cpu) >= 0) [[likely]] {
            return cpu;
        }
    }
#endif
    return static_cast<unsigned>(thread_number());
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
