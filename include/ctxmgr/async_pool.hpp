// ctxmgr/async_pool.hpp: borrowing from a ctxmgr::pool in a coroutine, without blocking its
// thread (link ctxmgr::async).
//
// pool.async_connection() is the async twin of pool.connection(): its async_enter() waits for
// a connection by suspending the coroutine, so one thread serves any number of borrowers
// waiting at once; its exit gives the connection back as connection()'s does (a transaction
// left open rolled back, a broken connection replaced), synchronously, since giving back
// never waits for another borrower.
//
//   ctxmgr::pool pool([] { return ctxmgr::sqlite::connect("app.db"); }, {.max_size = 4});
//   co_await ctxmgr::async_with(pool.async_connection(std::chrono::seconds(2)),
//       [](ctxmgr::sqlite::connection& db) -> asio::awaitable<void> {
//           db.execute("UPDATE t SET n = n + 1");
//           co_return;
//       });
//
// Guarantees:
//   - One queue: asynchronous and synchronous borrowers of a pool wait in the same queue,
//     first come, first served, with the same rule against starvation (pool.hpp).
//   - Deadline: async_enter() waits at most the timeout given (acquire_timeout by default),
//     then throws timeout_error as connection() does, naming the pool and its borrowers.
//   - Cancellation (Asio per-operation cancellation, e.g. `||` with a timer): a cancelled
//     borrower leaves the queue and takes nothing (a connection handed to it at that very
//     moment goes back to the pool unused); async_enter() then throws
//     std::system_error(asio::error::operation_aborted). async_with shields the exit, so a
//     connection borrowed is always given back.
//   - Errors: closed_error (the pool is closed, also while waiting), too_many_waiters
//     (max_waiting), protocol_error (entered twice). After any of them nothing is borrowed.
//   - Threads: the waiting borrower resumes on its coroutine's executor; the pool's own
//     threads only post to it. The manager and the connection lent are used by one coroutine
//     at a time. The pool must outlive async_enter() and the borrow, as with connection().
//   - A synchronous connection (sqlite, postgres::connection): checking an idle connection
//     before it is lent (after validate_after_idle: a ping, at most validation_timeout) and the
//     statements the body runs block the thread for their round trip.
//
// A pool of postgres::async_connection (async_postgres.hpp) blocks no borrower: the pool's
// thread connects (async_connection::open in the factory), the borrower's ping after
// validate_after_idle is awaited (async_ping), and the exit is async_exit: it awaits the
// rollback of a transaction left open (async_rollback_any) before giving the connection back.
// Such a pool lends only through async_connection(). The connections' executor's io_context
// must outlive the pool.
//
//   ctxmgr::pool pool([ex] { return ctxmgr::postgres::async_connection::open(ex, "dbname=app"); },
//                     {.max_size = 8});
//   co_await ctxmgr::async_with(pool.async_connection(),
//       [](ctxmgr::postgres::async_connection& db) -> asio::awaitable<void> {
//           co_await db.async_execute("UPDATE t SET n = n + 1");
//       });
#pragma once

#include <asio/any_io_executor.hpp>
#include <asio/associated_cancellation_slot.hpp>
#include <asio/async_result.hpp>
#include <asio/awaitable.hpp>
#include <asio/cancellation_signal.hpp>
#include <asio/error.hpp>
#include <asio/execution/context.hpp>
#include <asio/execution/outstanding_work.hpp>
#include <asio/execution_context.hpp>
#include <asio/post.hpp>
#include <asio/prefer.hpp>
#include <asio/query.hpp>
#include <asio/redirect_error.hpp>
#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <source_location>
#include <system_error>
#include <thread>
#include <type_traits>
#include <utility>

#include "detail/entry_check.hpp"
#include "pool.hpp"
#include "unraisable.hpp"

namespace ctxmgr {

namespace detail {

class async_pool_turn;

// The turns waiting in an execution context (an io_context), and their deadlines. One timer
// serves them all, set to the earliest (a timer a turn would cost its construction, its wait
// and its cancellation, for a deadline that most waits never reach); it is stopped when no
// turn waits, so that it never keeps the context's run() going by itself. When the context is
// destroyed with coroutines still waiting in a pool's queue, its shutdown destroys their
// handlers, and with them the coroutines, whose places then leave the queue (as Asio's own
// services do with the operations they hold).
class async_pool_waits final : public asio::execution_context::service {
  public:
    static inline asio::execution_context::id id;

