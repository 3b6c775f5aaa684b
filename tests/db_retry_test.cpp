// db::retry and db::async_retry (db/retry.hpp, db/async_retry.hpp): what is retried and what is
// not, the backoff, and real serialization failures and deadlocks between two PostgreSQL
// sessions.
#include <ctxmgr/async_postgres.hpp>
#include <ctxmgr/async_with.hpp>
#include <ctxmgr/db/async_retry.hpp>
#include <ctxmgr/postgres.hpp>
#include <ctxmgr/with.hpp>

#include <gtest/gtest.h>
#include <unistd.h>
#include <asio/co_spawn.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/io_context.hpp>
#include <asio/steady_timer.hpp>

#include <atomic>
#include <barrier>
#include <chrono>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include "async_recording.hpp"
#include "postgres_fixtures.hpp"
#include "recording.hpp"

namespace {

using namespace std::chrono_literals;
using ctxmgr::testing::exception_from;
using ctxmgr::testing::run_awaitable;
using ctxmgr::testing::test_error;
namespace db = ctxmgr::db;
namespace postgres = ctxmgr::postgres;

db::serialization_failure conflict(const char* sqlstate = "40001") {
    return db::serialization_failure("postgresql", sqlstate, 0, "could not serialize access",
                                     "COMMIT");
}

// No waiting between attempts, unless a test asks for it.
db::retry_policy quick(int attempts) {
    return {.max_attempts = attempts, .initial_backoff = 0ms, .jitter = 0};
}

TEST(DbRetry, RetriesSerializationFailuresUntilTheBodyReturns) {
    std::vector<int> retried;
    db::retry_policy policy = quick(5);
    policy.on_retry = [&](int attempt, const db::serialization_failure& f) {
        EXPECT_EQ(f.sqlstate(), attempt == 1 ? "40001" : "40P01");
        retried.push_back(attempt);
    };
    int calls = 0;
    const int result = db::retry(policy, [&](int attempt) {
        EXPECT_EQ(attempt, ++calls);
        if (attempt == 1) throw conflict("40001");
        if (attempt == 2) throw conflict("40P01");
        return attempt * 10;
    });
    EXPECT_EQ(result, 30);
    EXPECT_EQ(retried, (std::vector<int>{1, 2}));
}

TEST(DbRetry, TheLastFailureAfterMaxAttemptsPropagatesUnchanged) {
    int calls = 0;
    std::exception_ptr last;
    const auto e = exception_from([&] {
        db::retry(quick(3), [&] {
            ++calls;
            last = std::make_exception_ptr(conflict());
            std::rethrow_exception(last);
        });
    });
    EXPECT_EQ(calls, 3);
    EXPECT_EQ(e, last);  // the very object
}

TEST(DbRetry, NeverRetriesAnOutcomeUnknownCommitNorAnyOtherError) {
    const std::vector<std::exception_ptr> not_retried{
        std::make_exception_ptr(
            db::commit_outcome_unknown("postgresql", "57P01", 0, "terminated", "COMMIT")),
        std::make_exception_ptr(db::connection_error("postgresql", "08006", 0, "lost", "SELECT")),
        std::make_exception_ptr(
            db::constraint_violation("postgresql", "23505", 0, "dup", "INSERT")),
        std::make_exception_ptr(db::error("postgresql", "40003", 0, "unknown completion", "")),
        std::make_exception_ptr(test_error("the body's own")),
    };
    for (const auto& thrown : not_retried) {
        int calls = 0;
        const auto e = exception_from([&] {
            db::retry(quick(5), [&] {
                ++calls;
                std::rethrow_exception(thrown);
            });
        });
        EXPECT_EQ(calls, 1) << ctxmgr::describe(thrown);
        EXPECT_EQ(e, thrown);
    }
}

TEST(DbRetry, OneAttemptOrFewerNeverRetries) {
    for (int attempts : {1, 0, -3}) {
        int calls = 0;
        EXPECT_THROW(db::retry(quick(attempts),
                               [&] {
                                   ++calls;
                                   throw conflict();
                               }),
                     db::serialization_failure);
        EXPECT_EQ(calls, 1);
    }
}

TEST(DbRetry, BackoffGrowsByTheMultiplierUpToTheCapAndJitterOnlyShortensIt) {
    db::retry_policy policy{
        .initial_backoff = 10ms, .multiplier = 2.0, .max_backoff = 50ms, .jitter = 0};
    EXPECT_EQ(db::detail::retry_backoff(policy, 1), 10ms);
    EXPECT_EQ(db::detail::retry_backoff(policy, 2), 20ms);
    EXPECT_EQ(db::detail::retry_backoff(policy, 3), 40ms);
    EXPECT_EQ(db::detail::retry_backoff(policy, 4), 50ms);
    EXPECT_EQ(db::detail::retry_backoff(policy, 1000), 50ms);
    policy.jitter = 0.5;
    bool varied = false;
    for (int i = 0; i < 200; ++i) {
        const auto wait = db::detail::retry_backoff(policy, 2);
        EXPECT_GE(wait, 10ms);
        EXPECT_LE(wait, 20ms);
        varied = varied || wait != db::detail::retry_backoff(policy, 2);
    }
    EXPECT_TRUE(varied);
}

TEST(DbRetry, WaitsTheBackoffBetweenAttempts) {
    const db::retry_policy policy{.max_attempts = 3, .initial_backoff = 30ms, .jitter = 0};
    const auto start = std::chrono::steady_clock::now();
    EXPECT_THROW(db::retry(policy, [] { throw conflict(); }), db::serialization_failure);
    EXPECT_GE(std::chrono::steady_clock::now() - start, 90ms);  // 30 + 60
}

// ---- async_retry -------------------------------------------------------------------------

TEST(DbAsyncRetry, RetriesAnAwaitableBodyOnATimerAndYieldsItsValue) {
    const db::retry_policy policy{.max_attempts = 4, .initial_backoff = 20ms, .jitter = 0};
    int calls = 0;
    const auto start = std::chrono::steady_clock::now();
    const int result = run_awaitable(db::async_retry(policy, [&]() -> asio::awaitable<int> {
        if (++calls < 3) throw conflict();
        co_return calls;
    }));
    EXPECT_EQ(result, 3);
    EXPECT_GE(std::chrono::steady_clock::now() - start, 60ms);  // 20 + 40
}

TEST(DbAsyncRetry, NeverRetriesOtherErrorsAndPassesTheLastFailureOn) {
    int calls = 0;
    std::exception_ptr thrown;
    const auto e = exception_from([&] {
        run_awaitable(db::async_retry(quick(5), [&](int) -> asio::awaitable<void> {
            ++calls;
            thrown = std::make_exception_ptr(
                db::commit_outcome_unknown("postgresql", "", 0, "lost", "COMMIT"));
            std::rethrow_exception(thrown);
            co_return;
        }));
    });
    EXPECT_EQ(calls, 1);
    EXPECT_EQ(e, thrown);
    calls = 0;
    const auto last = exception_from([&] {
        run_awaitable(db::async_retry(quick(2), [&]() -> asio::awaitable<void> {
            ++calls;
            throw conflict();
            co_return;
        }));
    });
    EXPECT_EQ(calls, 2);
    EXPECT_TRUE(ctxmgr::holds<db::serialization_failure>(last));
}

TEST(DbAsyncRetry, ACancellationDuringTheBackoffEndsItWithoutAnotherAttempt) {
    using namespace asio::experimental::awaitable_operators;
    const db::retry_policy policy{.max_attempts = 5, .initial_backoff = 10s, .jitter = 0};
    int calls = 0;
    const auto start = std::chrono::steady_clock::now();
    const auto e = exception_from([&] {
        run_awaitable([&]() -> asio::awaitable<void> {
            asio::steady_timer timer(co_await asio::this_coro::executor, 50ms);
            co_await (db::async_retry(policy,
                                      [&]() -> asio::awaitable<void> {
                                          ++calls;
                                          throw conflict();
                                          co_return;
                                      }) ||
                      timer.async_wait(asio::use_awaitable));
        }());
    });
    EXPECT_EQ(e, nullptr) << ctxmgr::describe(e);  // the timer won the race
    EXPECT_EQ(calls, 1);
    EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
}

// ---- against PostgreSQL --------------------------------------------------------------------

class DbRetryPostgres : public ctxmgr::testing::shared_postgres_test {
  protected:
    postgres::connection connect() { return postgres::connect(server_.conninfo); }
    const std::string table_ = "retry_" + std::to_string(::getpid());
};

TEST_F(DbRetryPostgres, ASerializableTransactionThatConflictsIsRunAgainAndCommits) {
    auto a = connect();
    auto b = connect();
    a.execute_script("DROP TABLE IF EXISTS " + table_ + "; CREATE TABLE " + table_ + " (n bigint)");
    const db::transaction_options serializable{.isolation = db::isolation_level::serializable};
    std::vector<std::string> failures;
    db::retry_policy policy{.max_attempts = 3, .initial_backoff = 1ms};
    policy.on_retry = [&](int, const db::serialization_failure& f) {
        failures.push_back(f.sqlstate());
    };
    const auto attempts = db::retry(policy, [&](int attempt) {
        ctxmgr::with(b.transaction(serializable), [&](auto& tb) {
            const auto seen =
                tb.template query_value<std::int64_t>("SELECT count(*) FROM " + table_);
            if (attempt == 1) {
                // Another session reads and writes the same set meanwhile: a write skew.
                ctxmgr::with(a.transaction(serializable), [&](auto& ta) {
                    const auto n =
                        ta.template query_value<std::int64_t>("SELECT count(*) FROM " + table_);
                    ta.execute("INSERT INTO " + table_ + " VALUES ($1)", n);
                });
            }
            tb.execute("INSERT INTO " + table_ + " VALUES ($1)", seen);
        });
        return attempt;
    });
    EXPECT_EQ(attempts, 2);
    EXPECT_EQ(failures, (std::vector<std::string>{"40001"}));
    // Both sessions' rows, the second written after seeing the first.
    EXPECT_EQ(a.query_value<std::int64_t>("SELECT count(*) FROM " + table_), 2);
    EXPECT_EQ(a.query_value<std::int64_t>("SELECT max(n) FROM " + table_), 1);
    EXPECT_EQ(b.transaction_state(), db::transaction_state::idle);
    a.execute_script("DROP TABLE " + table_);
}

TEST_F(DbRetryPostgres, ADeadlockVictimIsRunAgainAndBothSessionsFinish) {
    auto setup = connect();
    setup.execute_script("DROP TABLE IF EXISTS " + table_ + "; CREATE TABLE " + table_ +
                         " (id bigint PRIMARY KEY, n bigint); INSERT INTO " + table_ +
                         " VALUES (1, 0), (2, 0)");
    std::barrier both_hold_one(2);
    std::atomic<int> attempts{0};
    std::vector<std::string> failures[2];
    const auto worker = [&](int self) {
        auto c = connect();
        // The server's deadlock check runs in a session that has waited deadlock_timeout and
        // ends that session's transaction: with equal timeouts both checks may find the cycle
        // at once and end both. The first worker's runs long before the second's.
        c.execute_script(self == 0 ? "SET deadlock_timeout = '50ms'"
                                   : "SET deadlock_timeout = '5s'");
        db::retry_policy policy{.max_attempts = 4, .initial_backoff = 5ms};
        policy.on_retry = [&](int, const db::serialization_failure& f) {
            failures[self].push_back(f.sqlstate());
        };
        const int first = self == 0 ? 1 : 2;
        const int second = self == 0 ? 2 : 1;
        db::retry(policy, [&](int attempt) {
            ++attempts;
            ctxmgr::with(c.transaction(), [&](auto& tx) {
                tx.execute("UPDATE " + table_ + " SET n = n + 1 WHERE id = $1", first);
                // Each holds its first row before either asks for its second: a deadlock.
                if (attempt == 1) both_hold_one.arrive_and_wait();
                tx.execute("UPDATE " + table_ + " SET n = n + 1 WHERE id = $1", second);
            });
        });
    };
    std::exception_ptr errors[2];
    std::thread other([&] { errors[1] = exception_from([&] { worker(1); }); });
    errors[0] = exception_from([&] { worker(0); });
    other.join();
    EXPECT_EQ(errors[0], nullptr) << ctxmgr::describe(errors[0]);
    EXPECT_EQ(errors[1], nullptr) << ctxmgr::describe(errors[1]);
    EXPECT_EQ(attempts.load(), 3);  // the victim twice
    EXPECT_EQ(failures[0], (std::vector<std::string>{"40P01"}));
    EXPECT_TRUE(failures[1].empty());
    EXPECT_EQ(setup.query_value<std::int64_t>("SELECT sum(n) FROM " + table_), 4);
    setup.execute_script("DROP TABLE " + table_);
}

TEST_F(DbRetryPostgres, AnAsyncSerializableTransactionThatConflictsIsRunAgainAndCommits) {
    auto setup = connect();
    setup.execute_script("DROP TABLE IF EXISTS " + table_ + "; CREATE TABLE " + table_ +
                         " (n bigint)");
    std::vector<std::string> failures;
    const auto attempts = run_awaitable([](std::string conninfo, std::string table,
                                           std::vector<std::string>& seen) -> asio::awaitable<int> {
        const db::transaction_options serializable{.isolation = db::isolation_level::serializable};
        auto executor = co_await asio::this_coro::executor;
        co_return co_await ctxmgr::async_with(
            postgres::async_connect(executor, conninfo),
            postgres::async_connect(executor, conninfo),
            [&](postgres::async_connection& a,
                postgres::async_connection& b) -> asio::awaitable<int> {
                db::retry_policy policy{.max_attempts = 3, .initial_backoff = 1ms};
                policy.on_retry = [&](int, const db::serialization_failure& f) {
                    seen.push_back(f.sqlstate());
                };
                co_return co_await db::async_retry(
                    policy, [&](int attempt) -> asio::awaitable<int> {
                        co_await ctxmgr::async_with(
                            b.async_transaction(serializable),
                            [&](postgres::async_connection& tb) -> asio::awaitable<void> {
                                const auto n = co_await tb.async_query_value<std::int64_t>(
                                    "SELECT count(*) FROM " + table);
                                if (attempt == 1) {
                                    co_await ctxmgr::async_with(
                                        a.async_transaction(serializable),
                                        [&](postgres::async_connection& ta)
                                            -> asio::awaitable<void> {
                                            const auto m =
                                                co_await ta.async_query_value<std::int64_t>(
                                                    "SELECT count(*) FROM " + table);
                                            co_await ta.async_execute(
                                                "INSERT INTO " + table + " VALUES ($1)", m);
                                        });
                                }
                                co_await tb.async_execute("INSERT INTO " + table + " VALUES ($1)",
                                                          n);
                            });
                        co_return attempt;
                    });
            });
    }(server_.conninfo, table_, failures));
    EXPECT_EQ(attempts, 2);
    EXPECT_EQ(failures, (std::vector<std::string>{"40001"}));
    EXPECT_EQ(setup.query_value<std::int64_t>("SELECT count(*) FROM " + table_), 2);
    EXPECT_EQ(setup.query_value<std::int64_t>("SELECT max(n) FROM " + table_), 1);
    setup.execute_script("DROP TABLE " + table_);
}

}  // namespace
