// Async test support: running an awaitable to completion, and async managers that record
// what happens to them as recording.hpp's recorders do, awaiting a timer in each half.
#pragma once

#include <ctxmgr/errors.hpp>

#include <asio/awaitable.hpp>
#include <asio/bind_cancellation_slot.hpp>
#include <asio/cancellation_signal.hpp>
#include <asio/co_spawn.hpp>
#include <asio/io_context.hpp>
#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>

#include <chrono>
#include <exception>
#include <optional>
#include <stdexcept>
#include <string>
#include <system_error>
#include <type_traits>
#include <utility>

#include "recording.hpp"

namespace ctxmgr::testing {

// Runs `a` on `io` (a fresh io_context when not given) until everything on it has finished;
// returns its result or rethrows what it threw (the same object). The coroutine is spawned
// with `slot` as its cancellation slot: by default one connected to nothing, so nothing can
// cancel it.
template <class T>
T run_awaitable(asio::io_context& io, asio::awaitable<T> a,
                asio::cancellation_slot slot = asio::cancellation_slot()) {
    std::exception_ptr error;
    bool done = false;
    std::optional<std::conditional_t<std::is_void_v<T>, bool, T>> result;
    if constexpr (std::is_void_v<T>) {
        asio::co_spawn(io, std::move(a),
                       asio::bind_cancellation_slot(slot, [&](std::exception_ptr e) {
                           error = e;
                           done = true;
                       }));
    } else {
        asio::co_spawn(io, std::move(a),
                       asio::bind_cancellation_slot(slot, [&](std::exception_ptr e, T value) {
                           error = e;
                           if (!e) result.emplace(std::move(value));
                           done = true;
                       }));
    }
    io.restart();
    io.run();
    if (!done) throw std::logic_error("run_awaitable: the coroutine never finished");
    if (error) std::rethrow_exception(error);
    if constexpr (!std::is_void_v<T>) return std::move(*result);
}
template <class T>
T run_awaitable(asio::awaitable<T> a) {
    asio::io_context io;
    return run_awaitable(io, std::move(a));
}

// The two kinds of caller an asynchronous exit is checked from: one that nothing can cancel
// (its exits are awaited in place) and one that could be cancelled (its exits are shielded in
// threads of their own).
struct uncancellable_caller {
    template <class T>
    static T run(asio::awaitable<T> a) {
        return run_awaitable(std::move(a));
    }
};
struct cancellable_caller {
    // Spawned with a cancellation slot that is never emitted.
    template <class T>
    static T run(asio::awaitable<T> a) {
        asio::io_context io;
        asio::cancellation_signal never;
        return run_awaitable(io, std::move(a), never.slot());
    }
};

// Inside a coroutine: what awaiting `a` threw (the same object), or null when it completed.
// The awaitable is made in the caller's full-expression, so what it refers to lives until then.
template <class T>
asio::awaitable<std::exception_ptr> awaited_exception(asio::awaitable<T> a) {
    std::exception_ptr thrown;
    try {
        co_await std::move(a);
    } catch (...) {
        thrown = std::current_exception();
    }
    co_return thrown;
}

// Whether `e` holds a std::system_error (asio::system_error is one) with this code.
template <class Code>
bool holds_system_error(const std::exception_ptr& e, Code code) {
    if (!e) return false;
    try {
        std::rethrow_exception(e);
    } catch (const std::system_error& error) {
        return error.code() == code;
    } catch (...) {
        return false;
    }
}

// Suspends for `delay` on a timer (zero: still suspends once, through the executor).
inline asio::awaitable<void> pause(std::chrono::milliseconds delay = std::chrono::milliseconds(0)) {
    asio::steady_timer timer(co_await asio::this_coro::executor, delay);
    co_await timer.async_wait(asio::use_awaitable);
}

// An async manager recording like basic_recorder: async_enter() returns the name, both halves
// suspend once before acting. Its async_exit chains with throw_chained (it cannot run inside
// the handler of the pending exception).
template <bool Suppressing>
struct basic_async_recorder {
    trace& log;
    std::string name;
    bool throw_on_enter = false;
    on_exit action = on_exit::pass;

    asio::awaitable<std::string> async_enter() {
        co_await pause();
        log.add("enter " + name);
        if (throw_on_enter) throw test_error("enter " + name + " failed");
        co_return name;
    }

    auto async_exit(std::exception_ptr e)
        -> asio::awaitable<std::conditional_t<Suppressing, bool, void>> {
        co_await pause();
        log.seen.push_back(e);
        log.add(e ? "exit " + name + ": " + what_of(e) : "exit " + name);
        if (action == on_exit::throw_error) throw other_error("exit " + name + " failed");
        if (action == on_exit::throw_nested) {
            ctxmgr::throw_chained(other_error("exit " + name + " failed"), e);
        }
        if constexpr (Suppressing) {
            co_return action == on_exit::suppress;
        }
    }
};

using async_recorder = basic_async_recorder<false>;
using async_suppressing_recorder = basic_async_recorder<true>;

}  // namespace ctxmgr::testing
