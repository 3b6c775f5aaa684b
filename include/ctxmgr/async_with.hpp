// ctxmgr/async_with.hpp: Python's `async with` on Asio coroutines.
//
// co_await async_with(m1, ..., mN, body) enters the managers in order (co_await async_enter()
// or enter()), co_awaits body(targets...), and exits them in reverse order, whatever happens:
//
//   async with a, b as y:        co_await ctxmgr::async_with(a, b, [&](Y& y) ->
//   asio::awaitable<void> {
//       ...                          ...
//                                });
//
// Rules 1 to 5 are with()'s (with.hpp), word for word:
//   1. enter each manager in order. If entering manager k throws, managers 1..k-1 are exited
//      with that exception, innermost first, so an outer one may suppress it; manager k is not
//      exited.
//   2. co_await body(targets...): the targets of the managers whose target is not void, in
//      order, as lvalues that live in async_with's frame until every exit has run (a target
//      async_enter hands over as std::reference_wrapper<U> arrives as U&, see
//      async_protocol.hpp). A body with no parameters is accepted too. The body returns
//      asio::awaitable<R>.
//   3. Exit in reverse order. Each exit receives the exception pending at that point: one that
//      suppresses hides it from the outer managers; one that throws replaces it for them.
//      A synchronous exit runs inside the handler of the exception, so std::throw_with_nested
//      chains it as in with(); an async_exit cannot (no co_await in a handler), so it chains
//      explicitly with ctxmgr::throw_chained(failure, e).
//   4. The final pending exception propagates: the original object, not a copy.
//   5. async_with yields the body's R; if some manager's exit returns bool and R is not void,
//      std::optional<R>, empty when an exception was suppressed.
// and, for what only a coroutine meets:
//   6. Cancellation (Asio's per-operation cancellation: a cancellation slot bound to the
//      co_spawn or the operation, awaitable_operators' `||`) cancels what is being awaited in
//      an enter or in the body, like any co_await. Exits are shielded: every manager entered
//      is exited exactly once, and an async_exit runs to completion in a thread of execution
//      whose cancellation slot is connected to nothing; a cancellation that arrives meanwhile
//      stays in the caller's cancellation state, so the caller's next co_await sees it. (A
//      caller that nothing can cancel, spawned with no cancellation slot, with no exit timeout
//      set, awaits the exit in its own frame: there is nothing to shield it from.) An
//      asynchronous exit that runs longer than async_exit_timeout() (async_protocol.hpp; no
//      limit by default) is cancelled, awaited until it unwinds (it still refers to its
//      manager, so one that ignores cancellation still delays async_with), and treated as an
//      exit that threw timeout_error ("timed out after 50 ms waiting for the exit of M"),
//      chained with the pending exception; the outer exits still run.
//
// Managers and the body passed as lvalues are used in place and must outlive the co_await;
// rvalues are moved into the coroutine's frame, because an awaitable may run after the
// full-expression that made it (co_spawn(ex, async_with(...), ...)). Exits without co_await
// (synchronous managers, async_enter with a synchronous exit) cost no thread of their own,
// and neither does an asynchronous exit awaited by a caller that cannot be cancelled.
//
//   co_await ctxmgr::async_with(ctxmgr::lock(m), [&]() -> asio::awaitable<void> { ++n; co_return;
//   }); auto page = co_await ctxmgr::async_with(session(), [](connection* c) { return
//   c->async_get(); });
//
// async_decorate(factory, f) is Python's ContextDecorator for coroutines: a callable that runs
// f(args...) (returning an awaitable) inside a fresh factory() manager per call.
//
// Thread-safety: async_with holds no shared state; it is as thread-safe as the managers.
#pragma once

#include <asio/awaitable.hpp>
#include <asio/this_coro.hpp>

#include <cstddef>
#include <exception>
#include <functional>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>

#include "async_protocol.hpp"
#include "detail/async_exit.hpp"
#include "with.hpp"

