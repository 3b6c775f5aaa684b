// The borrowers waiting for a connection of a pool: first come, first served, each asleep on a
// futex word of its own (pool_core lends, hands over and wakes; see pool_core.hpp).
//
// Whoever takes a waiter off the queue other than the waiter itself (a returner handing it a
// connection, the creator, close()) does so under the pool's mutex and wakes it after
// unlocking. A futex word of its own rather than a condition variable of the pool's mutex:
// woken, the waiter finds what it was handed without taking the mutex again, and a waker never
// makes it wake to a mutex held. The wake's last touch of the waiter is the word's exchange;
// the futex call after it only names the address (a spurious wake-up of whatever waits there
// later is harmless, as every futex wait here checks its word again).
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <ctime>
#include <source_location>
#include <thread>

#include "ctxmgr/detail/deadline.hpp"
#include "ctxmgr/pool.hpp"
#include "support/threads.hpp"

namespace ctxmgr::detail {

struct pool_entry;

// A borrower waiting for a connection: on its own stack, or, for an asynchronous borrower,
// allocated by pool_core::acquire_async.
struct pool_waiter {
    pool_waiter* prev = nullptr;
    pool_waiter* next = nullptr;
    std::source_location where;
    std::chrono::steady_clock::time_point started;  // when its borrower asked
    pool_entry* handed = nullptr;                   // the connection handed to it
    bool dequeued = false;                          // by someone else, who wakes it
    bool overtaken = false;  // woken once for a connection another borrower took
    // An asynchronous borrower's: it has no thread asleep here, and the record is freed by
    // whoever takes it off the queue.
    pool_async_waiter* async = nullptr;
    // queued, then asleep (the waker must call the kernel), then released.
    enum : std::uint32_t { queued, asleep, released };
    std::atomic<std::uint32_t> state{queued};

    // Wakes it, after the pool's mutex was unlocked; the waiter may be gone when this returns.
    void release() noexcept {
        if (async != nullptr) {
            pool_async_waiter& woken = *async;
            delete this;  // NOLINT: allocated by acquire_async, unreachable from the queue
            woken.wake(woken);
            return;
        }
        if (state.exchange(released, std::memory_order_acq_rel) == asleep) futex_wake_one(state);
    }

    // Sleeps until release() or the deadline; true when released.
    bool wait(const detail::deadline& deadline) noexcept {
        const auto at = deadline.time_point().time_since_epoch();
        timespec until{};
        until.tv_sec = static_cast<time_t>(std::chrono::floor<std::chrono::seconds>(at).count());
        until.tv_nsec = static_cast<long>((at - std::chrono::floor<std::chrono::seconds>(at)) /
                                          std::chrono::nanoseconds(1));
        for (;;) {
            std::uint32_t now = state.load(std::memory_order_acquire);
            if (now == released) return true;
            if (deadline.expired()) return false;
            if (now == queued &&
                !state.compare_exchange_strong(now, asleep, std::memory_order_acquire)) {
                continue;  // released meanwhile
            }
            // steady_clock is CLOCK_MONOTONIC, FUTEX_WAIT_BITSET's clock.
            futex_wait(state, asleep, deadline.timed() ? &until : nullptr);
        }
    }

    // Waits until release() is done with this waiter (dequeued while it timed out: the
    // release is under way).
    void wait_released() const noexcept {
        while (state.load(std::memory_order_acquire) != released) std::this_thread::yield();
    }
};

// The queue itself, an intrusive list (queuing allocates nothing). Guarded by the pool's mutex.
class waiter_queue {
  public:
    [[nodiscard]] bool empty() const noexcept { return first_ == nullptr; }
    [[nodiscard]] std::size_t size() const noexcept { return size_; }
    // Requires !empty().
    [[nodiscard]] pool_waiter& front() const noexcept { return *first_; }

    // Queues `w` last, or first (a waiter overtaken once is served next).
    void push(pool_waiter& w, bool first) noexcept {
        if (first) {
            w.prev = nullptr;
            w.next = first_;
            (first_ != nullptr ? first_->prev : last_) = &w;
            first_ = &w;
        } else {
            w.prev = last_;
            w.next = nullptr;
            (last_ != nullptr ? last_->next : first_) = &w;
            last_ = &w;
        }
        ++size_;
    }

    // Takes `w` off the queue and marks it so: whoever calls this wakes it.
    pool_waiter& remove(pool_waiter& w) noexcept {
        (w.prev != nullptr ? w.prev->next : first_) = w.next;
        (w.next != nullptr ? w.next->prev : last_) = w.prev;
        w.prev = w.next = nullptr;
        w.dequeued = true;
        if (w.async != nullptr) w.async->queued = nullptr;
        --size_;
        return w;
    }

    template <class Visit>
    void for_each(Visit&& visit) const {
        for (const pool_waiter* w = first_; w != nullptr; w = w->next) visit(*w);
    }

  private:
    pool_waiter* first_ = nullptr;
    pool_waiter* last_ = nullptr;
    std::size_t size_ = 0;
};

}  // namespace ctxmgr::detail
