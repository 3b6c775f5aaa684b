// SQLite-specific behaviour: opening (options, bad paths), `$N` rewriting, the busy timeout
// between two connections, close failures, and a writer killed with SIGKILL mid-commit. The
// behaviour shared with PostgreSQL is in db_test.cpp.
#include <sqlite3.h>
#include <ctxmgr/pool.hpp>
#include <ctxmgr/sqlite.hpp>
#include <ctxmgr/unraisable.hpp>
#include <ctxmgr/with.hpp>

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "../src/db/sql_text.hpp"
#include "recording.hpp"
#include "temp_directory.hpp"

namespace {

using namespace std::chrono_literals;
using ctxmgr::testing::exception_from;
using ctxmgr::testing::what_of;
namespace db = ctxmgr::db;
namespace sqlite = ctxmgr::sqlite;

std::string rewritten(std::string_view sql) {
    db::detail::sql_scan scan;
    return db::detail::to_sqlite_parameters(sql, scan);
}

TEST(SqliteParameters, DollarNumbersBecomeQuestionNumbersOutsideQuotesAndComments) {
    EXPECT_EQ(rewritten("SELECT $1, $2 + $10"), "SELECT ?1, ?2 + ?10");
    EXPECT_EQ(rewritten("SELECT '$1', \"$2\", `$3`, [$4], $5"),
              "SELECT '$1', \"$2\", `$3`, [$4], ?5");
    EXPECT_EQ(rewritten("SELECT 'it''s $1' || $2"), "SELECT 'it''s $1' || ?2");
    EXPECT_EQ(rewritten("SELECT $1 -- $2\n, $3 /* $4 */"), "SELECT ?1 -- $2\n, ?3 /* $4 */");
    EXPECT_EQ(rewritten("SELECT a$1, $1a"), "SELECT a$1, ?1a");  // inside an identifier: not one
    EXPECT_EQ(rewritten("SELECT '$1"), "SELECT '$1");            // unterminated literal
    db::detail::sql_scan scan;
    static_cast<void>(db::detail::to_sqlite_parameters("SELECT $3, $1, $3", scan));
    EXPECT_EQ(scan.parameters, 3u);
    EXPECT_EQ(scan.foreign_at, std::string_view::npos);
    static_cast<void>(db::detail::to_sqlite_parameters("SELECT '?', ?", scan));
    EXPECT_EQ(scan.foreign_at, 12u);
}

TEST(SqliteParameters, PostgresDialectSkipsDollarQuotesAndNestedComments) {
    using db::detail::dialect;
    EXPECT_EQ(
        db::detail::scan_parameters("SELECT $$ $1 $$, $tag$ $2 $tag$, $3", dialect::postgresql)
            .parameters,
        3u);
    EXPECT_EQ(db::detail::scan_parameters("SELECT /* a /* $5 */ $6 */ $1", dialect::postgresql)
                  .parameters,
              1u);
    EXPECT_EQ(db::detail::scan_parameters("SELECT E'\\' $4', $2", dialect::postgresql).parameters,
              2u);
    EXPECT_EQ(db::detail::scan_parameters("SELECT data ? $1", dialect::postgresql).parameters, 1u);
}

class Sqlite : public ::testing::Test {
  protected:
    std::string path(const std::string& name = "test.db") const { return directory_.file(name); }
    ctxmgr::testing::temp_directory directory_;
};

TEST_F(Sqlite, InMemoryDatabasesArePrivate) {
    auto a = sqlite::connect(":memory:");
    auto b = sqlite::connect(":memory:");
    a.execute("CREATE TABLE t (x INTEGER)");
    EXPECT_THROW(b.execute("SELECT x FROM t"), db::error);
    EXPECT_EQ(a.description(), "\":memory:\"");
}

TEST_F(Sqlite, SqliteStyleParametersAreRefusedSoThatStatementsMeanTheSameEverywhere) {
    auto c = sqlite::connect(":memory:");
    for (const char* sql :
         {"SELECT ?", "SELECT ?1", "SELECT :name", "SELECT @name", "SELECT $name"}) {
        const auto e = exception_from([&] { c.execute(sql, 1); });
        ASSERT_TRUE(ctxmgr::holds<db::error>(e)) << sql;
        EXPECT_NE(what_of(e).find("parameters are written $1, $2, ..."), std::string::npos)
            << what_of(e);
    }
    EXPECT_EQ(c.query_value<std::string>("SELECT '?' || $1", "!"), "?!");
}

TEST_F(Sqlite, OneStatementPerCallAndScriptsForSeveral) {
    auto c = sqlite::connect(":memory:");
    const auto e = exception_from([&] { c.execute("CREATE TABLE a (x); CREATE TABLE b (x)"); });
    ASSERT_TRUE(ctxmgr::holds<db::error>(e));
    EXPECT_NE(what_of(e).find("execute_script"), std::string::npos);
    c.execute("CREATE TABLE a (x); -- a comment after the statement is fine\n");
    c.execute_script("CREATE TABLE b (x); INSERT INTO b VALUES (1); INSERT INTO b VALUES (2);");
    EXPECT_EQ(c.query_value<std::int64_t>("SELECT sum(x) FROM b"), 3);
    EXPECT_THROW(c.execute_script("INSERT INTO b VALUES (3); INSERT INTO nowhere VALUES (4)"),
                 db::error);
    EXPECT_EQ(c.query_value<std::int64_t>("SELECT count(*) FROM b"), 3);  // up to the error
    EXPECT_THROW(c.execute(""), db::error);
}

TEST_F(Sqlite, ErrorsNameTheirResultCodeAsSqlite3HSpellsIt) {
    auto c = sqlite::connect(":memory:");
    c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)");
    c.execute("INSERT INTO t VALUES (1, 'a')");
    const auto name_of = [&](const std::string& sql) -> std::pair<int, std::string> {
        try {
            c.execute(sql);
        } catch (const db::error& e) {
            EXPECT_NE(std::string(e.what()).find("[" + std::string(e.code_name()) + "]"),
                      std::string::npos)
                << e.what();
            EXPECT_EQ(std::string(e.what()).find("[code "), std::string::npos) << e.what();
            return {e.code(), std::string(e.code_name())};
        }
        ADD_FAILURE() << "no error from " << sql;
        return {};
    };
    EXPECT_EQ(name_of("INSERT INTO t VALUES (1, 'b')"),
              std::pair(SQLITE_CONSTRAINT_PRIMARYKEY, std::string("SQLITE_CONSTRAINT_PRIMARYKEY")));
    EXPECT_EQ(name_of("INSERT INTO t VALUES (2, 'a')"),
              std::pair(SQLITE_CONSTRAINT_UNIQUE, std::string("SQLITE_CONSTRAINT_UNIQUE")));
    EXPECT_EQ(name_of("INSERT INTO t VALUES (3, NULL)"),
              std::pair(SQLITE_CONSTRAINT_NOTNULL, std::string("SQLITE_CONSTRAINT_NOTNULL")));
    EXPECT_EQ(name_of("SELEC 1"), std::pair(SQLITE_ERROR, std::string("SQLITE_ERROR")));
    // Client-side checks name SQLite's code for them too.
    EXPECT_EQ(name_of("SELECT 1; SELECT 2"),
              std::pair(SQLITE_MISUSE, std::string("SQLITE_MISUSE")));
}

