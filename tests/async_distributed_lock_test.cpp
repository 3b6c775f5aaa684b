// ctxmgr::postgres::async_advisory_lock on a real server: mutual exclusion between coroutines
// and with the synchronous lock, fencing tokens strictly increasing across both, a timeout and
// a single try with the lock held elsewhere, a cancellation while waiting, the loss of the
// session while held, and an unlock failure chained to the block's exception. After every
// failure: no lock held and no session left (counted in pg_stat_activity by application_name).
// A borrowed session holds the lock and is given back open, as it was lent, after failures too.
#include <ctxmgr/async_distributed_lock.hpp>
#include <ctxmgr/async_with.hpp>
#include <ctxmgr/distributed_lock.hpp>
#include <ctxmgr/tracking.hpp>
#include <ctxmgr/with.hpp>

#include <gtest/gtest.h>
#include <unistd.h>
#include <asio/co_spawn.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/io_context.hpp>
#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <stop_token>
#include <string>
#include <variant>
#include <vector>

#include "async_recording.hpp"
#include "eventually.hpp"
#include "postgres_fixtures.hpp"
#include "recording.hpp"

namespace {

using namespace std::chrono_literals;
using namespace asio::experimental::awaitable_operators;
using ctxmgr::testing::eventually;
using ctxmgr::testing::exception_from;
using ctxmgr::testing::pause;
using ctxmgr::testing::run_awaitable;
using ctxmgr::testing::test_error;
using ctxmgr::testing::what_of;
namespace db = ctxmgr::db;
namespace postgres = ctxmgr::postgres;
using postgres::async_lease;

template <class T>
using task = asio::awaitable<T>;

static_assert(ctxmgr::async_context_manager<postgres::async_advisory_lock>);
static_assert(!std::is_copy_constructible_v<postgres::async_advisory_lock>);
static_assert(std::is_nothrow_move_constructible_v<postgres::async_advisory_lock>);

// A name no other test or test process uses.
std::string unique(std::string_view stem) {
    static std::atomic<int> counter{0};
    return std::string(stem) + '_' + std::to_string(::getpid()) + '_' + std::to_string(++counter);
}

class AsyncDistributedLock : public ctxmgr::testing::shared_postgres_test {
  protected:
    postgres::connection connect() { return postgres::connect(server_.conninfo); }

    // The manager, its sessions named `application` in pg_stat_activity. Made outside the
    // co_await expression: GCC 12 destroys some of its temporaries twice.
    postgres::async_advisory_lock lock(const asio::any_io_executor& executor,
                                       const std::string& name, postgres::lock_options options,
                                       const std::string& application = "ctxmgr_async_lock") {
        return postgres::async_advisory_lock(
            executor, server_.conninfo + " application_name=" + application, name, options);
    }