namespace ctxmgr {

namespace detail {

// A manager with enter() returning M's async target, so that with()'s target machinery
// (target_indices, body_traits, target_slot) serves async_with too. Never defined.
template <class M>
struct target_view {
    async_target_t<M> enter();
    void exit(std::exception_ptr);
};

// Hands a value co_awaited from async_enter() to a target_slot, which builds the target from
// enter()'s result.
template <class T>
struct entered_value {
    T& value;
    T&& enter() noexcept { return std::move(value); }
};
template <class U>
struct entered_value<std::reference_wrapper<U>> {
    std::reference_wrapper<U>& value;
    U& enter() noexcept { return value.get(); }
};

template <class A>
struct body_value {
    using type = void;
    static constexpr bool valid = false;
};
template <awaitable_type A>
struct body_value<A> {
    using type = awaitable_value_t<A>;
    static constexpr bool valid = true;
};

template <class Arguments,
          class Indices = std::make_index_sequence<std::tuple_size_v<Arguments> - 1>>
struct async_with_traits;

template <class... Args, std::size_t... I>
struct async_with_traits<std::tuple<Args...>, std::index_sequence<I...>> {
    using arguments = std::tuple<Args...>;
    using body = std::tuple_element_t<sizeof...(I), arguments>;
    template <std::size_t K>
    using manager = std::remove_reference_t<std::tuple_element_t<K, arguments>>;

    static constexpr bool managers_valid = (async_context_manager<manager<I>> && ...);
    using indices = target_indices<target_view<manager<I>>...>;
    using call = body_traits<body, target_view<manager<I>>...>;
    using slots = std::tuple<target_slot<async_target_t<manager<I>>>...>;
    static constexpr bool body_valid = call::valid && body_value<typename call::result>::valid;
    using body_result = typename body_value<typename call::result>::type;
    static constexpr bool may_suppress = (async_can_suppress_v<manager<I>> || ...);
    using result = std::conditional_t<may_suppress && !std::is_void_v<body_result>,
                                      std::optional<body_result>, body_result>;
};

// The state of one async_with: its arguments (managers, then the body) and the targets. Each
// manager's exit is awaited in a coroutine of its own (level<I>), since C++ has no co_await in
// a handler; the outermost level owns the arguments and this state, so that async_with makes
// one coroutine frame per manager and no more.
template <class... Args>
class async_with_frame {
    using traits = async_with_traits<std::tuple<Args...>>;
    using body_type = typename traits::body;
    static constexpr std::size_t count = sizeof...(Args) - 1;

  public:
    using body_result = typename traits::body_result;
    using result = typename traits::result;

    explicit async_with_frame(std::tuple<Args...>& arguments) noexcept : arguments_(arguments) {}
    async_with_frame(const async_with_frame&) = delete;
    async_with_frame& operator=(const async_with_frame&) = delete;

    // By-value targets outlive every exit; the innermost goes first, as nested scopes would.
    ~async_with_frame() {
        [this]<std::size_t... I>(std::index_sequence<I...>) {
            (std::get<count - 1 - I>(slots_).reset(), ...);
        }
        (std::make_index_sequence<count>{});
    }

    // async_with's awaitable: the outermost level, which owns the arguments.
    static asio::awaitable<result> start(std::tuple<Args...> arguments) {
        if constexpr (count == 0) {
            return body_alone(std::move(arguments));
        } else {
            return level<0>(std::move(arguments));
        }
    }

  private:
    template <std::size_t I>
    using manager_t = typename traits::template manager<I>;

    // With no manager: the body awaited in a frame that keeps the arguments, since the body's
    // coroutine may refer to the closure it was called on.
    static asio::awaitable<result> body_alone(std::tuple<Args...> arguments) {
        co_return co_await std::invoke(std::forward<body_type>(std::get<0>(arguments)));
    }

    // What level I awaits inside its manager: the next level, or the body.
    template <std::size_t I>
    auto inner() {
        if constexpr (I + 1 == count) {
            return call_body(typename traits::indices::sequence{});
        } else {
            return level<I + 1>(this);
        }
    }