TEST_F(Sqlite, ConnectTakesAFilesystemPathAsOpenDoes) {
    const std::filesystem::path file = path("by-path.db");
    ctxmgr::with(sqlite::connect(file),
                 [](sqlite::connection& c) { c.execute("CREATE TABLE t (x INTEGER)"); });
    EXPECT_TRUE(std::filesystem::exists(file));
    auto again = sqlite::connect(file.string());  // a std::string still converts
    EXPECT_EQ(again.description(), '"' + file.string() + '"');
    EXPECT_EQ(again.query_value<std::int64_t>("SELECT count(*) FROM t"), 0);
    // ":memory:" and `file:` URIs pass through as they are.
    EXPECT_FALSE(std::filesystem::exists(":memory:"));
    auto memory = sqlite::connect(std::filesystem::path(":memory:"));
    memory.execute("CREATE TABLE m (x)");
    EXPECT_FALSE(std::filesystem::exists(":memory:"));
    const std::string uri = "file:" + file.string() + "?mode=ro";
    auto read_only = sqlite::connect(uri);
    EXPECT_THROW(read_only.execute("INSERT INTO t VALUES (1)"), db::error);
}

TEST_F(Sqlite, AFileThatCannotBeOpenedIsAConnectionErrorNamingIt) {
    const auto missing = path("no/such/dir/x.db");
    const auto e = exception_from([&] { static_cast<void>(sqlite::connect(missing)); });
    ASSERT_TRUE(ctxmgr::holds<db::connection_error>(e)) << ctxmgr::describe(e);
    EXPECT_NE(what_of(e).find(missing), std::string::npos) << what_of(e);
    EXPECT_NE(what_of(e).find("[SQLITE_CANTOPEN]"), std::string::npos) << what_of(e);
    EXPECT_THROW(static_cast<void>(sqlite::connect(path("absent.db"), {.create = false})),
                 db::connection_error);
}

