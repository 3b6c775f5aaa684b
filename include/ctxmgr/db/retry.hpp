// ctxmgr/db/retry.hpp: run a transaction again when the database says it may succeed if retried.
//
// db::retry(policy, body) calls body() (or body(attempt), attempt counting from 1) until it
// returns; when it throws db::serialization_failure (PostgreSQL's 40001 serialization failure
// and 40P01 deadlock, SQLite's busy COMMIT), it waits a backoff and calls it again, at most
// policy.max_attempts times in all. The body opens its own transaction, so that each attempt
// starts afresh: retrying inside an open transaction would only meet the same failure.
//
//   auto total = ctxmgr::db::retry({.max_attempts = 5}, [&] {
//       return ctxmgr::with(conn.transaction({.isolation = db::isolation_level::serializable}),
//                           [](auto& tx) { return tx.template query_value<long>("..."); });
//   });
//
// Guarantees:
//   - Only db::serialization_failure is retried. Everything else propagates at once, the
//     original object: db::commit_outcome_unknown above all (the work may have been committed,
//     and running it again could apply it twice), connection errors, constraint violations,
//     the body's own exceptions.
//   - The last failure, once max_attempts attempts have failed, propagates unchanged (the
//     original object, its type and message as the database gave them), so callers catch what
//     they would catch without retry; policy.on_retry sees every failure that was retried,
//     with its attempt number, for logs and metrics.
//   - Backoff: the n-th wait is initial_backoff * multiplier^(n-1), capped at max_backoff, then
//     shortened by a random fraction of up to `jitter` (0.5: between half and all of it), so
//     that sessions that conflicted once do not meet again at the same instant. The wait is a
//     deadline (detail/deadline.hpp) slept on this thread; async_retry (db/async_retry.hpp)
//     waits on a timer instead.
// Thread-safe: retry keeps no state of its own but a per-thread random generator.
#pragma once

#include <algorithm>
#include <chrono>
#include <concepts>
#include <cstdint>
#include <exception>
#include <functional>
#include <random>
#include <thread>
#include <type_traits>
#include <utility>

#include "../detail/deadline.hpp"
#include "../errors.hpp"

namespace ctxmgr::db {

struct retry_policy {
    // Attempts in all, the first included; 1 never retries. Less than 1 counts as 1.
    int max_attempts = 5;
    // The wait before the second attempt, multiplied by `multiplier` before each further one
    // and capped at max_backoff.
    std::chrono::milliseconds initial_backoff{10};
    double multiplier = 2.0;
    std::chrono::milliseconds max_backoff{1000};
    // The fraction of each wait that may be taken off at random, in [0, 1].
    double jitter = 0.5;
    // Called with the attempt that failed (from 1) and its exception before each wait; what it
    // throws propagates instead of the retry (the failure nested in it, if it nests).
    std::function<void(int attempt, const serialization_failure& failure)> on_retry{};
};

namespace detail {

// The wait after failed attempt `attempt` (from 1): see the top of this header.
[[nodiscard]] inline std::chrono::nanoseconds retry_backoff(const retry_policy& policy,
                                                            int attempt) {
    double wait = static_cast<double>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(policy.initial_backoff).count());
    const double cap = static_cast<double>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(policy.max_backoff).count());
    for (int i = 1; i < attempt && wait < cap; ++i) wait *= std::max(policy.multiplier, 1.0);
    wait = std::min(wait, cap);
    const double jitter = std::clamp(policy.jitter, 0.0, 1.0);
    if (jitter > 0) {
        thread_local std::minstd_rand generator(std::random_device{}());
        wait *= 1.0 - jitter * std::uniform_real_distribution<double>(0.0, 1.0)(generator);
    }
    return std::chrono::nanoseconds(static_cast<std::int64_t>(std::max(wait, 0.0)));
}

template <class Body>
decltype(auto) call_attempt(Body& body, int attempt) {
    if constexpr (std::invocable<Body&, int>) {
        return std::invoke(body, attempt);
    } else {
        return std::invoke(body);
    }
}

}  // namespace detail

// Runs body() (or body(attempt)) until it returns, retrying on serialization_failure as the
// policy says; returns what the body returns. See the top of this header.
template <class Body>
requires std::invocable<Body&, int> || std::invocable<Body&>
decltype(auto) retry(const retry_policy& policy, Body&& body) {
    const int attempts = std::max(policy.max_attempts, 1);
    for (int attempt = 1;; ++attempt) {
        try {
            return detail::call_attempt(body, attempt);
        } catch (const serialization_failure& failure) {
            if (attempt >= attempts) throw;
            if (policy.on_retry) policy.on_retry(attempt, failure);
        }
        // Slept outside the handler: the failure is not kept alive across the wait.
        std::this_thread::sleep_until(
            ctxmgr::detail::deadline::after(detail::retry_backoff(policy, attempt)).time_point());
    }
}

}  // namespace ctxmgr::db
