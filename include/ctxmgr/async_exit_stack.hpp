// ctxmgr/async_exit_stack.hpp: a run-time number of exits, synchronous and asynchronous,
// unwound like nested async_withs.
//
// Python's contextlib.AsyncExitStack. Register managers and callbacks as the program
// discovers them; co_await aclose() (or leaving an async_with of the stack) unwinds them last
// in, first out, with exit_stack's rules:
//   - every exit runs, even when an earlier one threw;
//   - each exit receives the pending exception (null if none): a synchronous one from inside
//     its handler, so std::throw_with_nested chains it; one that throws replaces it;
//   - an exit that suppresses (returns true) clears it for the rest;
//   - async_exit(e) yields true only if e was not null and ended suppressed; if an exit threw,
//     the last exception thrown propagates.
// Asynchronous exits are shielded from cancellation and bounded by async_exit_timeout(), as
// in async_with (async_with.hpp, rule 6).
//
//   co_await ctxmgr::async_with(ctxmgr::async_exit_stack(),
//                               [&](ctxmgr::async_exit_stack& stack) -> asio::awaitable<void> {
//       for (auto& endpoint : endpoints)
//           sessions.push_back(co_await stack.enter_async_context(session(endpoint)));
//       stack.push_async_callback([&]() -> asio::awaitable<void> { co_await flush(); });
//       ...
//   });
//
// The stack is its own target: async_enter() yields std::reference_wrapper<async_exit_stack>,
// so the body of an async_with receives an async_exit_stack&.
//
//   enter_async_context(m)        co_await: enters an async (or synchronous) manager, yields
//                                 its target (a reference target as std::reference_wrapper)
//   enter_context(m)              enters a synchronous manager now, returns its target
//   push_async_exit(f or m)       f(std::exception_ptr) returning asio::awaitable<bool or
//                                 void>, or an async manager's exit
//   push(f or m)                  a synchronous exit function or manager's exit
//   push_async_callback(f, a...)  co_await f(a...) on unwind; never suppresses
//   callback(f, a...)             f(a...) on unwind; never suppresses
//   pop_all()                     moves every pending exit into a new stack
//   aclose()                      co_await: unwinds now, with no exception
//
// Ownership as in exit_stack: lvalue managers are referenced (they must outlive the
// unwinding), rvalues are moved to the heap and owned; callables and arguments are decayed
// and stored. A manager whose async_enter() registers exits on the same stack is registered
// after it is entered, so it unwinds before what it registered.
//
// The destructor cannot co_await: it runs the synchronous exits that are left (errors to the
// unraisable hook) and reports a protocol_error naming the asynchronous ones, which it drops
// without running ("async_exit_stack destroyed with 1 asynchronous exit never awaited: ...").
// Thread-compatible: one stack must not be used from two threads at once.
#pragma once

#include <asio/awaitable.hpp>
#include <asio/this_coro.hpp>

#include <cstddef>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "async_protocol.hpp"
#include "detail/async_exit.hpp"
#include "errors.hpp"
#include "exit_stack.hpp"
#include "unraisable.hpp"

namespace ctxmgr {

namespace detail {

// One registered exit. A synchronous one is run with run(), an asynchronous one with
// run_async(); both return whether they suppressed a non-null e.
class stack_entry {
  public:
    stack_entry() = default;
    stack_entry(const stack_entry&) = delete;
    stack_entry& operator=(const stack_entry&) = delete;
    virtual ~stack_entry() = default;
    [[nodiscard]] virtual bool is_async() const noexcept = 0;
    virtual bool run(const std::exception_ptr&) { return false; }
    virtual asio::awaitable<bool> run_async(std::exception_ptr) { co_return false; }
    // What was registered, for the destructor's report and timeout messages.
    [[nodiscard]] virtual std::string describe() const = 0;
};

// W: exit_stack's exit wrappers (callable with the exception, returning whether suppressed).
template <class W, class Named>
class sync_stack_entry final : public stack_entry {
  public:
    template <class... A>
    explicit sync_stack_entry(A&&... a) : exit_(std::forward<A>(a)...) {}
    [[nodiscard]] bool is_async() const noexcept override { return false; }
    bool run(const std::exception_ptr& e) override { return exit_(e); }
    [[nodiscard]] std::string describe() const override { return Named::describe(); }

