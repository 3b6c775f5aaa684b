// ctxmgr/async_contextlib.hpp: the small async managers of Python's contextlib.
//
//   aclosing(x)             co_awaits x.async_close() on exit; refers to an lvalue, owns an
//                           rvalue; the body receives x as a reference
//   async_nullcontext(), async_nullcontext(v)
//                           does nothing, asynchronously; the target is v (a reference to it)
//
//   co_await ctxmgr::async_with(ctxmgr::aclosing(stream), [](auto& s) -> asio::awaitable<void> {
//       co_await s.async_write(data);
//   });                                   // stream.async_close() awaited on every path
//
// async_decorate (Python's ContextDecorator for coroutines) is in async_with.hpp.
//
// Guarantees: async_nullcontext never throws. aclosing's exit throws what async_close() throws
// (replacing a pending exception). Thread-compatible.
#pragma once

#include <asio/awaitable.hpp>

#include <exception>
#include <functional>
#include <type_traits>
#include <utility>

#include "async_protocol.hpp"

namespace ctxmgr {

// Awaits x.async_close() on exit, whatever happened: Python's contextlib.aclosing. The target
// is the thing itself (as a reference). aclosing(x) refers to an lvalue x, which must outlive
// it, and owns an rvalue.
template <class T>
class [[nodiscard]] aclosing {
  public:
    using thing_type = std::remove_reference_t<T>;
    static_assert(
        requires(thing_type & t) {
            { t.async_close() } -> detail::awaitable_type;
        },
        "ctxmgr::aclosing: the object has no async_close() returning an asio::awaitable");

    template <class U>
    requires std::is_constructible_v<T, U&&>
    explicit aclosing(U&& thing) noexcept(std::is_nothrow_constructible_v<T, U&&>)
        : thing_(std::forward<U>(thing)) {}

    asio::awaitable<std::reference_wrapper<thing_type>> async_enter() {
        co_return std::ref(thing_);
    }
    asio::awaitable<void> async_exit(std::exception_ptr) { co_await thing_.async_close(); }

  private:
    T thing_;
};

template <class T>
aclosing(T&&) -> aclosing<T>;

// A manager that does nothing, asynchronously: a stand-in where an async manager is optional.
// The target is the value given (a reference to it: an lvalue is referred to, an rvalue kept),
// or nothing. Never suppresses.
template <class T = void>
class [[nodiscard]] async_nullcontext {
  public:
    template <class U>
    requires std::is_constructible_v<T, U&&>
    explicit async_nullcontext(U&& value) noexcept(std::is_nothrow_constructible_v<T, U&&>)
        : value_(std::forward<U>(value)) {}

    asio::awaitable<std::reference_wrapper<std::remove_reference_t<T>>> async_enter() {
        co_return std::ref(value_);
    }
    asio::awaitable<void> async_exit(std::exception_ptr) { co_return; }

  private:
    T value_;
};

template <>
class [[nodiscard]] async_nullcontext<void> {
  public:
    asio::awaitable<void> async_enter() { co_return; }
    asio::awaitable<void> async_exit(std::exception_ptr) { co_return; }
};

async_nullcontext()->async_nullcontext<void>;
template <class T>
async_nullcontext(T&&) -> async_nullcontext<T>;

}  // namespace ctxmgr
