// ctxmgr/async_protocol.hpp: what an asynchronous context manager is, on Asio coroutines.
//
// Python's `__aenter__` / `__aexit__` with asio::awaitable. A type M is an async manager when
//   - m.async_enter() returns asio::awaitable<T>: T (possibly void) is the target. An awaitable
//     cannot carry a reference, so a manager whose target is a reference (itself, like
//     async_exit_stack, or an object it holds) returns asio::awaitable<std::reference_wrapper<U>>
//     and async_with gives the body a U&, as with() would;
//   - m.async_exit(std::exception_ptr e) returns asio::awaitable<bool> or asio::awaitable<void>,
//     with exit()'s meaning: true suppresses e. It runs after the handler of e has ended (C++
//     forbids co_await in a handler), so a failing async_exit chains e explicitly with
//     ctxmgr::throw_chained(failure, e) rather than std::throw_with_nested;
//   - or, for a manager whose release never waits (an unlock), async_enter() with a synchronous
//     exit(e), which runs inside the handler of e exactly as in with().
// Every synchronous context_manager is an async one too: enter() and exit() are called
// directly, so `co_await ctxmgr::async_with(ctxmgr::lock(m), body)` works.
//
//   struct session {
//       asio::awaitable<connection*> async_enter() { co_await c.async_connect(); co_return &c; }
//       asio::awaitable<void> async_exit(std::exception_ptr) { co_await c.async_shutdown(); }
//   };
//   static_assert(ctxmgr::async_context_manager<session>);
//
// Asynchronous exits are shielded from cancellation and may be bounded by a timeout: see
// async_exit_timeout() below and the cancellation rules in async_with.hpp.
//
// Guarantees: concepts, traits and an atomic setting; nothing here allocates or throws.
#pragma once

#include <asio/awaitable.hpp>

#include <atomic>
#include <chrono>
#include <concepts>
#include <exception>
#include <functional>
#include <type_traits>
#include <utility>

#include "protocol.hpp"

namespace ctxmgr {

namespace detail {

template <class A>
struct awaitable_traits {
    static constexpr bool is_awaitable = false;
};
template <class T, class Executor>
struct awaitable_traits<asio::awaitable<T, Executor>> {
    static constexpr bool is_awaitable = true;
    using value_type = T;
};

template <class A>
concept awaitable_type = awaitable_traits<std::remove_cvref_t<A>>::is_awaitable;

// What co_await of an A gives.
template <awaitable_type A>
using awaitable_value_t = typename awaitable_traits<std::remove_cvref_t<A>>::value_type;

template <class A>
concept async_exit_awaitable = awaitable_type<A> &&
    (std::same_as<awaitable_value_t<A>, bool> || std::same_as<awaitable_value_t<A>, void>);

// std::reference_wrapper<U> carries a reference target through an awaitable.
template <class T>
struct unwrap_target {
    using type = T;
};
template <class U>
struct unwrap_target<std::reference_wrapper<U>> {
    using type = U&;
};

}  // namespace detail

// async_enter() returns an awaitable and async_exit(e) an awaitable of bool or void.
template <class M>
concept awaitable_exit_manager = requires(std::remove_reference_t<M>& m, std::exception_ptr e) {
    { m.async_enter() } -> detail::awaitable_type;
    { m.async_exit(e) } -> detail::async_exit_awaitable;
};

// async_enter() returns an awaitable and exit(e) returns bool or void, synchronously.
template <class M>
concept awaitable_enter_manager =
    !awaitable_exit_manager<M> && requires(std::remove_reference_t<M> & m, std::exception_ptr e) {
    { m.async_enter() } -> detail::awaitable_type;
    { m.exit(e) } -> detail::exit_result;
};

// A manager with an asynchronous half of its own.
template <class M>
concept native_async_context_manager = awaitable_exit_manager<M> || awaitable_enter_manager<M>;

// What async_with, async_exit_stack and async_decorate accept.
template <class M>
concept async_context_manager = native_async_context_manager<M> || context_manager<M>;

namespace detail {
template <class M>
struct async_target {
    using type = enter_result_t<M>;
};
template <native_async_context_manager M>
struct async_target<M> {
    using type = typename unwrap_target<awaitable_value_t<
        decltype(std::declval<std::remove_reference_t<M>&>().async_enter())>>::type;
};

template <class M>
struct async_suppress {
    static constexpr bool value = can_suppress_v<M>;
};
template <awaitable_exit_manager M>
struct async_suppress<M> {
    static constexpr bool value = std::same_as<
        awaitable_value_t<decltype(std::declval<std::remove_reference_t<M>&>().async_exit(
            std::declval<std::exception_ptr>()))>,
        bool>;
};
template <awaitable_enter_manager M>
struct async_suppress<M> {
    static constexpr bool value =
        std::same_as<decltype(std::declval<std::remove_reference_t<M>&>().exit(
                         std::declval<std::exception_ptr>())),
                     bool>;
};
}  // namespace detail

// The target the body receives for M: async_enter's value (a reference_wrapper<U> read as U&)
// or, for a synchronous manager, enter()'s result.
template <async_context_manager M>
using async_target_t = typename detail::async_target<M>::type;

// True when M's exit (asynchronous or not) returns bool, so it may suppress.
template <async_context_manager M>
inline constexpr bool async_can_suppress_v = detail::async_suppress<M>::value;

namespace detail {
inline std::atomic<std::chrono::nanoseconds::rep>& async_exit_timeout_ns() noexcept {
    static std::atomic<std::chrono::nanoseconds::rep> value{0};
    return value;
}
}  // namespace detail

// The time an asynchronous exit may take before it is cancelled and replaced by a
// timeout_error (async_with.hpp, rule 6); zero, the initial value, means no limit. One
// process-wide setting, read when each exit starts. Thread-safe.
[[nodiscard]] inline std::chrono::nanoseconds async_exit_timeout() noexcept {
    return std::chrono::nanoseconds(
        detail::async_exit_timeout_ns().load(std::memory_order_relaxed));
}

// Sets async_exit_timeout() and returns the previous value. A negative value means no limit.
inline std::chrono::nanoseconds set_async_exit_timeout(std::chrono::nanoseconds limit) noexcept {
    const auto stored = limit.count() < 0 ? 0 : limit.count();
    return std::chrono::nanoseconds(
        detail::async_exit_timeout_ns().exchange(stored, std::memory_order_relaxed));
}

}  // namespace ctxmgr
