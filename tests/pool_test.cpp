// ctxmgr::pool: lending and giving back, what a returned connection is cleaned of, waiting and
// its deadline (with the borrowers named), leak reports, closing, and the background work
// (min_idle, idle_timeout, max_lifetime). Mostly on SQLite files, which are quick and
// deterministic; on PostgreSQL what only a server can show: a session ended while idle in the
// pool, a server restart, a server that refuses (53300) or never answers (a stopped
// postmaster), and the pool under 16 threads.
#include <libpq-fe.h>
#include <ctxmgr/pool.hpp>
#include <ctxmgr/postgres.hpp>
#include <ctxmgr/sqlite.hpp>
#include <ctxmgr/with.hpp>

#include <gtest/gtest.h>
#include <pthread.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <source_location>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "cpu_affinity.hpp"
#include "eventually.hpp"
#include "postgres_fixtures.hpp"
#include "recording.hpp"
#include "temp_directory.hpp"

namespace {

using namespace std::chrono_literals;
using ctxmgr::testing::eventually;
using ctxmgr::testing::exception_from;
using ctxmgr::testing::test_error;
using ctxmgr::testing::what_of;
namespace db = ctxmgr::db;
namespace sqlite = ctxmgr::sqlite;
namespace postgres = ctxmgr::postgres;
using sqlite_pool = ctxmgr::pool<sqlite::connection>;
using postgres_pool = ctxmgr::pool<postgres::connection>;

static_assert(ctxmgr::context_manager<ctxmgr::pooled_connection<sqlite::connection>>);
static_assert(ctxmgr::context_manager<sqlite_pool>);
static_assert(!std::is_copy_constructible_v<sqlite_pool>);
static_assert(!std::is_copy_constructible_v<ctxmgr::pooled_connection<sqlite::connection>>);
static_assert(std::is_nothrow_move_constructible_v<sqlite_pool>);

void expect_consistent(const ctxmgr::pool_stats& s) {
    EXPECT_EQ(s.size, s.idle + s.in_use);
    EXPECT_EQ(s.created - s.destroyed, s.size);
}

using ctxmgr::testing::unraisable_log;

// Pools of SQLite connections to one file.
class Pool : public ::testing::Test {
  protected:
    sqlite_pool make(ctxmgr::pool_options options = {},
                     std::source_location where = std::source_location::current()) {
        if (options.name == "pool") options.name = "test";
        return sqlite_pool([this] { return sqlite::connect(file_, {.busy_timeout = 10s}); },
                           std::move(options), where);
    }
    std::int64_t rows(const std::string& table) {
        auto c = sqlite::connect(file_);
        return c.query_value<std::int64_t>("SELECT count(*) FROM " + table);
    }

