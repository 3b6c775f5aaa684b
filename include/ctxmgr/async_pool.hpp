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
//   - A waiting borrower's turn is in its coroutine's frame (the queue's record of it is the
//     one allocation), and one timer an io_context serves every waiter's deadline. An
//     io_context destroyed while coroutines wait takes them out of the queue, and a connection
//     handed to one goes back.
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
#include <asio/awaitable.hpp>
#include <asio/error.hpp>
#include <asio/redirect_error.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>

#include <chrono>
#include <exception>
#include <source_location>
#include <system_error>
#include <utility>

#include "detail/async_turn.hpp"
#include "detail/entry_check.hpp"
#include "pool.hpp"

namespace ctxmgr {

namespace detail {

// One borrower's turn in the pool's queue (detail/async_turn.hpp): the core wakes it from any
// thread; its cancellation and deadline withdraw it from the queue.
struct async_pool_turn : pool_async_waiter {
    async_pool_turn(pool_core& owner, const asio::any_io_executor& executor, const deadline& limit)
        : core(owner), turn(executor, limit, &withdraw, this) {
        wake = [](pool_async_waiter& waiter) noexcept {
            static_cast<async_pool_turn&>(waiter).turn.wake();
        };
    }

    static bool withdraw(void* context) noexcept {
        auto& self = *static_cast<async_pool_turn*>(context);
        return pool_withdraw(self.core, self);
    }

    pool_core& core;
    async_turn turn;
};

// A turn's place in the queue, left on every way out of the wait (async_turn::leave), also
// when the coroutine's frame is destroyed while it waits: then a connection handed to it goes
// back.
class async_pool_place {
  public:
    explicit async_pool_place(async_pool_turn& turn) noexcept : turn_(turn) {}
    async_pool_place(const async_pool_place&) = delete;
    async_pool_place& operator=(const async_pool_place&) = delete;
    ~async_pool_place() {
        if (!turn_.turn.left() && leave()) give_back();
    }

    // For a borrower leaving after the core took its turn: what was handed goes back, or the
    // wake to look goes to the next waiter.
    void give_back() noexcept {
        if (turn_.handed != nullptr) {
            pool_return_unused(turn_.core, *std::exchange(turn_.handed, nullptr));
        } else {
            pool_pass_wake(turn_.core);
        }
    }

    // True when the core took the turn off the queue (turn.handed says with what).
    bool leave() noexcept { return turn_.turn.leave(); }

  private:
    async_pool_turn& turn_;
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
        async_pool_place place(turn);
        asio::error_code error;
        try {
            co_await turn.turn.async_wait(asio::redirect_error(asio::use_awaitable, error));
        } catch (const std::system_error& cancelled) {
            error = cancelled.code();  // cancelled before the wait began
        }
        // Taken off the queue by the core also when the wait ended otherwise at the same
        // moment: what was handed is this borrower's.
        const bool by_core = place.leave();
        if (error && error != asio::error::timed_out) {
            if (by_core) place.give_back();
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