    // The sessions open under `application`.
    std::int64_t sessions(postgres::connection& admin, const std::string& application) {
        return admin.query_value<std::int64_t>(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", application);
    }

    // The sessions other than `except` holding an advisory lock on `key`.
    std::int64_t holders(postgres::connection& admin, std::int64_t key, int except = 0) {
        const auto k = static_cast<std::uint64_t>(key);
        return admin.query_value<std::int64_t>(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 AND "
            "granted AND classid::bigint = $1 AND objid::bigint = $2 AND pid <> $3",
            static_cast<std::int64_t>(k >> 32), static_cast<std::int64_t>(k & 0xffffffffU), except);
    }

    std::int64_t token(postgres::connection& admin, std::int64_t key) {
        return admin
            .query_value<std::optional<std::int64_t>>(
                "SELECT token FROM ctxmgr_fencing_tokens WHERE key = $1", key)
            .value_or(0);
    }
};

TEST_F(AsyncDistributedLock, TwoCoroutinesTakeTurnsWithStrictlyIncreasingTokens) {
    auto admin = connect();
    const std::string name = unique("turns");
    int inside = 0;
    int most_inside = 0;
    std::vector<std::int64_t> tokens;
    auto worker = [&](int rounds) -> task<void> {
        const auto executor = co_await asio::this_coro::executor;
        for (int i = 0; i < rounds; ++i) {
            co_await ctxmgr::async_with(
                lock(executor, name, {.timeout = 10s}), [&](async_lease& held) -> task<void> {
                    most_inside = std::max(most_inside, ++inside);
                    tokens.push_back(held.fencing_token());
                    EXPECT_EQ(held.key().name(), name);
                    EXPECT_EQ(holders(admin, held.key().value()), 1);
                    // The other coroutine runs meanwhile, and waits on its own session.
                    co_await pause(20ms);
                    EXPECT_EQ(co_await held.session().async_query_value<int>("SELECT 1"), 1);
                    --inside;
                });
        }
    };
    run_awaitable([&]() -> task<void> { co_await (worker(4) && worker(4)); }());
    EXPECT_EQ(most_inside, 1);
    ASSERT_EQ(tokens.size(), 8U);
    for (std::size_t i = 1; i < tokens.size(); ++i) EXPECT_GT(tokens[i], tokens[i - 1]);
    EXPECT_EQ(token(admin, postgres::advisory_key(name)), tokens.back());
    EXPECT_EQ(holders(admin, postgres::advisory_key(name)), 0);
}

TEST_F(AsyncDistributedLock, ASynchronousAndAnAsyncHolderExcludeEachOtherAndShareTokens) {
    const std::string name = unique("mixed");
    std::int64_t sync_token = 0;
    std::int64_t async_token = 0;
    ctxmgr::with(postgres::advisory_lock(server_.conninfo, name), [&](postgres::lease& held) {
        sync_token = held.fencing_token();
        const auto e = exception_from([&] {
            run_awaitable([&]() -> task<void> {
                co_await ctxmgr::async_with(
                    lock(co_await asio::this_coro::executor, name, {.timeout = 200ms}),
                    [](async_lease&) -> task<void> {
                        ADD_FAILURE() << "granted while the synchronous lease held it";
                        co_return;
                    });
            }());
        });
        EXPECT_TRUE(ctxmgr::holds<ctxmgr::timeout_error>(e)) << ctxmgr::describe(e);
    });
    run_awaitable([&]() -> task<void> {
        co_await ctxmgr::async_with(
            lock(co_await asio::this_coro::executor, name, {}),
            [&](async_lease& held) -> task<void> {
                async_token = held.fencing_token();
                const auto e = exception_from([&] {
                    static_cast<void>(
                        postgres::advisory_lock(server_.conninfo, name, {.timeout = 0ms}).enter());
                });
                EXPECT_TRUE(ctxmgr::holds<ctxmgr::timeout_error>(e)) << ctxmgr::describe(e);
                co_return;
            });
    }());
    EXPECT_GT(async_token, sync_token);
    ctxmgr::with(postgres::advisory_lock(server_.conninfo, name),
                 [&](postgres::lease& held) { EXPECT_GT(held.fencing_token(), async_token); });
}

TEST_F(AsyncDistributedLock, ATimeoutNamesTheKeyAndLeavesNoLockAndNoSession) {
    auto admin = connect();
    auto holder = connect();
    const std::string name = unique("busy");
    const std::string application = unique("busy_app");
    const std::int64_t key = postgres::advisory_key(name);
    ASSERT_TRUE(holder.query_value<bool>("SELECT pg_try_advisory_lock($1)", key));
    const std::int64_t before = token(admin, key);
    const auto start = std::chrono::steady_clock::now();
    const auto e = exception_from([&] {
        run_awaitable([&]() -> task<void> {
            co_await ctxmgr::async_with(
                lock(co_await asio::this_coro::executor, name, {.timeout = 300ms}, application),
                [](async_lease&) -> task<void> {
                    ADD_FAILURE() << "granted twice";
                    co_return;
                });
        }());
    });
    const auto waited = std::chrono::steady_clock::now() - start;
    ASSERT_TRUE(ctxmgr::holds<ctxmgr::timeout_error>(e)) << ctxmgr::describe(e);
    EXPECT_NE(what_of(e).find("advisory lock \"" + name + "\""), std::string::npos) << what_of(e);
    EXPECT_GE(waited, 290ms) << what_of(e);
    EXPECT_LT(waited, 2s) << what_of(e);
    EXPECT_TRUE(eventually([&] { return sessions(admin, application) == 0; }))
        << "the session that waited is closed";
    EXPECT_EQ(holders(admin, key, holder.backend_pid()), 0);
    EXPECT_EQ(token(admin, key), before) << "no token is taken without the lock";
    // The holder keeps it.
    EXPECT_EQ(holders(admin, key), 1);
    EXPECT_TRUE(holder.query_value<bool>("SELECT pg_advisory_unlock($1)", key));
}

TEST_F(AsyncDistributedLock, ATimeoutOfZeroTriesOnce) {
    auto admin = connect();
    auto holder = connect();
    const std::string name = unique("once");
    const std::string application = unique("once_app");
    const std::int64_t key = postgres::advisory_key(name);
    ASSERT_TRUE(holder.query_value<bool>("SELECT pg_try_advisory_lock($1)", key));
    auto attempt = [&]() -> task<std::int64_t> {
        co_return co_await ctxmgr::async_with(
            lock(co_await asio::this_coro::executor, name, {.timeout = 0ms}, application),
            [](async_lease& held) -> task<std::int64_t> { co_return held.fencing_token(); });
    };
    const auto start = std::chrono::steady_clock::now();
    const auto e = exception_from([&] { run_awaitable(attempt()); });
    EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
    ASSERT_TRUE(ctxmgr::holds<ctxmgr::timeout_error>(e)) << ctxmgr::describe(e);
    EXPECT_NE(what_of(e).find("tried once"), std::string::npos) << what_of(e);
    EXPECT_NE(what_of(e).find(name), std::string::npos) << what_of(e);
    EXPECT_TRUE(eventually([&] { return sessions(admin, application) == 0; }));
    ASSERT_TRUE(holder.query_value<bool>("SELECT pg_advisory_unlock($1)", key));
    // Free: tried once, granted, with a token.
    EXPECT_GE(run_awaitable(attempt()), 1);
    EXPECT_EQ(holders(admin, key), 0);
}

TEST_F(AsyncDistributedLock, ACancellationWhileWaitingLeavesNoLockAndNoSession) {
    auto admin = connect();
    auto holder = connect();
    const std::string name = unique("cancelled");
    const std::string application = unique("cancelled_app");
    const std::int64_t key = postgres::advisory_key(name);
    ASSERT_TRUE(holder.query_value<bool>("SELECT pg_try_advisory_lock($1)", key));
    const std::int64_t before = token(admin, key);
    bool body_ran = false;
    const auto start = std::chrono::steady_clock::now();
    const auto winner = run_awaitable([&]() -> task<std::size_t> {
        const auto executor = co_await asio::this_coro::executor;
        asio::steady_timer timer(executor, 300ms);
        const auto first =
            co_await (ctxmgr::async_with(lock(executor, name, {.timeout = 30s}, application),
                                         [&](async_lease&) -> task<void> {
                                             body_ran = true;
                                             co_return;
                                         }) ||
                      timer.async_wait(asio::use_awaitable));
        co_return first.index();
    }());
    EXPECT_EQ(winner, 1U) << "the timer ends the wait";
    EXPECT_FALSE(body_ran);
    EXPECT_LT(std::chrono::steady_clock::now() - start, 10s);
    EXPECT_TRUE(eventually([&] { return sessions(admin, application) == 0; }))
        << "the waiting session is closed";
    // Released by its holder, the lock is held by no one: the cancelled wait took nothing.
    ASSERT_TRUE(holder.query_value<bool>("SELECT pg_advisory_unlock($1)", key));
    EXPECT_EQ(holders(admin, key), 0);
    EXPECT_EQ(token(admin, key), before);
}

TEST_F(AsyncDistributedLock, ATerminatedSessionFiresTheStopTokenAndTheExitThrows) {
    auto admin = connect();
    const std::string name = unique("terminated");
    bool fired_in_time = false;
    const auto e = exception_from([&] {
        run_awaitable([&]() -> task<void> {
            co_await ctxmgr::async_with(
                lock(co_await asio::this_coro::executor, name, {.keep_alive = 1s}),
                [&](async_lease& held) -> task<void> {
                    std::atomic<bool> fired{false};
                    std::stop_callback on_loss(held.stop_token(), [&] { fired = true; });
                    co_await pause(50ms);
                    EXPECT_FALSE(fired.load()) << "fired while the session was alive";
                    EXPECT_FALSE(held.lost());
                    EXPECT_TRUE(admin.query_value<bool>("SELECT pg_terminate_backend($1, 10000)",
                                                        held.backend_pid()));
                    // The keep-alive bound (4 x keep_alive); the server's close is seen at once.
                    const auto terminated = std::chrono::steady_clock::now();
                    while (!fired && std::chrono::steady_clock::now() - terminated < 4s) {
                        co_await pause(10ms);
                    }
                    fired_in_time = fired.load();
                    EXPECT_TRUE(held.lost());
                });
        }());
    });
    EXPECT_TRUE(fired_in_time) << "no notification within the keep-alive bound";
    ASSERT_TRUE(ctxmgr::holds<db::connection_error>(e)) << ctxmgr::describe(e);
    EXPECT_NE(what_of(e).find("was lost"), std::string::npos) << what_of(e);
    EXPECT_NE(what_of(e).find(name), std::string::npos) << what_of(e);
}

TEST_F(AsyncDistributedLock, TheBlocksExceptionPassesAndAnUnlockFailureIsChainedToIt) {
    auto admin = connect();
    const std::string name = unique("chained");
    auto run = [&](bool unlock_by_hand, bool fail) {
        return exception_from([&] {
            run_awaitable([&]() -> task<void> {
                co_await ctxmgr::async_with(lock(co_await asio::this_coro::executor, name, {}),
                                            [&](async_lease& held) -> task<void> {
                                                if (unlock_by_hand) {
                                                    co_await held.session().async_execute_script(
                                                        "SELECT pg_advisory_unlock_all()");
                                                }
                                                if (fail) throw test_error("the block failed");
                                            });
            }());
        });
    };
    auto e = run(false, true);
    EXPECT_TRUE(ctxmgr::holds<test_error>(e)) << ctxmgr::describe(e);
    EXPECT_FALSE(ctxmgr::holds<db::error>(e)) << "unlocked: the block's exception alone";
    e = run(true, false);
    ASSERT_TRUE(ctxmgr::holds<db::error>(e)) << ctxmgr::describe(e);
    EXPECT_FALSE(ctxmgr::holds<db::connection_error>(e));
    EXPECT_NE(what_of(e).find("pg_advisory_unlock answered false"), std::string::npos)
        << what_of(e);
    e = run(true, true);
    ASSERT_TRUE(ctxmgr::holds<db::error>(e)) << ctxmgr::describe(e);
    EXPECT_NE(ctxmgr::describe(e).find("nested: ctxmgr::testing::test_error: the block failed"),
              std::string::npos)
        << ctxmgr::describe(e);
    EXPECT_EQ(holders(admin, postgres::advisory_key(name)), 0);
}

TEST_F(AsyncDistributedLock, WhileHeldTheLeaseIsTrackedAndTheManagerMayBeEnteredAgain) {
    const std::string name = unique("again");
    run_awaitable([&]() -> task<void> {
        auto manager = lock(co_await asio::this_coro::executor, name, {});
        async_lease& first = co_await manager.async_enter();
        const std::int64_t token = first.fencing_token();
        EXPECT_FALSE(manager.closed());
        if constexpr (ctxmgr::tracking_enabled) {
            int tracked = 0;
            for (const auto& r : ctxmgr::live_resources()) {
                if (r.kind == "advisory lock" && r.description.find(name) != std::string::npos) {
                    ++tracked;
                    EXPECT_EQ(r.description.find("password"), std::string::npos);
                }
            }
            EXPECT_EQ(tracked, 1) << "the lease is tracked while held";
        }
        std::exception_ptr twice;
        try {
            static_cast<void>(co_await manager.async_enter());
        } catch (...) {
            twice = std::current_exception();
        }
        EXPECT_TRUE(ctxmgr::holds<ctxmgr::protocol_error>(twice)) << ctxmgr::describe(twice);
        co_await manager.async_unlock();
        co_await manager.async_unlock();
        EXPECT_TRUE(manager.closed());
        async_lease& second = co_await manager.async_enter();
        EXPECT_GT(second.fencing_token(), token);
        co_await manager.async_exit(nullptr);
    }());
}

TEST_F(AsyncDistributedLock, ABorrowedSessionHoldsTheLockAndStaysOpenAndAsItWasLent) {
    auto admin = connect();
    auto holder = connect();
    const std::string name = unique("borrowed");
    const std::int64_t key = postgres::advisory_key(name);
    run_awaitable([&]() -> task<void> {
        co_await ctxmgr::async_with(
            postgres::async_connect(co_await asio::this_coro::executor, server_.conninfo),
            [&](postgres::async_connection& c) -> task<void> {
                std::int64_t first = 0;
                co_await ctxmgr::async_with(postgres::async_advisory_lock(c, name),
                                            [&](async_lease& held) -> task<void> {
                                                EXPECT_EQ(&held.session(), &c);
                                                EXPECT_EQ(held.backend_pid(), c.backend_pid());
                                                EXPECT_EQ(holders(admin, key), 1);
                                                first = held.fencing_token();
                                                co_return;
                                            });
                EXPECT_TRUE(c.is_open()) << "a borrowed session stays open";
                EXPECT_EQ(holders(admin, key), 0);
                // A failed wait (a timeout, a cancellation) leaves it as it was lent.
                EXPECT_TRUE(holder.query_value<bool>("SELECT pg_try_advisory_lock($1)", key));
                std::exception_ptr timed_out;
                try {
                    co_await ctxmgr::async_with(
                        postgres::async_advisory_lock(c, name, {.timeout = 100ms}),
                        [](async_lease&) -> task<void> { co_return; });
                } catch (...) {
                    timed_out = std::current_exception();
                }
                EXPECT_TRUE(ctxmgr::holds<ctxmgr::timeout_error>(timed_out))
                    << ctxmgr::describe(timed_out);
                EXPECT_EQ(c.transaction_state(), db::transaction_state::idle);
                asio::steady_timer timer(co_await asio::this_coro::executor, 200ms);
                const auto winner = co_await (
                    ctxmgr::async_with(postgres::async_advisory_lock(c, name, {.timeout = 30s}),
                                       [](async_lease&) -> task<void> { co_return; }) ||
                    timer.async_wait(asio::use_awaitable));
                EXPECT_EQ(winner.index(), 1U);
                EXPECT_TRUE(c.is_open());
                EXPECT_EQ(c.transaction_state(), db::transaction_state::idle);
                EXPECT_EQ(co_await c.async_query_value<int>("SELECT 2"), 2);
                EXPECT_TRUE(holder.query_value<bool>("SELECT pg_advisory_unlock($1)", key));
                EXPECT_EQ(holders(admin, key), 0) << "the failed waits took nothing";
                // Granted again on the same session, with a later token.
                co_await ctxmgr::async_with(postgres::async_advisory_lock(c, name),
                                            [&](async_lease& held) -> task<void> {
                                                EXPECT_GT(held.fencing_token(), first);
                                                co_return;
                                            });
                // Not inside a transaction: the lock's own would end the caller's.
                co_await c.async_execute_script("BEGIN");
                std::exception_ptr misuse;
                try {
                    co_await ctxmgr::async_with(postgres::async_advisory_lock(c, name),
                                                [](async_lease&) -> task<void> { co_return; });
                } catch (...) {
                    misuse = std::current_exception();
                }
                EXPECT_TRUE(ctxmgr::holds<ctxmgr::protocol_error>(misuse))
                    << ctxmgr::describe(misuse);
                co_await c.async_execute_script("ROLLBACK");
            });
    }());
}

// On a server of its own: no lock has made the token table yet.
class DistributedLockOnAFreshServer : public ctxmgr::testing::dedicated_postgres_test {};

TEST_F(DistributedLockOnAFreshServer, TheFirstLockMakesTheTokenTableInTheSameEnter) {
    start();
    CTXMGR_REQUIRE_POSTGRES(server_);
    auto admin = postgres::connect(server_.conninfo);
    const auto table_exists = [&] {
        return admin.query_value<bool>("SELECT to_regclass('ctxmgr_fencing_tokens') IS NOT NULL");
    };
    ASSERT_FALSE(table_exists());
    // The lock script's token statement fails on the missing table after the lock is granted:
    // the lock is kept, the table made, the token taken.
    const auto first = run_awaitable([&]() -> task<std::int64_t> {
        auto locking = postgres::async_advisory_lock(co_await asio::this_coro::executor,
                                                     server_.conninfo, "fresh", {.timeout = 5s});
        co_return co_await ctxmgr::async_with(
            std::move(locking),
            [](async_lease& held) -> task<std::int64_t> { co_return held.fencing_token(); });
    }());
    EXPECT_EQ(first, 1);
    EXPECT_TRUE(table_exists());
    // The synchronous lock reads its script's answer the same way.
    admin.execute_script("DROP TABLE ctxmgr_fencing_tokens");
    ctxmgr::with(postgres::advisory_lock(server_.conninfo, "fresh", {.timeout = 5s}),
                 [](postgres::lease& held) { EXPECT_EQ(held.fencing_token(), 1); });
    EXPECT_TRUE(table_exists());
    // And both go on from there.
    ctxmgr::with(postgres::advisory_lock(server_.conninfo, "fresh", {.timeout = 5s}),
                 [](postgres::lease& held) { EXPECT_EQ(held.fencing_token(), 2); });
    // Nothing is left locked or open.
    EXPECT_EQ(admin.query_value<std::int64_t>(
                  "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"),
              0);
    // A backend leaves pg_stat_activity a moment after its client has closed the session.
    EXPECT_TRUE(eventually([&] {
        return admin.query_value<std::int64_t>(
                   "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                   "AND pid <> pg_backend_pid()") == 0;
    }));
}

TEST(AsyncDistributedLockNeverEntered, AManagerNeverEnteredReportsItsLine) {
    ctxmgr::testing::unraisable_log log;
    unsigned line = 0;
    {
        asio::io_context io;
        const postgres::async_advisory_lock unused(io.get_executor(), "host=/nonexistent", 42);
        line = __LINE__ - 1;
    }
    const auto reports = log.reports();
    ASSERT_EQ(reports.size(), 1u);
    EXPECT_TRUE(ctxmgr::testing::reports_never_entered(reports[0], "postgres::async_advisory_lock",
                                                       "async_distributed_lock_test.cpp", line))
        << reports[0];
}

}  // namespace
