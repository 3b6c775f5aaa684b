// ctxmgr/lock.hpp: mutexes as context managers, with timeouts, several at once, and a
// lock-order checker that reports possible deadlocks before they happen.
//
// Python's `with lock:` for any C++ mutex. Each manager locks in enter() and unlocks in
// exit(), so with() and exit_stack acquire in the order the managers are written:
//
//   std::mutex m, a, b;
//   std::timed_mutex t;
//   std::shared_mutex s;
//   int counter = 0;
//   ctxmgr::with(ctxmgr::lock(m), [&] { ++counter; });      // exactly m.lock(), m.unlock()
//   ctxmgr::with(ctxmgr::lock(a, b), [&] { ++counter; });   // std::lock's algorithm: no deadlock
//   ctxmgr::with(ctxmgr::lock_for(std::chrono::milliseconds(50), t),
//                [&] { ++counter; });                        // or ctxmgr::timeout_error
//   ctxmgr::with(ctxmgr::shared(s), [&] { return counter; });
//
//   lock(m...)              lock() each, deadlock-free for several (std::lock); unlock() in
//                           reverse order. Any BasicLockable; several need try_lock() too.
//   lock_for(d, m...)       the same, waiting at most d; throws timeout_error. Several: one
//   lock_until(t, m...)     deadline for all (lock one until it, try the others, back off
//                           and rotate). Needs try_lock_until (std::timed_mutex, ...).
//   shared(m)               lock_shared() / unlock_shared() (std::shared_mutex, ...).
//   shared_for(d, m), shared_until(t, m)
//
// Cost: lock(m) compiles to what std::scoped_lock does (docs/performance.md: the same
// instruction count). That is why these managers do NOT register with the leak tracker: a
// registration costs about 20 ns, several times an uncontended lock. file_lock.hpp's
// file_lock, a system resource, does.
//
// Guarantees:
//   - enter() throws what lock() throws (std::system_error), timeout_error (timed managers:
//     naming each lock by type and address, the one still busy, the manager's source line
//     and the time waited), or protocol_error (entered again before exit; the same mutex
//     passed twice). After any failure nothing is locked.
//   - exit() and the destructor never throw; the destructor unlocks what a manager entered
//     and never exited. A manager may be entered again after exit.
//   - Made and never entered, a manager locks nothing: `auto guard = ctxmgr::lock(m);` is
//     not a guard. Its destructor says so, with a protocol_error naming the manager and its
//     line, to the unraisable hook (detail/entry_check.hpp). Free when with() enters it.
//   - Timed waits run against std::chrono::steady_clock: lock_for's duration counts from
//     enter(); lock_until converts another clock's time point to a steady deadline when the
//     manager is made, so a jump of the wall clock neither ends nor prolongs the wait. A
//     duration <= 0 (or a past time point) tries each lock once.
//   - Thread-compatible: a manager is used by one thread at a time (the thread that unlocks
//     must be the one that locked, as for the standard mutexes); distinct managers of the
//     same mutexes are what threads share.
//
// Lock-order checking (CTXMGR_LOCK_ORDER_CHECK=1: the CMake option, on in the debug, asan
// and tsan presets). The library records, for each thread, which ctxmgr-managed locks it
// holds when it takes another, as a graph "A held while B taken", like Linux's lockdep and
// abseil's Mutex deadlock detector. The first time a new edge closes a cycle (A then B in
// one place, B then A in another), even if no deadlock happened, it passes a report naming
// the acquisition sites of every edge of the cycle (file:line and function) to the handler
// set with set_lock_order_handler (default: print to stderr and abort). The check runs
// before the thread blocks, so a real deadlock is reported too. Rules:
//   - The mutexes of one lock(a, b) call are taken as a set, in no order: no edge between
//     them, so the std::lock algorithm is never reported.
//   - Timed acquisitions count like blocking ones (an inversion between them turns into
//     timeouts under load). A thread taking a lock it already holds adds no edge; for the
//     standard non-recursive mutexes it is reported (it deadlocks, or is undefined).
//   - A mutex is identified by its address. When a mutex is destroyed, another may reuse its
//     address and inherit its recorded order: call forget_lock_order(m) before destroying a
//     mutex whose address may be reused by one used in another order (a mutex in a
//     reallocated vector, say). File locks are identified by their canonical path.
//   - The handler runs on the reporting thread, before the lock is taken, with no checker
//     lock held. If it throws, the exception propagates from enter() and nothing is locked.
// With CTXMGR_LOCK_ORDER_CHECK=0 (the default and release builds) the hooks are empty
// inline functions: no checker code runs and the managers carry no extra state.
#pragma once