  private:
    W exit_;
};

// A synchronous exit of a manager, referenced or owned (exit_stack's wrappers take context
// managers only; these also take async_enter() with exit()).
template <class M>
struct sync_manager_exit {
    M* manager;
    bool operator()(const std::exception_ptr& e) { return sync_exit_suppresses(*manager, e); }
};

template <class M>
struct owned_sync_manager_exit {
    std::unique_ptr<M> manager;
    bool operator()(const std::exception_ptr& e) { return sync_exit_suppresses(*manager, e); }
};

template <class M>
struct async_manager_exit {
    M* manager;
    asio::awaitable<bool> operator()(std::exception_ptr e) {
        return call_async_exit(*manager, std::move(e));
    }
};

template <class M>
struct owned_async_manager_exit {
    std::unique_ptr<M> manager;
    asio::awaitable<bool> operator()(std::exception_ptr e) {
        return call_async_exit(*manager, std::move(e));
    }
};

template <class F>
struct async_function_exit {
    F function;
    asio::awaitable<bool> operator()(std::exception_ptr e) {
        using value = awaitable_value_t<std::invoke_result_t<F&, std::exception_ptr>>;
        const bool pending = static_cast<bool>(e);
        if constexpr (std::is_same_v<value, bool>) {
            const bool suppressed = co_await std::invoke(function, std::move(e));
            co_return suppressed&& pending;
        } else {
            co_await std::invoke(function, std::move(e));
            co_return false;
        }
    }
};

template <class F, class... Args>
struct async_callback_exit {
    F function;
    std::tuple<Args...> arguments;
    asio::awaitable<bool> operator()(std::exception_ptr) {
        co_await std::apply(function, arguments);
        co_return false;  // a callback never suppresses, whatever it yields
    }
};

template <class W, class Named>
class async_stack_entry final : public stack_entry {
  public:
    template <class... A>
    explicit async_stack_entry(A&&... a) : exit_(std::forward<A>(a)...) {}
    [[nodiscard]] bool is_async() const noexcept override { return true; }
    asio::awaitable<bool> run_async(std::exception_ptr e) override { return exit_(std::move(e)); }
    [[nodiscard]] std::string describe() const override { return Named::describe(); }

  private:
    W exit_;
};

// The description of an entry: the registering call and the type it was given.
template <class T>
struct named_manager {
    static std::string describe() { return "the exit of " + type_name_of(typeid(T)); }
};
template <class T>
struct named_callback {
    static std::string describe() { return "the callback " + type_name_of(typeid(T)); }
};
template <class T>
struct named_exit_function {
    static std::string describe() { return "the exit function " + type_name_of(typeid(T)); }
};

// What enter_async_context yields for M: the target, a reference one as reference_wrapper.
template <class M>
struct stack_target {
    using type = enter_result_t<M>;
};
template <native_async_context_manager M>
struct stack_target<M> {
    using type =
        awaitable_value_t<decltype(std::declval<std::remove_reference_t<M>&>().async_enter())>;
};
template <class M>
using stack_target_t = std::conditional_t<
    std::is_reference_v<typename stack_target<M>::type>,
    std::reference_wrapper<std::remove_reference_t<typename stack_target<M>::type>>,
    typename stack_target<M>::type>;

}  // namespace detail

class async_exit_stack {
  public:
    async_exit_stack() noexcept = default;
    async_exit_stack(const async_exit_stack&) = delete;
    async_exit_stack& operator=(const async_exit_stack&) = delete;
    // Takes over other's pending exits; other is left empty.
    async_exit_stack(async_exit_stack&& other) noexcept
        : entries_(std::exchange(other.entries_, {})) {}
    // No move assignment: it would have to unwind this stack's exits, which needs co_await.
    async_exit_stack& operator=(async_exit_stack&&) = delete;

    ~async_exit_stack() { unwind_in_destructor(); }

    // The async manager protocol: the target is the stack itself.
    asio::awaitable<std::reference_wrapper<async_exit_stack>> async_enter() noexcept {
        co_return std::ref(*this);
    }