TEST_F(Sqlite, OptionsAreApplied) {
    {
        auto c = sqlite::connect(path(), {.wal = true});
        EXPECT_EQ(c.query_value<std::string>("PRAGMA journal_mode"), "wal");
        EXPECT_EQ(c.query_value<std::int64_t>("PRAGMA foreign_keys"), 1);
        EXPECT_EQ(c.query_value<std::int64_t>("PRAGMA busy_timeout"), 5000);
        c.execute_script(
            "CREATE TABLE p (id INTEGER PRIMARY KEY); CREATE TABLE c (p INTEGER REFERENCES p "
            "(id))");
        EXPECT_THROW(c.execute("INSERT INTO c VALUES ($1)", 9), db::constraint_violation);
        c.execute("INSERT INTO p VALUES ($1)", 1);
        EXPECT_EQ(c.last_insert_rowid(), 1);
    }
    auto relaxed = sqlite::connect(path(), {.busy_timeout = 250ms, .foreign_keys = false});
    EXPECT_EQ(relaxed.query_value<std::int64_t>("PRAGMA busy_timeout"), 250);
    relaxed.execute("INSERT INTO c VALUES ($1)", 9);  // not enforced
    auto reader = sqlite::connect(path(), {.read_only = true});
    const auto e = exception_from([&] { reader.execute("INSERT INTO p VALUES ($1)", 2); });
    ASSERT_TRUE(ctxmgr::holds<db::error>(e));
    EXPECT_NE(what_of(e).find("readonly"), std::string::npos) << what_of(e);
    EXPECT_EQ(reader.query_value<std::int64_t>("SELECT count(*) FROM p"), 1);
}

TEST_F(Sqlite, TextIsNotNullAndNumbersReadAsText) {
    auto c = sqlite::connect(":memory:");
    EXPECT_EQ(c.query_value<std::optional<std::string>>("SELECT $1", std::string_view()), "");
    EXPECT_EQ(c.query_value<std::string>("SELECT 42"), "42");
    const auto row = c.query_one("SELECT 42 AS n, 2.5 AS r, x'00ff' AS b");
    ASSERT_TRUE(row.has_value());
    EXPECT_EQ(row->get<std::string>("n"), "42");  // from the snapshot too
    EXPECT_EQ(row->get<double>("r"), 2.5);
    EXPECT_EQ(row->get<db::bytes>("b"), (db::bytes{std::byte{0}, std::byte{0xff}}));
    EXPECT_THROW(static_cast<void>(row->get<std::string>("b")), db::conversion_error);
    EXPECT_THROW(static_cast<void>(c.query_value<bool>("SELECT 2")), db::conversion_error);
    EXPECT_THROW(static_cast<void>(c.query_value<double>("SELECT 9007199254740993")),
                 db::conversion_error);  // 2^53 + 1: no exact double
}

