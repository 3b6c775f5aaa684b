// ctxmgr/detail/async_turn.hpp: a coroutine's turn in a queue that other threads serve (the
// pool's borrowers, async_mutex's waiters), awaited as an Asio operation of its own.
//
// The turn lives in the waiting coroutine's frame; its completion handler is kept in the turn
// while the coroutine waits. Whatever ends the wait decides how:
//   - the queue's owner, which took the turn off its queue, calls wake() from any thread: the
//     decision is posted to the waiter's executor (or, when the wait has not begun yet, left
//     for async_wait to find);
//   - the caller's cancellation (operation_aborted) or the deadline (timed_out), each only
//     when it takes the turn off its queue itself (the withdraw function given), so exactly one
//     decides.
// The handler is called once the wait has begun and the decision is made: nothing then refers
// to the turn. After the wait (or instead of it, when the coroutine is cancelled before it
// begins), leave() says whether the owner took the turn, waiting for its wake to be over.
//
// One timer an execution context serves the deadlines of all its turns (async_turn_waits),
// set to the earliest, and stopped when no turn waits. When the context is destroyed with
// coroutines waiting, its shutdown destroys their handlers, and with them the coroutines,
// whose frames then leave their queues (as Asio's own services do with their operations).
#pragma once

#include <asio/any_io_executor.hpp>
#include <asio/associated_cancellation_slot.hpp>
#include <asio/async_result.hpp>
#include <asio/cancellation_signal.hpp>
#include <asio/error.hpp>
#include <asio/execution/context.hpp>
#include <asio/execution/outstanding_work.hpp>
#include <asio/execution_context.hpp>
#include <asio/post.hpp>
#include <asio/prefer.hpp>
#include <asio/query.hpp>
#include <asio/steady_timer.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <thread>
#include <type_traits>
#include <utility>

#include "../unraisable.hpp"
#include "deadline.hpp"

namespace ctxmgr::detail {

class async_turn;

// The turns waiting in an execution context (an io_context), and the one timer their
// deadlines share (a timer a turn would cost its construction, its wait and its cancellation,
// for a deadline that most waits never reach).
class async_turn_waits final : public asio::execution_context::service {
  public:
    static inline asio::execution_context::id id;

    explicit async_turn_waits(asio::execution_context& context) : service(context) {}

    // The timer, made on the first turn's executor (untracked; a pending wait counts as the
    // context's work all the same, which is why remove() stops it when no turn is left).
    void prepare(const asio::any_io_executor& executor) {
        if (timer_made_.load(std::memory_order_acquire)) return;
        std::lock_guard lock(mutex_);
        if (!timer_) {
            timer_.emplace(asio::prefer(executor, asio::execution::outstanding_work.untracked));
        }
        timer_made_.store(true, std::memory_order_release);
    }
    void add(async_turn& turn);
    void remove(async_turn& turn) noexcept;

  private:
    using time_point = std::chrono::steady_clock::time_point;

    void shutdown() override;
    void unlink(async_turn& turn) noexcept;  // under mutex_
    void arm(time_point at);                 // under mutex_
    void expired(const asio::error_code& error);

    std::mutex mutex_;
    async_turn* first_ = nullptr;
    // Destroyed by shutdown(), while the timers' service is there still.
    std::optional<asio::steady_timer> timer_;
    std::atomic<bool> timer_made_{false};
    time_point armed_at_ = time_point::max();  // none
};

class async_turn {
  public:
    // Takes the turn off its queue: true; false when the queue's owner took it (its wake
    // comes, or came). Called with `context`; once it has said true, never again.
    using withdraw_function = bool (*)(void* context) noexcept;

    // Before the turn is queued: a wake may come at once.
    async_turn(const asio::any_io_executor& executor, const deadline& limit,
               withdraw_function withdraw, void* context)
        : limit_(limit),
          withdraw_(withdraw),
          context_(context),
          work_(asio::prefer(executor, asio::execution::outstanding_work.tracked)),
          waits_(asio::use_service<async_turn_waits>(
              asio::query(executor, asio::execution::context))) {
        waits_.prepare(executor);
    }
    async_turn(const async_turn&) = delete;
    async_turn& operator=(const async_turn&) = delete;
    ~async_turn() = default;

    // Waits for the turn to end: the error is empty (woken), timed_out or operation_aborted.
    template <class Token>
    auto async_wait(Token&& token) {
        return asio::async_initiate<Token, void(asio::error_code)>(
            [this](auto handler) { this->start(std::move(handler)); }, token);
    }