#include <chrono>
#include <exception>
#include <functional>
#include <memory>
#include <source_location>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>

#include "detail/lock.hpp"
#include "errors.hpp"

namespace ctxmgr {

// True when this build checks lock order (CTXMGR_LOCK_ORDER_CHECK=1).
inline constexpr bool lock_order_check_enabled = CTXMGR_LOCK_ORDER_CHECK != 0;

// Receives a lock-order report: several lines, the first saying what was found.
using lock_order_handler = std::function<void(std::string_view report)>;

// Writes "ctxmgr: <report>" to stderr and aborts.
[[noreturn]] void default_lock_order_handler(std::string_view report) noexcept;

// Installs `handler` and returns the previous one, which can be installed again; an empty
// handler restores the default. Thread-safe; a report uses the handler installed when it
// started. In a build without the checker no report is ever made. Throws std::bad_alloc.
lock_order_handler set_lock_order_handler(lock_order_handler handler);

// lock(m1, ..., mN): locks in enter(), unlocks in reverse order in exit(). One mutex: exactly
// m.lock() and m.unlock(). Several: std::lock(m1, ..., mN), which cannot deadlock against
// another thread locking an overlapping set in another order. Moving an entered manager moves
// the hold.
// To pass `where` explicitly, name the types: ctxmgr::lock<std::mutex>(m, where).
template <class... Ms>
class [[nodiscard]] lock final : public detail::lock_base<detail::manager_kind::lock, Ms...> {
    static_assert((detail::basic_lockable<Ms> && ...),
                  "ctxmgr::lock: every argument must be a non-const mutex lvalue with lock() and "
                  "unlock() (BasicLockable)");
    static_assert(sizeof...(Ms) == 1 || (detail::lockable<Ms> && ...),
                  "ctxmgr::lock of several mutexes needs try_lock() on each (Lockable), for the "
                  "deadlock-free std::lock algorithm");

  public:
    // Every manager here declares its destructor, to have it always inlined even on with()'s
    // exception path (see CTXMGR_LOCK_INLINE): with the never-entered report GCC would
    // otherwise call it out of line there, +4 instructions. Hence the declared move too.
    lock(lock&&) noexcept = default;
    CTXMGR_LOCK_INLINE ~lock() = default;
    explicit lock(Ms&... mutexes,
                  std::source_location where = std::source_location::current()) noexcept
        : detail::lock_base<detail::manager_kind::lock, Ms...>(where, mutexes...) {}

    // Locks. Throws what lock() throws, or protocol_error when entered again before exit or
    // given the same mutex twice; then nothing is locked.
    void enter() { this->enter_blocking(); }
};

template <class... Ms>
lock(Ms&...) -> lock<Ms...>;

// lock_for(d, m1, ..., mN): lock, waiting at most d from enter(), then timeout_error. With
// several, one deadline bounds the whole deadlock-free algorithm.
template <class... Ms>
class [[nodiscard]] lock_for final
    : public detail::lock_base<detail::manager_kind::lock_for, Ms...> {
    static_assert((detail::timed_lockable<Ms> && ...),
                  "ctxmgr::lock_for needs timed mutexes (try_lock(), try_lock_until()): "
                  "std::timed_mutex, std::recursive_timed_mutex, std::shared_timed_mutex");

  public:
    lock_for(lock_for&&) noexcept = default;
    CTXMGR_LOCK_INLINE ~lock_for() = default;
    template <class Rep, class Period>
    explicit lock_for(const std::chrono::duration<Rep, Period>& timeout, Ms&... mutexes,
                      std::source_location where = std::source_location::current()) noexcept
        : detail::lock_base<detail::manager_kind::lock_for, Ms...>(where, mutexes...),
          timeout_(detail::steady_duration(timeout)) {}

    // Locks within the timeout. Throws timeout_error, what try_lock_until throws, or
    // protocol_error (see lock); then nothing is locked.
    void enter() { this->enter_within(timeout_); }

  private:
    std::chrono::steady_clock::duration timeout_;
};

template <class Rep, class Period, class... Ms>
lock_for(const std::chrono::duration<Rep, Period>&, Ms&...) -> lock_for<Ms...>;

// lock_until(t, m1, ..., mN): lock by the time point t of any clock, then timeout_error.
template <class... Ms>
class [[nodiscard]] lock_until final
    : public detail::lock_base<detail::manager_kind::lock_until, Ms...> {
    static_assert((detail::timed_lockable<Ms> && ...),
                  "ctxmgr::lock_until needs timed mutexes (try_lock(), try_lock_until()): "
                  "std::timed_mutex, std::recursive_timed_mutex, std::shared_timed_mutex");

  public:
    lock_until(lock_until&&) noexcept = default;
    CTXMGR_LOCK_INLINE ~lock_until() = default;
    template <class Clock, class Duration>
    explicit lock_until(const std::chrono::time_point<Clock, Duration>& deadline, Ms&... mutexes,
                        std::source_location where = std::source_location::current())
        : detail::lock_base<detail::manager_kind::lock_until, Ms...>(where, mutexes...),
          deadline_(detail::deadline::at(deadline)) {}

    // As lock_for's.
    void enter() { this->enter_until(std::chrono::steady_clock::now(), deadline_); }

  private:
    detail::deadline deadline_;
};

template <class Clock, class Duration, class... Ms>
lock_until(const std::chrono::time_point<Clock, Duration>&, Ms&...) -> lock_until<Ms...>;

// shared(m): lock_shared() in enter(), unlock_shared() in exit().
template <class M>
class [[nodiscard]] shared final : public detail::lock_base<detail::manager_kind::shared, M> {
    static_assert(detail::shared_lockable<M>,
                  "ctxmgr::shared needs a shared mutex (lock_shared(), unlock_shared()): "
                  "std::shared_mutex, std::shared_timed_mutex");