TEST_F(Sqlite, StatementsStayPreparedAcrossCalls) {
    auto c = sqlite::connect(":memory:");
    c.execute("CREATE TABLE t (x INTEGER)");
    for (int i = 0; i < 10; ++i) c.execute("INSERT INTO t VALUES ($1)", i);
    // SQLite's own list of the connection's statements: one per distinct SQL, not per call.
    int statements = 0;
    for (sqlite3_stmt* s = sqlite3_next_stmt(c.native_handle(), nullptr); s != nullptr;
         s = sqlite3_next_stmt(c.native_handle(), s)) {
        ++statements;
    }
    EXPECT_EQ(statements, 2);
    EXPECT_EQ(c.cached_statements(), 2u);
}

TEST_F(Sqlite, NoStatementIsLeftRunningWhenACallReturnsOrThrows) {
    auto c = sqlite::connect(":memory:");
    const auto running = [&] {
        int count = 0;
        for (sqlite3_stmt* s = sqlite3_next_stmt(c.native_handle(), nullptr); s != nullptr;
             s = sqlite3_next_stmt(c.native_handle(), s)) {
            count += sqlite3_stmt_busy(s) != 0 ? 1 : 0;
        }
        return count;
    };
    c.execute("CREATE TABLE t (x INTEGER PRIMARY KEY)");
    EXPECT_EQ(c.execute("INSERT INTO t VALUES ($1), ($2)", 1, 2), 2);
    EXPECT_EQ(running(), 0);
    // A statement that returns rows, run by execute to its end, and one stopped after a row.
    EXPECT_EQ(c.execute("SELECT x FROM t"), 2);
    EXPECT_EQ(running(), 0);
    EXPECT_EQ(c.query_value<std::int64_t>("SELECT x FROM t ORDER BY x"), 1);
    EXPECT_EQ(running(), 0);
    EXPECT_THROW(c.execute("INSERT INTO t VALUES ($1)", 1), db::constraint_violation);
    EXPECT_EQ(running(), 0);
    // Each statement runs afresh the next time.
    EXPECT_EQ(c.execute("SELECT x FROM t"), 2);
    EXPECT_EQ(c.execute("INSERT INTO t VALUES ($1)", 3), 1);
    EXPECT_EQ(c.query_value<std::int64_t>("SELECT count(*) FROM t"), 3);
}

TEST_F(Sqlite, AWriterMakesASecondOneWaitForTheBusyTimeoutThenFail) {
    auto writer = sqlite::connect(path());
    writer.execute("CREATE TABLE t (x INTEGER)");
    auto second = sqlite::connect(path(), {.busy_timeout = 200ms});
    ctxmgr::with(writer.transaction(), [&](auto& tx) {
        tx.execute("INSERT INTO t VALUES (1)");
        const auto start = std::chrono::steady_clock::now();
        const auto e = exception_from(
            [&] { ctxmgr::with(second.transaction(), [](auto&) { ADD_FAILURE() << "entered"; }); });
        const auto waited = std::chrono::steady_clock::now() - start;
        ASSERT_TRUE(ctxmgr::holds<db::serialization_failure>(e)) << ctxmgr::describe(e);
        EXPECT_NE(what_of(e).find("[SQLITE_BUSY]"), std::string::npos) << what_of(e);
        EXPECT_GE(waited, 190ms);  // it waited rather than failing at once
    });
    EXPECT_EQ(second.transaction_state(), db::transaction_state::idle);
}

