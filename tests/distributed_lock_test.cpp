// ctxmgr::postgres::advisory_lock and advisory_xact_lock on a real server, with forked
// processes standing for machines (each opens its own connections after fork and leaves with
// _exit): a counter incremented under the lock by several processes ends exact, with fencing
// tokens strictly increasing; a holder killed with SIGKILL is replaced within the timeout (a
// dedicated cluster); a holder whose backend is terminated sees lost(), and its write fenced
// with the old token is refused. Then timeouts, shared locks, a pool as source, unlock
// answered false, the transaction-scoped lock, the fencing table made on first use.
#include <ctxmgr/distributed_lock.hpp>
#include <ctxmgr/with.hpp>

#include <gtest/gtest.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "eventually.hpp"
#include "postgres_fixtures.hpp"
#include "recording.hpp"

namespace {

using namespace std::chrono_literals;
using ctxmgr::testing::eventually;
using ctxmgr::testing::exception_from;
using ctxmgr::testing::test_error;
using ctxmgr::testing::what_of;
namespace db = ctxmgr::db;
namespace postgres = ctxmgr::postgres;

static_assert(ctxmgr::context_manager<postgres::advisory_lock>);
static_assert(ctxmgr::context_manager<postgres::advisory_xact_lock>);
static_assert(!std::is_copy_constructible_v<postgres::advisory_lock>);

// FNV-1a 64's published test vectors, read as signed.
static_assert(postgres::advisory_key("") == static_cast<std::int64_t>(0xcbf29ce484222325ULL));
static_assert(postgres::advisory_key("a") == static_cast<std::int64_t>(0xaf63dc4c8601ec8cULL));
static_assert(postgres::advisory_key("foobar") == static_cast<std::int64_t>(0x85944171f73967e8ULL));

// The advisory locks a backend holds on `key` (pg_locks splits a bigint key in two).
std::int64_t locks_held(postgres::connection& admin, int pid, std::int64_t key) {
    std::int64_t count = 0;
    for (auto row : admin.query(
             "SELECT classid::bigint, objid::bigint FROM pg_locks WHERE locktype = 'advisory' "
             "AND objsubid = 1 AND granted AND pid = $1",
             pid)) {
        const auto high = static_cast<std::uint64_t>(row.get<std::int64_t>(0));
        const auto low = static_cast<std::uint64_t>(row.get<std::int64_t>(1));
        if (static_cast<std::int64_t>((high << 32) | low) == key) ++count;
    }
    return count;
}

// A name no other test or test process uses.
std::string unique(std::string_view stem) {
    static std::atomic<int> counter{0};
    return std::string(stem) + '_' + std::to_string(::getpid()) + '_' + std::to_string(++counter);
}

class DistributedLock : public ctxmgr::testing::shared_postgres_test {
  protected:
    void TearDown() override {
        if (tables_.empty()) return;
        auto c = postgres::connect(server_.conninfo);
        for (const auto& t : tables_) c.execute_script("DROP TABLE IF EXISTS " + t);
    }
    std::string table(std::string_view stem) {
        tables_.push_back(unique(stem));
        return tables_.back();
    }
    postgres::connection connect() { return postgres::connect(server_.conninfo); }