    // What level I holds the state by: level 0 owns it (from: the arguments, moved into its
    // coroutine frame), the inner levels point to it.
    struct owned_state {
        explicit owned_state(std::tuple<Args...>& arguments) noexcept : state(arguments) {}
        async_with_frame state;
        async_with_frame& get() noexcept { return state; }
    };
    struct pointed_state {
        explicit pointed_state(async_with_frame* p) noexcept : state(p) {}
        async_with_frame* state;
        async_with_frame& get() noexcept { return *state; }
    };

    template <std::size_t I, class Source>
    static asio::awaitable<result> level(Source from) {
        std::conditional_t<std::is_pointer_v<Source>, pointed_state, owned_state> holder(from);
        async_with_frame& self = holder.get();
        using manager_type = manager_t<I>;
        auto& manager = std::get<I>(self.arguments_);
        auto& slot = std::get<I>(self.slots_);
        if constexpr (native_async_context_manager<manager_type>) {
            if constexpr (std::is_void_v<async_target_t<manager_type>>) {
                co_await manager.async_enter();
            } else {
                auto entered = co_await manager.async_enter();
                entered_value<decltype(entered)> source{entered};
                slot.enter(source);
            }
        } else {
            slot.enter(manager);
        }

        using inner_value = detail::awaitable_value_t<decltype(self.template inner<I>())>;
        // Nothing to keep of a void inner level: no optional whose flag would be written.
        std::conditional_t<std::is_void_v<inner_value>, std::monostate, std::optional<inner_value>>
            value;
        std::exception_ptr pending;
        try {
            if constexpr (std::is_void_v<inner_value>) {
                co_await self.template inner<I>();
            } else {
                value.emplace(co_await self.template inner<I>());
            }
        } catch (...) {
            pending = std::current_exception();
        }

        bool suppressed = false;
        if constexpr (awaitable_exit_manager<manager_type>) {
            if (exit_runs_in_place(co_await asio::this_coro::cancellation_state)) {
                // What the exit throws propagates from here, as run_shielded_exit's would.
                auto awaited = manager.async_exit(pending);
                if constexpr (async_can_suppress_v<manager_type>) {
                    suppressed = co_await std::move(awaited) && pending;
                } else {
                    co_await std::move(awaited);
                }
            } else {
                // Asio checks for cancellation at every co_await of an awaitable: off while the
                // exit is awaited, or a cancelled caller would skip it.
                const bool throws = co_await asio::this_coro::throw_if_cancelled();
                co_await asio::this_coro::throw_if_cancelled(false);
                std::exception_ptr failure;
                // Named, not a temporary of the co_await expression: with GCC 12 at -O2, an
                // exception_ptr captured by such a temporary was released once too often
                // (valgrind: use after free in ~exception_ptr).
                try {
                    if (async_exit_timeout().count() == 0) {
                        // The exit's own awaitable spawned: no frame between it and this one.
                        auto exit = manager.async_exit(pending);
                        auto awaited =
                            spawn_shielded(co_await asio::this_coro::executor, std::move(exit));
                        if constexpr (async_can_suppress_v<manager_type>) {
                            suppressed = co_await std::move(awaited) && pending;
                        } else {
                            co_await std::move(awaited);
                        }
                    } else {
                        auto exit = [&manager, &pending] {
                            return call_async_exit(manager, pending);
                        };
                        auto awaited =
                            run_shielded_exit(exit, pending, &exit_name_of<manager_type>);
                        suppressed = co_await std::move(awaited);
                    }
                } catch (...) {
                    failure = std::current_exception();
                }
                co_await asio::this_coro::throw_if_cancelled(throws);
                if (failure) std::rethrow_exception(failure);
            }
        } else if (pending) {
            suppressed = exit_in_handler(
                [&](const std::exception_ptr& e) { return sync_exit_suppresses(manager, e); },
                pending);
        } else {
            sync_exit_normally(manager);
        }

        if (pending) {
            if constexpr (async_can_suppress_v<manager_type>) {
                if (suppressed) {
                    if constexpr (std::is_void_v<result>) {
                        co_return;
                    } else {
                        co_return result();
                    }
                }
            }
            std::rethrow_exception(pending);
        }
        if constexpr (!std::is_void_v<result>) co_return result(std::move(*value));
    }