TEST_F(Sqlite, ASecondWriterWaitsAndProceedsWhenTheFirstCommitsInTime) {
    auto writer = sqlite::connect(path());
    writer.execute("CREATE TABLE t (x INTEGER)");
    auto second = sqlite::connect(path(), {.busy_timeout = 10s});
    std::atomic<bool> holding{false};
    std::thread first([&] {
        ctxmgr::with(writer.transaction(), [&](auto& tx) {
            tx.execute("INSERT INTO t VALUES (1)");
            holding = true;
            std::this_thread::sleep_for(150ms);
        });
    });
    while (!holding) std::this_thread::sleep_for(1ms);
    // BEGIN IMMEDIATE waits on the lock here; a deferred BEGIN would fail at once on the
    // read-to-write upgrade inside the block instead.
    ctxmgr::with(second.transaction(), [](auto& tx) { tx.execute("INSERT INTO t VALUES (2)"); });
    first.join();
    EXPECT_EQ(second.query_value<std::int64_t>("SELECT sum(x) FROM t"), 3);
}

TEST_F(Sqlite, AReadOnlyTransactionTakesNoWriteLock) {
    auto a = sqlite::connect(path(), {.wal = true});
    a.execute("CREATE TABLE t (x INTEGER)");
    auto b = sqlite::connect(path(), {.busy_timeout = 100ms});
    ctxmgr::with(a.transaction({.read_only = true}), [&](auto& tx) {
        EXPECT_EQ(tx.template query_value<std::int64_t>("SELECT count(*) FROM t"), 0);
        b.execute("INSERT INTO t VALUES (1)");  // a reader does not block a writer under WAL
    });
    ctxmgr::with(a.transaction(), [&](auto&) {
        EXPECT_THROW(b.execute("INSERT INTO t VALUES (2)"), db::serialization_failure);
    });
}

TEST_F(Sqlite, CloseFailsWhileForeignStatementsAreOpenAndTheConnectionIsClosedAnyway) {
    auto c = sqlite::connect(":memory:");
    sqlite3_stmt* foreign = nullptr;
    ASSERT_EQ(sqlite3_prepare_v2(c.native_handle(), "SELECT 1", -1, &foreign, nullptr), SQLITE_OK);
    const auto e = exception_from([&] { c.close(); });
    ASSERT_TRUE(ctxmgr::holds<db::error>(e));
    EXPECT_NE(what_of(e).find("close \":memory:\""), std::string::npos) << what_of(e);
    EXPECT_FALSE(c.is_open());
    EXPECT_NO_THROW(c.close());
    sqlite3_finalize(foreign);  // SQLite completes the close now
}

TEST_F(Sqlite, ACloseFailureIsChainedToAPendingExceptionAndReportedByTheDestructor) {
    sqlite3_stmt* foreign = nullptr;
    std::exception_ptr thrown;
    const auto e = exception_from([&] {
        ctxmgr::with(sqlite::connect(":memory:"), [&](sqlite::connection& c) {
            sqlite3_prepare_v2(c.native_handle(), "SELECT 1", -1, &foreign, nullptr);
            ctxmgr::testing::throw_recorded(thrown);
        });
    });
    ASSERT_TRUE(ctxmgr::holds<db::error>(e));
    try {
        std::rethrow_exception(e);
    } catch (const std::nested_exception& nested) {
        EXPECT_EQ(nested.nested_ptr(), thrown);
    } catch (...) {
        ADD_FAILURE() << "not nested: " << ctxmgr::describe(e);
    }
    sqlite3_finalize(foreign);

    ctxmgr::testing::unraisable_capture capture;
    {
        auto c = sqlite::connect(":memory:");
        sqlite3_prepare_v2(c.native_handle(), "SELECT 1", -1, &foreign, nullptr);
    }
    sqlite3_finalize(foreign);
    ASSERT_EQ(capture.reports.size(), 1u);
    EXPECT_EQ(capture.reports[0].rfind("sqlite connection \":memory:\": close in destructor", 0),
              0u)
        << capture.reports[0];
}