    explicit async_pool_waits(asio::execution_context& context) : service(context) {}

    // The timer, made on the first turn's executor (the context's own, untracked).
    void prepare(const asio::any_io_executor& executor) {
        if (timer_made_.load(std::memory_order_acquire)) return;
        std::lock_guard lock(mutex_);
        if (!timer_) {
            timer_.emplace(asio::prefer(executor, asio::execution::outstanding_work.untracked));
        }
        timer_made_.store(true, std::memory_order_release);
    }
    void add(async_pool_turn& turn);
    void remove(async_pool_turn& turn) noexcept;

  private:
    using time_point = std::chrono::steady_clock::time_point;

    void shutdown() override;
    void arm(time_point at);  // under mutex_
    void expired(const asio::error_code& error);

    std::mutex mutex_;
    async_pool_turn* first_ = nullptr;
    // Destroyed by shutdown(), while the timers' service is there still.
    std::optional<asio::steady_timer> timer_;
    std::atomic<bool> timer_made_{false};
    time_point armed_at_ = time_point::max();  // none
};

// One turn in the pool's queue, awaited as an Asio operation of its own (async_wait): its
// completion handler is kept in the turn while the coroutine waits. Whatever ends the wait
// decides how: the core's wake (from any thread: posted to the waiter's executor, or left for
// async_wait to find when it comes before the wait has begun), the caller's cancellation
// (operation_aborted) or the deadline's timer (timed_out); the last two only when they take
// the turn off the queue themselves (pool_withdraw), so exactly one decides. The handler is
// called once the wait has begun, the decision is made and the timer's own handler has run:
// nothing then refers to the turn, which lives in the waiting coroutine's frame.
class async_pool_turn : public pool_async_waiter {
  public:
    // Before the turn is queued: a wake may come at once.
    async_pool_turn(pool_core& core, const asio::any_io_executor& executor, const deadline& limit)
        : core_(core),
          limit_(limit),
          work_(asio::prefer(executor, asio::execution::outstanding_work.tracked)),
          waits_(asio::use_service<async_pool_waits>(
              asio::query(executor, asio::execution::context))) {
        wake = &on_wake;
        waits_.prepare(executor);
    }
    async_pool_turn(const async_pool_turn&) = delete;
    async_pool_turn& operator=(const async_pool_turn&) = delete;
    ~async_pool_turn() = default;

    // Waits for the turn to end: the error is empty (woken), timed_out or operation_aborted.
    template <class Token>
    auto async_wait(Token&& token) {
        return asio::async_initiate<Token, void(asio::error_code)>(
            [this](auto handler) { this->start(std::move(handler)); }, token);
    }

    // True when the turn's cancellation or deadline took it off the queue (the core did not).
    [[nodiscard]] bool withdrawn() const noexcept { return withdrawn_; }
    // Set by the wake once it no longer touches the turn.
    std::atomic<bool> wake_done{false};

  private:
    friend class async_pool_waits;
    static constexpr std::size_t inline_size = 4 * sizeof(void*);