    // By the queue's owner, from any thread, once it has taken the turn off its queue. Before
    // the wait has begun, the decision is left for it to find (nothing is posted: a coroutine
    // cancelled before it began its wait never starts it).
    // Under the turn's lock, so that a shutdown of the context meanwhile (which detaches the
    // turn) is seen: nothing is posted then.
    void wake() noexcept {
        {
            std::lock_guard lock(mutex_);
            if (!started_) {
                decided_ = true;
                --pending_;
            } else if (!detached_) {
                post([this] { decide(asio::error_code()); });
            }
        }
        wake_done_.store(true, std::memory_order_release);  // its last touch of the turn
    }

    // After the wait, or instead of it: true when the queue's owner took the turn (its wake
    // is over when this returns); false when the turn was withdrawn (by its cancellation or
    // deadline, or now). Called once: left() says whether it was.
    [[nodiscard]] bool leave() noexcept {
        left_ = true;
        {
            std::lock_guard lock(mutex_);
            if (withdrawn_ || withdraw_(context_)) return false;
        }
        while (!wake_done_.load(std::memory_order_acquire)) std::this_thread::yield();
        return true;
    }

    // Whether leave() was called: a frame destroyed while it waits has not.
    [[nodiscard]] bool left() const noexcept { return left_; }

  private:
    friend class async_turn_waits;
    static constexpr std::size_t inline_size = 4 * sizeof(void*);

    // For the cancellation and the deadline: true when this takes the turn off its queue, and
    // so decides; at most once, whichever comes first.
    bool withdraw_once() noexcept {
        std::lock_guard lock(mutex_);
        if (withdrawn_ || decided_ || !withdraw_(context_)) return false;
        withdrawn_ = true;
        return true;
    }

    template <class Handler>
    void start(Handler handler) {
        using stored = std::decay_t<Handler>;
        auto slot = asio::get_associated_cancellation_slot(handler);
        constexpr bool fits =
            sizeof(stored) <= inline_size && alignof(stored) <= alignof(std::max_align_t);
        // Takes the handler out of the turn, which the handler's coroutine may own.
        static constexpr auto take = [](async_turn& t) {
            t.invoke_handler_ = nullptr;
            t.destroy_handler_ = nullptr;
            if constexpr (fits) {
                auto* h = std::launder(reinterpret_cast<stored*>(t.storage_));
                stored local(std::move(*h));
                h->~stored();
                return local;
            } else {
                std::unique_ptr<stored> h(static_cast<stored*>(std::exchange(t.heap_, nullptr)));
                return stored(std::move(*h));
            }
        };
        // Asio runs this inside the coroutine's await_suspend, which is noexcept: a bad_alloc
        // here (arming the timer, a handler too large for the turn) ends the program, as it
        // does in Asio's own operations.
        waits_.add(*this);
        if constexpr (fits) {
            new (storage_) stored(std::move(handler));
        } else {
            heap_ = new stored(std::move(handler));  // NOLINT: the turn's until taken
        }
        invoke_handler_ = [](async_turn& t, asio::error_code error) { take(t)(error); };
        destroy_handler_ = [](async_turn& t) noexcept { static_cast<void>(take(t)); };
        bool last = false;
        {
            std::lock_guard lock(mutex_);
            started_ = true;
            if (!decided_ && slot.is_connected()) {
                slot_ = slot;
                slot.template emplace<canceller>(this);
            }
            last = --pending_ == 0;
        }
        if (last) post([this] { finish(); });  // woken before the wait began
    }

    struct canceller {
        async_turn* turn;
        void operator()(asio::cancellation_type_t type) const {
            if (type == asio::cancellation_type::none) return;
            if (!turn->withdraw_once()) return;  // the owner's wake decides, or the deadline did
            turn->post([t = turn] { t->decide(asio::error::operation_aborted); });
        }
    };

    template <class F>
    void post(F f) noexcept {
        try {
            asio::post(work_, std::move(f));
        } catch (...) {
            report_current_unraisable("async wait: could not post its end to its executor");
        }
    }

    // On the waiter's executor.
    void decide(asio::error_code error) {
        bool last = false;
        {
            std::lock_guard lock(mutex_);
            error_ = error;
            decided_ = true;
            last = --pending_ == 0;
        }
        if (last) finish();
    }

    void finish() {
        waits_.remove(*this);
        if (slot_.is_connected()) slot_.clear();
        work_ = asio::any_io_executor();
        invoke_handler_(*this, error_);
    }

