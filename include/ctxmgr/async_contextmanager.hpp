// ctxmgr/async_contextmanager.hpp: asynchronous setup and teardown written as one coroutine.
//
// Python's @asynccontextmanager for Asio. The function is an asio::awaitable<void> coroutine
// whose first parameter is an async_yield<T>: the code before `co_await yield(value)` is the
// setup, the value is the target, the code after is the teardown, and both halves may
// co_await Asio operations:
//
//   asio::awaitable<void> session(ctxmgr::async_yield<connection*> yield, endpoint where) {
//       connection c;
//       co_await c.async_connect(where);
//       try {
//           co_await yield(&c);                  // the body of the async_with runs here
//       } catch (...) {
//           co_await c.async_abort();            // the body's exception is thrown at the yield
//           throw;
//       }
//       co_await c.async_close();
//   }
//   co_await ctxmgr::async_with(ctxmgr::async_contextmanager(session, where),
//                               [](connection* c) -> asio::awaitable<void> { ... });
//
// async_contextmanager<T>(f, args...) stores f and copies of args (std::ref for a reference,
// as std::thread does) and calls f(yield, args...) when entered; T is deduced from a function
// whose first parameter is async_yield<T>, and named for a lambda. T may be a value, a
// reference (the body receives it as a reference, yield takes an lvalue) or void
// (`co_await yield()`).
//
// Semantics (CPython's _AsyncGeneratorContextManager):
//   - async_enter() runs f to its yield and yields the value; async_exit(e) resumes f,
//     throwing e at the yield when e is not null;
//   - f finishing normally after e suppresses e; rethrowing e propagates it (the same object,
//     compared by identity, CPython's `exc is value`); throwing something else replaces it;
//   - f finishing without yielding, yielding a second time, or the manager being entered
//     twice is a protocol_error; after a second yield f is unwound by an exception thrown at
//     that yield (Python's gen.aclose()), and a pending e is chained in the protocol_error.
//   - A cancellation of the caller while async_enter or async_exit waits for f is passed on to
//     f, so async_with's timeout for exits reaches the teardown; while the body runs f is not
//     cancelled.
//
// f runs as an Asio thread of execution of its own (co_spawn) on the caller's executor; the
// two sides meet through thread-safe channels. Destroying a manager that was entered and never
// exited unwinds f the way a second yield does, later, on its executor.
//
// Thread-compatible: a manager may be entered and exited from different threads, not from two
// at once.
#pragma once

#include <asio/any_io_executor.hpp>
#include <asio/awaitable.hpp>
#include <asio/bind_cancellation_slot.hpp>
#include <asio/cancellation_signal.hpp>
#include <asio/cancellation_state.hpp>
#include <asio/co_spawn.hpp>
#include <asio/error.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/experimental/concurrent_channel.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>

#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <system_error>
#include <tuple>
#include <type_traits>
#include <utility>

#include "errors.hpp"

namespace ctxmgr {

template <class T = void>
class async_yield;

namespace detail {

// Thrown into the function at a yield it should not have reached, to unwind it. Not derived
// from std::exception, so that `catch (const std::exception&)` in the function lets it pass.
struct async_generator_exit {};

struct nothing_to_yield {};

enum class generator_event : int { yielded, finished };

template <class T>
struct async_generator_state {
    using stored = std::conditional_t<
        std::is_void_v<T>, char,
        std::conditional_t<std::is_reference_v<T>, std::remove_reference_t<T>*, T>>;

    async_generator_state(const asio::any_io_executor& executor)
        : to_manager(executor, 2), to_generator(executor, 2) {}

