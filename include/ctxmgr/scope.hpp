// ctxmgr/scope.hpp: the try ... finally family as scope guards.
//
// A guard runs a function when its scope ends: finally always, scope_fail only when the scope
// ends by an exception, scope_success only when it does not.
//
//   void transfer(account& from, account& to, money amount) {
//       from.withdraw(amount);
//       ctxmgr::scope_fail refund([&] { from.deposit(amount); });
//       to.deposit(amount);               // throws: refund runs
//   }                                     // returns: refund does not run
//
//   ctxmgr::finally([&] { unlock(); });        // WRONG: a temporary, runs at once (warns)
//   ctxmgr::finally unlock_later([&] { unlock(); });   // right: runs at the end of the scope
//
// A guard judges failure by the number of exceptions in flight (std::uncaught_exceptions)
// compared with when it was made, so it is right inside a destructor that runs during
// unwinding. release() disarms it.
//
// Guarantees:
//   - The destructor never throws: an exception from the function goes to the unraisable
//     hook (unraisable.hpp). Write a with() and a manager when the error must propagate.
//   - If storing the function throws (its copy or move), finally and scope_fail run the
//     original at once and the exception propagates: nothing is left undone even when the
//     guard cannot be built. scope_success does not run it (the scope did not succeed).
//   - The function is moved in when that cannot throw, else copied.
//   - Thread-compatible. A guard created on one thread and destroyed on another (a coroutine
//     resumed elsewhere, say) compares exception counts of different threads: keep guards
//     out of coroutine frames that change threads.
//
// Not a context manager: a guard is the RAII half; with() and exit_stack are the other half.
#pragma once

#include <exception>
#include <functional>
#include <type_traits>
#include <utility>

#include "unraisable.hpp"

namespace ctxmgr {

namespace detail {

// When a guard runs its function.
enum class run_on { always, failure, success };

// The logic of finally, scope_fail and scope_success, written once; each of those is a class
// template of its own (not an alias of this one) because class template argument deduction
// does not work through alias templates on every compiler (Clang 16 has none, GCC 12 only
// part of C++20's), and `ctxmgr::finally g(f);` must deduce.
template <class F, run_on When>
class [[nodiscard]] scope_guard {
    static_assert(!std::is_reference_v<F> && !std::is_const_v<F>,
                  "ctxmgr scope guards hold their function by value; pass a callable, not a "
                  "reference type");
    static_assert(std::is_invocable_v<F&>,
                  "ctxmgr scope guards need a function callable with no arguments");

    // Moving in is safe only if it cannot throw; otherwise copy, so the original remains
    // for the fallback call.
    template <class G>
    static constexpr bool move_in = std::is_nothrow_constructible_v<F, G&&> ||
                                    !std::is_constructible_v<F, const std::remove_reference_t<G>&>;

    template <class G>
    static decltype(auto) pass(G& function) noexcept {
        if constexpr (move_in<G>) {
            return std::forward<G>(function);
        } else {
            return static_cast<const std::remove_reference_t<G>&>(function);
        }
    }

  protected:
    // What a guard is made from: anything F can be made from, except another guard (guards
    // move with their move constructors, and never copy).
    template <class G>
    static constexpr bool accepts =
        !std::is_base_of_v<scope_guard, std::remove_cvref_t<G>> && std::is_constructible_v<F, G>;

    template <class G>
    requires accepts<G>
    explicit scope_guard(G&& function) noexcept(std::is_nothrow_constructible_v<F, G&&>) try
        : function_(pass<G>(function)), exceptions_(std::uncaught_exceptions()) {
    } catch (...) {
        if constexpr (When != run_on::success) function();
        // A function-try-block on a constructor rethrows here.
    }

    scope_guard(scope_guard&& other) noexcept(
        std::is_nothrow_move_constructible_v<F>) requires std::is_move_constructible_v<F>
        : function_(std::move(other.function_)),
          exceptions_(other.exceptions_),
          active_(std::exchange(other.active_, false)) {}

  public:
    scope_guard(const scope_guard&) = delete;
    scope_guard& operator=(const scope_guard&) = delete;
    scope_guard& operator=(scope_guard&&) = delete;

    ~scope_guard() {
        if (!active_) return;
        if constexpr (When == run_on::failure) {
            if (std::uncaught_exceptions() <= exceptions_) return;
        } else if constexpr (When == run_on::success) {
            if (std::uncaught_exceptions() > exceptions_) return;
        }
        try {
            std::invoke(function_);
        } catch (...) {
            report_current_unraisable(When == run_on::always    ? "ctxmgr::finally"
                                      : When == run_on::failure ? "ctxmgr::scope_fail"
                                                                : "ctxmgr::scope_success");
        }
    }

    // Disarms the guard: its function will not run. Idempotent.
    void release() noexcept { active_ = false; }

    // True until release() (or a move from this guard).
    [[nodiscard]] bool active() const noexcept { return active_; }

  private:
    F function_;
    int exceptions_;
    bool active_ = true;
};

}  // namespace detail

// Runs f when the scope ends, however it ends.
template <class F>
class [[nodiscard]] finally final : public detail::scope_guard<F, detail::run_on::always> {
    using guard = detail::scope_guard<F, detail::run_on::always>;

  public:
    // Declared in each guard rather than inherited: GCC 12 warns about a discarded
    // temporary guard only through a [[nodiscard]] constructor of the class itself.
    template <class G>
    requires(guard::template accepts<G>) [[nodiscard]] explicit finally(G&& function) noexcept(
        std::is_nothrow_constructible_v<F, G&&>)
        : guard(std::forward<G>(function)) {}
};

// Runs f when the scope ends by an exception.
template <class F>
class [[nodiscard]] scope_fail final : public detail::scope_guard<F, detail::run_on::failure> {
    using guard = detail::scope_guard<F, detail::run_on::failure>;

  public:
    template <class G>
    requires(guard::template accepts<G>) [[nodiscard]] explicit scope_fail(G&& function) noexcept(
        std::is_nothrow_constructible_v<F, G&&>)
        : guard(std::forward<G>(function)) {}
};

// Runs f when the scope ends without an exception.
template <class F>
class [[nodiscard]] scope_success final : public detail::scope_guard<F, detail::run_on::success> {
    using guard = detail::scope_guard<F, detail::run_on::success>;

  public:
    template <class G>
    requires(guard::template accepts<G>) [[nodiscard]] explicit scope_success(
        G&& function) noexcept(std::is_nothrow_constructible_v<F, G&&>)
        : guard(std::forward<G>(function)) {}
};

// By value, so a function decays to a pointer and a lambda is stored, never referred to.
// `finally g2 = std::move(g1);` deduces g1's type: the implicit copy deduction candidate is
// more specialized than these.
template <class F>
finally(F) -> finally<F>;
template <class F>
scope_fail(F) -> scope_fail<F>;
template <class F>
scope_success(F) -> scope_success<F>;

}  // namespace ctxmgr