    template <class Handler>
    void start(Handler handler) {
        using stored = std::decay_t<Handler>;
        auto slot = asio::get_associated_cancellation_slot(handler);
        constexpr bool fits =
            sizeof(stored) <= inline_size && alignof(stored) <= alignof(std::max_align_t);
        // Takes the handler out of the turn, which the handler's coroutine may own.
        static constexpr auto take = [](async_pool_turn& t) {
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
        if constexpr (fits) {
            new (storage_) stored(std::move(handler));
        } else {
            heap_ = new stored(std::move(handler));  // NOLINT: the turn's until taken
        }
        invoke_handler_ = [](async_pool_turn& t, asio::error_code error) { take(t)(error); };
        destroy_handler_ = [](async_pool_turn& t) noexcept { static_cast<void>(take(t)); };
        waits_.add(*this);
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
        async_pool_turn* turn;
        void operator()(asio::cancellation_type_t type) const {
            if (type == asio::cancellation_type::none) return;
            if (!pool_withdraw(turn->core_, *turn)) return;  // the core's wake decides
            turn->withdrawn_ = true;
            turn->post([t = turn] { t->decide(asio::error::operation_aborted); });
        }
    };

    // From any thread. Before the wait has begun, the decision is left for start() to find
    // (nothing is posted: a coroutine cancelled before it began its wait never starts it).
    static void on_wake(pool_async_waiter& waiter) noexcept {
        auto& turn = static_cast<async_pool_turn&>(waiter);
        bool started = false;
        {
            std::lock_guard lock(turn.mutex_);
            started = turn.started_;
            if (!started) {
                turn.decided_ = true;
                --turn.pending_;
            }
        }
        if (started) turn.post([t = &turn] { t->decide(asio::error_code()); });
        turn.wake_done.store(true, std::memory_order_release);  // its last touch of the turn
    }

    template <class F>
    void post(F f) noexcept {
        try {
            asio::post(work_, std::move(f));
        } catch (...) {
            report_current_unraisable("async pool wait: could not post its end to its executor");
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

    pool_core& core_;
    deadline limit_;
    asio::any_io_executor work_;  // the waiter's executor, the wait counted as its work
    async_pool_waits& waits_;
    std::mutex mutex_;
    // Under mutex_: the steps left before the handler is called (the start and the
    // decision), whether the wait has begun, whether the decision is made, and what it is.
    int pending_ = 2;
    bool started_ = false;
    bool decided_ = false;
    asio::error_code error_;
    asio::cancellation_slot slot_;
    bool withdrawn_ = false;
    alignas(std::max_align_t) unsigned char storage_[inline_size];
    void* heap_ = nullptr;
    void (*invoke_handler_)(async_pool_turn&, asio::error_code) = nullptr;
    void (*destroy_handler_)(async_pool_turn&) noexcept = nullptr;
    // In async_pool_waits' list while waiting.
    async_pool_turn* prev_ = nullptr;
    async_pool_turn* next_ = nullptr;
    async_pool_turn* next_late_ = nullptr;  // among those async_pool_waits::expired decides
};

inline void async_pool_waits::add(async_pool_turn& turn) {
    std::lock_guard lock(mutex_);
    turn.prev_ = nullptr;
    turn.next_ = first_;
    if (first_ != nullptr) first_->prev_ = &turn;
    first_ = &turn;
    if (turn.limit_.timed() && turn.limit_.time_point() < armed_at_) {
        arm(turn.limit_.time_point());
    }
}

inline void async_pool_waits::remove(async_pool_turn& turn) noexcept {
    std::lock_guard lock(mutex_);
    if (turn.prev_ != nullptr) {
        turn.prev_->next_ = turn.next_;
    } else {
        first_ = turn.next_;
    }
    if (turn.next_ != nullptr) turn.next_->prev_ = turn.prev_;
    turn.prev_ = turn.next_ = nullptr;
    if (first_ == nullptr && armed_at_ != time_point::max()) {
        armed_at_ = time_point::max();
        timer_->cancel();  // its handler, called with operation_aborted, does nothing
    }
}

inline void async_pool_waits::arm(time_point at) {
    armed_at_ = at;
    timer_->expires_at(at);  // a wait set for a later deadline ends with operation_aborted
    timer_->async_wait([this](const asio::error_code& error) { expired(error); });
}

// The timer's deadline came: every turn whose deadline has passed and that this takes off its
// queue is decided timed_out (a turn the core took at that moment is the wake's), and the
// timer is set for the earliest deadline left.
inline void async_pool_waits::expired(const asio::error_code& error) {
    if (error) return;                // set again, or stopped
    async_pool_turn* late = nullptr;  // linked through next_late_
    {
        std::lock_guard lock(mutex_);
        const auto now = std::chrono::steady_clock::now();
        time_point next = time_point::max();
        for (async_pool_turn* t = first_; t != nullptr; t = t->next_) {
            if (!t->limit_.timed()) continue;
            if (t->limit_.time_point() > now) {
                next = std::min(next, t->limit_.time_point());
            } else if (pool_withdraw(t->core_, *t)) {
                t->withdrawn_ = true;
                t->next_late_ = late;
                late = t;
            }
        }
        armed_at_ = time_point::max();
        if (next != time_point::max()) arm(next);
    }
    // Each stays until decided: nothing else can decide a turn taken off its queue here.
    while (late != nullptr) {
        async_pool_turn* t = std::exchange(late, late->next_late_);
        t->decide(asio::error::timed_out);
    }
}

inline void async_pool_waits::shutdown() {
    // Nothing runs the context any more. Destroying a handler destroys its coroutine's frame,
    // and the turn in it: each is unlinked first.
    for (;;) {
        async_pool_turn* turn = nullptr;
        {
            std::lock_guard lock(mutex_);
            turn = first_;
            if (turn == nullptr) {
                armed_at_ = time_point::max();
                timer_.reset();
                return;
            }
            first_ = turn->next_;
            if (first_ != nullptr) first_->prev_ = nullptr;
            turn->prev_ = turn->next_ = nullptr;
        }
        turn->slot_ = asio::cancellation_slot();
        turn->work_ = asio::any_io_executor();
        if (turn->destroy_handler_ != nullptr) turn->destroy_handler_(*turn);
    }
}

// A turn's place in the queue, left on every way out of the wait: withdrawn when the core
// has not taken it off; otherwise held until the core's wake is over, so that the turn and the
// executor behind it outlive the wake. Also when the coroutine's frame is destroyed while it
// waits: then a connection handed to it goes back.
class async_pool_place {
  public:
    async_pool_place(pool_core& core, async_pool_turn& turn) noexcept : core_(core), turn_(turn) {}
    async_pool_place(const async_pool_place&) = delete;
    async_pool_place& operator=(const async_pool_place&) = delete;
    ~async_pool_place() {
        if (queued_ && leave() && turn_.handed != nullptr) {
            pool_return_unused(core_, *std::exchange(turn_.handed, nullptr));
        }
    }

    // True when the core took the turn off the queue (turn.handed says with what).
    bool leave() noexcept {
        queued_ = false;
        if (turn_.withdrawn() || pool_withdraw(core_, turn_)) return false;
        while (!turn_.wake_done.load(std::memory_order_acquire)) std::this_thread::yield();
        return true;
    }

  private:
    pool_core& core_;
    async_pool_turn& turn_;
    bool queued_ = true;
};

// pool_acquire's loop, with the waits awaited: a borrow asked at `started`, until `limit`.
inline asio::awaitable<pool_entry_base*> async_pool_acquire(
    pool_core& core, deadline limit, std::chrono::steady_clock::time_point started,
    std::source_location where) {
    const auto executor = co_await asio::this_coro::executor;
    bool overtaken = false;  // woken for a connection another borrower took first
    for (;;) {
        async_pool_turn turn(core, executor, limit);
        if (pool_entry_base* entry =
                pool_acquire_async(core, turn, overtaken, limit, started, where)) {
            co_return entry;
        }
        async_pool_place place(core, turn);
        asio::error_code error;
        try {
            co_await turn.async_wait(asio::redirect_error(asio::use_awaitable, error));
        } catch (const std::system_error& cancelled) {
            error = cancelled.code();  // cancelled before the wait began
        }
        // Taken off the queue by the core also when the wait ended otherwise at the same
        // moment: what was handed is this borrower's.
        const bool by_core = place.leave();
        if (error && error != asio::error::timed_out) {
            if (by_core && turn.handed != nullptr) pool_return_unused(core, *turn.handed);
            throw std::system_error(asio::error::operation_aborted,
                                    "a connection from " + pool_description(core));
        }
        overtaken = by_core && turn.handed == nullptr;
        if (pool_entry_base* entry = pool_take_handed(core, turn, limit, started)) {
            co_return entry;
        }
        // Woken to look again, or the deadline passed: the next turn lends, queues again
        // (first, when it was overtaken), or throws timeout_error.
    }
}

}  // namespace detail

// The manager pool.async_connection() returns (see the top of this header): async_enter()
// borrows and gives the connection to the body; exit() gives it back. It may be entered
// again after exit. Move-only; one never entered borrowed nothing, and its destructor
// reports that to the unraisable hook.
template <pool_connection Connection>
class [[nodiscard]] async_pooled_connection {
    static constexpr bool awaited = detail::awaited_connection<Connection>;

  public:
    async_pooled_connection(async_pooled_connection&&) noexcept = default;
    async_pooled_connection& operator=(async_pooled_connection&&) = delete;
    async_pooled_connection(const async_pooled_connection&) = delete;
    async_pooled_connection& operator=(const async_pooled_connection&) = delete;
    // Gives back a connection entered and never exited.
    ~async_pooled_connection() = default;

    // Waits for a connection. Throws timeout_error, closed_error, too_many_waiters,
    // std::system_error(operation_aborted) when cancelled, protocol_error when entered twice.
    asio::awaitable<std::reference_wrapper<Connection>> async_enter() {
        check_.entered();
        if (loan_.held()) {
            throw protocol_error(detail::pool_description(loan_.core()) +
                                 ": async pooled connection entered twice");
        }
        detail::pool_core& core = loan_.core();
        // Served at once, as most borrows are: no clock read, no turn in the queue.
        if (detail::pool_entry_base* entry = detail::pool_try_acquire_fresh(core, check_.where())) {
            co_return std::ref(loan_.hold(entry, check_.where()));
        }
        const auto started = std::chrono::steady_clock::now();
        const detail::deadline limit = detail::pool_deadline(core, timeout_, started);
        for (;;) {
            detail::pool_entry_base* entry =
                co_await detail::async_pool_acquire(core, limit, started, check_.where());
            if constexpr (awaited) {
                if (entry->ping_due && !co_await answers(core, *entry, limit)) continue;
            }
            co_return std::ref(loan_.hold(entry, check_.where()));
        }
    }

    // As pooled_connection::exit. For a connection whose statements are awaited, async_exit
    // instead: it awaits the rollback (async_rollback_any).
    void exit(const std::exception_ptr& e) requires(!awaited) {
        if (!loan_.held()) {
            throw protocol_error("async pooled connection exited without being entered");
        }
        loan_.give_back(e);
    }
    asio::awaitable<void> async_exit(std::exception_ptr e) requires awaited {
        if (!loan_.held()) {
            throw protocol_error("async pooled connection exited without being entered");
        }
        Connection& c = *loan_.get();
        bool reusable = c.is_open();
        std::exception_ptr failure;
        // Nothing to roll back (most borrows): not even async_rollback_any's frame.
        if (reusable && c.transaction_state() != db::transaction_state::idle) {
            try {
                co_await c.async_rollback_any();
                reusable = c.is_open();
            } catch (...) {
                reusable = false;
                failure = detail::pool_loan<Connection>::rollback_failure(std::current_exception());
            }
        }
        loan_.finish(reusable, failure, e);
    }

    // True when no connection is borrowed (before async_enter(), after exit).
    [[nodiscard]] bool closed() const noexcept { return !loan_.held(); }
    // The borrowed connection; nullptr when not entered.
    [[nodiscard]] Connection* get() const noexcept { return loan_.get(); }

  private:
    friend class pool<Connection>;

    async_pooled_connection(detail::pool_core& core, std::chrono::nanoseconds timeout,
                            std::source_location where) noexcept
        : loan_(core), timeout_(timeout), check_(where) {}

    // The ping of `entry`, lent ping_due: true when it answered; otherwise the connection is
    // destroyed. Cancelled, the connection goes back unused (destroyed when the cancel left
    // it closed) and the cancellation goes on.
    static asio::awaitable<bool> answers(detail::pool_core& core, detail::pool_entry_base& entry,
                                         const detail::deadline& limit) {
        Connection& c = *static_cast<Connection*>(entry.connection);
        bool answered = false;
        try {
            answered = co_await c.async_ping(detail::pool_ping_timeout(core, limit));
        } catch (...) {
            detail::pool_return_unused(core, entry, c.is_open());
            throw;
        }
        if (!answered) detail::pool_failed_ping(core, entry);
        co_return answered;
    }

    detail::pool_loan<Connection> loan_;
    std::chrono::nanoseconds timeout_;
    [[no_unique_address]] detail::entry_check<"pool::async_connection"> check_;
};

}  // namespace ctxmgr