    // yielded or finished (with what escaped f, or null).
    asio::experimental::concurrent_channel<void(asio::error_code, int, std::exception_ptr)>
        to_manager;
    // What to throw at the yield (null: return normally).
    asio::experimental::concurrent_channel<void(asio::error_code, std::exception_ptr)> to_generator;
    asio::cancellation_signal cancel;
    std::optional<stored> value;
};

template <class T>
class generator_start {
  public:
    generator_start() = default;
    generator_start(const generator_start&) = delete;
    generator_start& operator=(const generator_start&) = delete;
    virtual ~generator_start() = default;
    virtual asio::awaitable<void> start(async_yield<T> yield) = 0;
};

template <class T, class F, class... Args>
class generator_start_for final : public generator_start<T> {
  public:
    template <class G, class... A>
    explicit generator_start_for(G&& f, A&&... args)
        : function_(std::forward<G>(f)), arguments_(std::forward<A>(args)...) {}
    asio::awaitable<void> start(async_yield<T> yield) override {
        return std::apply(
            [&](Args&... args) { return std::invoke(function_, std::move(yield), args...); },
            arguments_);
    }

  private:
    F function_;
    std::tuple<Args...> arguments_;
};

}  // namespace detail

// What the function receives: co_await yield(value) hands value over as the target and
// suspends until the block ends, then returns, or throws the block's exception.
template <class T>
class async_yield {
  public:
    using state_type = detail::async_generator_state<T>;
    using argument_type = std::conditional_t<std::is_void_v<T>, detail::nothing_to_yield, T>;

    explicit async_yield(std::shared_ptr<state_type> state) noexcept : state_(std::move(state)) {}

    // A value target is moved into the manager; a reference target refers to `value` itself.
    asio::awaitable<void> operator()(argument_type value) requires(!std::is_void_v<T>) {
        if constexpr (std::is_reference_v<T>) {
            state_->value.emplace(std::addressof(value));
        } else {
            state_->value.emplace(std::move(value));
        }
        co_await hand_over();
    }

    asio::awaitable<void> operator()() requires std::is_void_v<T> { co_await hand_over(); }

  private:
    asio::awaitable<void> hand_over() {
        state_->to_manager.try_send(asio::error_code(),
                                    static_cast<int>(detail::generator_event::yielded), nullptr);
        auto [error, thrown] = co_await state_->to_generator.async_receive(
            asio::experimental::as_tuple(asio::use_awaitable));
        if (error) throw std::system_error(error, "async_contextmanager: waiting at the yield");
        if (thrown) std::rethrow_exception(thrown);
    }

    std::shared_ptr<state_type> state_;
};

template <class T = void>
class [[nodiscard]] async_contextmanager {
    using state_type = detail::async_generator_state<T>;

  public:
    using value_type = T;

    template <class F, class... Args>
    requires std::is_invocable_r_v < asio::awaitable<void>, std::decay_t<F>
    &, async_yield<T>,
        std::decay_t<Args>&... > explicit async_contextmanager(F&& f, Args&&... args)
        : start_(std::make_shared<
                 detail::generator_start_for<T, std::decay_t<F>, std::decay_t<Args>...>>(
              std::forward<F>(f), std::forward<Args>(args)...)) {}

    async_contextmanager(async_contextmanager&&) noexcept = default;
    async_contextmanager& operator=(async_contextmanager&&) = delete;
    async_contextmanager(const async_contextmanager&) = delete;
    async_contextmanager& operator=(const async_contextmanager&) = delete;

    // Entered and never exited: f is unwound from its yield, later, on its executor.
    ~async_contextmanager() {
        if (phase_ == phase::entered && state_) {
            state_->to_generator.try_send(asio::error_code(),
                                          std::make_exception_ptr(detail::async_generator_exit{}));
        }
    }