    // Unwinds every pending exit with e (see the rules above).
    asio::awaitable<bool> async_exit(std::exception_ptr e) { return unwind(std::move(e)); }

    // Unwinds now, with no exception; throws the last exception an exit threw.
    asio::awaitable<void> aclose() { co_await unwind(nullptr); }

    // Enters m (co_await async_enter(), or enter() for a synchronous manager) and registers its
    // exit after the enter completes; yields its target. If entering throws, nothing is
    // registered. An lvalue is referenced, an rvalue moved to the heap and owned.
    template <class M>
    [[nodiscard]] auto enter_async_context(M&& m)
        -> asio::awaitable<detail::stack_target_t<std::remove_cvref_t<M>>> {
        using manager_type = std::remove_cvref_t<M>;
        static_assert(async_context_manager<manager_type>,
                      "async_exit_stack::enter_async_context: the argument is not an async "
                      "context manager nor a context manager");
        if constexpr (std::is_lvalue_reference_v<M>) {
            return enter_owned<manager_type>(std::addressof(m), nullptr);
        } else {
            auto owned = std::make_unique<manager_type>(std::move(m));
            manager_type* raw = owned.get();
            return enter_owned<manager_type>(raw, std::move(owned));
        }
    }

    // Enters a synchronous manager now and returns its target (exit_stack::enter_context).
    template <class M>
    decltype(auto) enter_context(M&& m) {
        using manager_type = std::remove_reference_t<M>;
        static_assert(context_manager<manager_type>,
                      "async_exit_stack::enter_context: the argument is not a context manager; "
                      "co_await enter_async_context() for an async one");
        entries_.reserve(entries_.size() + 1);
        if constexpr (std::is_lvalue_reference_v<M>) {
            return enter_and_register(m, [&] {
                return make_sync<detail::sync_manager_exit<manager_type>,
                                 detail::named_manager<manager_type>>(&m);
            });
        } else {
            auto owned = std::make_unique<manager_type>(std::move(m));
            manager_type& manager = *owned;
            return enter_and_register(manager, [&] {
                return make_sync<detail::owned_sync_manager_exit<manager_type>,
                                 detail::named_manager<manager_type>>(std::move(owned));
            });
        }
    }

    // Registers an asynchronous exit: f(std::exception_ptr) returning asio::awaitable<bool>
    // (may suppress) or asio::awaitable<void>, or an async manager's exit (an lvalue
    // referenced, an rvalue owned).
    template <class F>
    void push_async_exit(F&& exit_fn_or_manager) {
        using type = std::remove_cvref_t<F>;
        if constexpr (awaitable_exit_manager<type>) {
            if constexpr (std::is_lvalue_reference_v<F>) {
                add(make_async<detail::async_manager_exit<type>, detail::named_manager<type>>(
                    std::addressof(exit_fn_or_manager)));
            } else {
                add(make_async<detail::owned_async_manager_exit<type>, detail::named_manager<type>>(
                    std::make_unique<type>(std::move(exit_fn_or_manager))));
            }
        } else if constexpr (native_async_context_manager<type> || context_manager<type>) {
            push(std::forward<F>(exit_fn_or_manager));  // its exit is synchronous
        } else {
            static_assert(
                std::is_invocable_v<type&, std::exception_ptr> &&
                    detail::async_exit_awaitable<std::invoke_result_t<type&, std::exception_ptr>>,
                "async_exit_stack::push_async_exit: the argument must be an async "
                "manager or a callable taking std::exception_ptr and returning "
                "asio::awaitable<bool or void>");
            add(make_async<detail::async_function_exit<type>, detail::named_exit_function<type>>(
                std::forward<F>(exit_fn_or_manager)));
        }
    }