    ctxmgr::testing::temp_directory directory_;
    std::string file_ = directory_.file("pool.db");
};

TEST_F(Pool, LendsAConnectionAndTakesItBack) {
    auto pool = make();
    EXPECT_EQ(pool.stats(), ctxmgr::pool_stats{});
    sqlite::connection* first = nullptr;
    ctxmgr::with(pool.connection(), [&](sqlite::connection& c) {
        first = &c;
        EXPECT_EQ(c.query_value<std::int64_t>("SELECT $1 + 1", 41), 42);
        const auto s = pool.stats();
        EXPECT_EQ(s.in_use, 1U);
        EXPECT_EQ(s.idle, 0U);
        EXPECT_EQ(s.created, 1U);
    });
    auto s = pool.stats();
    EXPECT_EQ(s.size, 1U);
    EXPECT_EQ(s.idle, 1U);
    EXPECT_EQ(s.in_use, 0U);
    // The same connection again: the pool does not connect for every borrow.
    ctxmgr::with(pool.connection(), [&](sqlite::connection& c) { EXPECT_EQ(&c, first); });
    s = pool.stats();
    EXPECT_EQ(s.created, 1U);
    EXPECT_EQ(s.destroyed, 0U);
    expect_consistent(s);
}

TEST_F(Pool, DeducesTheConnectionTypeFromTheFactory) {
    ctxmgr::pool pool([this] { return sqlite::connect(file_); }, {.name = "deduced"});
    static_assert(std::is_same_v<decltype(pool), sqlite_pool>);
    EXPECT_EQ(pool.description(), "pool \"deduced\"");
    ctxmgr::with(pool.connection(), [](sqlite::connection& c) { EXPECT_TRUE(c.is_open()); });
}

TEST_F(Pool, ConcurrentBorrowsGetDistinctConnectionsUpToMaxSize) {
    auto pool = make({.max_size = 3});
    auto a = pool.connection();
    auto b = pool.connection();
    auto c = pool.connection();
    std::set<sqlite::connection*> seen{&a.enter(), &b.enter(), &c.enter()};
    EXPECT_EQ(seen.size(), 3U);
    EXPECT_EQ(pool.stats().in_use, 3U);
    EXPECT_EQ(a.get(), *seen.find(a.get()));
    a.exit(nullptr);
    EXPECT_EQ(a.get(), nullptr);
    b.exit(nullptr);
    c.exit(nullptr);
    EXPECT_EQ(pool.stats().idle, 3U);
}

TEST_F(Pool, ATransactionLeftOpenIsRolledBackOnReturn) {
    auto pool = make({.max_size = 1});
    ctxmgr::with(pool.connection(), [](sqlite::connection& c) {
        c.execute("CREATE TABLE t (id INTEGER)");
        c.execute_script("BEGIN");
        c.execute("INSERT INTO t VALUES ($1)", 1);
        EXPECT_EQ(c.transaction_state(), db::transaction_state::active);
    });
    ctxmgr::with(pool.connection(), [](sqlite::connection& c) {
        EXPECT_EQ(c.transaction_state(), db::transaction_state::idle);
        EXPECT_EQ(c.query_value<std::int64_t>("SELECT count(*) FROM t"), 0);
    });
    EXPECT_EQ(pool.stats().destroyed, 0U);  // rolled back, and kept
}

TEST_F(Pool, AnExceptionRollsBackAndPropagatesUnchanged) {
    auto pool = make({.max_size = 1});
    ctxmgr::with(pool.connection(),
                 [](sqlite::connection& c) { c.execute("CREATE TABLE t (id INTEGER)"); });
    std::exception_ptr thrown;
    const auto e = exception_from([&] {
        ctxmgr::with(pool.connection(), [&](sqlite::connection& c) {
            c.execute_script("BEGIN");
            c.execute("INSERT INTO t VALUES ($1)", 1);
            ctxmgr::testing::throw_recorded(thrown);
        });
    });
    EXPECT_EQ(e, thrown);
    EXPECT_EQ(rows("t"), 0);
    const auto s = pool.stats();
    EXPECT_EQ(s.idle, 1U);
    EXPECT_EQ(s.destroyed, 0U);
}

TEST_F(Pool, ATransactionManagerStillEnteredIsInertOnceTheConnectionIsLentAgain) {
    auto pool = make({.max_size = 1});
    ctxmgr::with(pool.connection(),
                 [](sqlite::connection& c) { c.execute("CREATE TABLE t (id INTEGER)"); });
    std::optional<db::transaction<sqlite::connection>> forgotten;
    ctxmgr::with(pool.connection(), [&](sqlite::connection& c) {
        forgotten.emplace(c.transaction());
        forgotten->enter();
        c.execute("INSERT INTO t VALUES ($1)", 1);
        c.execute_script("COMMIT");  // ended by hand: nothing left for the pool to roll back
    });
    ctxmgr::with(pool.connection(), [&](sqlite::connection& c) {
        ctxmgr::with(c.transaction(), [&](sqlite::connection& tx) {
            tx.execute("INSERT INTO t VALUES ($1)", 2);
            // The first borrower's transaction ends now: it must not roll back ours.
            forgotten.reset();
        });
    });
    EXPECT_EQ(rows("t"), 2);
}

TEST_F(Pool, AConnectionClosedByItsBorrowerIsDestroyedAndReplaced) {
    auto pool = make({.max_size = 1});
    sqlite::connection* first = nullptr;
    ctxmgr::with(pool.connection(), [&](sqlite::connection& c) {
        first = &c;
        c.close();
    });
    auto s = pool.stats();
    EXPECT_EQ(s.size, 0U);
    EXPECT_EQ(s.destroyed, 1U);
    ctxmgr::with(pool.connection(), [&](sqlite::connection& c) {
        EXPECT_TRUE(c.is_open());
        EXPECT_EQ(c.query_value<std::int64_t>("SELECT 1"), 1);
    });
    s = pool.stats();
    EXPECT_EQ(s.created, 2U);
    expect_consistent(s);
}

TEST_F(Pool, AConnectionMovedOutOfThePoolIsTheBorrowersToKeep) {
    auto pool = make({.max_size = 1});
    std::optional<sqlite::connection> mine;
    ctxmgr::with(pool.connection(), [&](sqlite::connection& c) { mine.emplace(std::move(c)); });
    EXPECT_TRUE(mine->is_open());
    EXPECT_EQ(mine->query_value<std::int64_t>("SELECT 5"), 5);
    EXPECT_EQ(pool.stats().size, 0U);
    mine->close();
}

TEST_F(Pool, EnteringTwiceOrExitingFirstIsAProtocolError) {
    auto pool = make();
    auto borrow = pool.connection();
    EXPECT_THROW(borrow.exit(nullptr), ctxmgr::protocol_error);
    static_cast<void>(borrow.enter());
    EXPECT_THROW(static_cast<void>(borrow.enter()), ctxmgr::protocol_error);
    EXPECT_EQ(pool.stats().in_use, 1U);
    borrow.exit(nullptr);
    // Again after exit.
    static_cast<void>(borrow.enter());
    borrow.exit(nullptr);
    EXPECT_EQ(pool.stats().in_use, 0U);
}

TEST_F(Pool, AManagerNeverEnteredReportsItsLineAndBorrowsNothing) {
    auto pool = make();
    unraisable_log log;
    unsigned line = 0;
    {
        auto borrow = pool.connection(1s);  // the RAII habit: this borrows nothing
        line = __LINE__ - 1;
        EXPECT_EQ(pool.stats().in_use, 0U);
    }
    auto reports = log.reports();
    ASSERT_EQ(reports.size(), 1u);
    EXPECT_TRUE(ctxmgr::testing::reports_never_entered(reports[0], "pooled_connection",
                                                       "pool_test.cpp", line))
        << reports[0];
    // Entered (by with, or through the one it was moved to): silent.
    ctxmgr::with(pool.connection(), [](sqlite::connection&) {});
    {
        auto borrow = pool.connection();
        auto moved = std::move(borrow);
        ctxmgr::with(moved, [](sqlite::connection&) {});
    }
    EXPECT_EQ(log.reports().size(), 1u) << log.reports().back();
}

TEST_F(Pool, TheManagersDestructorGivesBackWhatWasNeverExited) {
    auto pool = make();
    {
        auto borrow = pool.connection();
        borrow.enter().execute_script("BEGIN");
    }
    const auto s = pool.stats();
    EXPECT_EQ(s.in_use, 0U);
    EXPECT_EQ(s.idle, 1U);
    ctxmgr::with(pool.connection(), [](sqlite::connection& c) {
        EXPECT_EQ(c.transaction_state(), db::transaction_state::idle);
    });
}

TEST_F(Pool, EachBorrowIsATrackedResourceNamingTheBorrowersLine) {
    if (!ctxmgr::tracking_enabled) GTEST_SKIP() << "tracking is compiled out";
    auto pool = make({.name = "orders"});
    const auto line = std::source_location::current().line() + 1;
    ctxmgr::with(pool.connection(), [&](sqlite::connection&) {
        const auto live = ctxmgr::live_resources();
        const auto found = std::find_if(
            live.begin(), live.end(), [](const auto& r) { return r.kind == "pooled connection"; });
        ASSERT_NE(found, live.end());
        EXPECT_EQ(found->description, "\"orders\"");
        EXPECT_EQ(found->where.line(), line);
        EXPECT_NE(std::string(found->where.file_name()).find("pool_test.cpp"), std::string::npos);
    });
    const auto after = ctxmgr::live_resources();
    EXPECT_TRUE(std::none_of(after.begin(), after.end(),
                             [](const auto& r) { return r.kind == "pooled connection"; }));
    // The pool itself is tracked until it is closed.
    EXPECT_TRUE(std::any_of(after.begin(), after.end(), [](const auto& r) {
        return r.kind == "connection pool" && r.description == "\"orders\"";
    }));
    pool.close();
    const auto closed = ctxmgr::live_resources();
    EXPECT_TRUE(std::none_of(closed.begin(), closed.end(),
                             [](const auto& r) { return r.kind == "connection pool"; }));
}

TEST_F(Pool, AnAcquireTimeoutNamesThePoolItsSizeAndTheBorrowersLines) {
    auto pool = make({.name = "orders", .max_size = 1});
    auto held = pool.connection();
    const auto line = std::source_location::current().line() - 1;
    static_cast<void>(held.enter());
    const auto start = std::chrono::steady_clock::now();
    const auto e = exception_from([&] {
        ctxmgr::with(pool.connection(150ms), [](sqlite::connection&) { FAIL() << "lent twice"; });
    });
    const auto waited = std::chrono::steady_clock::now() - start;
    ASSERT_TRUE(ctxmgr::holds<ctxmgr::timeout_error>(e)) << ctxmgr::describe(e);
    const std::string what = what_of(e);
    EXPECT_NE(what.find("pool \"orders\""), std::string::npos) << what;
    EXPECT_NE(what.find("max_size 1"), std::string::npos) << what;
    EXPECT_NE(what.find("1 in use"), std::string::npos) << what;
    EXPECT_NE(what.find("pool_test.cpp:" + std::to_string(line)), std::string::npos) << what;
    EXPECT_NE(what.find("timed out after"), std::string::npos) << what;
    EXPECT_GE(waited, 140ms);
    EXPECT_LT(waited, 5s);
    auto s = pool.stats();
    EXPECT_EQ(s.timeouts, 1U);
    EXPECT_EQ(s.waiting, 0U);
    held.exit(nullptr);
    // A timeout <= 0 takes only what is idle, at once.
    ctxmgr::with(pool.connection(0ms), [](sqlite::connection& c) { EXPECT_TRUE(c.is_open()); });
    held.enter();
    EXPECT_THROW(static_cast<void>(pool.connection(0ms).enter()), ctxmgr::timeout_error);
    held.exit(nullptr);
    EXPECT_EQ(pool.stats().timeouts, 2U);
}

TEST_F(Pool, AWaiterGetsTheConnectionAnotherThreadGivesBack) {
    auto pool = make({.max_size = 1, .acquire_timeout = 30s});
    auto held = pool.connection();
    sqlite::connection* lent = &held.enter();
    std::thread other([&] {
        ctxmgr::with(pool.connection(), [&](sqlite::connection& c) { EXPECT_EQ(&c, lent); });
    });
    ASSERT_TRUE(eventually([&] { return pool.stats().waiting == 1; }));
    held.exit(nullptr);
    other.join();
    const auto s = pool.stats();
    EXPECT_EQ(s.timeouts, 0U);
    EXPECT_EQ(s.created, 1U);
}

// A thread held in a signal handler: woken meanwhile, it cannot run until let go.
std::atomic<bool> in_handler{false};
std::atomic<bool> held_in_handler{false};

extern "C" void hold_while_asked(int) {
    in_handler = true;
    const timespec tick{0, 1'000'000};
    while (held_in_handler) nanosleep(&tick, nullptr);
    in_handler = false;
}

TEST_F(Pool, AWaiterOvertakenOnceIsServedNext) {
    auto pool = make({.max_size = 1, .acquire_timeout = 30s});
    auto held = pool.connection();
    static_cast<void>(held.enter());
    std::mutex mutex;
    std::vector<std::string> order;
    const auto served = [&](const char* who) {
        return [&, who](sqlite::connection&) {
            std::lock_guard lock(mutex);
            order.emplace_back(who);
        };
    };
    std::thread first([&] { ctxmgr::with(pool.connection(), served("first")); });
    ASSERT_TRUE(eventually([&] { return pool.stats().waiting == 1; }));
    // The first waiter is kept from running while it is woken for the returned connection,
    // so that a borrower already running takes it: the first waiter is overtaken.
    struct sigaction hold {};
    struct sigaction previous {};
    hold.sa_handler = hold_while_asked;
    sigemptyset(&hold.sa_mask);
    ASSERT_EQ(sigaction(SIGUSR1, &hold, &previous), 0);
    held_in_handler = true;
    ASSERT_EQ(pthread_kill(first.native_handle(), SIGUSR1), 0);
    ASSERT_TRUE(eventually([&] { return in_handler.load(); }));
    held.exit(nullptr);
    auto overtaking = pool.connection(0s);
    static_cast<void>(overtaking.enter());
    // A later borrower queues while the first is still held.
    std::thread later([&] { ctxmgr::with(pool.connection(), served("later")); });
    ASSERT_TRUE(eventually([&] { return pool.stats().waiting == 1; }));
    held_in_handler = false;
    // Back in the queue, ahead of the later one.
    ASSERT_TRUE(eventually([&] { return pool.stats().waiting == 2; }));
    ASSERT_TRUE(eventually([&] { return !in_handler.load(); }));
    // Held again: the connection returned now is handed to it, not left for whoever runs.
    held_in_handler = true;
    ASSERT_EQ(pthread_kill(first.native_handle(), SIGUSR1), 0);
    ASSERT_TRUE(eventually([&] { return in_handler.load(); }));
    overtaking.exit(nullptr);
    EXPECT_THROW(ctxmgr::with(pool.connection(0s), [](sqlite::connection&) {}),
                 ctxmgr::timeout_error);
    held_in_handler = false;
    first.join();
    later.join();
    sigaction(SIGUSR1, &previous, nullptr);
    EXPECT_EQ(order, (std::vector<std::string>{"first", "later"}));
}

TEST_F(Pool, WaitersAreServedInTheOrderTheyCame) {
    auto pool = make({.max_size = 1, .acquire_timeout = 30s});
    auto held = pool.connection();
    static_cast<void>(held.enter());
    std::mutex mutex;
    std::vector<int> order;
    std::vector<std::thread> waiters;
    for (int i = 0; i < 3; ++i) {
        waiters.emplace_back([&, i] {
            ctxmgr::with(pool.connection(), [&](sqlite::connection&) {
                std::lock_guard lock(mutex);
                order.push_back(i);
            });
        });
        // The next one queues only once this one waits.
        ASSERT_TRUE(
            eventually([&] { return pool.stats().waiting == static_cast<std::size_t>(i + 1); }));
    }
    held.exit(nullptr);
    for (auto& w : waiters) w.join();
    EXPECT_EQ(order, (std::vector<int>{0, 1, 2}));
    EXPECT_EQ(pool.stats().created, 1U);
}

TEST_F(Pool, ATimeoutCarriesTheLastConnectionFailure) {
    std::atomic<int> calls{0};
    sqlite_pool pool(
        [&]() -> sqlite::connection {
            ++calls;
            return sqlite::connect(directory_.file("no/such/dir/x.db"));
        },
        {.name = "broken", .acquire_timeout = 300ms});
    const auto e = exception_from([&] { static_cast<void>(pool.connection().enter()); });
    ASSERT_TRUE(ctxmgr::holds<ctxmgr::timeout_error>(e)) << ctxmgr::describe(e);
    EXPECT_NE(what_of(e).find("the last connection attempt failed"), std::string::npos)
        << what_of(e);
    EXPECT_NE(what_of(e).find("no/such/dir"), std::string::npos) << what_of(e);
    try {
        std::rethrow_exception(e);
    } catch (const std::nested_exception& nested) {
        EXPECT_TRUE(ctxmgr::holds<db::connection_error>(nested.nested_ptr()));
    } catch (...) {
        ADD_FAILURE() << "not nested: " << ctxmgr::describe(e);
    }
    // Retried, with a backoff: not once, not thousands of times.
    EXPECT_GE(calls.load(), 2);
    EXPECT_LT(calls.load(), 100);
    EXPECT_EQ(pool.stats().size, 0U);
}

TEST_F(Pool, ConnectingFailuresAreRetriedUntilOneSucceeds) {
    std::atomic<int> calls{0};
    sqlite_pool pool(
        [&] {
            if (++calls <= 3) throw db::connection_error("sqlite", "", 0, "not yet", "");
            return sqlite::connect(file_);
        },
        {.acquire_timeout = 10s});
    ctxmgr::with(pool.connection(), [](sqlite::connection& c) { EXPECT_TRUE(c.is_open()); });
    EXPECT_EQ(calls.load(), 4);
}

TEST_F(Pool, AConnectionMadeAfterItsWaiterGaveUpJoinsThePool) {
    std::mutex gate;
    std::unique_lock closed_gate(gate);
    sqlite_pool pool(
        [&] {
            std::lock_guard wait_for_the_test(gate);
            return sqlite::connect(file_);
        },
        {.acquire_timeout = 100ms});
    EXPECT_THROW(static_cast<void>(pool.connection().enter()), ctxmgr::timeout_error);
    closed_gate.unlock();  // the connection now completes, with nobody waiting
    ASSERT_TRUE(eventually([&] { return pool.stats().idle == 1; }));
    ctxmgr::with(pool.connection(0ms), [](sqlite::connection& c) { EXPECT_TRUE(c.is_open()); });
    EXPECT_EQ(pool.stats().created, 1U);
}

TEST_F(Pool, ABorrowHeldPastTheLeakThresholdIsReportedOnceWithItsLine) {
    if (!ctxmgr::tracking_enabled) GTEST_SKIP() << "leak reports come from the tracker";
    std::mutex mutex;
    std::vector<ctxmgr::resource_info> reports;
    auto pool = make(
        {.name = "leaky", .leak_threshold = 100ms, .on_leak = [&](const ctxmgr::resource_info& r) {
             std::lock_guard lock(mutex);
             reports.push_back(r);
         }});
    auto count = [&] {
        std::lock_guard lock(mutex);
        return reports.size();
    };
    // A short borrow is not reported.
    ctxmgr::with(pool.connection(), [](sqlite::connection&) {});
    auto held = pool.connection();
    const auto line = std::source_location::current().line() - 1;
    static_cast<void>(held.enter());
    // Soon after the threshold, not at the housekeeper's next routine round (a second).
    ASSERT_TRUE(eventually([&] { return count() == 1; }, 700ms));
    std::this_thread::sleep_for(300ms);  // several more housekeeping rounds: still one report
    // The report is the tracker's record of the borrow.
    std::uint64_t tracked_id = 0;
    for (const auto& r : ctxmgr::live_resources()) {
        if (r.kind == "pooled connection" && r.description == "\"leaky\"") tracked_id = r.id;
    }
    held.exit(nullptr);
    std::lock_guard lock(mutex);
    ASSERT_EQ(reports.size(), 1U);
    EXPECT_EQ(reports[0].kind, "pooled connection");
    EXPECT_EQ(reports[0].description, "\"leaky\"");
    EXPECT_EQ(reports[0].where.line(), line);
    EXPECT_GE(reports[0].age(), 100ms);
    EXPECT_NE(reports[0].id, 0U);
    EXPECT_EQ(reports[0].id, tracked_id);
    EXPECT_NE(reports[0].thread, 0U);
}

TEST_F(Pool, LeakReportsWatchThisPoolsBorrowsAlone) {
    if (!ctxmgr::tracking_enabled) GTEST_SKIP() << "leak reports come from the tracker";
    std::mutex mutex;
    std::vector<ctxmgr::resource_info> reports;
    auto watched = make(
        {.name = "watched", .leak_threshold = 20ms, .on_leak = [&](const ctxmgr::resource_info& r) {
             std::lock_guard lock(mutex);
             reports.push_back(r);
         }});
    auto other = make({.name = "other"});
    ctxmgr::tracked unrelated("socket", "held long");
    auto held_elsewhere = other.connection();
    static_cast<void>(held_elsewhere.enter());
    std::this_thread::sleep_for(100ms);  // both past the threshold, neither the pool's
    {
        std::lock_guard lock(mutex);
        EXPECT_TRUE(reports.empty());
    }
    auto held = watched.connection();
    static_cast<void>(held.enter());
    ASSERT_TRUE(eventually([&] {
        std::lock_guard lock(mutex);
        return !reports.empty();
    }));
    held.exit(nullptr);
    held_elsewhere.exit(nullptr);
    std::lock_guard lock(mutex);
    ASSERT_EQ(reports.size(), 1U);
    EXPECT_EQ(reports[0].description, "\"watched\"");
}

TEST_F(Pool, CloseFromOnLeakIsRefused) {
    if (!ctxmgr::tracking_enabled) GTEST_SKIP() << "leak reports come from the tracker";
    std::atomic<int> refused{0};
    std::optional<sqlite_pool> pool;
    pool.emplace([this] { return sqlite::connect(file_); },
                 ctxmgr::pool_options{
                     .name = "self-closing",
                     .leak_threshold = 20ms,
                     .on_leak = [&](const ctxmgr::resource_info&) {
                         try {
                             pool->close();
                         } catch (const ctxmgr::protocol_error& e) {
                             if (std::string(e.what()).find("close() from the pool's own thread") !=
                                 std::string::npos) {
                                 ++refused;
                             }
                         }
                     }});
    auto held = pool->connection();
    static_cast<void>(held.enter());
    ASSERT_TRUE(eventually([&] { return refused.load() == 1; }));
    held.exit(nullptr);
    EXPECT_NO_THROW(pool->close());
}

TEST_F(Pool, AnOnLeakThatThrowsGoesToTheUnraisableHook) {
    unraisable_log log;
    {
        auto pool = make({.name = "thrower",
                          .leak_threshold = 20ms,
                          .on_leak = [](const ctxmgr::resource_info&) {
                              throw std::runtime_error("on_leak failed");
                          }});
        auto held = pool.connection();
        static_cast<void>(held.enter());
        ASSERT_TRUE(eventually([&] { return !log.reports().empty(); }));
        held.exit(nullptr);
    }
    const auto reports = log.reports();
    ASSERT_EQ(reports.size(), 1U);
    EXPECT_NE(reports[0].find("pool \"thrower\": on_leak"), std::string::npos) << reports[0];
    EXPECT_NE(reports[0].find("on_leak failed"), std::string::npos) << reports[0];
}

TEST_F(Pool, CloseWaitsForBorrowersThatComeBackInTime) {
    auto pool = make({.max_size = 2});
    auto held = pool.connection();
    static_cast<void>(held.enter());
    std::thread returner([&] {
        std::this_thread::sleep_for(100ms);
        held.exit(nullptr);
    });
    EXPECT_NO_THROW(pool.close(10s));
    returner.join();
    const auto s = pool.stats();
    EXPECT_EQ(s.size, 0U);
    EXPECT_EQ(s.created, s.destroyed);
    pool.close();  // idempotent
}

TEST_F(Pool, ClosedPoolsLendNothingAndWakeTheirWaiters) {
    auto pool = make({.max_size = 1, .acquire_timeout = 30s});
    auto held = pool.connection();
    static_cast<void>(held.enter());
    std::exception_ptr from_waiter;
    std::thread waiter([&] {
        from_waiter = exception_from([&] { static_cast<void>(pool.connection().enter()); });
    });
    ASSERT_TRUE(eventually([&] { return pool.stats().waiting == 1; }));
    std::thread closer([&] { EXPECT_NO_THROW(pool.close(30s)); });
    waiter.join();
    EXPECT_TRUE(ctxmgr::holds<ctxmgr::closed_error>(from_waiter)) << ctxmgr::describe(from_waiter);
    EXPECT_NE(what_of(from_waiter).find("pool \"test\""), std::string::npos);
    held.exit(nullptr);  // lets close() finish
    closer.join();
    EXPECT_THROW(static_cast<void>(pool.connection().enter()), ctxmgr::closed_error);
}

TEST_F(Pool, CloseWithoutALimitWaitsForTheBorrowerInsteadOfOverflowing) {
    auto pool = make({.max_size = 1});
    auto held = pool.connection();
    static_cast<void>(held.enter());
    std::atomic<bool> closed{false};
    std::thread closer([&] {
        EXPECT_NO_THROW(pool.close(std::chrono::nanoseconds::max()));
        closed = true;
    });
    ASSERT_TRUE(eventually([&] {
        return ctxmgr::holds<ctxmgr::closed_error>(
            exception_from([&] { static_cast<void>(pool.connection(0ms).enter()); }));
    }));
    std::this_thread::sleep_for(20ms);
    EXPECT_FALSE(closed) << "close() gave up on a borrower it had no limit to wait for";
    held.exit(nullptr);
    closer.join();
    EXPECT_TRUE(closed);
    EXPECT_EQ(pool.stats().size, 0U);
}

TEST_F(Pool, CloseNamesTheBorrowersThatNeverCameBackAndALateReturnClosesTheConnection) {
    auto pool = make({.name = "closing"});
    auto held = pool.connection();
    const auto line = std::source_location::current().line() - 1;
    sqlite::connection& c = held.enter();
    const auto e = exception_from([&] { pool.close(50ms); });
    ASSERT_TRUE(ctxmgr::holds<ctxmgr::leak_error>(e)) << ctxmgr::describe(e);
    EXPECT_NE(what_of(e).find("pool \"closing\": closed with 1 connection still borrowed"),
              std::string::npos)
        << what_of(e);
    EXPECT_NE(what_of(e).find("pool_test.cpp:" + std::to_string(line)), std::string::npos)
        << what_of(e);
    EXPECT_TRUE(c.is_open());  // the borrower may go on
    held.exit(nullptr);        // closed now (the test's leak check sees none left open)
    EXPECT_EQ(pool.stats().size, 0U);
}

TEST_F(Pool, TheDestructorReportsBorrowersThatOutliveItAndTheirReturnIsStillSafe) {
    unraisable_log log;
    std::optional<ctxmgr::pooled_connection<sqlite::connection>> held;
    {
        auto pool = make({.name = "gone", .close_timeout = 50ms});
        held.emplace(pool.connection());
        held->enter().execute_script("CREATE TABLE t (id INTEGER)");
    }
    const auto reports = log.reports();
    ASSERT_EQ(reports.size(), 1U);
    EXPECT_NE(reports[0].find("pool \"gone\": closing in the destructor"), std::string::npos)
        << reports[0];
    EXPECT_NE(reports[0].find("still borrowed"), std::string::npos) << reports[0];
    // The pool is gone; its borrower returns the connection, which is closed (the test's leak
    // check sees no connection left open).
    EXPECT_EQ(held->get()->query_value<std::int64_t>("SELECT count(*) FROM t"), 0);
    held->exit(nullptr);
}

TEST_F(Pool, APoolIsAManagerThatClosesOnExit) {
    auto outer = make();
    ctxmgr::with(outer, [](sqlite_pool& pool) {
        ctxmgr::with(pool.connection(), [](sqlite::connection& c) { EXPECT_TRUE(c.is_open()); });
    });
    EXPECT_THROW(static_cast<void>(outer.connection().enter()), ctxmgr::closed_error);
}

TEST_F(Pool, MinIdleConnectionsAreMadeInTheBackground) {
    auto pool = make({.max_size = 4, .min_idle = 3});
    ASSERT_TRUE(eventually([&] { return pool.stats().idle == 3; }));
    // Borrowing two leaves one idle: two more are made to keep three.
    auto a = pool.connection();
    auto b = pool.connection();
    static_cast<void>(a.enter());
    static_cast<void>(b.enter());
    ASSERT_TRUE(eventually([&] { return pool.stats().size == 4; }));  // max_size caps it
    a.exit(nullptr);
    b.exit(nullptr);
    const auto s = pool.stats();
    EXPECT_EQ(s.idle, 4U);
    EXPECT_EQ(s.created, 4U);
}

TEST_F(Pool, IdleConnectionsBeyondMinIdleAreClosedAfterIdleTimeout) {
    auto pool = make({.max_size = 3, .min_idle = 1, .idle_timeout = 100ms});
    {
        auto a = pool.connection();
        auto b = pool.connection();
        auto c = pool.connection();
        static_cast<void>(a.enter());
        static_cast<void>(b.enter());
        static_cast<void>(c.enter());
    }
    EXPECT_EQ(pool.stats().idle, 3U);
    ASSERT_TRUE(eventually([&] { return pool.stats().size == 1; }));
    std::this_thread::sleep_for(250ms);
    const auto s = pool.stats();
    EXPECT_EQ(s.size, 1U);  // min_idle stays
    EXPECT_EQ(s.destroyed, 2U);
    expect_consistent(s);
}

TEST_F(Pool, ConnectionsPastMaxLifetimeAreReplaced) {
    auto pool = make({.max_size = 1, .max_lifetime = 100ms});
    sqlite::connection* first = nullptr;
    ctxmgr::with(pool.connection(), [&](sqlite::connection& c) { first = &c; });
    ASSERT_TRUE(eventually([&] { return pool.stats().destroyed == 1; }));  // retired while idle
    // Lent past its lifetime, a connection goes when it comes back.
    ctxmgr::with(pool.connection(),
                 [&](sqlite::connection&) { std::this_thread::sleep_for(150ms); });
    const auto s = pool.stats();
    EXPECT_EQ(s.created, 2U);
    EXPECT_EQ(s.destroyed, 2U);
    EXPECT_EQ(s.size, 0U);
}

TEST_F(Pool, BadOptionsAreRefusedNamingTheOption) {
    auto refused = [&](ctxmgr::pool_options o) {
        return what_of(exception_from([&] { static_cast<void>(make(std::move(o))); }));
    };
    EXPECT_NE(refused({.max_size = 0}).find("max_size must be at least 1"), std::string::npos);
    EXPECT_NE(refused({.max_size = 2, .min_idle = 3}).find("min_idle (3) exceeds max_size (2)"),
              std::string::npos);
    EXPECT_NE(refused({.acquire_timeout = -1ms}).find("acquire_timeout is negative"),
              std::string::npos);
    EXPECT_NE(refused({.validation_timeout = -1ms}).find("validation_timeout is negative"),
              std::string::npos);
    EXPECT_NE(refused({.leak_threshold = -5ms}).find("pool \"test\": leak_threshold"),
              std::string::npos);
    EXPECT_THROW(make({.max_size = 0}), std::invalid_argument);
}

// The issue's load: 16 threads, 10,000 borrows of a pool of 4, a tenth of them throwing out
// of a transaction they opened. Every connection comes back, clean; none is lost or leaked.
template <class Connection>
void borrow_ten_thousand_times(ctxmgr::pool<Connection>& pool, std::string_view select_param) {
    constexpr int threads = 16;
    constexpr int borrows = 10'000 / threads;
    std::atomic<int> thrown{0};
    std::atomic<int> done{0};
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t) {
        workers.emplace_back([&, t] {
            for (int i = 0; i < borrows; ++i) {
                try {
                    ctxmgr::with(pool.connection(), [&](Connection& c) {
                        if ((t * borrows + i) % 10 == 0) {
                            c.execute_script("BEGIN");
                            throw test_error("a tenth of the requests fail");
                        }
                        EXPECT_EQ(c.transaction_state(), db::transaction_state::idle);
                        EXPECT_EQ(c.template query_value<std::int64_t>(select_param, i), i);
                    });
                    ++done;
                } catch (const test_error&) {
                    ++thrown;
                }
            }
        });
    }
    for (auto& w : workers) w.join();
    EXPECT_EQ(thrown.load(), 1000);
    EXPECT_EQ(done.load(), 9000);
    const auto s = pool.stats();
    EXPECT_EQ(s.in_use, 0U);
    EXPECT_EQ(s.waiting, 0U);
    EXPECT_EQ(s.timeouts, 0U);
    EXPECT_LE(s.size, 4U);
    EXPECT_EQ(s.idle, s.size);
    EXPECT_EQ(s.destroyed, 0U);
    expect_consistent(s);
    // Every borrow waited and was used once; every connection made was timed.
    const auto m = pool.metrics();
    EXPECT_EQ(m.wait_time.count, 10'000U);
    EXPECT_EQ(m.use_time.count, 10'000U);
    EXPECT_EQ(m.create_time.count, m.created);
    EXPECT_EQ(m.used, 0U);
    EXPECT_EQ(m.pending, 0U);
}

TEST_F(Pool, SixteenThreadsTenThousandBorrowsATenthThrowingNothingLostNothingLeaked) {
    auto pool = make({.max_size = 4, .acquire_timeout = 60s});
    borrow_ten_thousand_times(pool, "SELECT $1");
}

// ---- Metrics and their exposition ------------------------------------------------------

std::uint64_t bucket_total(const ctxmgr::pool_histogram& h) {
    std::uint64_t total = 0;
    for (const auto n : h.buckets) total += n;
    return total;
}

TEST(PoolHistogram, BucketsDoubleFrom131MicrosecondsAndTheLastTakesTheRest) {
    using h = ctxmgr::pool_histogram;
    EXPECT_EQ(h::upper_bound(0), std::chrono::nanoseconds(131'072));
    EXPECT_EQ(h::upper_bound(1), std::chrono::nanoseconds(262'144));
    EXPECT_EQ(h::upper_bound(h::bucket_count - 2), std::chrono::nanoseconds(std::int64_t{1} << 35));
    EXPECT_EQ(h::upper_bound(h::bucket_count - 1), std::chrono::nanoseconds::max());
    EXPECT_EQ(h::bucket_of(std::chrono::nanoseconds(-5)), 0U);
    EXPECT_EQ(h::bucket_of(0ns), 0U);
    EXPECT_EQ(h::bucket_of(131'072ns), 0U);  // bounds are inclusive, as Prometheus's le
    EXPECT_EQ(h::bucket_of(131'073ns), 1U);
    EXPECT_EQ(h::bucket_of(262'144ns), 1U);
    EXPECT_EQ(h::bucket_of(262'145ns), 2U);
    EXPECT_EQ(h::bucket_of(1s), 13U);  // (2^29, 2^30] ns
    EXPECT_EQ(h::bucket_of(std::chrono::nanoseconds(std::int64_t{1} << 35)), h::bucket_count - 2);
    EXPECT_EQ(h::bucket_of(40s), h::bucket_count - 1);
    EXPECT_EQ(h::bucket_of(std::chrono::nanoseconds::max()), h::bucket_count - 1);
    for (std::size_t i = 0; i + 1 < h::bucket_count; ++i) {
        EXPECT_EQ(h::bucket_of(h::upper_bound(i)), i);
        EXPECT_EQ(h::bucket_of(h::upper_bound(i) + 1ns), i + 1);
    }
    h histogram;
    histogram.record(3ms);
    histogram.record(0ns);
    EXPECT_EQ(histogram.count, 2U);
    EXPECT_EQ(histogram.sum, 3ms);
    EXPECT_EQ(histogram.buckets[0], 1U);
    EXPECT_EQ(histogram.buckets[h::bucket_of(3ms)], 1U);
}

TEST_F(Pool, MetricsCountWaitsUsesCreationsAndTimeouts) {
    auto pool = make({.name = "metered", .max_size = 2});
    auto m = pool.metrics();
    EXPECT_EQ(m.max, 2U);
    EXPECT_EQ(m.idle + m.used + m.pending + m.created + m.destroyed + m.timeouts, 0U);
    EXPECT_EQ(m.wait_time.count + m.use_time.count + m.create_time.count, 0U);

    // One borrow held 30 ms, one that must wait 50 ms for it, one that times out.
    auto held = pool.connection();
    static_cast<void>(held.enter());
    auto second = pool.connection();
    static_cast<void>(second.enter());
    m = pool.metrics();
    EXPECT_EQ(m.used, 2U);
    EXPECT_EQ(m.created, 2U);
    EXPECT_EQ(m.create_time.count, 2U);
    EXPECT_EQ(m.wait_time.count, 2U);  // each waited for the creator
    EXPECT_THROW(static_cast<void>(pool.connection(0ms).enter()), ctxmgr::timeout_error);
    std::this_thread::sleep_for(30ms);
    second.exit(nullptr);
    std::thread returner([&] {
        std::this_thread::sleep_for(50ms);
        held.exit(nullptr);
    });
    std::thread waiter([&] {
        // Both connections are lent or idle: take the idle one, then wait for `held`.
        auto a = pool.connection();
        static_cast<void>(a.enter());
        ctxmgr::with(pool.connection(5s), [](sqlite::connection& c) { EXPECT_TRUE(c.is_open()); });
        a.exit(nullptr);
    });
    returner.join();
    waiter.join();
    m = pool.metrics();
    EXPECT_EQ(m.timeouts, 1U);
    EXPECT_EQ(m.wait_time.count, 4U);  // the timeout is not a wait that obtained anything
    EXPECT_EQ(m.use_time.count, 4U);
    EXPECT_EQ(bucket_total(m.wait_time), m.wait_time.count);
    EXPECT_EQ(bucket_total(m.use_time), m.use_time.count);
    EXPECT_EQ(bucket_total(m.create_time), m.create_time.count);
    // The waiter waited about 50 ms, precisely timed; `held` was used 80 ms at least, on the
    // coarse clock (up to a tick short).
    EXPECT_GE(m.wait_time.sum, 40ms);
    EXPECT_LT(m.wait_time.sum, 5s);
    EXPECT_GE(m.use_time.sum, 70ms);
    EXPECT_GT(m.create_time.sum, 0ns);
    EXPECT_EQ(m.idle, 2U);
    EXPECT_EQ(m.used, 0U);
    EXPECT_EQ(m.pending, 0U);
    EXPECT_EQ(m.created - m.destroyed, m.idle + m.used);
}

TEST_F(Pool, StatusShowsTheLongestWaitAndWhoHoldsEachConnection) {
    auto pool = make({.name = "page", .max_size = 2});
    auto status = pool.status();
    EXPECT_EQ(status.longest_wait, 0ns);
    EXPECT_TRUE(status.borrowers.empty());

    auto first = pool.connection();
    const auto first_line = std::source_location::current().line() - 1;
    static_cast<void>(first.enter());
    std::this_thread::sleep_for(30ms);
    auto second = pool.connection();
    const auto second_line = std::source_location::current().line() - 1;
    static_cast<void>(second.enter());
    std::thread waiter([&] {
        ctxmgr::with(pool.connection(10s), [](sqlite::connection& c) { EXPECT_TRUE(c.is_open()); });
    });
    ASSERT_TRUE(eventually([&] { return pool.stats().waiting == 1; }));
    std::this_thread::sleep_for(40ms);
    status = pool.status();
    EXPECT_GE(status.longest_wait, 40ms);
    EXPECT_LT(status.longest_wait, 10s);
    EXPECT_EQ(status.metrics.pending, 1U);
    EXPECT_EQ(status.metrics.used, 2U);
    ASSERT_EQ(status.borrowers.size(), 2U);
    // Longest held first; times on the coarse clock, up to a tick (4 ms) short.
    EXPECT_EQ(status.borrowers[0].where.line(), first_line);
    EXPECT_EQ(status.borrowers[1].where.line(), second_line);
    EXPECT_NE(std::string_view(status.borrowers[0].where.file_name()).find("pool_test.cpp"),
              std::string_view::npos);
    EXPECT_GE(status.borrowers[0].held, 65ms);
    EXPECT_GE(status.borrowers[1].held, 35ms);
    EXPECT_GE(status.borrowers[0].held - status.borrowers[1].held, 20ms);
    first.exit(nullptr);
    waiter.join();
    second.exit(nullptr);
    status = pool.status();
    EXPECT_EQ(status.longest_wait, 0ns);
    EXPECT_TRUE(status.borrowers.empty());
    EXPECT_EQ(status.metrics.idle, 2U);
}

// ---- A connection parked by its return --------------------------------------------------
// A connection given back within the coarse clock's tick of its borrow, with nobody waiting,
// waits for the next borrow on its returner's CPU outside the pool's lock (pool_core.hpp).
// It is idle for every other purpose, which these check. A pool's first borrow waits for
// the creator, and while a borrower waits nothing parks: the tests borrow twice first.

// Runs `f` on a thread of its own pinned to the `index`-th CPU this process may use (the last
// one when there are fewer), so that two such threads park in different spots where there
// are two CPUs.
template <class F>
void on_cpu(int index, F&& f) {
    std::exception_ptr thrown;
    std::thread([&] {
        try {
            const std::vector<int> cpus = ctxmgr::testing::allowed_cpus();
            ctxmgr::testing::pin_this_thread(
                cpus[std::min(static_cast<std::size_t>(index), cpus.size() - 1)]);
            f();
        } catch (...) {
            thrown = std::current_exception();
        }
    }).join();
    if (thrown) std::rethrow_exception(thrown);
}

TEST_F(Pool, AConnectionParkedOnOneCpuIsLentAtOnceToABorrowerOnAnother) {
    // Room for two: a spot for each of two CPUs (a pool has no more spots than connections).
    auto pool = make({.name = "parked", .max_size = 2});
    sqlite::connection* lent = nullptr;
    on_cpu(0, [&] {
        ctxmgr::with(pool.connection(), [&](sqlite::connection& c) { lent = &c; });
        ctxmgr::with(pool.connection(), [&](sqlite::connection& c) { EXPECT_EQ(&c, lent); });
    });
    auto s = pool.stats();
    EXPECT_EQ(s.idle, 1U);
    EXPECT_EQ(s.in_use, 0U);
    // Not one borrower waiting in the queue for it: lent at once, or a timeout_error.
    const auto lent_at_once_on = [&](int cpu) {
        on_cpu(cpu, [&] {
            ctxmgr::with(pool.connection(0ms), [&](sqlite::connection& c) { EXPECT_EQ(&c, lent); });
        });
    };
    lent_at_once_on(1);
    lent_at_once_on(1);
    lent_at_once_on(0);
    s = pool.stats();
    EXPECT_EQ(s.created, 1U);
    EXPECT_EQ(s.timeouts, 0U);
    expect_consistent(s);
}

TEST_F(Pool, AParkedConnectionIsIdleInStatsMetricsAndStatusAndCountedAsAnyBorrow) {
    auto pool = make({.name = "parked", .max_size = 2});
    for (int i = 0; i < 100; ++i) {
        ctxmgr::with(pool.connection(), [](sqlite::connection& c) { EXPECT_TRUE(c.is_open()); });
    }
    const auto s = pool.stats();
    EXPECT_EQ(s.size, 1U);
    EXPECT_EQ(s.idle, 1U);
    EXPECT_EQ(s.in_use, 0U);
    const auto m = pool.metrics();
    EXPECT_EQ(m.idle, 1U);
    EXPECT_EQ(m.used, 0U);
    EXPECT_EQ(m.wait_time.count, 100U);
    EXPECT_EQ(m.use_time.count, 100U);
    EXPECT_EQ(bucket_total(m.wait_time), 100U);
    EXPECT_EQ(bucket_total(m.use_time), 100U);
    EXPECT_TRUE(pool.status().borrowers.empty());
    // Lent from its spot, it is a borrower like any other.
    auto held = pool.connection();
    const auto line = std::source_location::current().line() - 1;
    static_cast<void>(held.enter());
    const auto status = pool.status();
    ASSERT_EQ(status.borrowers.size(), 1U);
    EXPECT_EQ(status.borrowers[0].where.line(), line);
    EXPECT_EQ(status.metrics.used, 1U);
    EXPECT_EQ(status.metrics.idle, 0U);
    held.exit(nullptr);
}

TEST_F(Pool, SuspendEvictAllAndCloseTakeBackAParkedConnection) {
    auto pool = make({.name = "parked", .max_size = 1, .close_timeout = 200ms});
    ctxmgr::with(pool.connection(), [](sqlite::connection&) {});
    ctxmgr::with(pool.connection(), [](sqlite::connection&) {});
    // Suspended: the parked connection is not lent.
    pool.suspend();
    EXPECT_THROW(static_cast<void>(pool.connection(20ms).enter()), ctxmgr::timeout_error);
    pool.resume();
    ctxmgr::with(pool.connection(0ms), [](sqlite::connection&) {});
    ctxmgr::with(pool.connection(0ms), [](sqlite::connection&) {});  // parks again
    // evict_all closes it now, as any idle connection.
    EXPECT_EQ(pool.evict_all(), 1U);
    EXPECT_EQ(pool.stats().destroyed, 1U);
    ctxmgr::with(pool.connection(), [](sqlite::connection&) {});
    ctxmgr::with(pool.connection(), [](sqlite::connection&) {});
    EXPECT_EQ(pool.stats().created, 2U);
    // close() finds nothing borrowed (a leak_error after close_timeout otherwise).
    pool.close();
    const auto s = pool.stats();
    EXPECT_EQ(s.destroyed, 2U);
    EXPECT_EQ(s.size, 0U);
}

TEST_F(Pool, ShrinkingBelowWhatIsOpenClosesAParkedConnection) {
    auto pool = make({.name = "parked", .max_size = 2});
    auto held = pool.connection();
    static_cast<void>(held.enter());
    ctxmgr::with(pool.connection(), [](sqlite::connection&) {});
    ctxmgr::with(pool.connection(), [](sqlite::connection&) {});
    ASSERT_EQ(pool.stats().idle, 1U);
    pool.resize(0, 1);
    auto s = pool.stats();
    EXPECT_EQ(s.destroyed, 1U);
    EXPECT_EQ(s.idle, 0U);
    held.exit(nullptr);
    // Within max_size again: a return parks.
    ctxmgr::with(pool.connection(), [](sqlite::connection&) {});
    s = pool.stats();
    EXPECT_EQ(s.size, 1U);
    EXPECT_EQ(s.idle, 1U);
    expect_consistent(s);
}

// ---- Operating a running pool ----------------------------------------------------------

TEST_F(Pool, BorrowersBeyondMaxWaitingFailAtOnceNamingThePool) {
    auto pool = make({.name = "busy", .max_size = 1, .max_waiting = 2});
    auto held = pool.connection();
    static_cast<void>(held.enter());
    std::vector<std::thread> waiters;
    for (int i = 0; i < 2; ++i) {
        waiters.emplace_back([&] {
            ctxmgr::with(pool.connection(10s),
                         [](sqlite::connection& c) { EXPECT_TRUE(c.is_open()); });
        });
    }
    ASSERT_TRUE(eventually([&] { return pool.stats().waiting == 2; }));
    const auto start = std::chrono::steady_clock::now();
    const auto e = exception_from([&] { static_cast<void>(pool.connection(10s).enter()); });
    EXPECT_LT(std::chrono::steady_clock::now() - start, 2s);  // not after a wait
    ASSERT_TRUE(ctxmgr::holds<ctxmgr::too_many_waiters>(e)) << ctxmgr::describe(e);
    const std::string what = what_of(e);
    EXPECT_NE(what.find("pool \"busy\""), std::string::npos) << what;
    EXPECT_NE(what.find("max_waiting 2"), std::string::npos) << what;
    EXPECT_EQ(pool.metrics().refused, 1U);
    EXPECT_EQ(pool.stats().waiting, 2U);
    held.exit(nullptr);
    for (auto& w : waiters) w.join();
    const auto m = pool.metrics();
    EXPECT_EQ(m.timeouts, 0U);
    EXPECT_EQ(m.use_time.count, 3U);
    // Without waiters, a borrow is served again.
    ctxmgr::with(pool.connection(0ms), [](sqlite::connection& c) { EXPECT_TRUE(c.is_open()); });
}

TEST_F(Pool, SuspendedBorrowersWaitNothingIsMadeAndResumeServesThem) {
    auto pool = make({.name = "paused", .max_size = 2});
    auto other = pool.connection();
    static_cast<void>(other.enter());
    auto lent = pool.connection();
    static_cast<void>(lent.enter());  // lent before suspend(): comes back as usual
    ASSERT_EQ(pool.stats().created, 2U);
    other.exit(nullptr);
    pool.suspend();
    pool.suspend();  // idempotent
    EXPECT_TRUE(pool.status().suspended);
    EXPECT_EQ(pool.stats().idle, 1U);
    const auto e = exception_from([&] { static_cast<void>(pool.connection(60ms).enter()); });
    ASSERT_TRUE(ctxmgr::holds<ctxmgr::timeout_error>(e)) << ctxmgr::describe(e);
    EXPECT_NE(what_of(e).find("suspended"), std::string::npos) << what_of(e);
    lent.exit(nullptr);
    EXPECT_EQ(pool.stats().idle, 2U);
    std::atomic<int> served{0};
    std::vector<std::thread> waiters;
    for (int i = 0; i < 3; ++i) {
        waiters.emplace_back([&] {
            ctxmgr::with(pool.connection(10s), [&](sqlite::connection& c) {
                EXPECT_TRUE(c.is_open());
                ++served;
            });
        });
    }
    ASSERT_TRUE(eventually([&] { return pool.stats().waiting == 3; }));
    std::this_thread::sleep_for(50ms);
    EXPECT_EQ(served.load(), 0);
    EXPECT_EQ(pool.stats().created, 2U);  // nothing made while suspended
    EXPECT_EQ(pool.stats().idle, 2U);
    pool.resume();
    pool.resume();
    for (auto& w : waiters) w.join();
    EXPECT_EQ(served.load(), 3);
    EXPECT_FALSE(pool.status().suspended);
    const auto s = pool.stats();
    EXPECT_EQ(s.created, 2U);
    EXPECT_EQ(s.timeouts, 1U);
    expect_consistent(s);
    pool.close();
    EXPECT_THROW(pool.suspend(), ctxmgr::closed_error);
    EXPECT_THROW(pool.resume(), ctxmgr::closed_error);
}

TEST_F(Pool, EvictIdleClosesIdleConnectionsNowAndMinIdleRefills) {
    auto pool = make({.name = "evicting", .max_size = 3});
    {
        auto a = pool.connection();
        auto b = pool.connection();
        auto c = pool.connection();
        static_cast<void>(a.enter());
        static_cast<void>(b.enter());
        static_cast<void>(c.enter());
        a.exit(nullptr);
        b.exit(nullptr);
        EXPECT_EQ(pool.evict_idle(), 2U);
        EXPECT_EQ(pool.stats().destroyed, 2U);
        EXPECT_EQ(pool.stats().in_use, 1U);
        c.exit(nullptr);  // not evicted: it was lent
    }
    EXPECT_EQ(pool.stats().destroyed, 2U);
    EXPECT_EQ(pool.stats().idle, 1U);
    pool.resize(1, 3);
    EXPECT_EQ(pool.evict_idle(), 1U);
    // min_idle is made again.
    ASSERT_TRUE(eventually([&] { return pool.stats().idle == 1 && pool.stats().created == 4; }));
    expect_consistent(pool.stats());
}

TEST_F(Pool, EvictAllClosesLentConnectionsWhenTheyComeBack) {
    auto pool = make({.name = "rotated", .max_size = 2});
    auto held = pool.connection();
    static_cast<void>(held.enter());
    ctxmgr::with(pool.connection(), [](sqlite::connection&) {});
    ASSERT_EQ(pool.stats().idle, 1U);
    EXPECT_EQ(pool.evict_all(), 1U);
    // The borrower keeps using its connection until it gives it back.
    EXPECT_EQ(held.get()->query_value<std::int64_t>("SELECT 7"), 7);
    held.exit(nullptr);
    auto s = pool.stats();
    EXPECT_EQ(s.destroyed, 2U);
    EXPECT_EQ(s.size, 0U);
    // New connections are lent again, and kept.
    ctxmgr::with(pool.connection(), [](sqlite::connection&) {});
    ctxmgr::with(pool.connection(), [](sqlite::connection&) {});
    s = pool.stats();
    EXPECT_EQ(s.created, 3U);
    EXPECT_EQ(s.idle, 1U);
    expect_consistent(s);
}

TEST_F(Pool, ResizeGrowsAtOnceAndShrinksIdleNowAndLentOnReturn) {
    auto pool = make({.name = "elastic", .max_size = 1});
    auto a = pool.connection();
    static_cast<void>(a.enter());
    EXPECT_THROW(static_cast<void>(pool.connection(0ms).enter()), ctxmgr::timeout_error);
    std::thread waiter([&] {
        ctxmgr::with(pool.connection(10s), [](sqlite::connection& c) { EXPECT_TRUE(c.is_open()); });
    });
    ASSERT_TRUE(eventually([&] { return pool.stats().waiting == 1; }));
    pool.resize(0, 3);  // the waiter is served by a new connection, `a` still lent
    waiter.join();
    EXPECT_EQ(pool.metrics().max, 3U);
    auto b = pool.connection();
    auto c = pool.connection();
    static_cast<void>(b.enter());
    static_cast<void>(c.enter());
    EXPECT_EQ(pool.stats().in_use, 3U);
    EXPECT_THROW(static_cast<void>(pool.connection(0ms).enter()), ctxmgr::timeout_error);

    // Bad sizes change nothing.
    const auto e = exception_from([&] { pool.resize(2, 1); });
    ASSERT_TRUE(ctxmgr::holds<std::invalid_argument>(e));
    EXPECT_NE(what_of(e).find("pool \"elastic\": min_idle (2) exceeds max_size (1)"),
              std::string::npos)
        << what_of(e);
    EXPECT_THROW(pool.resize(0, 0), std::invalid_argument);
    EXPECT_EQ(pool.metrics().max, 3U);

    // Down to 1 with 3 lent: the first two back are closed, the last is kept.
    pool.resize(1, 1);
    a.exit(nullptr);
    b.exit(nullptr);
    EXPECT_EQ(pool.stats().destroyed, 2U);
    c.exit(nullptr);
    auto s = pool.stats();
    EXPECT_EQ(s.idle, 1U);
    EXPECT_EQ(s.destroyed, 2U);
    expect_consistent(s);

    // Idle ones beyond max_size close at once.
    pool.resize(0, 3);
    {
        auto x = pool.connection();
        auto y = pool.connection();
        auto z = pool.connection();
        static_cast<void>(x.enter());
        static_cast<void>(y.enter());
        static_cast<void>(z.enter());
    }
    ASSERT_EQ(pool.stats().idle, 3U);
    pool.resize(0, 2);
    s = pool.stats();
    EXPECT_EQ(s.idle, 2U);
    EXPECT_EQ(s.destroyed, 3U);
    expect_consistent(s);
    pool.close();
    EXPECT_THROW(pool.resize(0, 2), ctxmgr::closed_error);
}

TEST_F(Pool, AnUnreachableDatabaseFailsTheConstructorWithinInitializationTimeout) {
    std::atomic<int> attempts{0};
    const auto start = std::chrono::steady_clock::now();
    const auto e = exception_from([&] {
        sqlite_pool pool(
            [&]() -> sqlite::connection {
                ++attempts;
                throw test_error("the database is unreachable");
            },
            {.name = "unreachable", .initialization_timeout = 200ms});
    });
    const auto took = std::chrono::steady_clock::now() - start;
    ASSERT_TRUE(ctxmgr::holds<ctxmgr::timeout_error>(e)) << ctxmgr::describe(e);
    const std::string what = what_of(e);
    EXPECT_NE(what.find("pool \"unreachable\""), std::string::npos) << what;
    EXPECT_NE(what.find("initialization_timeout (200 ms)"), std::string::npos) << what;
    EXPECT_NE(what.find("the database is unreachable"), std::string::npos) << what;
    EXPECT_NE(ctxmgr::describe(e).find("nested: "), std::string::npos) << ctxmgr::describe(e);
    EXPECT_GE(took, 190ms);
    EXPECT_LT(took, 5s);
    EXPECT_GE(attempts.load(), 2);  // retried within the time

    // A reachable one starts with a connection ready.
    auto pool = make({.name = "reachable", .initialization_timeout = 10s});
    EXPECT_EQ(pool.stats().created, 1U);
    EXPECT_EQ(pool.stats().idle, 1U);
    EXPECT_THROW(make({.initialization_timeout = -1ms}), std::invalid_argument);
}

// 16 threads borrowing, a tenth of them throwing, while another suspends and resumes,
// evicts and resizes the pool: every borrow is served or fails as asked, nothing is lost.
// The operations run `operations` times, a millisecond or two apart; the borrowers borrow
// until then, at least 20 and at most `max_borrows` times each.
template <class Connection>
void operate_under_load(ctxmgr::pool<Connection>& pool, std::string_view select_param,
                        int operations, int max_borrows) {
    constexpr int threads = 16;
    std::atomic<int> attempts{0};
    std::atomic<int> failing{0};  // bodies that threw
    std::atomic<int> thrown{0};
    std::atomic<int> done{0};
    std::atomic<int> refused{0};
    std::atomic<bool> stop{false};
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t) {
        workers.emplace_back([&] {
            // 20 borrows at least, so that each thread meets the pool in several states.
            for (int i = 0; i < max_borrows && (i < 20 || !stop.load()); ++i) {
                ++attempts;
                try {
                    ctxmgr::with(pool.connection(), [&](Connection& c) {
                        if (i % 10 == 0) {
                            c.execute_script("BEGIN");
                            ++failing;
                            throw test_error("a tenth of the requests fail");
                        }
                        EXPECT_EQ(c.transaction_state(), db::transaction_state::idle);
                        EXPECT_EQ(c.template query_value<std::int64_t>(select_param, i), i);
                    });
                    ++done;
                } catch (const test_error&) {
                    ++thrown;
                } catch (const ctxmgr::too_many_waiters&) {
                    ++refused;
                }
            }
        });
    }
    std::thread operator_thread([&] {
        for (int i = 0; i < operations; ++i) {
            switch (i % 5) {
                case 0:
                    pool.suspend();
                    std::this_thread::sleep_for(1ms);
                    pool.resume();
                    break;
                case 1:
                    static_cast<void>(pool.evict_all());
                    break;
                case 2:
                    pool.resize(static_cast<std::size_t>(i % 3),
                                2 + static_cast<std::size_t>(i % 4));
                    break;
                case 3:
                    static_cast<void>(pool.evict_idle());
                    break;
                default:
                    static_cast<void>(pool.status());
                    break;
            }
            std::this_thread::sleep_for(1ms);
        }
        stop = true;
    });
    operator_thread.join();
    for (auto& w : workers) w.join();
    EXPECT_EQ(thrown.load(), failing.load());
    EXPECT_EQ(done.load() + thrown.load() + refused.load(), attempts.load());
    const auto m = pool.metrics();
    EXPECT_EQ(m.refused, static_cast<std::uint64_t>(refused.load()));
    EXPECT_EQ(m.used, 0U);
    EXPECT_EQ(m.pending, 0U);
    EXPECT_EQ(m.timeouts, 0U);
    EXPECT_EQ(m.use_time.count, static_cast<std::uint64_t>(done.load() + thrown.load()));
    EXPECT_EQ(m.created - m.destroyed, m.idle);
    EXPECT_LE(m.idle, m.max);
    EXPECT_FALSE(pool.status().suspended);
    // Still lends, to every thread.
    ctxmgr::with(pool.connection(), [&](Connection& c) {
        EXPECT_EQ(c.template query_value<std::int64_t>(select_param, 5), 5);
    });
}

TEST_F(Pool, SixteenThreadsThrowingWhileThePoolIsSuspendedEvictedAndResized) {
    auto pool = make({.max_size = 4, .acquire_timeout = 60s});
    operate_under_load(pool, "SELECT $1", 200, 20'000);
}

TEST_F(Pool, SixteenThreadsWithMaxWaitingAreServedOrRefusedNeverLost) {
    auto pool = make({.max_size = 2, .acquire_timeout = 60s, .max_waiting = 3});
    operate_under_load(pool, "SELECT $1", 200, 20'000);
}

// Runs promtool check metrics on `text`: its exit status and what it printed.
std::pair<int, std::string> promtool_check(const std::string& text,
                                           const ctxmgr::testing::temp_directory& directory) {
    const std::string input = directory.file("metrics.prom");
    const std::string output = directory.file("promtool.out");
    {
        std::FILE* f = std::fopen(input.c_str(), "w");
        EXPECT_NE(f, nullptr);
        if (f == nullptr) return {-1, "cannot write " + input};
        std::fwrite(text.data(), 1, text.size(), f);
        std::fclose(f);
    }
    const int status =
        std::system(("promtool check metrics < '" + input + "' > '" + output + "' 2>&1").c_str());
    std::string printed;
    if (std::FILE* f = std::fopen(output.c_str(), "r")) {
        char buffer[4096];
        std::size_t n = 0;
        while ((n = std::fread(buffer, 1, sizeof buffer, f)) > 0) printed.append(buffer, n);
        std::fclose(f);
    }
    return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, printed};
}

// The samples of an exposition: "name{labels}" -> value as written.
std::map<std::string, std::string> samples_of(const std::string& text) {
    std::map<std::string, std::string> samples;
    std::istringstream lines(text);
    std::string line;
    while (std::getline(lines, line)) {
        if (line.empty() || line[0] == '#') continue;
        const auto space = line.rfind(' ');
        EXPECT_NE(space, std::string::npos) << line;
        EXPECT_TRUE(samples.emplace(line.substr(0, space), line.substr(space + 1)).second)
            << "a duplicate series: " << line;
    }
    return samples;
}

std::string seconds_text(std::chrono::nanoseconds d) {
    std::ostringstream out;
    out.precision(12);
    out << std::chrono::duration<double>(d).count();
    return out.str();
}

TEST_F(Pool, WritePrometheusExposesEveryPoolUnderOneHelpAndTypePerFamily) {
    auto orders = make({.name = "orders", .max_size = 3});
    // A name that needs each of the format's escapes.
    auto odd = make({.name = "a \"b\" \\ c\nd", .max_size = 1});
    auto held = orders.connection();
    static_cast<void>(held.enter());
    ctxmgr::with(orders.connection(), [](sqlite::connection&) {});
    ctxmgr::with(odd.connection(), [](sqlite::connection&) {});
    ctxmgr::with(odd.connection(), [&](sqlite::connection&) {
        EXPECT_THROW(static_cast<void>(odd.connection(0ms).enter()), ctxmgr::timeout_error);
    });
    // Both pools are quiet (`held` stays lent): the text has these numbers.
    const std::pair<std::string, ctxmgr::pool_metrics> expected[] = {
        {R"(pool_name="orders")", orders.metrics()},
        {R"(pool_name="a \"b\" \\ c\nd")", odd.metrics()},
    };
    std::ostringstream out;
    ctxmgr::write_prometheus(out, orders, odd);
    const std::string text = out.str();
    held.exit(nullptr);

    const char* families[] = {
        "db_client_connection_count",
        "db_client_connection_max",
        "db_client_connection_pending_requests",
        "db_client_connection_timeouts_total",
        "db_client_connection_wait_time_seconds",
        "db_client_connection_use_time_seconds",
        "db_client_connection_create_time_seconds",
    };
    for (const std::string family : families) {
        for (const std::string kind : {"# HELP ", "# TYPE "}) {
            const std::string line = kind + family + ' ';
            const auto first = text.find(line);
            EXPECT_NE(first, std::string::npos) << line << "\n" << text;
            EXPECT_EQ(text.find(line, first + 1), std::string::npos) << line << "\n" << text;
        }
    }
    EXPECT_NE(text.find("# TYPE db_client_connection_timeouts_total counter\n"), std::string::npos);
    EXPECT_NE(text.find("# TYPE db_client_connection_wait_time_seconds histogram\n"),
              std::string::npos);

    // The values parsed back are metrics()'s.
    const auto samples = samples_of(text);
    EXPECT_EQ(expected[0].second.used, 1U);
    EXPECT_EQ(expected[0].second.idle, 1U);
    EXPECT_EQ(expected[1].second.timeouts, 1U);
    const auto value = [&](const std::string& series) {
        const auto it = samples.find(series);
        EXPECT_NE(it, samples.end()) << series << " missing from\n" << text;
        return it != samples.end() ? it->second : std::string("(missing)");
    };
    std::size_t series = 0;
    for (const auto& [label, m] : expected) {
        EXPECT_EQ(value("db_client_connection_count{" + label + R"(,state="idle"})"),
                  std::to_string(m.idle));
        EXPECT_EQ(value("db_client_connection_count{" + label + R"(,state="used"})"),
                  std::to_string(m.used));
        EXPECT_EQ(value("db_client_connection_max{" + label + "}"), std::to_string(m.max));
        EXPECT_EQ(value("db_client_connection_pending_requests{" + label + "}"), "0");
        EXPECT_EQ(value("db_client_connection_timeouts_total{" + label + "}"),
                  std::to_string(m.timeouts));
        series += 5;  // two states of the count, and three gauges
        const std::pair<std::string, ctxmgr::pool_histogram> histograms[] = {
            {"db_client_connection_wait_time_seconds", m.wait_time},
            {"db_client_connection_use_time_seconds", m.use_time},
            {"db_client_connection_create_time_seconds", m.create_time},
        };
        for (const auto& [family, h] : histograms) {
            std::uint64_t cumulative = 0;
            for (std::size_t b = 0; b < ctxmgr::pool_histogram::bucket_count; ++b) {
                cumulative += h.buckets[b];
                const std::string le = b + 1 < ctxmgr::pool_histogram::bucket_count
                                           ? seconds_text(ctxmgr::pool_histogram::upper_bound(b))
                                           : "+Inf";
                EXPECT_EQ(value(family + "_bucket{" + label + ",le=\"" + le + "\"}"),
                          std::to_string(cumulative));
            }
            EXPECT_EQ(cumulative, h.count);
            EXPECT_EQ(value(family + "_count{" + label + "}"), std::to_string(h.count));
            EXPECT_DOUBLE_EQ(std::stod(value(family + "_sum{" + label + "}")),
                             std::chrono::duration<double>(h.sum).count());
            series += ctxmgr::pool_histogram::bucket_count + 2;
        }
    }
    EXPECT_EQ(samples.size(), series);

    if (std::system("command -v promtool > /dev/null 2>&1") != 0) {
        const char* ci = std::getenv("CI");
        if (ci != nullptr && std::string_view(ci) == "true") {
            FAIL() << "promtool is missing (Debian package prometheus; scripts/setup installs it)";
        }
        GTEST_SKIP() << "promtool is missing (Debian package prometheus): the exposition was "
                        "checked by parsing it back only";
    }
    const auto [status, printed] = promtool_check(text, directory_);
    // Exit 1 is a parse error, 3 lint problems. The one problem allowed is the name the
    // OpenTelemetry conventions give the connection count, which promtool's linter reserves
    // for histograms and summaries.
    EXPECT_TRUE(status == 0 || status == 3) << status << ": " << printed;
    std::istringstream lines(printed);
    std::string line;
    while (std::getline(lines, line)) {
        EXPECT_EQ(
            line,
            R"(db_client_connection_count non-histogram and non-summary metrics should not have "_count" suffix)")
            << printed;
    }
}

// ---- PostgreSQL -------------------------------------------------------------------------

postgres_pool make_postgres(const std::string& conninfo, ctxmgr::pool_options options,
                            postgres::options connect_options = {}) {
    return postgres_pool(
        [conninfo, connect_options] { return postgres::connect(conninfo, connect_options); },
        std::move(options));
}

using PoolPostgres = ctxmgr::testing::shared_postgres_test;
using PoolPostgresDedicated = ctxmgr::testing::dedicated_postgres_test;

TEST_F(PoolPostgres, AFailedTransactionIsRolledBackAsLibpqReportsIt) {
    auto pool = make_postgres(server_.conninfo, {.max_size = 1});
    ctxmgr::with(pool.connection(), [](postgres::connection& c) {
        c.execute_script("BEGIN");
        EXPECT_THROW(c.execute("SELECT 1 / 0"), db::error);
        EXPECT_EQ(c.transaction_state(), db::transaction_state::failed);
    });
    ctxmgr::with(pool.connection(), [](postgres::connection& c) {
        EXPECT_EQ(c.transaction_state(), db::transaction_state::idle);
        EXPECT_EQ(c.query_value<std::int64_t>("SELECT 7"), 7);
    });
    EXPECT_EQ(pool.stats().destroyed, 0U);
}

// Borrows a connection and gives it back: the server process of the session now idle.
int idle_backend(postgres_pool& pool) {
    int pid = 0;
    ctxmgr::with(pool.connection(), [&](postgres::connection& c) { pid = c.backend_pid(); });
    return pid;
}

TEST_F(PoolPostgres, ASessionEndedWhileIdleInThePoolIsNeverLent) {
    auto pool = make_postgres(server_.conninfo, {.max_size = 1});
    const int first_pid = idle_backend(pool);
    auto admin = postgres::connect(server_.conninfo);
    ASSERT_TRUE(admin.query_value<bool>("SELECT pg_terminate_backend($1, 10000)", first_pid));
    std::this_thread::sleep_for(20ms);  // more than a tick of the coarse clock: looked at
    ctxmgr::with(pool.connection(), [&](postgres::connection& c) {
        EXPECT_NE(c.backend_pid(), first_pid);
        EXPECT_EQ(c.query_value<std::int64_t>("SELECT 1"), 1);
    });
    const auto s = pool.stats();
    EXPECT_EQ(s.destroyed, 1U);
    EXPECT_EQ(s.created, 2U);
}

TEST_F(PoolPostgres, AValidationPingWaitsAtMostValidationTimeoutAndNeverPastTheDeadline) {
    auto pool = make_postgres(server_.conninfo, {.max_size = 1,
                                                 .acquire_timeout = 10s,
                                                 .validate_after_idle = 0ms,
                                                 .validation_timeout = 1s});
    // A server that stopped answering (a silently cut network): the ping gives up after
    // validation_timeout, not the borrower's 10 s, and a new connection is lent.
    const int first_pid = idle_backend(pool);
    const ctxmgr::testing::stopped_backend first(first_pid);
    if (!first.stopped()) GTEST_SKIP() << "cannot signal the server's processes";
    auto start = std::chrono::steady_clock::now();
    ctxmgr::with(pool.connection(), [&](postgres::connection& c) {
        EXPECT_NE(c.backend_pid(), first_pid);
        EXPECT_EQ(c.query_value<std::int64_t>("SELECT 1"), 1);
    });
    auto waited = std::chrono::steady_clock::now() - start;
    EXPECT_GE(waited, 995ms);
    EXPECT_LT(waited, 6s);
    auto s = pool.stats();
    EXPECT_EQ(s.destroyed, 1U);
    EXPECT_EQ(s.created, 2U);
    EXPECT_EQ(s.timeouts, 0U);
    // A borrower with less time than validation_timeout: the ping ends at its deadline.
    const ctxmgr::testing::stopped_backend second(idle_backend(pool));
    start = std::chrono::steady_clock::now();
    const auto e = exception_from([&] { static_cast<void>(pool.connection(400ms).enter()); });
    waited = std::chrono::steady_clock::now() - start;
    ASSERT_TRUE(ctxmgr::holds<ctxmgr::timeout_error>(e)) << ctxmgr::describe(e);
    EXPECT_GE(waited, 395ms);
    EXPECT_LT(waited, 900ms);
    s = pool.stats();
    EXPECT_EQ(s.destroyed, 2U);
    EXPECT_EQ(s.timeouts, 1U);
}

TEST_F(PoolPostgres, SixteenThreadsThrowingWhileThePoolIsSuspendedEvictedAndResized) {
    auto pool = make_postgres(server_.conninfo, {.max_size = 4, .acquire_timeout = 120s});
    operate_under_load(pool, "SELECT $1::bigint", 100, 2'000);
}

TEST_F(PoolPostgres, SixteenThreadsTenThousandBorrowsATenthThrowingNothingLostNothingLeaked) {
    const std::string application = "ctxmgr-pool-stress-" + std::to_string(::getpid());
    auto pool = make_postgres(server_.conninfo, {.max_size = 4, .acquire_timeout = 120s},
                              {.application_name = application});
    borrow_ten_thousand_times(pool, "SELECT $1::bigint");
    const auto s = pool.stats();
    // The server sees exactly the pool's sessions, none in a transaction.
    auto admin = postgres::connect(server_.conninfo);
    const std::string sessions =
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1";
    EXPECT_EQ(admin.query_value<std::int64_t>(sessions, application),
              static_cast<std::int64_t>(s.size));
    EXPECT_EQ(admin.query_value<std::int64_t>(sessions + std::string(" AND state <> 'idle'"),
                                              application),
              0);
    pool.close();
    EXPECT_TRUE(
        eventually([&] { return admin.query_value<std::int64_t>(sessions, application) == 0; }));
}

TEST_F(PoolPostgresDedicated, ItSurvivesARestartAndOnceTheServerIsBackNoRequestFails) {
    start();
    CTXMGR_REQUIRE_POSTGRES(server_);
    auto pool = make_postgres(server_.conninfo, {.max_size = 4, .min_idle = 4});
    ASSERT_TRUE(eventually([&] { return pool.stats().idle == 4; }));
    {
        std::vector<ctxmgr::pooled_connection<postgres::connection>> all;
        for (int i = 0; i < 4; ++i) all.push_back(pool.connection());
        for (auto& b : all) EXPECT_EQ(b.enter().query_value<std::int64_t>("SELECT 1"), 1);
    }
    cluster_->restart();
    int failures = 0;
    std::string first_failure;
    for (int i = 0; i < 200; ++i) {
        try {
            ctxmgr::with(pool.connection(), [&](postgres::connection& c) {
                EXPECT_EQ(c.query_value<std::int64_t>("SELECT $1::bigint", i), i);
            });
        } catch (const std::exception& e) {
            if (failures++ == 0) first_failure = e.what();
        }
    }
    EXPECT_EQ(failures, 0) << first_failure;
    // Every session of before the restart was found broken, and min_idle made up again.
    ASSERT_TRUE(eventually([&] { return pool.stats().idle == 4; }));
    const auto s = pool.stats();
    EXPECT_EQ(s.destroyed, 4U);
    EXPECT_EQ(s.created, 8U);
    expect_consistent(s);
}

TEST_F(PoolPostgresDedicated, AServerThatNeverAnswersCannotHoldABorrowerPastItsDeadline) {
    start();
    CTXMGR_REQUIRE_POSTGRES(server_);
    auto pool = make_postgres(server_.conninfo, {.name = "stopped", .acquire_timeout = 300ms},
                              {.connect_timeout = 20s});
    cluster_->pause();  // TCP connects (the kernel's backlog); the startup is never answered
    const auto start = std::chrono::steady_clock::now();
    const auto e = exception_from([&] { static_cast<void>(pool.connection().enter()); });
    const auto waited = std::chrono::steady_clock::now() - start;
    ASSERT_TRUE(ctxmgr::holds<ctxmgr::timeout_error>(e)) << ctxmgr::describe(e);
    EXPECT_NE(what_of(e).find("1 being made"), std::string::npos) << what_of(e);
    EXPECT_GE(waited, 290ms);
    EXPECT_LT(waited, 3s);
    EXPECT_EQ(pool.stats().timeouts, 1U);
    cluster_->resume();
    // The attempt under way completes and joins the pool.
    ASSERT_TRUE(eventually([&] { return pool.stats().idle == 1; }, 30s));
    ctxmgr::with(pool.connection(), [](postgres::connection& c) {
        EXPECT_EQ(c.query_value<std::int64_t>("SELECT 1"), 1);
    });
}

TEST_F(PoolPostgresDedicated, AServerThatRefusesEndsTheWaitWithItsReasonNested) {
    start({.max_connections = 5});
    CTXMGR_REQUIRE_POSTGRES(server_);
    std::vector<PGconn*> hogs;
    for (int i = 0; i < 20; ++i) {
        PGconn* c = PQconnectdb(server_.conninfo.c_str());
        if (PQstatus(c) != CONNECTION_OK) {
            PQfinish(c);
            break;
        }
        hogs.push_back(c);
    }
    ASSERT_LT(hogs.size(), 20U);
    auto pool = make_postgres(server_.conninfo, {.name = "refused", .acquire_timeout = 300ms});
    const auto e = exception_from([&] { static_cast<void>(pool.connection().enter()); });
    ASSERT_TRUE(ctxmgr::holds<ctxmgr::timeout_error>(e)) << ctxmgr::describe(e);
    EXPECT_NE(what_of(e).find("53300"), std::string::npos) << what_of(e);
    try {
        std::rethrow_exception(e);
    } catch (const std::nested_exception& nested) {
        try {
            nested.rethrow_nested();
        } catch (const db::connection_error& refusal) {
            EXPECT_EQ(refusal.sqlstate(), "53300");
        } catch (...) {
            ADD_FAILURE() << "nested: " << ctxmgr::describe(std::current_exception());
        }
    } catch (...) {
        ADD_FAILURE() << "no nested refusal: " << ctxmgr::describe(e);
    }
    for (PGconn* c : hogs) PQfinish(c);
    // Room again: the next borrow succeeds.
    ctxmgr::with(pool.connection(30s), [](postgres::connection& c) {
        EXPECT_EQ(c.query_value<std::int64_t>("SELECT 1"), 1);
    });
}

}  // namespace