    // Runs f to its yield and yields the value. Throws what the setup throws, or
    // protocol_error when entered twice or when f finished without yielding.
    auto async_enter() -> asio::awaitable<std::conditional_t<
        std::is_reference_v<T>, std::reference_wrapper<std::remove_reference_t<T>>, T>> {
        if (phase_ != phase::created) {
            throw protocol_error(phase_ == phase::entered
                                     ? "async_contextmanager: entered twice"
                                     : "async_contextmanager: entered after it finished");
        }
        phase_ = phase::entered;
        auto executor = co_await asio::this_coro::executor;
        asio::cancellation_state cancelled = co_await asio::this_coro::cancellation_state;
        if (cancelled.cancelled() != asio::cancellation_type::none) {
            phase_ = phase::finished;
            throw std::system_error(asio::error::operation_aborted, "async_contextmanager enter");
        }
        state_ = std::make_shared<state_type>(executor);
        asio::co_spawn(executor, run(state_, start_),
                       asio::bind_cancellation_slot(
                           state_->cancel.slot(), [state = state_](std::exception_ptr thrown) {
                               state->to_manager.try_send(
                                   asio::error_code(),
                                   static_cast<int>(detail::generator_event::finished), thrown);
                           }));
        auto [event, thrown] = co_await wait();
        if (event == detail::generator_event::finished) {
            phase_ = phase::finished;
            if (thrown) std::rethrow_exception(thrown);
            throw protocol_error("async_contextmanager: the coroutine did not yield");
        }
        if constexpr (std::is_reference_v<T>) {
            co_return std::ref(**state_->value);
        } else if constexpr (!std::is_void_v<T>) {
            co_return std::move(*state_->value);
        }
    }

    // Resumes f with e (see the semantics above). Yields true when f swallowed a non-null e.
    asio::awaitable<bool> async_exit(std::exception_ptr e) {
        if (phase_ != phase::entered) {
            throw protocol_error(phase_ == phase::created
                                     ? "async_contextmanager: exit without enter"
                                     : "async_contextmanager: exited twice");
        }
        phase_ = phase::finished;
        state_->to_generator.try_send(asio::error_code(), e);
        auto [event, thrown] = co_await wait();
        if (event == detail::generator_event::yielded) {
            // A second yield: unwind f from there (Python's aclose()), then report.
            state_->to_generator.try_send(asio::error_code(),
                                          std::make_exception_ptr(detail::async_generator_exit{}));
            static_cast<void>(co_await wait());
            if (!e) {
                throw protocol_error(
                    "async_contextmanager: the coroutine did not stop (it "
                    "yielded twice)");
            }
            throw_chained(protocol_error("async_contextmanager: the coroutine did not stop "
                                         "after the exception was thrown in"),
                          e);
        }
        if (!thrown) co_return static_cast<bool>(e);
        // Compared by identity, so a different exception of the same type is never mistaken
        // for e.
        if (thrown == e) co_return false;
        std::rethrow_exception(thrown);
    }

  private:
    enum class phase : unsigned char { created, entered, finished };

    static asio::awaitable<void> run(std::shared_ptr<state_type> state,
                                     std::shared_ptr<detail::generator_start<T>> start) {
        try {
            // Named rather than a temporary of the co_await (see async_with.hpp, level()).
            auto started = start->start(async_yield<T>(std::move(state)));
            co_await std::move(started);
        } catch (const detail::async_generator_exit&) {
            // Unwound on purpose.
        }
    }

    // The next event from f. The caller's cancellation is passed on to f meanwhile, and does
    // not abandon the wait: f decides how it ends.
    asio::awaitable<std::pair<detail::generator_event, std::exception_ptr>> wait() {
        asio::cancellation_state caller = co_await asio::this_coro::cancellation_state;
        asio::cancellation_slot slot = caller.slot();
        if (slot.is_connected()) {
            slot.assign(
                [state = state_.get()](asio::cancellation_type type) { state->cancel.emit(type); });
        }
        const bool throws = co_await asio::this_coro::throw_if_cancelled();
        co_await asio::this_coro::throw_if_cancelled(false);
        auto [error, event, thrown] =
            co_await state_->to_manager.async_receive(asio::bind_cancellation_slot(
                asio::cancellation_slot(), asio::experimental::as_tuple(asio::use_awaitable)));
        if (slot.is_connected()) slot.clear();
        co_await asio::this_coro::throw_if_cancelled(throws);
        if (error)
            throw std::system_error(error, "async_contextmanager: waiting for the coroutine");
        co_return std::pair(static_cast<detail::generator_event>(event), thrown);
    }

    std::shared_ptr<detail::generator_start<T>> start_;
    std::shared_ptr<state_type> state_;
    phase phase_ = phase::created;
};

template <class T, class... P, class... A>
async_contextmanager(asio::awaitable<void> (*)(async_yield<T>, P...), A&&...)
    -> async_contextmanager<T>;

}  // namespace ctxmgr
