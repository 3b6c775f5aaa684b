// ctxmgr/async_mutex.hpp: a lock coroutines hold across co_await without blocking a thread.
//
// asyncio.Lock for Asio. A coroutine waiting for the lock suspends (its thread runs other
// work); waiters are served first come, first served, and the lock is handed to the next
// waiter directly on unlock(), so a newcomer cannot overtake the queue. The wait can be
// bounded (timeout_error) and cancelled (Asio per-operation cancellation: std::system_error
// with asio::error::operation_aborted). A waiter costs no allocation of its own: its turn
// lives in its coroutine's frame (detail/async_turn.hpp).
//
//   ctxmgr::async_mutex m;
//   co_await ctxmgr::async_with(m.lock(), [&]() -> asio::awaitable<void> {
//       co_await write_all(socket, buffer);           // no other writer meanwhile
//   });
//   co_await ctxmgr::async_with(ctxmgr::async_lock(m, std::chrono::milliseconds(50)), body);
//
// m.lock(timeout) and async_lock(m, timeout) return a manager whose async_enter() waits and
// whose exit() unlocks synchronously (releasing never waits, so it needs no exit coroutine).
// A lock granted at the moment the wait times out or is cancelled is kept: the acquisition
// succeeds, and the cancellation shows at the caller's next co_await.
//
// Thread-safe: lock, try_lock and unlock may be called from any thread, strand or executor;
// a waiter resumes on its own executor. The mutex must outlive every waiter and holder;
// destroying it while locked is a precondition violation. A waiter whose io_context is
// destroyed leaves the queue (and passes on the lock if it was being handed to it).
#pragma once

#include <asio/any_io_executor.hpp>
#include <asio/awaitable.hpp>
#include <asio/error.hpp>
#include <asio/redirect_error.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>

#include <chrono>
#include <cstdio>
#include <exception>
#include <mutex>
#include <optional>
#include <string>
#include <system_error>

#include "detail/async_turn.hpp"
#include "detail/deadline.hpp"
#include "errors.hpp"

namespace ctxmgr {

class async_mutex;

// The manager m.lock() returns: waits for m in async_enter(), unlocks in exit(). Unlocks in
// its destructor if it was entered and never exited.
class [[nodiscard]] async_lock_guard {
  public:
    async_lock_guard(async_mutex& m, std::optional<std::chrono::nanoseconds> timeout) noexcept
        : mutex_(&m), timeout_(timeout) {}
    async_lock_guard(async_lock_guard&& other) noexcept
        : mutex_(other.mutex_),
          timeout_(other.timeout_),
          held_(std::exchange(other.held_, false)) {}
    async_lock_guard& operator=(async_lock_guard&&) = delete;
    async_lock_guard(const async_lock_guard&) = delete;
    async_lock_guard& operator=(const async_lock_guard&) = delete;
    ~async_lock_guard();

    // Waits for the lock. Throws timeout_error, the cancellation's std::system_error, or
    // protocol_error if this guard holds the lock already.
    asio::awaitable<void> async_enter();
    void exit(const std::exception_ptr&) noexcept;

  private:
    async_mutex* mutex_;
    std::optional<std::chrono::nanoseconds> timeout_;
    bool held_ = false;
};

class async_mutex {
  public:
    async_mutex() = default;
    async_mutex(const async_mutex&) = delete;
    async_mutex& operator=(const async_mutex&) = delete;

    // Takes the lock if it is free and nobody waits. Never blocks.
    [[nodiscard]] bool try_lock() noexcept {
        std::lock_guard guard(state_);
        if (locked_) return false;
        locked_ = true;
        return true;
    }

    // Waits for the lock without a time limit; throws the cancellation's std::system_error.
    asio::awaitable<void> async_lock() { return wait(std::nullopt); }

    // Waits at most `timeout`; throws timeout_error ("timed out after 50 ms waiting for
    // async_mutex 0x...") or the cancellation's std::system_error.
    asio::awaitable<void> async_lock(std::chrono::nanoseconds timeout) { return wait(timeout); }

    // Hands the lock to the first waiter, or frees it. Requires the lock to be held.
    void unlock() noexcept {
        waiter* next = nullptr;
        {
            std::lock_guard guard(state_);
            next = first_;
            if (next == nullptr) {
                locked_ = false;
                return;
            }
            unlink(*next);
            next->granted = true;
        }
        next->turn.wake();
    }