  public:
    shared(shared&&) noexcept = default;
    CTXMGR_LOCK_INLINE ~shared() = default;
    explicit shared(M& mutex, std::source_location where = std::source_location::current()) noexcept
        : detail::lock_base<detail::manager_kind::shared, M>(where, mutex) {}

    // Locks shared. Throws what lock_shared() throws, or protocol_error when entered again
    // before exit; then nothing is locked.
    void enter() { this->enter_blocking(); }
};

template <class M>
shared(M&) -> shared<M>;

// shared_for(d, m): lock shared, waiting at most d from enter(), then timeout_error.
template <class M>
class [[nodiscard]] shared_for final
    : public detail::lock_base<detail::manager_kind::shared_for, M> {
    static_assert(detail::shared_timed_lockable<M>,
                  "ctxmgr::shared_for needs a timed shared mutex (try_lock_shared_until()): "
                  "std::shared_timed_mutex");

  public:
    shared_for(shared_for&&) noexcept = default;
    CTXMGR_LOCK_INLINE ~shared_for() = default;
    template <class Rep, class Period>
    explicit shared_for(const std::chrono::duration<Rep, Period>& timeout, M& mutex,
                        std::source_location where = std::source_location::current()) noexcept
        : detail::lock_base<detail::manager_kind::shared_for, M>(where, mutex),
          timeout_(detail::steady_duration(timeout)) {}

    // As lock_for's.
    void enter() { this->enter_within(timeout_); }

  private:
    std::chrono::steady_clock::duration timeout_;
};

template <class Rep, class Period, class M>
shared_for(const std::chrono::duration<Rep, Period>&, M&) -> shared_for<M>;

// shared_until(t, m): lock shared by the time point t of any clock, then timeout_error.
template <class M>
class [[nodiscard]] shared_until final
    : public detail::lock_base<detail::manager_kind::shared_until, M> {
    static_assert(detail::shared_timed_lockable<M>,
                  "ctxmgr::shared_until needs a timed shared mutex (try_lock_shared_until()): "
                  "std::shared_timed_mutex");

  public:
    shared_until(shared_until&&) noexcept = default;
    CTXMGR_LOCK_INLINE ~shared_until() = default;
    template <class Clock, class Duration>
    explicit shared_until(const std::chrono::time_point<Clock, Duration>& deadline, M& mutex,
                          std::source_location where = std::source_location::current())
        : detail::lock_base<detail::manager_kind::shared_until, M>(where, mutex),
          deadline_(detail::deadline::at(deadline)) {}

    // As lock_for's.
    void enter() { this->enter_until(std::chrono::steady_clock::now(), deadline_); }

  private:
    detail::deadline deadline_;
};

template <class Clock, class Duration, class M>
shared_until(const std::chrono::time_point<Clock, Duration>&, M&) -> shared_until<M>;

// Forgets what the lock-order checker learned about m, before m is destroyed and its
// address reused by a mutex taken in another order. Does nothing without the checker.
template <class M>
void forget_lock_order([[maybe_unused]] const M& m) noexcept {
#if CTXMGR_LOCK_ORDER_CHECK
    detail::order_forget(static_cast<const void*>(std::addressof(m)));
#endif
}

}  // namespace ctxmgr

#undef CTXMGR_LOCK_INLINE