    // Registers a synchronous exit: f(std::exception_ptr) returning bool or void, or a
    // manager's exit() (an lvalue referenced, an rvalue owned).
    template <class F>
    void push(F&& exit_fn_or_manager) {
        using type = std::remove_cvref_t<F>;
        if constexpr (context_manager<type> || awaitable_enter_manager<type>) {
            if constexpr (std::is_lvalue_reference_v<F>) {
                add(make_sync<detail::sync_manager_exit<type>, detail::named_manager<type>>(
                    std::addressof(exit_fn_or_manager)));
            } else {
                add(make_sync<detail::owned_sync_manager_exit<type>, detail::named_manager<type>>(
                    std::make_unique<type>(std::move(exit_fn_or_manager))));
            }
        } else {
            static_assert(std::is_invocable_v<type&, const std::exception_ptr&>,
                          "async_exit_stack::push: the argument must be a context manager or a "
                          "callable taking std::exception_ptr");
            add(make_sync<detail::function_exit<type>, detail::named_exit_function<type>>(
                std::forward<F>(exit_fn_or_manager)));
        }
    }

    // Registers co_await f(args...) to run on unwind (f and args decayed and stored now).
    template <class F, class... Args>
    void push_async_callback(F&& f, Args&&... args) {
        using stored = detail::async_callback_exit<std::decay_t<F>, std::decay_t<Args>...>;
        static_assert(
            detail::awaitable_type<std::invoke_result_t<std::decay_t<F>&, std::decay_t<Args>&...>>,
            "async_exit_stack::push_async_callback: f(args...) must return an "
            "asio::awaitable");
        add(make_async<stored, detail::named_callback<std::decay_t<F>>>(
            std::forward<F>(f), std::tuple<std::decay_t<Args>...>(std::forward<Args>(args)...)));
    }

    // Registers f(args...) to run on unwind. If storing it fails, it runs at once and the
    // exception propagates, as in exit_stack.
    template <class F, class... Args>
    void callback(F&& f, Args&&... args) {
        using stored = detail::callback_exit<std::decay_t<F>, std::decay_t<Args>...>;
        try {
            add(make_sync<stored, detail::named_callback<std::decay_t<F>>>(
                std::as_const(f), std::tuple<std::decay_t<Args>...>(std::as_const(args)...)));
        } catch (...) {
            std::invoke(f, args...);
            throw;
        }
    }

    // Moves every pending exit into a new stack and leaves this one empty.
    [[nodiscard]] async_exit_stack pop_all() noexcept {
        async_exit_stack popped;
        popped.entries_ = std::exchange(entries_, {});
        return popped;
    }

    [[nodiscard]] std::size_t size() const noexcept { return entries_.size(); }
    [[nodiscard]] bool empty() const noexcept { return entries_.empty(); }

  private:
    using entry_ptr = std::unique_ptr<detail::stack_entry>;

    template <class W, class Named, class... A>
    static entry_ptr make_sync(A&&... a) {
        return std::make_unique<detail::sync_stack_entry<W, Named>>(W{std::forward<A>(a)...});
    }
    template <class W, class Named, class... A>
    static entry_ptr make_async(A&&... a) {
        return std::make_unique<detail::async_stack_entry<W, Named>>(W{std::forward<A>(a)...});
    }

    void add(entry_ptr entry) { entries_.push_back(std::move(entry)); }

    // Space is reserved and the entry built before enter(), so registering cannot fail after.
    template <class M, class Make>
    decltype(auto) enter_and_register(M& manager, Make make) {
        entry_ptr entry = make();
        using target = enter_result_t<M>;
        if constexpr (std::is_void_v<target>) {
            manager.enter();
            entries_.push_back(std::move(entry));
        } else {
            target result = manager.enter();
            entries_.push_back(std::move(entry));
            return static_cast<target>(result);
        }
    }