    std::vector<std::string> tables_;
};

TEST_F(DistributedLock, HoldsTheLockOnItsSessionUntilExitAndTokensIncrease) {
    auto admin = connect();
    const std::string name = unique("basic");
    const std::int64_t key = postgres::advisory_key(name);
    std::int64_t first = 0;
    int pid = 0;
    ctxmgr::with(postgres::advisory_lock(server_.conninfo, name), [&](postgres::lease& held) {
        first = held.fencing_token();
        pid = held.backend_pid();
        EXPECT_GE(first, 1);
        EXPECT_EQ(held.key().value(), key);
        EXPECT_EQ(held.key().name(), name);
        EXPECT_FALSE(held.shared());
        EXPECT_FALSE(held.lost());
        EXPECT_EQ(held.session().backend_pid(), pid);
        EXPECT_EQ(locks_held(admin, pid, key), 1);
        // Another session cannot have it meanwhile.
        auto other = connect();
        EXPECT_FALSE(other.query_value<bool>("SELECT pg_try_advisory_lock($1)", key));
    });
    EXPECT_EQ(locks_held(admin, pid, key), 0);
    ctxmgr::with(postgres::advisory_lock(server_.conninfo, name),
                 [&](postgres::lease& held) { EXPECT_EQ(held.fencing_token(), first + 1); });
    // The token lives in the server, where any process can see it.
    EXPECT_EQ(admin.query_value<std::int64_t>(
                  "SELECT token FROM ctxmgr_fencing_tokens WHERE key = $1", key),
              first + 1);
}

TEST_F(DistributedLock, ALockHeldElsewhereTimesOutNamingTheKey) {
    const std::string name = unique("busy");
    auto holder = connect();
    ASSERT_TRUE(
        holder.query_value<bool>("SELECT pg_try_advisory_lock($1)", postgres::advisory_key(name)));
    const auto start = std::chrono::steady_clock::now();
    const auto e = exception_from([&] {
        ctxmgr::with(postgres::advisory_lock(server_.conninfo, name, {.timeout = 200ms}),
                     [](postgres::lease&) { FAIL() << "granted twice"; });
    });
    const auto waited = std::chrono::steady_clock::now() - start;
    ASSERT_TRUE(ctxmgr::holds<ctxmgr::timeout_error>(e)) << ctxmgr::describe(e);
    EXPECT_NE(what_of(e).find("advisory lock \"" + name + "\""), std::string::npos) << what_of(e);
    EXPECT_GE(waited, 190ms);
    EXPECT_LT(waited, 5s);
    // Tried once: at once.
    const auto once = exception_from([&] {
        static_cast<void>(
            postgres::advisory_lock(server_.conninfo, name, {.timeout = 0ms}).enter());
    });
    ASSERT_TRUE(ctxmgr::holds<ctxmgr::timeout_error>(once)) << ctxmgr::describe(once);
    EXPECT_NE(what_of(once).find("tried once"), std::string::npos) << what_of(once);
    // Free again: tried once, it is granted.
    ASSERT_TRUE(
        holder.query_value<bool>("SELECT pg_advisory_unlock($1)", postgres::advisory_key(name)));
    ctxmgr::with(postgres::advisory_lock(server_.conninfo, name, {.timeout = 0ms}),
                 [](postgres::lease& held) { EXPECT_GE(held.fencing_token(), 1); });
}

TEST_F(DistributedLock, SharedHoldersCoexistAndExcludeAnExclusiveOne) {
    const std::string name = unique("shared");
    postgres::advisory_lock a(server_.conninfo, name, {.shared = true});
    postgres::advisory_lock b(server_.conninfo, name, {.shared = true});
    auto& first = a.enter();
    auto& second = b.enter();
    EXPECT_TRUE(first.shared());
    EXPECT_NE(first.fencing_token(), second.fencing_token());  // each grant has its own
    EXPECT_THROW(static_cast<void>(
                     postgres::advisory_lock(server_.conninfo, name, {.timeout = 0ms}).enter()),
                 ctxmgr::timeout_error);
    // The leases go with exit: their tokens are read before.
    const std::int64_t latest = std::max(first.fencing_token(), second.fencing_token());
    a.exit(nullptr);
    b.exit(nullptr);
    ctxmgr::with(postgres::advisory_lock(server_.conninfo, name, {.timeout = 0ms}),
                 [&](postgres::lease& held) { EXPECT_GT(held.fencing_token(), latest); });
}

TEST_F(DistributedLock, APoolLendsTheLockItsOwnSessionForAsLongAsItIsHeld) {
    ctxmgr::pool pool([this] { return connect(); }, {.name = "locks", .max_size = 2});
    auto admin = connect();
    const std::string name = unique("pooled");
    const std::int64_t key = postgres::advisory_key(name);
    int pid = 0;
    ctxmgr::with(postgres::advisory_lock(pool, name), [&](postgres::lease& held) {
        pid = held.backend_pid();
        EXPECT_EQ(pool.stats().in_use, 1U);
        // Other borrowers get another session: the locking one is not lent in between.
        ctxmgr::with(pool.connection(),
                     [&](postgres::connection& c) { EXPECT_NE(c.backend_pid(), pid); });
        EXPECT_EQ(locks_held(admin, pid, key), 1);
    });
    EXPECT_EQ(locks_held(admin, pid, key), 0);  // unlocked on the session that locked
    const auto s = pool.stats();
    EXPECT_EQ(s.in_use, 0U);
    EXPECT_EQ(s.idle, 2U);
    EXPECT_EQ(s.destroyed, 0U);
}

// Records when a lease's stop token fires, and on which thread.
struct loss_record {
    std::atomic<bool> fired{false};
    std::atomic<std::int64_t> at_ns{0};

