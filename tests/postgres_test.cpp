// PostgreSQL-specific behaviour on a real server: the seed's connection leak made real
// (max_connections = 20), a server killed under a connection, a session terminated by the
// administrator, connect failures and timeouts, the failed-transaction state, serialization
// failures, the prepared-statement cache as the server sees it, and type conversions. The
// behaviour shared with SQLite is in db_test.cpp.
#include <libpq-fe.h>
#include <ctxmgr/distributed_lock.hpp>
#include <ctxmgr/pool.hpp>
#include <ctxmgr/postgres.hpp>
#include <ctxmgr/tracking.hpp>
#include <ctxmgr/with.hpp>

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "../src/db/libpq_support.hpp"
#include "eventually.hpp"
#include "postgres_fixtures.hpp"
#include "recording.hpp"

namespace {

using namespace std::chrono_literals;
using ctxmgr::testing::exception_from;
using ctxmgr::testing::test_error;
using ctxmgr::testing::what_of;
namespace db = ctxmgr::db;
namespace postgres = ctxmgr::postgres;

// Tests on the shared server of the test run.
class Postgres : public ctxmgr::testing::shared_postgres_test {
  protected:
    postgres::connection connect(const postgres::options& opts = {}) {
        return postgres::connect(server_.conninfo, opts);
    }
};

TEST(PostgresMessages, LibpqContinuationLinesStayOnLinesOfTheirOwnIndented) {
    using ctxmgr::postgres::detail::indent_lines;
    EXPECT_EQ(indent_lines("connection to server at \"127.0.0.1\", port 5 failed: Connection "
                           "refused\n\tIs the server running on that host?\n"),
              "connection to server at \"127.0.0.1\", port 5 failed: Connection refused\n"
              "  Is the server running on that host?");
    EXPECT_EQ(indent_lines("ERROR:  x\nDETAIL:  y\nHINT:  z\n"),
              "ERROR:  x\n  DETAIL:  y\n  HINT:  z");
    EXPECT_EQ(indent_lines("one line\n"), "one line");
    EXPECT_EQ(indent_lines(nullptr), "");
}

TEST_F(Postgres, DetailAndHintFollowTheMessageOnIndentedLines) {
    auto c = connect();
    c.execute("CREATE TEMPORARY TABLE t (id integer PRIMARY KEY)");
    c.execute("INSERT INTO t VALUES (1)");
    const auto duplicate = exception_from([&] { c.execute("INSERT INTO t VALUES (1)"); });
    ASSERT_TRUE(ctxmgr::holds<db::constraint_violation>(duplicate)) << ctxmgr::describe(duplicate);
    EXPECT_NE(what_of(duplicate).find("unique constraint \"t_pkey\"\n  DETAIL:  Key (id)=(1) "
                                      "already exists."),
              std::string::npos)
        << what_of(duplicate);
    const auto missing = exception_from([&] { c.execute("SELECT no_such_function(1)"); });
    ASSERT_TRUE(ctxmgr::holds<db::error>(missing)) << ctxmgr::describe(missing);
    EXPECT_NE(what_of(missing).find("postgresql [42883]: function no_such_function(integer) does "
                                    "not exist\n  HINT:  No function matches"),
              std::string::npos)
        << what_of(missing);
}

// Tests that need a server of their own: they break it.
using PostgresDedicated = ctxmgr::testing::dedicated_postgres_test;

// A loopback port that nothing listens on (bound, then released).
int unused_port() {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address);
    socklen_t length = sizeof address;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
    ::close(fd);
    return ntohs(address.sin_port);
}

bool is_nested(const std::exception_ptr& e) {
    try {
        std::rethrow_exception(e);
    } catch (const std::nested_exception& nested) {
        return nested.nested_ptr() != nullptr;
    } catch (...) {
        return false;
    }
}