    template <std::size_t... T>
    auto call_body(std::index_sequence<T...>) {
        auto& body = std::get<count>(arguments_);
        if constexpr (traits::call::takes_targets) {
            return std::invoke(std::forward<body_type>(body), std::get<T>(slots_).get()...);
        } else {
            return std::invoke(std::forward<body_type>(body));
        }
    }

    std::tuple<Args...>& arguments_;
    typename traits::slots slots_;
};

template <class... Args, std::size_t... I>
constexpr bool check_async_managers(std::index_sequence<I...>) {
    constexpr bool valid =
        (async_context_manager<
             std::remove_reference_t<std::tuple_element_t<I, std::tuple<Args...>>>> &&
         ...);
    static_assert(valid,
                  "ctxmgr::async_with: every argument but the last must be an async context "
                  "manager (async_enter() returning asio::awaitable and async_exit(e) returning "
                  "asio::awaitable<bool or void>, or exit(e)) or a context manager (the last "
                  "argument is the body)");
    return valid;
}

}  // namespace detail

// What co_await async_with(args...) gives: the body's R, or std::optional<R> when a manager
// may suppress.
template <class... Args>
using async_with_result_t = typename detail::async_with_traits<std::tuple<std::conditional_t<
    std::is_lvalue_reference_v<Args>, Args, std::remove_cvref_t<Args>>...>>::result;

// async_with(m1, ..., mN, body): see the top of this header. The awaitable throws whatever the
// managers and the body throw, by the rules above, and timeout_error for an exit that overran.
template <class... Args>
[[nodiscard]] auto async_with(Args&&... args) -> asio::awaitable<async_with_result_t<Args...>> {
    static_assert(sizeof...(Args) >= 1, "ctxmgr::async_with: the last argument must be the body");
    static_assert(
        detail::check_async_managers<Args...>(std::make_index_sequence<sizeof...(Args) - 1>{}));
    using traits = detail::async_with_traits<std::tuple<Args...>>;
    static_assert(traits::body_valid,
                  "ctxmgr::async_with: the body must be callable with the targets of the "
                  "managers whose target is not void (as lvalues, in order), or with no "
                  "arguments, and return asio::awaitable<R>");
    static_assert(((std::is_lvalue_reference_v<Args> ||
                    std::is_move_constructible_v<std::remove_cvref_t<Args>>)&&...),
                  "ctxmgr::async_with: an rvalue argument is moved into the coroutine's frame, "
                  "so it must be move-constructible; pass an lvalue to use it in place");
    return detail::async_with_frame<Args...>::start(
        std::tuple<Args...>(std::forward<Args>(args)...));
}

// Python's ContextDecorator for coroutines: async_decorate(factory, f) returns a callable
// whose call co_awaits async_with(factory(), f(args...)) with a fresh manager each time. The
// arguments are copied into the call's frame; the decorated object must outlive the
// awaitables it returns.
template <class Factory, class F>
class [[nodiscard]] async_decorated {
  public:
    template <class G, class H>
    async_decorated(G&& factory, H&& function)
        : factory_(std::forward<G>(factory)), function_(std::forward<H>(function)) {}

    template <class... Args>
    auto operator()(Args... args)
        -> asio::awaitable<async_with_result_t<std::invoke_result_t<Factory&>,
                                               std::invoke_result_t<F&, Args&...> (*)()>> {
        static_assert(async_context_manager<std::invoke_result_t<Factory&>>,
                      "ctxmgr::async_decorate: factory() must return an async context manager");
        // Named rather than a temporary of the co_await (see level()).
        auto awaited =
            async_with(std::invoke(factory_), [&] { return std::invoke(function_, args...); });
        co_return co_await std::move(awaited);
    }

  private:
    Factory factory_;
    F function_;
};

template <class Factory, class F>
[[nodiscard]] async_decorated<std::decay_t<Factory>, std::decay_t<F>> async_decorate(
    Factory&& factory, F&& function) {
    return {std::forward<Factory>(factory), std::forward<F>(function)};
}

}  // namespace ctxmgr
