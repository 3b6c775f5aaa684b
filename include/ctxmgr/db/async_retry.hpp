// ctxmgr/db/async_retry.hpp: db::retry for coroutines (link ctxmgr::async).
//
// co_await db::async_retry(policy, body) is db::retry (db/retry.hpp, whose rules it follows
// word for word) with a body that returns asio::awaitable<R> and a backoff waited on an
// asio::steady_timer of the caller's executor: no thread is blocked, and a cancellation of the
// caller (per-operation cancellation, `||` with a timer) cancels the wait like any co_await,
// throwing asio::system_error(operation_aborted) without a further attempt.
//
//   auto n = co_await ctxmgr::db::async_retry({.max_attempts = 5}, [&]() -> asio::awaitable<long> {
//       co_return co_await ctxmgr::async_with(conn.async_transaction(serializable),
//                                             [](auto& tx) { return
//                                             tx.async_query_value<long>("..."); });
//   });
#pragma once

#include <asio/awaitable.hpp>
#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>

#include <concepts>
#include <exception>
#include <type_traits>
#include <utility>

#include "../async_protocol.hpp"
#include "retry.hpp"

namespace ctxmgr::db {

namespace detail {
template <class Body>
using async_attempt_t = decltype(call_attempt(std::declval<Body&>(), 1));
}  // namespace detail

// Runs co_await body() (or body(attempt)) until it completes, retrying on
// serialization_failure as the policy says; yields what the body yields. The body is moved
// into the coroutine's frame when it is an rvalue.
template <class Body>
requires(std::invocable<Body&, int> || std::invocable<Body&>) &&
    ctxmgr::detail::awaitable_type<detail::async_attempt_t<Body>> auto async_retry(
        retry_policy policy, Body body)
        -> asio::awaitable<ctxmgr::detail::awaitable_value_t<detail::async_attempt_t<Body>>> {
    using result = ctxmgr::detail::awaitable_value_t<detail::async_attempt_t<Body>>;
    const int attempts = std::max(policy.max_attempts, 1);
    asio::steady_timer timer(co_await asio::this_coro::executor);
    for (int attempt = 1;; ++attempt) {
        try {
            if constexpr (std::is_void_v<result>) {
                co_await detail::call_attempt(body, attempt);
                co_return;
            } else {
                co_return co_await detail::call_attempt(body, attempt);
            }
        } catch (const serialization_failure& failure) {
            if (attempt >= attempts) throw;
            if (policy.on_retry) policy.on_retry(attempt, failure);
        }
        // C++ has no co_await in a handler: the wait comes after it.
        timer.expires_at(
            ctxmgr::detail::deadline::after(detail::retry_backoff(policy, attempt)).time_point());
        co_await timer.async_wait(asio::use_awaitable);
    }
}

}  // namespace ctxmgr::db