std::int64_t client_sessions(postgres::connection& admin) {
    return admin.query_value<std::int64_t>(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'");
}

// Sessions end a moment after their client disconnects: wait (boundedly) for the count.
std::int64_t settle_at(postgres::connection& admin, std::int64_t expected) {
    std::int64_t now = client_sessions(admin);
    for (int i = 0; i < 100 && now != expected; ++i) {
        std::this_thread::sleep_for(20ms);
        now = client_sessions(admin);
    }
    return now;
}

// The seed: connect, query, throw in 30% of iterations, a thousand times, against a server
// that accepts 20 sessions. With ctxmgr every session ends; with raw libpq and no close, the
// server refuses the 21st.
TEST_F(PostgresDedicated, TheSeedsLeakMadeRealCtxmgrStaysAtBaselineRawLibpqRunsOut) {
    start({.max_connections = 20});
    CTXMGR_REQUIRE_POSTGRES(server_);
    auto admin = postgres::connect(server_.conninfo);
    const std::int64_t baseline = client_sessions(admin);
    ASSERT_EQ(baseline, 1);
    std::mt19937 random(20240601);
    std::uniform_int_distribution<int> percent(0, 99);

    int thrown = 0;
    for (int i = 0; i < 1000; ++i) {
        try {
            ctxmgr::with(postgres::connect(server_.conninfo), [&](postgres::connection& c) {
                EXPECT_EQ(c.query_value<std::int64_t>("SELECT $1::bigint * 2", i), 2 * i);
                if (percent(random) < 30) throw test_error("request failed");
            });
        } catch (const test_error&) {
            ++thrown;
        }
    }
    EXPECT_GT(thrown, 200);
    EXPECT_EQ(settle_at(admin, baseline), baseline);

    // The same loop, written with raw libpq and no close (the handles are kept only so that
    // the test can clean up after itself).
    std::vector<PGconn*> leaked;
    std::string refusal;
    for (int i = 0; i < 1000 && refusal.empty(); ++i) {
        try {
            PGconn* c = PQconnectdb(server_.conninfo.c_str());
            leaked.push_back(c);
            if (PQstatus(c) != CONNECTION_OK) {
                refusal = PQerrorMessage(c);
                break;
            }
            PQclear(PQexec(c, "SELECT 1"));
            if (percent(random) < 30) throw test_error("request failed");
        } catch (const test_error&) {
        }
    }
    EXPECT_NE(refusal.find("FATAL:  sorry, too many clients already"), std::string::npos)
        << refusal;
    EXPECT_EQ(leaked.size(), 20u);  // 19 sessions and the admin's fill the 20 slots
    // And ctxmgr reports the refusal typed, with its SQLSTATE.
    const auto e = exception_from([&] { static_cast<void>(postgres::connect(server_.conninfo)); });
    ASSERT_TRUE(ctxmgr::holds<db::connection_error>(e)) << ctxmgr::describe(e);
    try {
        std::rethrow_exception(e);
    } catch (const db::connection_error& error) {
        EXPECT_EQ(error.sqlstate(), "53300");
    }
    for (PGconn* c : leaked) PQfinish(c);
    EXPECT_EQ(settle_at(admin, baseline), baseline);
}

TEST_F(PostgresDedicated, AServerKilledUnderAConnectionGivesOneClearConnectionError) {
    start();
    CTXMGR_REQUIRE_POSTGRES(server_);
    auto idle = postgres::connect(server_.conninfo);
    auto in_block = postgres::connect(server_.conninfo);
    auto committing = postgres::connect(server_.conninfo);
    auto rolling_back = postgres::connect(server_.conninfo);
    for (auto* c : {&idle, &in_block, &committing, &rolling_back}) {
        c->execute_script("CREATE TABLE IF NOT EXISTS t (id bigint)");
    }
    auto commit_tx = committing.transaction();
    commit_tx.enter();
    committing.execute("INSERT INTO t VALUES ($1)", 1);
    auto rollback_tx = rolling_back.transaction();
    rollback_tx.enter();
    rolling_back.execute("INSERT INTO t VALUES ($1)", 2);

    // The block's statement meets the dead server: its error alone comes out of with().
    std::exception_ptr from_body;
    const auto e = exception_from([&] {
        ctxmgr::with(in_block.transaction(), [&](auto& tx) {
            tx.execute("INSERT INTO t VALUES ($1)", 3);
            cluster_->kill();
            try {
                tx.execute("INSERT INTO t VALUES ($1)", 4);
            } catch (...) {
                from_body = std::current_exception();
                throw;
            }
        });
    });
    ASSERT_TRUE(ctxmgr::holds<db::connection_error>(e)) << ctxmgr::describe(e);
    EXPECT_EQ(e, from_body);  // not replaced by a failed rollback
    EXPECT_FALSE(is_nested(e));
    EXPECT_FALSE(in_block.is_open());
    EXPECT_EQ(in_block.transaction_state(), db::transaction_state::unknown);

    const auto lost =
        exception_from([&] { static_cast<void>(idle.query_value<std::int64_t>("SELECT 1")); });
    ASSERT_TRUE(ctxmgr::holds<db::connection_error>(lost)) << ctxmgr::describe(lost);
    EXPECT_FALSE(idle.is_open());
    EXPECT_FALSE(idle.ping());
    EXPECT_THROW(idle.rollback_any(), db::connection_error);

    // COMMIT on a lost connection: one connection_error.
    const auto commit = exception_from([&] { commit_tx.exit(nullptr); });
    ASSERT_TRUE(ctxmgr::holds<db::connection_error>(commit)) << ctxmgr::describe(commit);
    EXPECT_FALSE(is_nested(commit));
    // A block that failed for its own reasons: the rollback cannot happen and is not an
    // error of its own; the block's exception goes on alone.
    EXPECT_NO_THROW(rollback_tx.exit(std::make_exception_ptr(test_error("the block failed"))));
    EXPECT_FALSE(committing.ping());
    EXPECT_FALSE(rolling_back.ping());
    EXPECT_FALSE(rolling_back.is_open());
    for (auto* c : {&idle, &in_block, &committing, &rolling_back}) EXPECT_NO_THROW(c->close());
}

TEST_F(Postgres, ASessionTerminatedByTheAdministratorIsAConnectionError) {
    auto victim = connect();
    auto admin = connect();
    const int pid = victim.backend_pid();
    EXPECT_EQ(victim.query_value<std::int64_t>("SELECT pg_backend_pid()"), pid);
    EXPECT_TRUE(admin.query_value<bool>("SELECT pg_terminate_backend($1)", pid));
    const auto e = exception_from([&] { victim.execute("SELECT 1"); });
    ASSERT_TRUE(ctxmgr::holds<db::connection_error>(e)) << ctxmgr::describe(e);
    EXPECT_FALSE(victim.is_open());
    EXPECT_FALSE(victim.ping());
    EXPECT_EQ(victim.backend_pid(), pid);  // still known until close
    victim.close();
    EXPECT_EQ(victim.backend_pid(), 0);
}

// Waits (boundedly) until the server process `pid` has left pg_stat_activity.
bool backend_gone(postgres::connection& admin, int pid) {
    for (int i = 0; i < 250; ++i) {
        if (admin.query_value<std::int64_t>("SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
                                            pid) == 0) {
            return true;
        }
        std::this_thread::sleep_for(20ms);
    }
    return false;
}

TEST_F(Postgres, AliveSeesASessionTheServerEndedWithoutARoundTrip) {
    auto victim = connect();
    auto admin = connect();
    EXPECT_TRUE(victim.alive());
    ASSERT_TRUE(admin.query_value<bool>("SELECT pg_terminate_backend($1)", victim.backend_pid()));
    EXPECT_TRUE(victim.is_open());  // libpq has not looked
    // As soon as the server's goodbye reaches the socket (the backend leaves
    // pg_stat_activity a little before its process closes the socket).
    EXPECT_TRUE(ctxmgr::testing::eventually([&] { return !victim.alive(); }));
    EXPECT_FALSE(victim.alive());  // and stays so
    // The pool asks the same through pool_traits, found by the member.
    auto other = connect();
    EXPECT_TRUE(ctxmgr::pool_traits<postgres::connection>::usable(other));
    other.close();
    EXPECT_FALSE(other.alive());
    EXPECT_FALSE(ctxmgr::pool_traits<postgres::connection>::usable(other));
}

TEST_F(Postgres, ASessionLostDuringCommitIsACommitOutcomeUnknown) {
    auto victim = connect();
    auto admin = connect();
    victim.execute_script("CREATE TEMP TABLE t (id bigint)");
    const auto e = exception_from([&] {
        ctxmgr::with(victim.transaction(), [&](auto& tx) {
            tx.execute("INSERT INTO t VALUES ($1)", 1);
            // Terminated between the last statement and COMMIT: the link looked fine.
            ASSERT_TRUE(
                admin.query_value<bool>("SELECT pg_terminate_backend($1)", victim.backend_pid()));
            ASSERT_TRUE(backend_gone(admin, victim.backend_pid()));
        });
    });
    ASSERT_TRUE(ctxmgr::holds<db::commit_outcome_unknown>(e)) << ctxmgr::describe(e);
    EXPECT_TRUE(ctxmgr::holds<db::connection_error>(e));
    EXPECT_FALSE(is_nested(e));
    try {
        std::rethrow_exception(e);
    } catch (const db::error& error) {
        EXPECT_EQ(error.sql(), "COMMIT");
    }
    EXPECT_NE(what_of(e).find("the outcome of COMMIT on host="), std::string::npos) << what_of(e);
    EXPECT_FALSE(victim.is_open());
}

TEST_F(Postgres, ACommitOnALinkAlreadyKnownLostIsAPlainConnectionError) {
    auto victim = connect();
    auto admin = connect();
    auto tx = victim.transaction();
    tx.enter();
    ASSERT_TRUE(admin.query_value<bool>("SELECT pg_terminate_backend($1)", victim.backend_pid()));
    ASSERT_TRUE(backend_gone(admin, victim.backend_pid()));
    EXPECT_FALSE(victim.ping());  // libpq now knows
    const auto e = exception_from([&] { tx.exit(nullptr); });
    ASSERT_TRUE(ctxmgr::holds<db::connection_error>(e)) << ctxmgr::describe(e);
    EXPECT_FALSE(ctxmgr::holds<db::commit_outcome_unknown>(e)) << ctxmgr::describe(e);
}

TEST_F(Postgres, ACommitAbandonedPastItsDeadlineIsACommitOutcomeUnknownWithTheTimeoutNested) {
    auto c = connect({.statement_timeout = 200ms, .cancel_grace = 200ms});
    auto tx = c.transaction();
    tx.enter();
    c.execute("SELECT 1");
    std::exception_ptr e;
    {
        // COMMIT goes to a server process that never answers, nor answers its cancel.
        const ctxmgr::testing::stopped_backend stopped(c.backend_pid());
        if (!stopped.stopped()) GTEST_SKIP() << "cannot signal the server's processes";
        e = exception_from([&] { tx.exit(nullptr); });
    }
    ASSERT_TRUE(ctxmgr::holds<db::commit_outcome_unknown>(e)) << ctxmgr::describe(e);
    EXPECT_TRUE(is_nested(e));
    EXPECT_NE(ctxmgr::describe(e).find("nested: ctxmgr::timeout_error"), std::string::npos)
        << ctxmgr::describe(e);
    EXPECT_TRUE(c.closed());
}

TEST_F(Postgres, PingAnswersAndTheServerVersionIsKnown) {
    auto c = connect();
    EXPECT_TRUE(c.ping());
    EXPECT_GE(c.server_version(), 100000);
    EXPECT_NE(c.native_handle(), nullptr);
}

TEST_F(Postgres, APingWithATimeoutGivesUpOnAServerThatDoesNotAnswerAndClosesTheSession) {
    auto c = connect();
    EXPECT_TRUE(c.ping(1s));
    {
        const ctxmgr::testing::stopped_backend stopped(c.backend_pid());
        if (!stopped.stopped()) GTEST_SKIP() << "cannot signal the server's processes";
        const auto start = std::chrono::steady_clock::now();
        EXPECT_FALSE(c.ping(200ms));
        const auto waited = std::chrono::steady_clock::now() - start;
        EXPECT_GE(waited, 195ms);
        EXPECT_LT(waited, 5s);
        // The empty query is still in flight: the session cannot be used again.
        EXPECT_FALSE(c.is_open());
        EXPECT_THROW(c.execute("SELECT 1"), ctxmgr::closed_error);
    }
    EXPECT_TRUE(connect().ping(1s));
}

TEST_F(Postgres, ARefusedConnectionIsAConnectionErrorWithoutThePassword) {
    const std::string conninfo = "host=127.0.0.1 port=" + std::to_string(unused_port()) +
                                 " user=postgres password=s3cret-value dbname=postgres";
    const auto e = exception_from([&] { static_cast<void>(postgres::connect(conninfo)); });
    ASSERT_TRUE(ctxmgr::holds<db::connection_error>(e)) << ctxmgr::describe(e);
    const std::string what = what_of(e);
    EXPECT_EQ(what.find("s3cret-value"), std::string::npos) << what;
    EXPECT_NE(what.find("connect to host=127.0.0.1"), std::string::npos) << what;
    EXPECT_NE(what.find("password=***"), std::string::npos) << what;
    EXPECT_NE(what.find("Connection refused"), std::string::npos) << what;
}

TEST_F(Postgres, APasswordNeverShowsInTheDescription) {
    // Trust authentication ignores the password; the description hides it all the same.
    auto c = postgres::connect(server_.conninfo + " password='s3cret value'");
    EXPECT_EQ(c.description().find("s3cret"), std::string::npos) << c.description();
    EXPECT_NE(c.description().find("password=***"), std::string::npos) << c.description();
}

TEST_F(Postgres, AServerThatNeverAnswersTimesOutAtTheDeadline) {
    // Accepts TCP (the kernel's backlog) but never speaks, like a stopped postmaster.
    const int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::bind(listener, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
    ASSERT_EQ(::listen(listener, 4), 0);
    socklen_t length = sizeof address;
    ::getsockname(listener, reinterpret_cast<sockaddr*>(&address), &length);
    const std::string conninfo =
        "host=127.0.0.1 port=" + std::to_string(ntohs(address.sin_port)) + " user=postgres";
    const auto start = std::chrono::steady_clock::now();
    const auto e = exception_from(
        [&] { static_cast<void>(postgres::connect(conninfo, {.connect_timeout = 300ms})); });
    const auto waited = std::chrono::steady_clock::now() - start;
    ::close(listener);
    ASSERT_TRUE(ctxmgr::holds<db::connection_error>(e)) << ctxmgr::describe(e);
    EXPECT_NE(what_of(e).find("no answer within 300 ms"), std::string::npos) << what_of(e);
    EXPECT_GE(waited, 290ms);
    EXPECT_LT(waited, 5s);
}

TEST_F(Postgres, AMalformedConnectionStringIsAnErrorButNotAConnectionError) {
    const auto e = exception_from(
        [&] { static_cast<void>(postgres::connect("host=127.0.0.1 no_such_option=1")); });
    ASSERT_TRUE(ctxmgr::holds<db::error>(e));
    EXPECT_FALSE(ctxmgr::holds<db::connection_error>(e));
    EXPECT_NE(what_of(e).find("no_such_option"), std::string::npos) << what_of(e);
}

TEST_F(Postgres, OptionsReachTheServer) {
    auto plain = connect();
    EXPECT_EQ(plain.query_value<std::string>("SHOW application_name"), "ctxmgr");
    auto named = connect({.statement_timeout = 100ms, .application_name = "ctxmgr-tests"});
    EXPECT_EQ(named.query_value<std::string>(
                  "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()"),
              "ctxmgr-tests");
    const auto start = std::chrono::steady_clock::now();
    const auto e = exception_from([&] { named.execute("SELECT pg_sleep(5)"); });
    ASSERT_TRUE(ctxmgr::holds<db::error>(e)) << ctxmgr::describe(e);
    try {
        std::rethrow_exception(e);
    } catch (const db::error& error) {
        EXPECT_EQ(error.sqlstate(), "57014");  // query_canceled
    }
    EXPECT_LT(std::chrono::steady_clock::now() - start, 4s);
    EXPECT_TRUE(named.ping());
}

// --- passwords in messages ---------------------------------------------------------------

// A connection string and the words of its password(s) that must never be shown.
struct secret_case {
    std::string conninfo;
    std::vector<std::string> secrets;
};

// Every quoting form libpq reads, and strings it rejects after (or around) a password. The
// servers named do not exist (`port`: nothing listens there), so a string that parses is
// refused at once.
std::vector<secret_case> secret_cases(int port) {
    const std::string p = std::to_string(port);
    const std::string local = "127.0.0.1:" + p;
    const std::string kv = "host=127.0.0.1 port=" + p + " ";
    return {
        // Rejected by libpq's parser, which quotes the input.
        {"postgresql://app:secret@[::1/app", {"secret"}},
        {"postgresql://app:se%zzcret@" + local + "/db", {"se%zzcret", "zzcret"}},
        {kv + "password=correct horse battery staple", {"correct", "horse", "battery", "staple"}},
        {kv + "password='unterm1nated user=a", {"unterm1nated"}},
        {kv + "password=aft3r no_such_key=1", {"aft3r"}},
        {"password=befor3 " + kv + "bogus", {"befor3"}},
        {"postgresql://" + local + "/db?password=qu3ry&bad%zz=1", {"qu3ry"}},
        // Accepted: an `@`, `?` or `/` inside the userinfo is the password's.
        {"postgresql://app:pa?ss@" + local + "/db", {"pa?ss", "?ss"}},
        {"postgresql://app:p%40ss%2Fw0rd@" + local + "/db", {"p%40ss", "p@ss", "w0rd"}},
        {"postgresql://app:pw#fr4g@" + local + "/db", {"fr4g"}},
        // Quoting and escapes.
        {kv + R"(password='it\'s s3cr3t' user=a)", {"s3cr3t"}},
        {kv + R"(password=bk\ sl4sh user=a)", {"sl4sh"}},
        {kv + "password = sp4ced user=a", {"sp4ced"}},
        {kv + "password= user=a", {"user=a"}},
        {kv + "sslpassword=k3yfile", {"k3yfile"}},
        {kv + R"(dbname='host=h password=inn3r')", {"inn3r"}},
        // The query string, its key percent-encoded or not.
        {"postgresql://" + local + "/db?password=qu3ry%20pw", {"qu3ry"}},
        {"postgresql://" + local + "/db?pass%77ord=enc0ded", {"enc0ded"}},
        {"postgresql://app:one1@" + local + "/db?password=tw0", {"one1", "tw0"}},
        // Several hosts, unix sockets.
        {"postgresql://app:mh0sts@" + local + ",127.0.0.1:" + p + "/db", {"mh0sts"}},
        {"postgresql://app:s0ck@%2Fnonexistent-dir/db", {"s0ck"}},
        {"host=/nonexistent-dir password=s0ck2", {"s0ck2"}},
    };
}

void expect_hidden(const std::string& text, const secret_case& c, std::string_view where) {
    for (const std::string& secret : c.secrets) {
        EXPECT_EQ(text.find(secret), std::string::npos)
            << where << " shows `" << secret << "` of " << c.conninfo << ":\n"
            << text;
    }
}

TEST(PostgresRedactSecrets, NoPasswordInAnyFormIsShown) {
    for (const secret_case& c : secret_cases(unused_port())) {
        expect_hidden(postgres::redact_secrets(c.conninfo), c, "redact_secrets");
    }
}

TEST(PostgresRedactSecrets, AStringLibpqReadsIsDescribedFromItsReading) {
    EXPECT_EQ(postgres::redact_secrets("dbname=app password='p w' user=a host=db"),
              "host=db user=a password=*** dbname=app");
    EXPECT_EQ(postgres::redact_secrets("postgresql://bob:p?ss@db:5433/app?sslmode=disable"),
              "host=db port=5433 user=bob password=*** dbname=app sslmode=disable");
    EXPECT_EQ(postgres::redact_secrets("postgresql://%2Frun%2Fpg/app?application_name=my%20app"),
              "host=/run/pg dbname=app application_name='my app'");
    EXPECT_EQ(postgres::redact_secrets(R"(host=db application_name='it\'s')"),
              R"(host=db application_name='it\'s')");
    // An empty password hides nothing; passfile is a path, not a secret.
    EXPECT_EQ(postgres::redact_secrets("host=db password='' passfile=/run/pw"),
              "host=db password='' passfile=/run/pw");
    EXPECT_EQ(postgres::redact_secrets(""), "");
}

TEST(PostgresRedactSecrets, AStringLibpqRejectsIsHiddenFromWhereAPasswordCouldStart) {
    EXPECT_EQ(postgres::redact_secrets("host=db password=a b"), "host=db password=***");
    EXPECT_EQ(postgres::redact_secrets("postgresql://app:secret@[::1/app"), "postgresql://app:***");
    EXPECT_EQ(postgres::redact_secrets("postgresql://db/app?bad%zz=1"), "postgresql://db/app?***");
    EXPECT_EQ(postgres::redact_secrets("host=db no_such_key=1"), "host=db no_such_key=1");
}

TEST_F(Postgres, NoPasswordReachesAnExceptionOrItsChain) {
    for (const secret_case& c : secret_cases(unused_port())) {
        const auto failure = exception_from(
            [&] { static_cast<void>(postgres::connect(c.conninfo, {.connect_timeout = 2s})); });
        ASSERT_TRUE(ctxmgr::holds<db::error>(failure)) << ctxmgr::describe(failure);
        expect_hidden(ctxmgr::describe(failure), c, "connect's exception");
        // The same failure, chained under another one (an exit that failed after it).
        const auto lock_failure = exception_from([&] {
            ctxmgr::with(postgres::advisory_lock(c.conninfo, "redaction"), [](postgres::lease&) {});
        });
        ASSERT_TRUE(lock_failure != nullptr) << c.conninfo;
        const auto chained =
            exception_from([&] { ctxmgr::rethrow_chained(lock_failure, failure); });
        expect_hidden(ctxmgr::describe(chained), c, "a chained exception");
    }
}

TEST_F(Postgres, AMalformedStringKeepsLibpqsReasonButNotItsQuotationOfThePassword) {
    const auto e = exception_from([&] {
        static_cast<void>(postgres::connect("host=127.0.0.1 password=correct horse battery"));
    });
    ASSERT_TRUE(ctxmgr::holds<db::error>(e)) << ctxmgr::describe(e);
    EXPECT_FALSE(ctxmgr::holds<db::connection_error>(e));
    EXPECT_NE(
        what_of(e).find("connect to host=127.0.0.1 password=***: missing \"=\" after \"...\""),
        std::string::npos)
        << what_of(e);
}

TEST_F(Postgres, NoPasswordReachesADescriptionOrTheLeakReport) {
    // Trust authentication ignores the passwords.
    char* error = nullptr;
    PQconninfoOption* parsed = PQconninfoParse(server_.conninfo.c_str(), &error);
    ASSERT_NE(parsed, nullptr) << error;
    std::string port = "5432";
    for (const PQconninfoOption* o = parsed; o->keyword != nullptr; ++o) {
        if (std::string_view(o->keyword) == "port" && o->val != nullptr) port = o->val;
    }
    PQconninfoFree(parsed);
    const std::string local = "127.0.0.1:" + port;
    const std::vector<secret_case> cases = {
        {server_.conninfo + R"( password='it\'s s3cr3t')", {"s3cr3t"}},
        {"postgresql://postgres:pa?ss@" + local + "/postgres", {"pa?ss", "?ss"}},
        {"postgresql://postgres:p%40ss%2Fw0rd@" + local + "/postgres", {"p%40ss", "p@ss", "w0rd"}},
        {"postgresql://postgres@" + local + "/postgres?pass%77ord=enc0ded", {"enc0ded"}},
        {"postgresql://postgres:mh0sts@" + local + "," + local + "/postgres", {"mh0sts"}},
    };
    for (const secret_case& c : cases) {
        auto connection = postgres::connect(c.conninfo);
        expect_hidden(connection.description(), c, "description()");
        ctxmgr::with(postgres::advisory_lock(c.conninfo, "redaction"), [&](postgres::lease&) {
            std::ostringstream report;
            ctxmgr::report_live(report);
            expect_hidden(report.str(), c, "report_live");
            for (const ctxmgr::resource_info& r : ctxmgr::live_resources()) {
                expect_hidden(r.description, c, "live_resources");
            }
            const auto e = exception_from([&] { connection.execute("SELECT no_such_column"); });
            expect_hidden(ctxmgr::describe(e), c, "a statement's error");
        });
    }
}

// --- the client's statement deadline -------------------------------------------------------

TEST_F(Postgres, AStatementPastTheClientsDeadlineIsCancelledAndTheConnectionStaysUsable) {
    auto c = postgres::connect(server_.conninfo + " password=s3cr3t",
                               {.statement_timeout = 300ms, .cancel_grace = 300ms});
    // The server keeps no deadline of its own now: only the client's is left.
    c.execute_script("SET statement_timeout = 0");
    const auto start = std::chrono::steady_clock::now();
    const auto e = exception_from([&] { c.execute("SELECT pg_sleep(5)"); });
    const auto waited = std::chrono::steady_clock::now() - start;
    ASSERT_TRUE(ctxmgr::holds<ctxmgr::timeout_error>(e)) << ctxmgr::describe(e);
    const std::string what = what_of(e);
    EXPECT_NE(what.find("SELECT pg_sleep(5)"), std::string::npos) << what;
    EXPECT_NE(what.find(c.description()), std::string::npos) << what;
    EXPECT_NE(what.find("cancelled on the server"), std::string::npos) << what;
    EXPECT_EQ(what.find("s3cr3t"), std::string::npos) << what;
    EXPECT_GE(waited, 590ms);
    EXPECT_LT(waited, 4s);
    EXPECT_TRUE(c.is_open());
    EXPECT_EQ(c.transaction_state(), db::transaction_state::idle);
    EXPECT_EQ(c.query_value<std::int64_t>("SELECT 42"), 42);
    // A script too.
    const auto script = exception_from([&] { c.execute_script("SELECT pg_sleep(5); SELECT 1"); });
    ASSERT_TRUE(ctxmgr::holds<ctxmgr::timeout_error>(script)) << ctxmgr::describe(script);
    EXPECT_TRUE(c.ping(1s));
}

TEST_F(Postgres, AScriptTakesADeadlineOfItsOwn) {
    auto c = connect({.cancel_grace = 300ms});
    c.execute_script("SELECT pg_sleep(0.05)", 2s);
    const auto start = std::chrono::steady_clock::now();
    const auto e = exception_from([&] { c.execute_script("SELECT pg_sleep(5)", 200ms); });
    const auto waited = std::chrono::steady_clock::now() - start;
    ASSERT_TRUE(ctxmgr::holds<ctxmgr::timeout_error>(e)) << ctxmgr::describe(e);
    EXPECT_NE(what_of(e).find("cancelled on the server"), std::string::npos) << what_of(e);
    EXPECT_GE(waited, 195ms);
    EXPECT_LT(waited, 3s);
    EXPECT_EQ(c.query_value<std::int64_t>("SELECT 7"), 7);
}

TEST_F(Postgres, AStoppedBackendHoldsAStatementOnlyUntilTheDeadlineThenTheSessionIsClosed) {
    auto c = postgres::connect(server_.conninfo + " password=s3cr3t",
                               {.statement_timeout = 200ms, .cancel_grace = 200ms});
    EXPECT_EQ(c.query_value<std::int64_t>("SELECT 1"), 1);
    std::exception_ptr e;
    std::chrono::steady_clock::duration waited{};
    {
        const ctxmgr::testing::stopped_backend stopped(c.backend_pid());
        if (!stopped.stopped()) GTEST_SKIP() << "cannot signal the server's processes";
        const auto start = std::chrono::steady_clock::now();
        e = exception_from([&] { static_cast<void>(c.query_value<std::int64_t>("SELECT 2")); });
        waited = std::chrono::steady_clock::now() - start;
    }
    ASSERT_TRUE(ctxmgr::holds<ctxmgr::timeout_error>(e)) << ctxmgr::describe(e);
    const std::string what = what_of(e);
    EXPECT_NE(what.find("SELECT 2"), std::string::npos) << what;
    EXPECT_NE(what.find("password=***"), std::string::npos) << what;
    EXPECT_NE(what.find("the session is closed"), std::string::npos) << what;
    EXPECT_EQ(what.find("s3cr3t"), std::string::npos) << what;
    EXPECT_GE(waited, 590ms);  // 200 ms, the server's grace, the cancel's grace
    EXPECT_LT(waited, 5s);
    EXPECT_FALSE(c.is_open());
    EXPECT_THROW(c.execute("SELECT 1"), ctxmgr::closed_error);
}

TEST_F(Postgres, AStatementFinishedInTimeIsUntouchedByTheDeadline) {
    auto c = connect({.statement_timeout = 2s, .cancel_grace = 200ms});
    EXPECT_EQ(c.query_value<std::int64_t>("SELECT count(*) FROM generate_series(1, 1000)"), 1000);
    EXPECT_EQ(c.execute("SELECT pg_sleep(0.1)"), 1);
    // The server's own timeout still comes first, as a db::error.
    c.execute_script("SET statement_timeout = 100");
    const auto e = exception_from([&] { c.execute("SELECT pg_sleep(5)"); });
    ASSERT_TRUE(ctxmgr::holds<db::error>(e)) << ctxmgr::describe(e);
    EXPECT_TRUE(c.ping(1s));
}

TEST_F(PostgresDedicated, AWholeServerStoppedHoldsAStatementOnlyUntilTheDeadline) {
    start();
    CTXMGR_REQUIRE_POSTGRES(server_);
    auto c =
        postgres::connect(server_.conninfo, {.statement_timeout = 200ms, .cancel_grace = 300ms});
    std::exception_ptr e;
    std::chrono::steady_clock::duration waited{};
    {
        const ctxmgr::testing::stopped_backend stopped(c.backend_pid());
        if (!stopped.stopped()) GTEST_SKIP() << "cannot signal the server's processes";
        // The postmaster too: the cancel request itself is never answered.
        cluster_->pause();
        const auto start = std::chrono::steady_clock::now();
        e = exception_from([&] { c.execute("SELECT 1"); });
        waited = std::chrono::steady_clock::now() - start;
        cluster_->resume();
    }
    ASSERT_TRUE(ctxmgr::holds<ctxmgr::timeout_error>(e)) << ctxmgr::describe(e);
    EXPECT_NE(what_of(e).find("the session is closed"), std::string::npos) << what_of(e);
    EXPECT_GE(waited, 790ms);
    EXPECT_LT(waited, 5s);
    EXPECT_FALSE(c.is_open());
    EXPECT_TRUE(postgres::connect(server_.conninfo).ping(2s));
}

TEST_F(Postgres, AnErrorCaughtInsideATransactionAbortsItAndExitSaysSo) {
    auto c = connect();
    c.execute_script("CREATE TEMP TABLE t (id bigint PRIMARY KEY)");
    const auto e = exception_from([&] {
        ctxmgr::with(c.transaction(), [&](auto& tx) {
            tx.execute("INSERT INTO t VALUES ($1)", 1);
            EXPECT_THROW(tx.execute("INSERT INTO t VALUES ($1)", 1), db::constraint_violation);
            EXPECT_EQ(tx.transaction_state(), db::transaction_state::failed);
            EXPECT_TRUE(tx.ping());  // an empty query is answered even now
            const auto refused = exception_from([&] { tx.execute("SELECT 1"); });
            EXPECT_NE(what_of(refused).find("25P02"), std::string::npos) << what_of(refused);
        });
    });
    ASSERT_TRUE(ctxmgr::holds<db::error>(e));
    EXPECT_NE(what_of(e).find("[25P02]"), std::string::npos) << what_of(e);
    EXPECT_NE(what_of(e).find("rolled back instead of committed"), std::string::npos) << what_of(e);
    EXPECT_EQ(c.transaction_state(), db::transaction_state::idle);
    EXPECT_EQ(c.query_value<std::int64_t>("SELECT count(*) FROM t"), 0);
}

TEST_F(Postgres, AnErrorCaughtInsideASavepointRollsBackToItAndTheOuterWorkGoesOn) {
    auto c = connect();
    c.execute_script("CREATE TEMP TABLE t (id bigint PRIMARY KEY)");
    ctxmgr::with(c.transaction(), [&](auto& tx) {
        tx.execute("INSERT INTO t VALUES ($1)", 1);
        const auto e = exception_from([&] {
            ctxmgr::with(tx.transaction(), [&](auto& sp) {
                sp.execute("INSERT INTO t VALUES ($1)", 2);
                EXPECT_THROW(sp.execute("INSERT INTO t VALUES ($1)", 1), db::constraint_violation);
            });
        });
        EXPECT_NE(what_of(e).find("rolled back to the savepoint"), std::string::npos) << what_of(e);
        EXPECT_EQ(tx.transaction_state(), db::transaction_state::active);
        tx.execute("INSERT INTO t VALUES ($1)", 3);
    });
    std::vector<std::int64_t> ids;
    for (auto row : c.query("SELECT id FROM t ORDER BY id"))
        ids.push_back(row.get<std::int64_t>(0));
    EXPECT_EQ(ids, (std::vector<std::int64_t>{1, 3}));
}

TEST_F(Postgres, ConcurrentSerializableTransactionsThatConflictFailTyped) {
    auto a = connect();
    auto b = connect();
    const std::string t = "serial_" + std::to_string(::getpid());
    a.execute_script("DROP TABLE IF EXISTS " + t + "; CREATE TABLE " + t + " (n bigint)");
    const db::transaction_options serializable{.isolation = db::isolation_level::serializable};
    const auto e = exception_from([&] {
        ctxmgr::with(b.transaction(serializable), [&](auto& tb) {
            const auto seen_by_b =
                tb.template query_value<std::int64_t>("SELECT count(*) FROM " + t);
            ctxmgr::with(a.transaction(serializable), [&](auto& ta) {
                const auto seen_by_a =
                    ta.template query_value<std::int64_t>("SELECT count(*) FROM " + t);
                ta.execute("INSERT INTO " + t + " VALUES ($1)", seen_by_a);
            });
            tb.execute("INSERT INTO " + t + " VALUES ($1)", seen_by_b);  // or COMMIT fails
        });
    });
    ASSERT_TRUE(ctxmgr::holds<db::serialization_failure>(e)) << ctxmgr::describe(e);
    EXPECT_NE(what_of(e).find("[40001]"), std::string::npos) << what_of(e);
    EXPECT_EQ(b.transaction_state(), db::transaction_state::idle);
    EXPECT_EQ(b.query_value<std::int64_t>("SELECT count(*) FROM " + t), 1);
    a.execute_script("DROP TABLE " + t);
}

TEST_F(Postgres, AReadOnlyTransactionRefusesWrites) {
    auto c = connect();
    const std::string t = "read_only_" + std::to_string(::getpid());
    c.execute_script("CREATE TABLE " + t + " (id bigint)");  // not TEMP: those stay writable
    const auto e = exception_from([&] {
        ctxmgr::with(c.transaction({.read_only = true}),
                     [&](auto& tx) { tx.execute("INSERT INTO " + t + " VALUES ($1)", 1); });
    });
    EXPECT_NE(what_of(e).find("[25006]"), std::string::npos) << what_of(e);
    EXPECT_EQ(c.transaction_state(), db::transaction_state::idle);
    c.execute_script("DROP TABLE " + t);
}

TEST_F(Postgres, IntegersAreTypedByTheirValue) {
    auto c = connect();
    EXPECT_EQ(c.query_value<std::string>("SELECT substr('abcdef', $1, $2)", 2, 3), "bcd");
    EXPECT_EQ(c.query_value<std::string>("SELECT pg_typeof($1)::text", 5), "integer");
    EXPECT_EQ(c.query_value<std::string>("SELECT pg_typeof($1)::text", std::int64_t{1} << 40),
              "bigint");
    EXPECT_EQ(c.query_value<std::int64_t>("SELECT $1", std::int64_t{1} << 40),
              std::int64_t{1} << 40);
    EXPECT_EQ(c.query_value<std::int64_t>("SELECT $1", -5), -5);
    // Both variants of one SQL stay prepared.
    const auto before = c.cached_statements();
    for (int i = 0; i < 3; ++i) {
        EXPECT_EQ(c.query_value<std::int64_t>("SELECT $1 + 0", 1), 1);
        EXPECT_EQ(c.query_value<std::int64_t>("SELECT $1 + 0", std::int64_t{1} << 40),
                  std::int64_t{1} << 40);
    }
    EXPECT_EQ(c.cached_statements(), before + 2);
}

TEST_F(Postgres, TheServerHoldsOnePreparedStatementPerCachedStatement) {
    auto c = connect({.statement_cache_size = 3});
    const std::string count = "SELECT count(*) FROM pg_prepared_statements";
    for (int i = 0; i < 5; ++i) EXPECT_EQ(c.query_value<std::int64_t>("SELECT $1 + 1", i), i + 1);
    EXPECT_EQ(c.query_value<std::int64_t>(count), 2);  // that one and the counting one
    for (int i = 0; i < 6; ++i) c.execute("SELECT " + std::to_string(i));
    EXPECT_EQ(c.cached_statements(), 3u);
    EXPECT_EQ(c.query_value<std::int64_t>(count), 3);  // evicted ones were deallocated
    // The server forgets them all (a pooler's DISCARD ALL): prepared again, transparently.
    c.execute_script("DISCARD ALL");
    EXPECT_EQ(c.query_value<std::int64_t>(count), 1);
    EXPECT_EQ(c.query_value<std::int64_t>("SELECT $1 + 1", 41), 42);
    // The same SQL with other parameter types is prepared for those types.
    EXPECT_EQ(c.query_value<std::string>("SELECT $1::text", 5), "5");
    EXPECT_EQ(c.query_value<std::string>("SELECT $1::text", "five"), "five");
}

TEST_F(Postgres, EvictionWaitsOutAFailedTransaction) {
    auto c = connect({.statement_cache_size = 1});
    c.execute("SELECT 1");
    const auto count = [&] {
        return c.query_value<std::int64_t>("SELECT count(*) FROM pg_prepared_statements");
    };
    EXPECT_THROW(ctxmgr::with(c.transaction(),
                              [&](auto& tx) {
                                  EXPECT_THROW(tx.execute("SELECT 1/0"), db::error);
                                  // Preparing is refused in a failed transaction, and so is
                                  // DEALLOCATE of the evicted statement: it waits.
                                  EXPECT_THROW(tx.execute("SELECT 2"), db::error);
                                  throw test_error("give up");
                              }),
                 test_error);
    EXPECT_EQ(count(), 1);  // only the counting statement is left on the server
}

TEST_F(Postgres, TextBecomesWhateverTheColumnIs) {
    auto c = connect();
    c.execute_script("CREATE TEMP TABLE d (day date, amount numeric, doc jsonb)");
    c.execute("INSERT INTO d VALUES ($1, $2, $3)", "2024-05-06", "12.50", R"({"a": [1, 2]})");
    const auto row = c.query_one("SELECT day, amount, doc, day + 1 AS next FROM d");
    ASSERT_TRUE(row.has_value());
    EXPECT_EQ(row->get<std::string>("day"), "2024-05-06");
    EXPECT_EQ(row->get<std::string>("next"), "2024-05-07");
    EXPECT_EQ(row->get<double>("amount"), 12.5);
    EXPECT_THROW(static_cast<void>(row->get<std::int64_t>("amount")), db::conversion_error);
    EXPECT_EQ(row->get<std::string>("doc"), R"({"a": [1, 2]})");
    EXPECT_THROW(static_cast<void>(row->get<std::int64_t>("day")), db::conversion_error);
    // Aggregates of bigint are numeric: read as integers when they are integral.
    EXPECT_EQ(c.query_value<std::int64_t>("SELECT sum(x) FROM (VALUES (1::bigint), (2)) v (x)"), 3);
    EXPECT_EQ(c.query_value<double>("SELECT 'Infinity'::float8"),
              std::numeric_limits<double>::infinity());
}

TEST_F(Postgres, ExecuteReturnsTheRowsEachCommandReports) {
    auto c = connect();
    EXPECT_EQ(c.execute("CREATE TEMP TABLE n (id int PRIMARY KEY, v int)"), 0);
    EXPECT_EQ(c.execute("INSERT INTO n VALUES (1, 0), (2, 0), (3, 0)"), 3);
    EXPECT_EQ(c.execute("UPDATE n SET v = v + 1 WHERE id >= $1", 2), 2);
    EXPECT_EQ(c.execute("SELECT * FROM n"), 3);
    EXPECT_EQ(c.execute("MERGE INTO n USING (VALUES (3), (4)) s (id) ON n.id = s.id "
                        "WHEN MATCHED THEN UPDATE SET v = 9 "
                        "WHEN NOT MATCHED THEN INSERT VALUES (s.id, 0)"),
              2);
    EXPECT_EQ(c.execute("DELETE FROM n WHERE v = 0"), 2);
    ctxmgr::with(c.transaction(), [](postgres::connection& tx) {
        EXPECT_EQ(tx.execute("DECLARE k CURSOR FOR SELECT generate_series(1, 10)"), 0);
        EXPECT_EQ(tx.execute("FETCH 3 FROM k"), 3);
        EXPECT_EQ(tx.execute("MOVE 4 IN k"), 4);
        EXPECT_EQ(tx.execute("FETCH ALL FROM k"), 3);
    });
    EXPECT_EQ(c.execute("SET application_name = 'counting'"), 0);
}

TEST_F(Postgres, IntegersReadExactlyToTheLimitsOfInt64AndNoFurther) {
    auto c = connect();
    constexpr auto most = std::numeric_limits<std::int64_t>::max();
    constexpr auto least = std::numeric_limits<std::int64_t>::min();
    EXPECT_EQ(c.query_value<std::int64_t>("SELECT 9223372036854775807::bigint"), most);
    EXPECT_EQ(c.query_value<std::int64_t>("SELECT (-9223372036854775808)::bigint"), least);
    EXPECT_EQ(c.query_value<std::int64_t>("SELECT 0::int"), 0);
    EXPECT_EQ(c.query_value<std::int64_t>("SELECT -42::int"), -42);
    EXPECT_THROW(
        static_cast<void>(c.query_value<std::int64_t>("SELECT 9223372036854775808::numeric")),
        db::conversion_error);
    EXPECT_THROW(
        static_cast<void>(c.query_value<std::int64_t>("SELECT (-9223372036854775809)::numeric")),
        db::conversion_error);
    EXPECT_THROW(
        static_cast<void>(c.query_value<std::int64_t>("SELECT 99999999999999999999999::numeric")),
        db::conversion_error);
    EXPECT_THROW(static_cast<void>(c.query_value<std::int64_t>("SELECT NULL::int")),
                 db::conversion_error);
    EXPECT_EQ(c.query_value<std::optional<std::int64_t>>("SELECT NULL::int"), std::nullopt);
    EXPECT_EQ(c.query_value<std::optional<std::int64_t>>("SELECT 7::int"), 7);
}

TEST_F(Postgres, TextWithANulCharacterIsRefusedBeforeItIsCut) {
    auto c = connect();
    const auto e = exception_from([&] { c.execute("SELECT $1", std::string("a\0b", 3)); });
    ASSERT_TRUE(ctxmgr::holds<db::conversion_error>(e));
    EXPECT_NE(what_of(e).find("parameter $1"), std::string::npos) << what_of(e);
    const db::bytes with_nul{std::byte{'a'}, std::byte{0}, std::byte{'b'}};
    EXPECT_EQ(c.query_value<db::bytes>("SELECT $1", with_nul), with_nul);
}

}  // namespace