    // The manager: co_await async_with(m.lock(), body), or m.lock(timeout).
    [[nodiscard]] async_lock_guard lock() noexcept { return {*this, std::nullopt}; }
    [[nodiscard]] async_lock_guard lock(std::chrono::nanoseconds timeout) noexcept {
        return {*this, timeout};
    }

  private:
    // A waiter's place in the queue (first come, first served), in its coroutine's frame.
    struct waiter {
        waiter(async_mutex& m, const asio::any_io_executor& executor, const detail::deadline& limit)
            : mutex(m), turn(executor, limit, &withdraw, this) {}
        waiter(const waiter&) = delete;
        waiter& operator=(const waiter&) = delete;
        // A coroutine destroyed while it waits leaves the queue, or passes on the lock handed
        // to it.
        ~waiter() {
            if (!turn.left() && turn.leave()) mutex.unlock();
        }

        // False only when granted: otherwise nobody wakes it any more (out of the queue now,
        // or never in it: the lock was free after all).
        static bool withdraw(void* context) noexcept {
            auto& self = *static_cast<waiter*>(context);
            std::lock_guard guard(self.mutex.state_);
            if (self.granted) return false;
            if (self.queued) self.mutex.unlink(self);
            return true;
        }

        async_mutex& mutex;
        detail::async_turn turn;
        waiter* prev = nullptr;  // guarded by the mutex's state_, as the rest
        waiter* next = nullptr;
        bool queued = false;
        bool granted = false;
    };

    void unlink(waiter& w) noexcept {
        (w.prev != nullptr ? w.prev->next : first_) = w.next;
        (w.next != nullptr ? w.next->prev : last_) = w.prev;
        w.prev = w.next = nullptr;
        w.queued = false;
    }

    asio::awaitable<void> wait(std::optional<std::chrono::nanoseconds> timeout) {
        if (try_lock()) co_return;
        waiter self(*this, co_await asio::this_coro::executor, detail::deadline::after(timeout));
        {
            std::lock_guard guard(state_);
            if (!locked_) {
                locked_ = true;
                co_return;
            }
            self.prev = last_;
            (last_ != nullptr ? last_->next : first_) = &self;
            last_ = &self;
            self.queued = true;
        }
        std::exception_ptr failure;
        asio::error_code error;
        try {
            co_await self.turn.async_wait(asio::redirect_error(asio::use_awaitable, error));
        } catch (...) {
            failure = std::current_exception();  // cancelled before the wait began
        }
        // Granted at the moment the wait timed out or was cancelled: kept.
        if (self.turn.leave()) co_return;
        if (failure) std::rethrow_exception(failure);
        if (error == asio::error::timed_out) throw timeout_error(describe(), *timeout);
        throw std::system_error(error ? error : asio::error::operation_aborted,
                                "lock " + describe());
    }

    std::string describe() const {
        char buffer[48];
        std::snprintf(buffer, sizeof buffer, "async_mutex %p", static_cast<const void*>(this));
        return buffer;
    }

    std::mutex state_;
    bool locked_ = false;
    waiter* first_ = nullptr;  // the queue
    waiter* last_ = nullptr;
};

inline async_lock_guard::~async_lock_guard() {
    if (held_) mutex_->unlock();
}

inline asio::awaitable<void> async_lock_guard::async_enter() {
    if (held_) throw protocol_error("async_lock_guard: entered again before exit");
    if (timeout_) {
        co_await mutex_->async_lock(*timeout_);
    } else {
        co_await mutex_->async_lock();
    }
    held_ = true;
}

inline void async_lock_guard::exit(const std::exception_ptr&) noexcept {
    if (std::exchange(held_, false)) mutex_->unlock();
}

// async_lock(m) or async_lock(m, timeout): the manager m.lock() returns.
[[nodiscard]] inline async_lock_guard async_lock(async_mutex& m) noexcept {
    return m.lock();
}
[[nodiscard]] inline async_lock_guard async_lock(async_mutex& m,
                                                 std::chrono::nanoseconds timeout) noexcept {
    return m.lock(timeout);
}

}  // namespace ctxmgr
