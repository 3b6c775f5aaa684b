// ctxmgr/detail/async_exit.hpp: how async_with and async_exit_stack run one asynchronous exit.
//
// When the caller can be cancelled, the exit runs in an Asio thread of execution of its own
// (co_spawn on the caller's executor) whose cancellation slot is connected to nothing, so a
// cancellation of the caller never reaches it: the caller's cancellation state keeps what
// arrived meanwhile, and the next co_await after the exits sees it as Asio would. With a
// timeout (async_exit_timeout()), the exit races a timer; if the timer wins, the exit is
// cancelled (terminal), waited for (it still refers to its manager), and a timeout_error
// takes its place. When neither applies (exit_runs_in_place), the caller awaits the exit in
// its own frame.
//
// The caller must switch asio::this_coro::throw_if_cancelled off around its co_await of
// run_shielded_exit, and back on after: Asio makes that check at the caller's co_await of any
// awaitable, so a cancelled caller would otherwise throw before the exit could start.
#pragma once

#include <asio/any_io_executor.hpp>
#include <asio/awaitable.hpp>
#include <asio/bind_cancellation_slot.hpp>
#include <asio/cancellation_signal.hpp>
#include <asio/cancellation_state.hpp>
#include <asio/co_spawn.hpp>
#include <asio/experimental/deferred.hpp>
#include <asio/experimental/parallel_group.hpp>
#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>

#include <array>
#include <chrono>
#include <exception>
#include <string>
#include <tuple>
#include <typeinfo>
#include <utility>

#include "../async_protocol.hpp"
#include "../errors.hpp"

namespace ctxmgr::detail {

// Whether an asynchronous exit may be awaited in the caller's own frame: no timeout is set and
// nothing can cancel the caller. Asio gives a thread of execution whose completion handler has
// no cancellation slot (co_spawn with detached, use_future or a plain callback) a cancellation
// state with no slot, for its whole life: reset_cancellation_state rebuilds it from that same
// parent slot. There is then nothing to shield the exit from, and a thread of its own would
// cost a frame, a spawn and a dispatch back for nothing.
inline bool exit_runs_in_place(const asio::cancellation_state& caller) noexcept {
    return !caller.slot().is_connected() && async_exit_timeout().count() == 0;
}

// `exit` run in a thread of execution of its own on `executor`, whose cancellation slot is
// connected to nothing, for the caller to await: nothing the caller is cancelled with reaches
// it. Not a coroutine (no frame of its own): what async_with awaits when no timeout is set.
template <class T, class Executor>
asio::awaitable<T> spawn_shielded(const Executor& executor, asio::awaitable<T> exit) {
    return asio::co_spawn(
        executor, std::move(exit),
        asio::bind_cancellation_slot(asio::cancellation_slot(), asio::use_awaitable));
}

// Runs make_exit() (returning asio::awaitable<bool>: whether it suppressed) shielded from the
// caller's cancellation, bounded by async_exit_timeout(). `pending` is what the exit sees, for
// chaining a timeout_error; name() says what was waited for ("the exit of M"), called only for
// that error.
template <class MakeExit, class Name>
asio::awaitable<bool> run_shielded_exit(MakeExit make_exit, std::exception_ptr pending, Name name) {
    auto executor = co_await asio::this_coro::executor;
    const std::chrono::nanoseconds limit = async_exit_timeout();
    if (limit.count() == 0) {
        auto exit = make_exit();
        co_return co_await spawn_shielded(executor, std::move(exit));
    }
    // An empty slot: nothing the caller is cancelled with is forwarded to the exit.
    auto unshielded = asio::bind_cancellation_slot(asio::cancellation_slot(), asio::use_awaitable);
    asio::steady_timer timer(executor, limit);
    auto [order, failure, suppressed, timer_error] =
        co_await asio::experimental::make_parallel_group(
            asio::co_spawn(executor, make_exit(), asio::experimental::deferred),
            timer.async_wait(asio::experimental::deferred))
            .async_wait(asio::experimental::wait_for_one(asio::cancellation_type::terminal),
                        unshielded);
    static_cast<void>(timer_error);
    if (order[0] == 1) {
        // What the cancelled exit threw while it unwound is dropped: the timeout is the news.
        throw_chained(timeout_error(name(), limit), pending);
    }
    if (failure) std::rethrow_exception(failure);
    co_return suppressed;
}

// m.async_exit(e) as an awaitable<bool>: whether it suppressed a non-null e.
template <class M>
asio::awaitable<bool> call_async_exit(M& m, std::exception_ptr e) {
    const bool pending = static_cast<bool>(e);
    if constexpr (async_can_suppress_v<M>) {
        const bool suppressed = co_await m.async_exit(std::move(e));
        co_return suppressed&& pending;
    } else {
        co_await m.async_exit(std::move(e));
        co_return false;
    }
}

// m.exit(e) for a manager whose exit is synchronous (a context_manager, or one with
// async_enter() and exit()): whether it suppressed a non-null e. protocol.hpp's
// exit_suppresses and exit_normally accept only context managers.
template <class M>
bool sync_exit_suppresses(M& m, const std::exception_ptr& e) {
    if constexpr (context_manager<M>) {
        return exit_suppresses(m, e);
    } else if constexpr (async_can_suppress_v<M>) {
        return m.exit(e) && e;
    } else {
        m.exit(e);
        return false;
    }
}

template <class M>
void sync_exit_normally(M& m) {
    if constexpr (context_manager<M>) {
        exit_normally(m);
    } else {
        static_cast<void>(sync_exit_suppresses(m, std::exception_ptr()));
    }
}

// "the exit of M", for timeout messages.
template <class M>
std::string exit_name_of() {
    return "the exit of " + type_name_of(typeid(M));
}

}  // namespace ctxmgr::detail