    deadline limit_;
    withdraw_function withdraw_;
    void* context_;
    asio::any_io_executor work_;  // the waiter's executor, the wait counted as its work
    async_turn_waits& waits_;
    std::mutex mutex_;
    // Under mutex_: the steps left before the handler is called (the start and the
    // decision), whether the wait has begun, whether the decision is made, and what it is.
    int pending_ = 2;
    bool started_ = false;
    bool decided_ = false;
    asio::error_code error_;
    asio::cancellation_slot slot_;
    bool withdrawn_ = false;  // by its cancellation or deadline (under mutex_ until the end)
    bool detached_ = false;   // by the context's shutdown (under mutex_)
    std::atomic<bool> wake_done_{false};
    bool left_ = false;  // by its coroutine
    alignas(std::max_align_t) unsigned char storage_[inline_size];
    void* heap_ = nullptr;
    void (*invoke_handler_)(async_turn&, asio::error_code) = nullptr;
    void (*destroy_handler_)(async_turn&) noexcept = nullptr;
    // In async_turn_waits' list while waiting.
    async_turn* prev_ = nullptr;
    async_turn* next_ = nullptr;
    async_turn* next_late_ = nullptr;  // among those async_turn_waits::expired decides
};

inline void async_turn_waits::add(async_turn& turn) {
    std::lock_guard lock(mutex_);
    turn.prev_ = nullptr;
    turn.next_ = first_;
    if (first_ != nullptr) first_->prev_ = &turn;
    first_ = &turn;
    if (turn.limit_.timed() && turn.limit_.time_point() < armed_at_) {
        arm(turn.limit_.time_point());
    }
}

inline void async_turn_waits::unlink(async_turn& turn) noexcept {
    if (turn.prev_ != nullptr) {
        turn.prev_->next_ = turn.next_;
    } else {
        first_ = turn.next_;
    }
    if (turn.next_ != nullptr) turn.next_->prev_ = turn.prev_;
    turn.prev_ = turn.next_ = nullptr;
}

inline void async_turn_waits::remove(async_turn& turn) noexcept {
    std::lock_guard lock(mutex_);
    unlink(turn);
    if (first_ == nullptr && armed_at_ != time_point::max()) {
        armed_at_ = time_point::max();
        timer_->cancel();  // its handler, called with operation_aborted, does nothing
    }
}

inline void async_turn_waits::arm(time_point at) {
    armed_at_ = at;
    timer_->expires_at(at);  // a wait set for a later deadline ends with operation_aborted
    timer_->async_wait([this](const asio::error_code& error) { expired(error); });
}

// The timer's deadline came: every turn whose deadline has passed and that this takes off its
// queue is decided timed_out (a turn the owner took at that moment is its wake's), and the
// timer is set for the earliest deadline left.
inline void async_turn_waits::expired(const asio::error_code& error) {
    if (error) return;           // set again, or stopped
    async_turn* late = nullptr;  // linked through next_late_
    {
        std::lock_guard lock(mutex_);
        const auto now = std::chrono::steady_clock::now();
        time_point next = time_point::max();
        for (async_turn* t = first_; t != nullptr; t = t->next_) {
            if (!t->limit_.timed()) continue;
            if (t->limit_.time_point() > now) {
                next = std::min(next, t->limit_.time_point());
            } else if (t->withdraw_once()) {
                t->next_late_ = late;
                late = t;
            }
        }
        armed_at_ = time_point::max();
        if (next != time_point::max()) arm(next);
    }
    // Each stays until decided: nothing else can decide a turn taken off its queue here. The
    // decision is posted to the turn's own executor (this runs on the timer's).
    while (late != nullptr) {
        async_turn* t = std::exchange(late, late->next_late_);
        t->post([t] { t->decide(asio::error::timed_out); });
    }
}

inline void async_turn_waits::shutdown() {
    // Nothing runs the context any more. Destroying a handler destroys its coroutine's frame,
    // and the turn in it: each is unlinked first.
    for (;;) {
        async_turn* turn = nullptr;
        {
            std::lock_guard lock(mutex_);
            turn = first_;
            if (turn == nullptr) {
                armed_at_ = time_point::max();
                timer_.reset();
                return;
            }
            unlink(*turn);
        }
        {
            std::lock_guard lock(turn->mutex_);  // a wake from another thread posts nothing now
            turn->detached_ = true;
            turn->work_ = asio::any_io_executor();
        }
        if (turn->slot_.is_connected()) turn->slot_.clear();  // the signal may outlive the turn
        if (turn->destroy_handler_ != nullptr) turn->destroy_handler_(*turn);
    }
}

}  // namespace ctxmgr::detail