// A child commits numbered transactions and reports each through a pipe once COMMIT has
// returned; the parent kills it with SIGKILL at a random moment, then checks the file.
TEST_F(Sqlite, KilledMidCommitTheDatabaseReopensIntactWithEveryCommittedTransaction) {
    std::mt19937 random(std::random_device{}());
    constexpr int rounds = 6;
    for (int round = 0; round < rounds; ++round) {
        const bool wal = round % 2 == 1;
        const auto file = path("crash" + std::to_string(round) + ".db");
        ctxmgr::with(sqlite::connect(file, {.wal = wal}), [](sqlite::connection& c) {
            c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, payload TEXT NOT NULL)");
        });
        int reports[2];
        ASSERT_EQ(::pipe(reports), 0);
        const pid_t child = ::fork();
        ASSERT_GE(child, 0);
        if (child == 0) {
            ::close(reports[0]);
            try {
                auto c = sqlite::connect(file, {.wal = wal});
                const std::string payload(2000, 'p');
                for (std::int64_t id = 1; id <= 100000; ++id) {
                    ctxmgr::with(c.transaction(), [&](auto& tx) {
                        tx.execute("INSERT INTO t (id, payload) VALUES ($1, $2)", id, payload);
                        tx.execute("UPDATE t SET payload = $1 WHERE id = $2", payload + "!", id);
                    });
                    if (::write(reports[1], &id, sizeof id) != sizeof id) ::_exit(3);
                }
            } catch (...) {
                ::_exit(2);
            }
            ::_exit(0);
        }
        ::close(reports[1]);
        // Let it commit a random number of transactions, then kill it a random few
        // microseconds later: often inside the next COMMIT.
        const auto wanted = std::uniform_int_distribution<std::int64_t>(3, 60)(random);
        std::int64_t last = 0;
        while (last < wanted && ::read(reports[0], &last, sizeof last) == sizeof last) {
        }
        std::this_thread::sleep_for(
            std::chrono::microseconds(std::uniform_int_distribution<int>(0, 3000)(random)));
        ::kill(child, SIGKILL);
        std::int64_t id = 0;
        while (::read(reports[0], &id, sizeof id) == sizeof id) last = id;  // reported before
        ::close(reports[0]);
        int status = 0;
        ASSERT_EQ(::waitpid(child, &status, 0), child);
        ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
            << "the child ended on its own: " << status;

        auto c = sqlite::connect(file);
        EXPECT_EQ(c.query_value<std::string>("PRAGMA integrity_check"), "ok") << "round " << round;
        // Every reported transaction is there, whole (both statements).
        EXPECT_EQ(c.query_value<std::int64_t>(
                      "SELECT count(*) FROM t WHERE id <= $1 AND payload LIKE '%!'", last),
                  last)
            << "round " << round;
        const auto present = c.query_value<std::int64_t>("SELECT count(*) FROM t");
        EXPECT_GE(present, last);
        EXPECT_LE(present, last + 1);  // at most the one committed but not yet reported
        EXPECT_EQ(c.query_value<std::int64_t>("SELECT count(*) FROM t WHERE payload NOT LIKE '%!'"),
                  0);  // nothing half-done
    }
}

// --- errors name the call -------------------------------------------------------------------

// `call`'s db::error names `operation` (the accessor and what()) and is of type E.
template <class E, class Call>
void expect_named(const std::string& operation, Call&& call) {
    try {
        call();
        ADD_FAILURE() << operation << ": nothing thrown";
    } catch (const E& e) {
        EXPECT_EQ(e.operation(), operation) << e.what();
        EXPECT_NE(std::string(e.what()).find("(in " + operation + ": "), std::string::npos)
            << e.what();
    } catch (...) {
        ADD_FAILURE() << operation << ": " << ctxmgr::describe(std::current_exception());
    }
}

TEST_F(Sqlite, AStatementsErrorNamesTheCallThatRanItAndKeepsItsType) {
    auto c = sqlite::connect(":memory:");
    c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)");
    c.execute("INSERT INTO t VALUES (1)");
    expect_named<db::error>("execute", [&] { c.execute("SELEC 1"); });
    expect_named<db::constraint_violation>("execute",
                                           [&] { c.execute("INSERT INTO t VALUES (1)"); });
    expect_named<db::error>("query", [&] {
        // abs() of the smallest integer overflows when the row is stepped to.
        for (auto row : c.query("SELECT abs($1)", std::numeric_limits<std::int64_t>::min())) {
            static_cast<void>(row);
        }
    });
    expect_named<db::error>("query_one", [&] { static_cast<void>(c.query_one("SELEC 1")); });
    expect_named<db::conversion_error>(
        "query_value", [&] { static_cast<void>(c.query_value<int>("SELECT 'abc'")); });
    expect_named<db::error>("query_value",
                            [&] { static_cast<void>(c.query_value<int>("SELECT $1 + $2", 1)); });
}

