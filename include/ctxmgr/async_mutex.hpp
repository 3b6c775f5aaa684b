// ctxmgr/async_mutex.hpp: a lock coroutines hold across co_await without blocking a thread.
//
// asyncio.Lock for Asio. A coroutine waiting for the lock suspends (its thread runs other
// work); waiters are served first come, first served, and the lock is handed to the next
// waiter directly on unlock(), so a newcomer cannot overtake the queue. The wait can be
// bounded (timeout_error) and cancelled (Asio per-operation cancellation: std::system_error
// with asio::error::operation_aborted or the channel's cancellation code).
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
// destroying it while locked is a precondition violation.
#pragma once

#include <asio/any_io_executor.hpp>
#include <asio/awaitable.hpp>
#include <asio/error.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/experimental/concurrent_channel.hpp>
#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <system_error>

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
        std::shared_ptr<waiter> next;
        {
            std::lock_guard guard(state_);
            if (queue_.empty()) {
                locked_ = false;
                return;
            }
            next = std::move(queue_.front());
            queue_.pop_front();
            next->granted = true;
        }
        next->channel.try_send(asio::error_code(), true);
    }

    // The manager: co_await async_with(m.lock(), body), or m.lock(timeout).
    [[nodiscard]] async_lock_guard lock() noexcept { return {*this, std::nullopt}; }
    [[nodiscard]] async_lock_guard lock(std::chrono::nanoseconds timeout) noexcept {
        return {*this, timeout};
    }

  private:
    struct waiter {
        explicit waiter(const asio::any_io_executor& executor) : channel(executor, 1) {}
        // The bool is unused: Asio 1.22's channels cannot carry an error_code alone.
        asio::experimental::concurrent_channel<void(asio::error_code, bool)> channel;
        bool granted = false;  // guarded by state_
    };

    asio::awaitable<void> wait(std::optional<std::chrono::nanoseconds> timeout) {
        if (try_lock()) co_return;
        auto executor = co_await asio::this_coro::executor;
        auto self = std::make_shared<waiter>(executor);
        {
            std::lock_guard guard(state_);
            if (!locked_) {
                locked_ = true;
                co_return;
            }
            queue_.push_back(self);
        }
        std::optional<asio::steady_timer> timer;
        if (timeout) {
            timer.emplace(executor, *timeout);
            timer->async_wait([self](const asio::error_code& error) {
                if (!error) self->channel.try_send(asio::error_code(asio::error::timed_out), false);
            });
        }
        std::exception_ptr failure;
        asio::error_code error;
        try {
            auto [received, unused] = co_await self->channel.async_receive(
                asio::experimental::as_tuple(asio::use_awaitable));
            static_cast<void>(unused);
            error = received;
        } catch (...) {
            failure = std::current_exception();  // cancelled before the wait began
        }
        if (timer) timer->cancel();
        {
            std::lock_guard guard(state_);
            if (self->granted) co_return;
            queue_.erase(std::find(queue_.begin(), queue_.end(), self));
        }
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
    std::deque<std::shared_ptr<waiter>> queue_;
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