    template <class M>
    asio::awaitable<detail::stack_target_t<M>> enter_owned(M* manager, std::unique_ptr<M> owned) {
        using result = detail::stack_target_t<M>;
        std::optional<std::conditional_t<std::is_void_v<result>, char, result>> target;
        if constexpr (native_async_context_manager<M>) {
            if constexpr (std::is_void_v<result>) {
                co_await manager->async_enter();
            } else {
                target.emplace(co_await manager->async_enter());
            }
        } else if constexpr (std::is_void_v<result>) {
            manager->enter();
        } else {
            target.emplace(manager->enter());
        }
        // Registered after the enter completes: what async_enter() registered on this stack
        // unwinds after this manager's exit, as nested withs would.
        std::exception_ptr failure;
        try {
            if constexpr (awaitable_exit_manager<M>) {
                if (owned) {
                    add(make_async<detail::owned_async_manager_exit<M>, detail::named_manager<M>>(
                        std::move(owned)));
                } else {
                    add(make_async<detail::async_manager_exit<M>, detail::named_manager<M>>(
                        manager));
                }
            } else if (owned) {
                add(make_sync<detail::owned_sync_manager_exit<M>, detail::named_manager<M>>(
                    std::move(owned)));
            } else {
                add(make_sync<detail::sync_manager_exit<M>, detail::named_manager<M>>(manager));
            }
        } catch (...) {
            failure = std::current_exception();
        }
        if (failure) {
            // Out of memory registering: the manager is exited with that error at once.
            if constexpr (awaitable_exit_manager<M>) {
                co_await detail::call_async_exit(*manager, failure);
            } else {
                detail::exit_in_handler(
                    [&](const std::exception_ptr& e) {
                        return detail::sync_exit_suppresses(*manager, e);
                    },
                    failure);
            }
            std::rethrow_exception(failure);
        }
        if constexpr (!std::is_void_v<result>) co_return std::move(*target);
    }

    asio::awaitable<bool> unwind(std::exception_ptr e) {
        const bool received = static_cast<bool>(e);
        bool suppressed = false;
        bool pending_raise = false;
        std::exception_ptr pending = std::move(e);
        // Asio checks for cancellation at every co_await of an awaitable: off while the
        // exits run, or a cancelled caller would skip them.
        const bool throws = co_await asio::this_coro::throw_if_cancelled();
        co_await asio::this_coro::throw_if_cancelled(false);
        while (!entries_.empty()) {
            // Popped before it runs, so that it may register more exits on this stack.
            entry_ptr top = std::move(entries_.back());
            entries_.pop_back();
            bool suppresses = false;
            std::exception_ptr failure;
            if (top->is_async()) {
                detail::stack_entry* raw = top.get();
                auto exit = [raw, &pending] { return raw->run_async(pending); };
                auto name = [raw] { return raw->describe(); };
                try {
                    if (detail::exit_runs_in_place(co_await asio::this_coro::cancellation_state)) {
                        auto awaited = exit();
                        suppresses = co_await std::move(awaited);
                    } else {
                        auto awaited = detail::run_shielded_exit(exit, pending, name);
                        suppresses = co_await std::move(awaited);
                    }
                } catch (...) {
                    failure = std::current_exception();
                }
            } else {
                try {
                    suppresses =
                        pending
                            ? detail::exit_in_handler(
                                  [&](const std::exception_ptr& p) { return top->run(p); }, pending)
                            : top->run(pending);
                } catch (...) {
                    failure = std::current_exception();
                }
            }
            if (failure) {
                pending = std::move(failure);
                pending_raise = true;
            } else if (suppresses && pending) {
                suppressed = true;
                pending_raise = false;
                pending = nullptr;
            }
        }
        co_await asio::this_coro::throw_if_cancelled(throws);
        if (pending_raise) std::rethrow_exception(pending);
        co_return received&& suppressed;
    }

    void unwind_in_destructor() noexcept {
        if (entries_.empty()) return;
        std::size_t dropped = 0;
        std::string names;
        while (!entries_.empty()) {
            entry_ptr top = std::move(entries_.back());
            entries_.pop_back();
            if (top->is_async()) {
                ++dropped;
                try {
                    names += names.empty() ? "" : ", ";
                    names += top->describe();
                } catch (...) {
                    // Out of memory naming it: the count still says how many.
                }
                continue;
            }
            try {
                static_cast<void>(top->run(nullptr));
            } catch (...) {
                report_current_unraisable("async_exit_stack destructor");
            }
        }
        if (dropped == 0) return;
        try {
            throw protocol_error("async_exit_stack destroyed with " + std::to_string(dropped) +
                                 (dropped == 1 ? " asynchronous exit" : " asynchronous exits") +
                                 " never awaited (co_await aclose() first): " + names);
        } catch (...) {
            report_current_unraisable("async_exit_stack destructor");
        }
    }

    std::vector<entry_ptr> entries_;
};

}  // namespace ctxmgr