    [[nodiscard]] std::chrono::steady_clock::time_point at() const {
        return std::chrono::steady_clock::time_point(std::chrono::nanoseconds(at_ns.load()));
    }
    auto callback() {
        return [this] {
            at_ns = std::chrono::steady_clock::now().time_since_epoch().count();
            fired = true;
        };
    }
};

int socket_option(const postgres::connection& c, int level, int name) {
    int value = -1;
    socklen_t size = sizeof value;
    EXPECT_EQ(::getsockopt(PQsocket(c.native_handle()), level, name, &value, &size), 0);
    return value;
}

TEST_F(DistributedLock, ATerminatedSessionFiresTheLeasesStopTokenAtOnce) {
    auto admin = connect();
    postgres::advisory_lock lock(server_.conninfo, unique("watched"));
    auto& held = lock.enter();
    loss_record loss;
    std::stop_callback on_loss(held.stop_token(), loss.callback());
    std::this_thread::sleep_for(50ms);
    EXPECT_FALSE(loss.fired) << "fired while the session was alive";
    EXPECT_FALSE(held.lost());
    const auto terminated = std::chrono::steady_clock::now();
    ASSERT_TRUE(
        admin.query_value<bool>("SELECT pg_terminate_backend($1, 10000)", held.backend_pid()));
    ASSERT_TRUE(eventually([&] { return loss.fired.load(); }, 5s)) << "no notification";
    EXPECT_LT(loss.at() - terminated, 2s) << "the server closed the session: seen at once";
    EXPECT_TRUE(held.lost());
    EXPECT_TRUE(held.stop_token().stop_requested());
    const auto e = exception_from([&] { lock.exit(nullptr); });
    ASSERT_TRUE(ctxmgr::holds<db::connection_error>(e)) << ctxmgr::describe(e);
}

TEST_F(DistributedLock, WithoutAWatcherTheTokenFiresOnlyWhenLostFindsTheSessionGone) {
    auto admin = connect();
    postgres::advisory_lock lock(server_.conninfo, unique("unwatched"), {.keep_alive = 0ms});
    auto& held = lock.enter();
    ASSERT_TRUE(
        admin.query_value<bool>("SELECT pg_terminate_backend($1, 10000)", held.backend_pid()));
    std::this_thread::sleep_for(300ms);
    EXPECT_FALSE(held.stop_token().stop_requested()) << "keep_alive 0 starts no watcher";
    ASSERT_TRUE(eventually([&] { return held.lost(); }));
    EXPECT_TRUE(held.stop_token().stop_requested()) << "lost() tells the token";
    EXPECT_THROW(lock.unlock(), db::connection_error);
}

TEST_F(DistributedLock, KeepAliveProbesAreOnWhileHeldAndTheSocketsOwnSettingsComeBack) {
    ctxmgr::pool pool([this] { return connect(); }, {.name = "probed", .max_size = 1});
    int keep_alive_before = -1;
    ctxmgr::with(pool.connection(), [&](postgres::connection& c) {
        keep_alive_before = socket_option(c, SOL_SOCKET, SO_KEEPALIVE);
    });
    ctxmgr::with(postgres::advisory_lock(pool, unique("probed"), {.keep_alive = 2500ms}),
                 [&](postgres::lease& held) {
                     EXPECT_EQ(socket_option(held.session(), SOL_SOCKET, SO_KEEPALIVE), 1);
                     EXPECT_EQ(socket_option(held.session(), IPPROTO_TCP, TCP_KEEPIDLE), 3)
                         << "whole seconds, rounded up";
                     EXPECT_EQ(socket_option(held.session(), IPPROTO_TCP, TCP_KEEPINTVL), 3);
                     EXPECT_EQ(socket_option(held.session(), IPPROTO_TCP, TCP_KEEPCNT), 3);
                     // The session stays the holder's to use while it is watched.
                     EXPECT_EQ(held.session().query_value<int>("SELECT 1"), 1);
                     EXPECT_FALSE(held.stop_token().stop_requested());
                 });
    ctxmgr::with(pool.connection(), [&](postgres::connection& c) {
        EXPECT_EQ(socket_option(c, SOL_SOCKET, SO_KEEPALIVE), keep_alive_before);
        EXPECT_EQ(c.query_value<int>("SELECT 2"), 2) << "the session is as it was lent";
    });
    EXPECT_EQ(pool.stats().destroyed, 0U);
}

TEST_F(DistributedLock, AnUnlockAnsweredFalseIsAnError) {
    const std::string name = unique("unlocked-by-hand");
    postgres::advisory_lock lock(server_.conninfo, name);
    auto& held = lock.enter();
    held.session().execute_script("SELECT pg_advisory_unlock_all()");
    const auto e = exception_from([&] { lock.exit(nullptr); });
    ASSERT_TRUE(ctxmgr::holds<db::error>(e)) << ctxmgr::describe(e);
    EXPECT_FALSE(ctxmgr::holds<db::connection_error>(e));
    EXPECT_NE(what_of(e).find("pg_advisory_unlock answered false"), std::string::npos)
        << what_of(e);
    EXPECT_NE(what_of(e).find(name), std::string::npos) << what_of(e);
    EXPECT_EQ(lock.held(), nullptr);  // the session was closed all the same
}

TEST_F(DistributedLock, TheBlocksExceptionPassesAndAnUnlockFailureIsChainedToIt) {
    const std::string name = unique("chained");
    std::exception_ptr thrown;
    auto e = exception_from([&] {
        ctxmgr::with(postgres::advisory_lock(server_.conninfo, name),
                     [&](postgres::lease&) { ctxmgr::testing::throw_recorded(thrown); });
    });
    EXPECT_EQ(e, thrown);  // unlocked, and the block's exception unchanged
    e = exception_from([&] {
        ctxmgr::with(postgres::advisory_lock(server_.conninfo, name), [&](postgres::lease& held) {
            held.session().execute_script("SELECT pg_advisory_unlock_all()");
            throw test_error("the block failed");
        });
    });
    ASSERT_TRUE(ctxmgr::holds<db::error>(e)) << ctxmgr::describe(e);
    EXPECT_NE(ctxmgr::describe(e).find("nested: ctxmgr::testing::test_error: the block failed"),
              std::string::npos)
        << ctxmgr::describe(e);
}

TEST_F(DistributedLock, TheDestructorUnlocksAndTheManagerMayBeEnteredAgain) {
    const std::string name = unique("destructor");
    const std::int64_t key = postgres::advisory_key(name);
    auto other = connect();
    {
        postgres::advisory_lock lock(server_.conninfo, name);
        static_cast<void>(lock.enter());
        EXPECT_THROW(static_cast<void>(lock.enter()), ctxmgr::protocol_error);
        EXPECT_FALSE(other.query_value<bool>("SELECT pg_try_advisory_lock($1)", key));
    }
    ASSERT_TRUE(other.query_value<bool>("SELECT pg_try_advisory_lock($1)", key));
    ASSERT_TRUE(other.query_value<bool>("SELECT pg_advisory_unlock($1)", key));
    postgres::advisory_lock lock(server_.conninfo, name);
    const auto first = lock.enter().fencing_token();
    lock.unlock();
    lock.unlock();  // idempotent
    EXPECT_GT(lock.enter().fencing_token(), first);
    lock.exit(nullptr);
}

TEST_F(DistributedLock, AHolderWhoseBackendIsTerminatedSeesLostAndItsFencedWriteIsRefused) {
    auto admin = connect();
    const std::string name = unique("terminated");
    const std::string resource = table("fenced");
    admin.execute_script("CREATE TABLE " + resource +
                         " (id int PRIMARY KEY, value text, fence bigint NOT NULL)");
    admin.execute("INSERT INTO " + resource + " VALUES (1, 'initial', 0)");
    // What the protected resource does: accept a write only with a token at least as new as
    // the newest it has seen.
    const std::string fenced_write =
        "UPDATE " + resource + " SET value = $1, fence = $2 WHERE id = 1 AND fence <= $2";

    postgres::advisory_lock stale(server_.conninfo, name);
    auto& old = stale.enter();
    const std::int64_t old_token = old.fencing_token();
    EXPECT_EQ(admin.execute(fenced_write, "by the first holder", old_token), 1);
    EXPECT_FALSE(old.lost());
    // The first holder "pauses"; its session is ended (pg_terminate_backend, as an
    // administrator or a network partition would).
    ASSERT_TRUE(
        admin.query_value<bool>("SELECT pg_terminate_backend($1, 10000)", old.backend_pid()));
    ASSERT_TRUE(eventually([&] { return old.lost(); }));
    std::int64_t new_token = 0;
    ctxmgr::with(postgres::advisory_lock(server_.conninfo, name, {.timeout = 10s}),
                 [&](postgres::lease& fresh) {
                     new_token = fresh.fencing_token();
                     EXPECT_GT(new_token, old_token);
                     EXPECT_EQ(admin.execute(fenced_write, "by the second holder", new_token), 1);
                 });
    // The first holder wakes up and writes with its old token: refused.
    EXPECT_EQ(admin.execute(fenced_write, "by the stale holder", old_token), 0);
    EXPECT_EQ(admin.query_value<std::string>("SELECT value FROM " + resource),
              "by the second holder");
    // Its exit reports that the lock was lost under it.
    const auto e = exception_from([&] { stale.exit(nullptr); });
    ASSERT_TRUE(ctxmgr::holds<db::connection_error>(e)) << ctxmgr::describe(e);
    EXPECT_NE(what_of(e).find("was lost"), std::string::npos) << what_of(e);
}

TEST_F(DistributedLock, ForkedProcessesCountExactlyUnderTheLockWithStrictlyIncreasingTokens) {
    const std::string counter = table("counter");
    const std::string grants = table("grants");
    {
        auto admin = connect();
        admin.execute_script("CREATE TABLE " + counter + " (n bigint NOT NULL); INSERT INTO " +
                             counter + " VALUES (0); CREATE TABLE " + grants +
                             " (n bigint PRIMARY KEY, token bigint NOT NULL, process int)");
    }
    const std::string name = unique("counter");
    constexpr int processes = 4;
    constexpr int increments = 25;
    const std::string conninfo = server_.conninfo;
    std::vector<pid_t> children;
    for (int p = 0; p < processes; ++p) {
        const pid_t pid = ::fork();
        ASSERT_GE(pid, 0);
        if (pid == 0) {
            ::alarm(120);
            bool ok = true;
            try {
                // A "machine": its own connections, made after fork. Half lock through a pool of
                // their own, half through a connection string.
                auto work = postgres::connect(conninfo);
                std::optional<ctxmgr::pool<postgres::connection>> pool;
                if (p % 2 == 0) {
                    pool.emplace([&] { return postgres::connect(conninfo); },
                                 ctxmgr::pool_options{.max_size = 1});
                }
                for (int i = 0; i < increments; ++i) {
                    auto lock = pool ? postgres::advisory_lock(*pool, name, {.timeout = 60s})
                                     : postgres::advisory_lock(conninfo, name, {.timeout = 60s});
                    ctxmgr::with(lock, [&](postgres::lease& held) {
                        // Read, pause, write: without the lock, increments would be lost.
                        const auto n = work.query_value<std::int64_t>("SELECT n FROM " + counter);
                        std::this_thread::sleep_for(1ms);
                        work.execute("UPDATE " + counter + " SET n = $1", n + 1);
                        work.execute("INSERT INTO " + grants + " VALUES ($1, $2, $3)", n + 1,
                                     held.fencing_token(), p);
                    });
                }
            } catch (...) {
                ok = false;
            }
            ::_exit(ok ? 0 : 1);
        }
        children.push_back(pid);
    }
    for (const pid_t child : children) {
        int status = 0;
        ASSERT_EQ(::waitpid(child, &status, 0), child);
        EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
    }
    auto admin = connect();
    EXPECT_EQ(admin.query_value<std::int64_t>("SELECT n FROM " + counter), processes * increments);
    std::int64_t previous = 0;
    std::int64_t rows = 0;
    for (auto row : admin.query("SELECT token FROM " + grants + " ORDER BY n")) {
        const auto token = row.get<std::int64_t>(0);
        EXPECT_GT(token, previous) << "grant " << rows + 1;
        previous = token;
        ++rows;
    }
    EXPECT_EQ(rows, processes * increments);
    EXPECT_EQ(admin.query_value<std::int64_t>("SELECT count(DISTINCT process) FROM " + grants),
              processes);
}

TEST_F(DistributedLock, TheFencingTableIsMadeOnFirstUseInTheSessionsSchema) {
    const std::string schema = unique("fencing_schema");
    auto admin = connect();
    admin.execute_script("CREATE SCHEMA " + schema);
    const std::string conninfo = server_.conninfo + " options='-c search_path=" + schema + "'";
    const std::string name = unique("fresh-table");
    ctxmgr::with(postgres::advisory_lock(conninfo, name),
                 [](postgres::lease& held) { EXPECT_EQ(held.fencing_token(), 1); });
    ctxmgr::with(postgres::advisory_lock(conninfo, name, {.timeout = 0ms}),
                 [](postgres::lease& held) { EXPECT_EQ(held.fencing_token(), 2); });
    EXPECT_EQ(admin.query_value<std::int64_t>("SELECT count(*) FROM " + schema +
                                              ".ctxmgr_fencing_tokens"),
              1);
    admin.execute_script("DROP SCHEMA " + schema + " CASCADE");
    // Tried once on a schema without the table: made there too.
    admin.execute_script("CREATE SCHEMA " + schema);
    ctxmgr::with(postgres::advisory_lock(conninfo, name, {.timeout = 0ms}),
                 [](postgres::lease& held) { EXPECT_EQ(held.fencing_token(), 1); });
    admin.execute_script("DROP SCHEMA " + schema + " CASCADE");
}

TEST_F(DistributedLock, KeysOutOfBigintsRangeAreRefused) {
    EXPECT_THROW(postgres::lock_key(std::uint64_t{1} << 63), std::out_of_range);
    EXPECT_EQ(postgres::lock_key(std::uint64_t{42}).value(), 42);
    EXPECT_EQ(postgres::lock_key(-7).value(), -7);
    EXPECT_EQ(postgres::lock_key(42).describe(), "advisory lock 42");
    EXPECT_EQ(postgres::lock_key("a").describe(),
              "advisory lock \"a\" (key " + std::to_string(postgres::advisory_key("a")) + ")");
}

// ---- the transaction-scoped lock ------------------------------------------------------

TEST_F(DistributedLock, TheTransactionLockLastsUntilTheTransactionEnds) {
    auto c = connect();
    auto other = connect();
    const std::string name = unique("xact");
    const std::int64_t key = postgres::advisory_key(name);
    ctxmgr::with(c.transaction(), [&](postgres::connection& tx) {
        tx.execute_script("SET LOCAL lock_timeout = '7s'; SET LOCAL statement_timeout = '9s'");
        ctxmgr::with(postgres::advisory_xact_lock(tx, name, {.timeout = 5s}),
                     [&](postgres::connection& same) { EXPECT_EQ(&same, &tx); });
        // Still held after the manager's exit, until the transaction ends.
        EXPECT_FALSE(other.query_value<bool>("SELECT pg_try_advisory_lock($1)", key));
        // The transaction's own settings are back.
        EXPECT_EQ(tx.query_value<std::string>("SHOW lock_timeout"), "7s");
        EXPECT_EQ(tx.query_value<std::string>("SHOW statement_timeout"), "9s");
    });
    ASSERT_TRUE(other.query_value<bool>("SELECT pg_try_advisory_lock($1)", key));
    ASSERT_TRUE(other.query_value<bool>("SELECT pg_advisory_unlock($1)", key));
}

TEST_F(DistributedLock, ATransactionLockTimeoutLeavesTheTransactionUsable) {
    auto c = connect();
    auto holder = connect();
    const std::string name = unique("xact-busy");
    const std::string t = table("xact_rows");
    c.execute_script("CREATE TABLE " + t + " (id int)");
    ASSERT_TRUE(
        holder.query_value<bool>("SELECT pg_try_advisory_lock($1)", postgres::advisory_key(name)));
    ctxmgr::with(c.transaction(), [&](postgres::connection& tx) {
        tx.execute("INSERT INTO " + t + " VALUES ($1)", 1);
        const auto e = exception_from([&] {
            ctxmgr::with(postgres::advisory_xact_lock(tx, name, {.timeout = 100ms}),
                         [](postgres::connection&) { FAIL() << "granted while held"; });
        });
        ASSERT_TRUE(ctxmgr::holds<ctxmgr::timeout_error>(e)) << ctxmgr::describe(e);
        EXPECT_EQ(tx.transaction_state(), db::transaction_state::active);
        EXPECT_THROW(
            static_cast<void>(postgres::advisory_xact_lock(tx, name, {.timeout = 0ms}).enter()),
            ctxmgr::timeout_error);
        tx.execute("INSERT INTO " + t + " VALUES ($1)", 2);
    });
    EXPECT_EQ(c.query_value<std::int64_t>("SELECT count(*) FROM " + t), 2);
}

TEST_F(DistributedLock, TheTransactionLockOutsideATransactionIsAProtocolError) {
    auto c = connect();
    const auto e = exception_from(
        [&] { static_cast<void>(postgres::advisory_xact_lock(c, unique("no-tx")).enter()); });
    ASSERT_TRUE(ctxmgr::holds<ctxmgr::protocol_error>(e)) << ctxmgr::describe(e);
    EXPECT_NE(what_of(e).find("needs an open transaction"), std::string::npos) << what_of(e);
}

// ---- made but never entered -----------------------------------------------------------

// Making a manager touches no server, so this needs none.
TEST(DistributedLockNeverEntered, AManagerNeverEnteredReportsItsLineAndAMovedFromOneDoesNot) {
    ctxmgr::testing::unraisable_log log;
    unsigned line = 0;
    {
        postgres::advisory_lock lock("host=/nonexistent", "job");  // locks nothing
        line = __LINE__ - 1;
        auto moved = std::move(lock);
        static_cast<void>(moved);
    }
    const auto reports = log.reports();
    ASSERT_EQ(reports.size(), 1u) << "the moved-from manager does not report";
    EXPECT_TRUE(ctxmgr::testing::reports_never_entered(reports[0], "postgres::advisory_lock",
                                                       "distributed_lock_test.cpp", line))
        << reports[0];
}

TEST_F(DistributedLock, EnteredManagersDoNotReportAndATransactionLockNeverEnteredDoes) {
    auto c = connect();
    ctxmgr::testing::unraisable_log log;
    ctxmgr::with(postgres::advisory_lock(server_.conninfo, unique("entered")),
                 [](postgres::lease&) {});
    unsigned line = 0;
    ctxmgr::with(c.transaction(), [&](postgres::connection& tx) {
        ctxmgr::with(postgres::advisory_xact_lock(tx, unique("entered-xact")),
                     [](postgres::connection&) {});
        // Entered, though enter() fails: it was used as a manager.
        EXPECT_THROW(static_cast<void>(postgres::advisory_lock("host=/nonexistent", "x").enter()),
                     db::connection_error);
        postgres::advisory_xact_lock dropped(tx, unique("dropped"));  // locks nothing
        line = __LINE__ - 1;
    });
    const auto reports = log.reports();
    ASSERT_EQ(reports.size(), 1u) << reports.back();
    EXPECT_TRUE(ctxmgr::testing::reports_never_entered(reports[0], "postgres::advisory_xact_lock",
                                                       "distributed_lock_test.cpp", line))
        << reports[0];
}

// ---- a holder killed ------------------------------------------------------------------

using DistributedLockDedicated = ctxmgr::testing::dedicated_postgres_test;

TEST_F(DistributedLockDedicated, AHolderKilledWithSigkillIsReplacedWithinTheTimeout) {
    start();
    CTXMGR_REQUIRE_POSTGRES(server_);
    const std::string conninfo = server_.conninfo;
    const std::string name = "killed-holder";
    int ready[2];
    ASSERT_EQ(::pipe(ready), 0);
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
        ::alarm(60);
        ::close(ready[0]);
        try {
            postgres::advisory_lock lock(conninfo, name);
            const std::int64_t token = lock.enter().fencing_token();
            static_cast<void>(::write(ready[1], &token, sizeof token));
            for (;;) ::pause();  // holds it until killed
        } catch (...) {
        }
        ::_exit(1);
    }
    ::close(ready[1]);
    std::int64_t held_token = 0;
    pollfd readable{ready[0], POLLIN, 0};
    ASSERT_EQ(::poll(&readable, 1, 30'000), 1);
    ASSERT_EQ(::read(ready[0], &held_token, sizeof held_token),
              static_cast<ssize_t>(sizeof held_token));
    ::close(ready[0]);
    EXPECT_THROW(
        static_cast<void>(postgres::advisory_lock(conninfo, name, {.timeout = 200ms}).enter()),
        ctxmgr::timeout_error);
    ::kill(child, SIGKILL);
    int status = 0;
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    ASSERT_TRUE(WIFSIGNALED(status));
    const auto start = std::chrono::steady_clock::now();
    ctxmgr::with(postgres::advisory_lock(conninfo, name, {.timeout = 10s}),
                 [&](postgres::lease& held) { EXPECT_GT(held.fencing_token(), held_token); });
    EXPECT_LT(std::chrono::steady_clock::now() - start, 10s);
}

TEST_F(DistributedLockDedicated, AServerThatDiesFiresTheStopTokenOfEveryLease) {
    start();
    CTXMGR_REQUIRE_POSTGRES(server_);
    ctxmgr::pool pool([&] { return postgres::connect(server_.conninfo); }, {.max_size = 1});
    postgres::advisory_lock own(server_.conninfo, "own-session");
    postgres::advisory_lock pooled(pool, "pooled-session");
    auto& first = own.enter();
    auto& second = pooled.enter();
    loss_record first_loss, second_loss;
    std::stop_callback on_first(first.stop_token(), first_loss.callback());
    std::stop_callback on_second(second.stop_token(), second_loss.callback());
    const auto killed = std::chrono::steady_clock::now();
    cluster_->kill();
    ASSERT_TRUE(eventually([&] { return first_loss.fired && second_loss.fired; }, 10s));
    EXPECT_LT(first_loss.at() - killed, 3s);
    EXPECT_LT(second_loss.at() - killed, 3s);
    EXPECT_THROW(own.unlock(), db::connection_error);
    EXPECT_THROW(pooled.unlock(), db::connection_error);
}

}  // namespace