// --- release failures chained to the block's exception -------------------------------------

// An authorizer that refuses transaction control: the ROLLBACK a release runs fails with
// SQLITE_AUTH, a database error that is not a lost connection.
int refuse_transaction_control(void*, int action, const char*, const char*, const char*,
                               const char*) {
    return action == SQLITE_TRANSACTION || action == SQLITE_SAVEPOINT ? SQLITE_DENY : SQLITE_OK;
}

// `e` is the failed release: a db::error with SQLite's SQLITE_AUTH (the object the library
// raised, not a copy sliced to a base), with the block's own exception nested in it.
void expect_release_failure_chained_to(const std::exception_ptr& e,
                                       const std::exception_ptr& thrown) {
    ASSERT_TRUE(ctxmgr::holds<db::error>(e)) << ctxmgr::describe(e);
    try {
        std::rethrow_exception(e);
    } catch (const db::error& failure) {
        EXPECT_EQ(failure.code(), SQLITE_AUTH) << failure.what();
        EXPECT_EQ(failure.code_name(), "SQLITE_AUTH");
        EXPECT_NE(std::string(failure.what()).find("ROLLBACK"), std::string::npos)
            << failure.what();
        const auto* nested = dynamic_cast<const std::nested_exception*>(&failure);
        ASSERT_NE(nested, nullptr) << "not chained: " << ctxmgr::describe(e);
        EXPECT_EQ(nested->nested_ptr(), thrown) << "the block's exception itself is nested";
    }
}

TEST_F(Sqlite, ATransactionsFailedRollbackIsChainedToTheBlocksException) {
    auto c = sqlite::connect(":memory:");
    c.execute("CREATE TABLE t (x INTEGER)");
    std::exception_ptr thrown;
    const auto e = exception_from([&] {
        ctxmgr::with(c.transaction(), [&](sqlite::connection& tx) {
            tx.execute("INSERT INTO t VALUES (1)");
            sqlite3_set_authorizer(tx.native_handle(), refuse_transaction_control, nullptr);
            ctxmgr::testing::throw_recorded(thrown);
        });
    });
    expect_release_failure_chained_to(e, thrown);
    sqlite3_set_authorizer(c.native_handle(), nullptr, nullptr);
    EXPECT_NO_THROW(c.rollback_any()) << "the work is still open, not lost, and can be undone";
    EXPECT_EQ(c.query_value<std::int64_t>("SELECT count(*) FROM t"), 0);
}

TEST_F(Sqlite, APooledConnectionWhoseRollbackFailsIsDestroyedAndTheFailureChained) {
    ctxmgr::pool<sqlite::connection> pool([] { return sqlite::connect(":memory:"); },
                                          {.name = "chained", .max_size = 1});
    std::exception_ptr thrown;
    const auto e = exception_from([&] {
        ctxmgr::with(pool.connection(), [&](sqlite::connection& c) {
            c.execute("BEGIN");
            sqlite3_set_authorizer(c.native_handle(), refuse_transaction_control, nullptr);
            ctxmgr::testing::throw_recorded(thrown);
        });
    });
    expect_release_failure_chained_to(e, thrown);
    const auto stats = pool.stats();
    EXPECT_EQ(stats.in_use, 0u);
    EXPECT_EQ(stats.destroyed, 1u) << "a connection with work it cannot undo is not lent again";
    ctxmgr::with(pool.connection(), [](sqlite::connection& c) {
        EXPECT_EQ(c.transaction_state(), db::transaction_state::idle);
    });
}

}  // namespace
