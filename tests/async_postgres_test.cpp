// postgres::async_connect and the async connection on a real server: statements, typed errors,
// redaction, the connect deadline, cancellation of a statement in flight (drained or closed),
// the client's statement timeout, and transactions cancelled at each await point.
#include <ctxmgr/async_pool.hpp>
#include <ctxmgr/async_postgres.hpp>
#include <ctxmgr/async_with.hpp>
#include <ctxmgr/with.hpp>

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/io_context.hpp>
#include <asio/redirect_error.hpp>
#include <asio/steady_timer.hpp>
#include <asio/system_error.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <variant>
#include <vector>

#include "async_recording.hpp"
#include "eventually.hpp"
#include "postgres_fixtures.hpp"
#include "recording.hpp"
#include "refusing_port.hpp"

namespace {

using namespace std::chrono_literals;
using namespace asio::experimental::awaitable_operators;
using ctxmgr::testing::awaited_exception;
using ctxmgr::testing::exception_from;
using ctxmgr::testing::holds_system_error;
using ctxmgr::testing::pause;
using ctxmgr::testing::run_awaitable;
using ctxmgr::testing::test_error;
using ctxmgr::testing::what_of;
namespace db = ctxmgr::db;
namespace postgres = ctxmgr::postgres;
using postgres::async_connection;

template <class T>
using task = asio::awaitable<T>;

// Cancels answered under load: the server forks a process for each cancel request.
const postgres::options answered_cancel{.cancel_grace = 10s};

class AsyncPostgres : public ctxmgr::testing::shared_postgres_test {
  protected:
    // Runs body(connection) inside async_connect's manager on a fresh io_context.
    template <class Body>
    auto with_connection(Body user_body, postgres::options user_options = {}) {
        return run_awaitable([](std::string conninfo, postgres::options opts, Body body)
                                 -> task<ctxmgr::detail::awaitable_value_t<
                                     std::invoke_result_t<Body&, async_connection&>>> {
            co_return co_await ctxmgr::async_with(
                postgres::async_connect(co_await asio::this_coro::executor, conninfo, opts), body);
        }(server_.conninfo, std::move(user_options), std::move(user_body)));
    }
    postgres::connection sync_connect() { return postgres::connect(server_.conninfo); }
    const std::string table_ = "async_pg_" + std::to_string(::getpid());
};

// Races `operation` against a 100 ms timer while c's server process is stopped (SIGSTOP) until
// 200 ms, within a cancel_grace that lets the cancel be answered: which came first (1: the
// timer, so the operation was cancelled while it waited on the server), or nothing when the
// process could not be stopped here.
template <class T>
task<std::optional<std::size_t>> race_on_a_stopped_server(async_connection& c, task<T> operation) {
    auto executor = co_await asio::this_coro::executor;
    std::optional<ctxmgr::testing::stopped_backend> stopped(std::in_place, c.backend_pid());
    if (!stopped->stopped()) co_return std::nullopt;
    asio::steady_timer resume(executor, 200ms);
    resume.async_wait([&](asio::error_code) { stopped.reset(); });
    asio::steady_timer timer(executor, 100ms);
    const auto winner = co_await (std::move(operation) || timer.async_wait(asio::use_awaitable));
    co_return winner.index();
}

TEST_F(AsyncPostgres, StatementsTakeTypedParametersAndReturnRowsAndValues) {
    const auto names = with_connection([&](async_connection& c) -> task<std::vector<std::string>> {
        EXPECT_TRUE(c.is_open());
        EXPECT_GT(c.backend_pid(), 0);
        co_await c.async_execute_script("CREATE TEMP TABLE t (id bigint PRIMARY KEY, name text)");
        EXPECT_EQ(co_await c.async_execute("INSERT INTO t VALUES ($1, $2), ($3, $4)", 1, "one",
                                           std::int64_t{1} << 40, std::string("big")),
                  2);
        EXPECT_EQ(co_await c.async_query_value<std::int64_t>("SELECT count(*) FROM t"), 2);
        EXPECT_EQ(co_await c.async_query_value<std::string>("SELECT pg_typeof($1)::text", 5),
                  "integer");
        EXPECT_EQ(co_await c.async_query_value<std::optional<std::string>>(
                      "SELECT name FROM t WHERE id = $1", 99),
                  std::nullopt);
        const auto one = co_await c.async_query_one("SELECT id, name FROM t WHERE id = $1", 1);
        EXPECT_TRUE(one.has_value());
        if (one) {
            EXPECT_EQ(one->get<std::string>("name"), "one");
        }
        std::vector<std::string> out;
        for (auto row : co_await c.async_query("SELECT name FROM t ORDER BY id"))
            out.push_back(row.get<std::string>(0));
        co_return out;
    });
    EXPECT_EQ(names, (std::vector<std::string>{"one", "big"}));
}

TEST_F(AsyncPostgres, ErrorsAreTypedBySqlstateAsOnTheSynchronousConnection) {
    with_connection([&](async_connection& c) -> task<void> {
        co_await c.async_execute_script("CREATE TEMP TABLE t (id bigint PRIMARY KEY)");
        co_await c.async_execute("INSERT INTO t VALUES ($1)", 1);
        std::exception_ptr duplicate;
        try {
            co_await c.async_execute("INSERT INTO t VALUES ($1)", 1);
        } catch (...) {
            duplicate = std::current_exception();
        }
        EXPECT_TRUE(ctxmgr::holds<db::constraint_violation>(duplicate))
            << ctxmgr::describe(duplicate);
        EXPECT_NE(what_of(duplicate).find("DETAIL:  Key (id)=(1) already exists."),
                  std::string::npos);
        std::exception_ptr count;
        try {
            co_await c.async_execute("SELECT $1, $2", 1);
        } catch (...) {
            count = std::current_exception();
        }
        EXPECT_TRUE(ctxmgr::holds<db::error>(count));
        EXPECT_NE(what_of(count).find("2"), std::string::npos) << what_of(count);
        std::exception_ptr none;
        try {
            static_cast<void>(co_await c.async_query_value<std::int64_t>("SELECT 1 WHERE false"));
        } catch (...) {
            none = std::current_exception();
        }
        EXPECT_TRUE(ctxmgr::holds<db::conversion_error>(none)) << ctxmgr::describe(none);
        // Still usable.
        EXPECT_EQ(co_await c.async_query_value<std::int64_t>("SELECT 7"), 7);
    });
}

TEST_F(AsyncPostgres, StatementsArePreparedOnceAndKeptAsOnTheSynchronousConnection) {
    with_connection(
        [&](async_connection& c) -> task<void> {
            const std::string count = "SELECT count(*) FROM pg_prepared_statements";
            for (int i = 0; i < 5; ++i) {
                EXPECT_EQ(co_await c.async_query_value<std::int64_t>("SELECT $1 + 1", i), i + 1);
            }
            EXPECT_EQ(c.cached_statements(), 1u);
            EXPECT_EQ(co_await c.async_query_value<std::int64_t>(count),
                      2);  // and the counting one
            for (int i = 0; i < 6; ++i) co_await c.async_execute("SELECT " + std::to_string(i));
            EXPECT_EQ(c.cached_statements(), 3u);
            EXPECT_EQ(co_await c.async_query_value<std::int64_t>(count),
                      3);  // evicted: deallocated
            // The server forgets them all (a pooler's DISCARD ALL): prepared again, transparently.
            co_await c.async_execute_script("DISCARD ALL");
            EXPECT_EQ(co_await c.async_query_value<std::int64_t>(count), 1);
            EXPECT_EQ(co_await c.async_query_value<std::int64_t>("SELECT $1 + 1", 41), 42);
            // The same SQL with other parameter types is prepared for those types.
            EXPECT_EQ(co_await c.async_query_value<std::string>("SELECT $1::text", 5), "5");
            EXPECT_EQ(co_await c.async_query_value<std::string>("SELECT $1::text", "five"), "five");
            EXPECT_EQ(co_await c.async_query_value<std::string>("SELECT $1::text", 6), "6");
            // Forgotten inside a transaction: the error is the statement's, and the transaction
            // it aborted rolls back.
            co_await c.async_execute_script("DEALLOCATE ALL");
            const std::exception_ptr inside = co_await awaited_exception(
                ctxmgr::async_with(c.async_transaction(), [&](async_connection& tx) -> task<void> {
                    co_await tx.async_execute("SELECT $1::text", 7);
                }));
            EXPECT_TRUE(ctxmgr::holds<db::error>(inside));
            EXPECT_NE(what_of(inside).find("[26000]"), std::string::npos) << what_of(inside);
            EXPECT_EQ(c.transaction_state(), db::transaction_state::idle);
            EXPECT_EQ(co_await c.async_query_value<std::string>("SELECT $1::text", 7), "7");
        },
        {.statement_cache_size = 3});
}

TEST_F(AsyncPostgres, WithoutACacheEveryStatementIsSentUnprepared) {
    with_connection(
        [&](async_connection& c) -> task<void> {
            for (int i = 0; i < 3; ++i) {
                EXPECT_EQ(co_await c.async_query_value<std::int64_t>("SELECT $1 + 1", i), i + 1);
            }
            EXPECT_EQ(c.cached_statements(), 0u);
            EXPECT_EQ(co_await c.async_query_value<std::int64_t>(
                          "SELECT count(*) FROM pg_prepared_statements"),
                      0);
            const std::exception_ptr count =
                co_await awaited_exception(c.async_execute("SELECT $1, $2", 1));
            EXPECT_TRUE(ctxmgr::holds<db::error>(count)) << ctxmgr::describe(count);
        },
        {.statement_cache_size = 0});
}

TEST_F(AsyncPostgres, AnEvictionWaitsOutAFailedTransaction) {
    with_connection(
        [&](async_connection& c) -> task<void> {
            co_await c.async_execute("SELECT 1");
            const std::exception_ptr e = co_await awaited_exception(
                ctxmgr::async_with(c.async_transaction(), [&](async_connection& tx) -> task<void> {
                    EXPECT_THROW(co_await tx.async_execute("SELECT 1/0"), db::error);
                    // Preparing is refused in a failed transaction, and so is DEALLOCATE of the
                    // evicted statement: it waits.
                    EXPECT_THROW(co_await tx.async_execute("SELECT 2"), db::error);
                    throw test_error("give up");
                }));
            EXPECT_TRUE(ctxmgr::holds<test_error>(e)) << ctxmgr::describe(e);
            // Only the counting statement is left on the server.
            EXPECT_EQ(co_await c.async_query_value<std::int64_t>(
                          "SELECT count(*) FROM pg_prepared_statements"),
                      1);
        },
        {.statement_cache_size = 1});
}

TEST_F(AsyncPostgres, ACancellationWhilePreparingLeavesTheCacheAgreeingWithTheServer) {
    with_connection(
        [&](async_connection& c) -> task<void> {
            // The first use of the statement prepares it on the stopped server.
            const auto winner = co_await race_on_a_stopped_server(
                c, c.async_query_value<std::int64_t>("SELECT $1 * 2", 21));
            if (!winner) co_return;
            EXPECT_EQ(*winner, 1u);
            EXPECT_TRUE(c.is_open());
            EXPECT_EQ(c.transaction_state(), db::transaction_state::idle);
            EXPECT_EQ(co_await c.async_query_value<std::int64_t>("SELECT $1 * 2", 21), 42);
            // Whether the cancel stopped the prepare or came after it (a server reading the
            // next message ignores a cancel), the cache knows what the server holds: the
            // statement once.
            EXPECT_EQ(c.cached_statements(), 1u);
            EXPECT_EQ(co_await c.async_query_value<std::int64_t>(
                          "SELECT count(*) FROM pg_prepared_statements WHERE statement = $1",
                          "SELECT $1 * 2"),
                      1);
        },
        {.cancel_grace = 3000ms});
}

TEST_F(AsyncPostgres, ARefusedConnectionIsAConnectionErrorWithoutThePassword) {
    const ctxmgr::testing::refusing_port refusing;
    const std::string conninfo = "host=127.0.0.1 port=" + std::to_string(refusing.port()) +
                                 " user=postgres password=s3cret-value dbname=postgres";
    const auto e = exception_from([&] {
        run_awaitable([](std::string target) -> task<void> {
            co_await ctxmgr::async_with(
                postgres::async_connect(co_await asio::this_coro::executor, target),
                [](async_connection&) -> task<void> { co_return; });
        }(conninfo));
    });
    ASSERT_TRUE(ctxmgr::holds<db::connection_error>(e)) << ctxmgr::describe(e);
    EXPECT_EQ(what_of(e).find("s3cret-value"), std::string::npos) << what_of(e);
    EXPECT_NE(what_of(e).find("password=***"), std::string::npos) << what_of(e);
}

TEST_F(AsyncPostgres, AServerThatNeverAnswersTheConnectionFailsAtTheDeadline) {
    // Listens (the kernel completes the handshake) and never says a word.
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
    ASSERT_EQ(::listen(fd, 4), 0);
    socklen_t length = sizeof address;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
    const std::string conninfo =
        "host=127.0.0.1 port=" + std::to_string(ntohs(address.sin_port)) + " user=postgres";
    const auto start = std::chrono::steady_clock::now();
    const auto e = exception_from([&] {
        run_awaitable([](std::string target) -> task<void> {
            // Named: GCC 12 destroys a temporary of a co_await expression twice.
            const postgres::options opts{.connect_timeout = 200ms};
            co_await ctxmgr::async_with(
                postgres::async_connect(co_await asio::this_coro::executor, target, opts),
                [](async_connection&) -> task<void> { co_return; });
        }(conninfo));
    });
    const auto waited = std::chrono::steady_clock::now() - start;
    ::close(fd);
    ASSERT_TRUE(ctxmgr::holds<db::connection_error>(e)) << ctxmgr::describe(e);
    EXPECT_NE(what_of(e).find("no answer within 200 ms"), std::string::npos) << what_of(e);
    EXPECT_GE(waited, 195ms);
    EXPECT_LT(waited, 5s);
}

TEST_F(AsyncPostgres, ACancelledStatementIsCancelledOnTheServerAndTheConnectionStaysUsable) {
    with_connection(
        [&](async_connection& c) -> task<void> {
            asio::steady_timer timer(co_await asio::this_coro::executor, 100ms);
            const auto start = std::chrono::steady_clock::now();
            const auto winner = co_await (c.async_execute("SELECT pg_sleep(30)") ||
                                          timer.async_wait(asio::use_awaitable));
            EXPECT_EQ(winner.index(), 1u);
            EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
            EXPECT_TRUE(c.is_open());
            EXPECT_EQ(c.transaction_state(), db::transaction_state::idle);
            EXPECT_EQ(co_await c.async_query_value<std::int64_t>("SELECT 1"), 1);
            // The statement is not left running on the server (this session's process is idle;
            // other tests' sessions may be sleeping meanwhile).
            auto admin = sync_connect();
            EXPECT_EQ(admin.query_value<std::int64_t>(
                          "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND state = "
                          "'active'",
                          c.backend_pid()),
                      0);
        },
        answered_cancel);
}

TEST_F(AsyncPostgres, TheCancelledStatementThrowsOperationAborted) {
    with_connection(
        [&](async_connection& c) -> task<void> {
            asio::cancellation_signal signal;
            auto executor = co_await asio::this_coro::executor;
            std::exception_ptr thrown;
            bool done = false;
            asio::co_spawn(executor, c.async_execute("SELECT pg_sleep(30)"),
                           asio::bind_cancellation_slot(signal.slot(),
                                                        [&](std::exception_ptr e, std::int64_t) {
                                                            thrown = e;
                                                            done = true;
                                                        }));
            co_await pause(100ms);
            signal.emit(asio::cancellation_type::terminal);
            while (!done) co_await pause(10ms);
            EXPECT_TRUE(holds_system_error(thrown, asio::error::operation_aborted))
                << ctxmgr::describe(thrown);
            EXPECT_NE(what_of(thrown).find("cancelled on the server"), std::string::npos)
                << what_of(thrown);
            EXPECT_EQ(co_await c.async_query_value<std::int64_t>("SELECT 2"), 2);
        },
        answered_cancel);
}

TEST_F(AsyncPostgres, OneStatementAtATimePerConnection) {
    with_connection([&](async_connection& c) -> task<void> {
        auto executor = co_await asio::this_coro::executor;
        bool done = false;
        asio::co_spawn(executor, c.async_execute("SELECT pg_sleep(0.2)"),
                       [&](std::exception_ptr, std::int64_t) { done = true; });
        co_await pause();
        std::exception_ptr second;
        try {
            co_await c.async_execute("SELECT 1");
        } catch (...) {
            second = std::current_exception();
        }
        EXPECT_TRUE(ctxmgr::holds<ctxmgr::protocol_error>(second)) << ctxmgr::describe(second);
        while (!done) co_await pause(10ms);
        EXPECT_EQ(co_await c.async_query_value<std::int64_t>("SELECT 3"), 3);
    });
}

TEST_F(AsyncPostgres, ACancelThatTheServerNeverAnswersClosesTheConnection) {
    with_connection(
        [&](async_connection& c) -> task<void> {
            const ctxmgr::testing::stopped_backend stopped(c.backend_pid());
            if (!stopped.stopped()) co_return;
            asio::steady_timer timer(co_await asio::this_coro::executor, 100ms);
            const auto start = std::chrono::steady_clock::now();
            const auto winner =
                co_await (c.async_execute("SELECT 1") || timer.async_wait(asio::use_awaitable));
            EXPECT_EQ(winner.index(), 1u);
            const auto waited = std::chrono::steady_clock::now() - start;
            EXPECT_GE(waited, 290ms);  // 100 ms, then the grace
            EXPECT_LT(waited, 5s);
            EXPECT_TRUE(c.closed());
            std::exception_ptr after;
            try {
                co_await c.async_execute("SELECT 1");
            } catch (...) {
                after = std::current_exception();
            }
            EXPECT_TRUE(ctxmgr::holds<ctxmgr::closed_error>(after)) << ctxmgr::describe(after);
        },
        {.cancel_grace = 200ms});
}

TEST_F(AsyncPostgres, TheClientsStatementTimeoutEndsAStatementTheServerCannot) {
    with_connection(
        [&](async_connection& c) -> task<void> {
            const ctxmgr::testing::stopped_backend stopped(c.backend_pid());
            if (!stopped.stopped()) co_return;
            std::exception_ptr e;
            try {
                co_await c.async_execute("SELECT 1");
            } catch (...) {
                e = std::current_exception();
            }
            EXPECT_TRUE(ctxmgr::holds<ctxmgr::timeout_error>(e)) << ctxmgr::describe(e);
            EXPECT_NE(what_of(e).find("the session is closed"), std::string::npos) << what_of(e);
            EXPECT_TRUE(c.closed());
        },
        {.statement_timeout = 100ms, .cancel_grace = 100ms});
}

TEST_F(AsyncPostgres, TheServersStatementTimeoutIsAnErrorAndTheConnectionStaysUsable) {
    with_connection(
        [&](async_connection& c) -> task<void> {
            std::exception_ptr e;
            try {
                co_await c.async_execute("SELECT pg_sleep(5)");
            } catch (...) {
                e = std::current_exception();
            }
            EXPECT_NE(what_of(e).find("[57014]"), std::string::npos) << ctxmgr::describe(e);
            EXPECT_EQ(co_await c.async_query_value<std::int64_t>("SELECT 4"), 4);
        },
        {.statement_timeout = 100ms});
}

// ---- transactions --------------------------------------------------------------------------

TEST_F(AsyncPostgres, ATransactionCommitsRollsBackOnAnExceptionAndNestsAsSavepoints) {
    with_connection([&](async_connection& c) -> task<void> {
        co_await c.async_execute_script("CREATE TEMP TABLE t (id bigint)");
        co_await ctxmgr::async_with(c.async_transaction(), [&](async_connection& tx) -> task<void> {
            co_await tx.async_execute("INSERT INTO t VALUES ($1)", 1);
            std::exception_ptr inner;
            try {
                co_await ctxmgr::async_with(
                    tx.async_transaction(), [&](async_connection& sp) -> task<void> {
                        co_await sp.async_execute("INSERT INTO t VALUES ($1)", 2);
                        throw test_error("the savepoint's block failed");
                    });
            } catch (...) {
                inner = std::current_exception();
            }
            EXPECT_TRUE(ctxmgr::holds<test_error>(inner));
            EXPECT_EQ(tx.transaction_state(), db::transaction_state::active);
            co_await tx.async_execute("INSERT INTO t VALUES ($1)", 3);
        });
        EXPECT_EQ(c.transaction_state(), db::transaction_state::idle);
        std::exception_ptr failed;
        try {
            co_await ctxmgr::async_with(
                c.async_transaction(), [&](async_connection& tx) -> task<void> {
                    co_await tx.async_execute("INSERT INTO t VALUES ($1)", 4);
                    throw test_error("the block failed");
                });
        } catch (...) {
            failed = std::current_exception();
        }
        EXPECT_TRUE(ctxmgr::holds<test_error>(failed));
        EXPECT_EQ(c.transaction_state(), db::transaction_state::idle);
        std::vector<std::int64_t> ids;
        for (auto row : co_await c.async_query("SELECT id FROM t ORDER BY id"))
            ids.push_back(row.get<std::int64_t>(0));
        EXPECT_EQ(ids, (std::vector<std::int64_t>{1, 3}));
    });
}

TEST_F(AsyncPostgres, AnErrorCaughtInsideTheBlockRollsBackAndExitSays25P02) {
    with_connection([&](async_connection& c) -> task<void> {
        std::exception_ptr e;
        try {
            co_await ctxmgr::async_with(
                c.async_transaction(), [&](async_connection& tx) -> task<void> {
                    try {
                        co_await tx.async_execute("SELECT no_such_column FROM pg_class");
                    } catch (const db::error&) {
                    }
                });
        } catch (...) {
            e = std::current_exception();
        }
        EXPECT_NE(what_of(e).find("[25P02]"), std::string::npos) << ctxmgr::describe(e);
        EXPECT_EQ(c.transaction_state(), db::transaction_state::idle);
    });
}

TEST_F(AsyncPostgres, ACancellationDuringBeginLeavesNoTransactionAndAUsableConnection) {
    with_connection(
        [&](async_connection& c) -> task<void> {
            // BEGIN waits on the stopped server.
            bool body_ran = false;
            const auto winner = co_await race_on_a_stopped_server(
                c, ctxmgr::async_with(c.async_transaction(), [&](async_connection&) -> task<void> {
                    body_ran = true;
                    co_return;
                }));
            if (!winner) co_return;
            EXPECT_EQ(*winner, 1u);
            EXPECT_FALSE(body_ran);
            EXPECT_TRUE(c.is_open());
            EXPECT_EQ(c.transaction_state(), db::transaction_state::idle);
            EXPECT_EQ(co_await c.async_query_value<std::int64_t>("SELECT 5"), 5);
        },
        {.cancel_grace = 3000ms});
}

TEST_F(AsyncPostgres, ACancellationDuringAStatementRollsTheTransactionBack) {
    with_connection(
        [&](async_connection& c) -> task<void> {
            co_await c.async_execute_script("CREATE TEMP TABLE t (id bigint)");
            asio::steady_timer timer(co_await asio::this_coro::executor, 100ms);
            const auto winner = co_await (
                ctxmgr::async_with(c.async_transaction(),
                                   [&](async_connection& tx) -> task<void> {
                                       co_await tx.async_execute("INSERT INTO t VALUES ($1)", 1);
                                       co_await tx.async_execute("SELECT pg_sleep(30)");
                                       co_await tx.async_execute("INSERT INTO t VALUES ($1)", 2);
                                   }) ||
                timer.async_wait(asio::use_awaitable));
            EXPECT_EQ(winner.index(), 1u);
            EXPECT_EQ(c.transaction_state(), db::transaction_state::idle);
            EXPECT_EQ(co_await c.async_query_value<std::int64_t>("SELECT count(*) FROM t"), 0);
        },
        answered_cancel);
}

TEST_F(AsyncPostgres, ACancellationDuringCommitDoesNotInterruptIt) {
    auto admin = sync_connect();
    admin.execute_script("DROP TABLE IF EXISTS " + table_ + "; CREATE TABLE " + table_ +
                         " (id bigint)");
    // COMMIT takes 300 ms: a deferred constraint trigger sleeps.
    admin.execute_script("CREATE FUNCTION " + table_ +
                         "_slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM "
                         "pg_sleep(0.3); RETURN NULL; END $$; CREATE CONSTRAINT TRIGGER slow "
                         "AFTER INSERT ON " +
                         table_ + " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION " +
                         table_ + "_slow()");
    with_connection([&](async_connection& c) -> task<void> {
        asio::steady_timer timer(co_await asio::this_coro::executor, 100ms);
        const auto start = std::chrono::steady_clock::now();
        const auto winner =
            co_await (ctxmgr::async_with(c.async_transaction(),
                                         [&](async_connection& tx) -> task<void> {
                                             co_await tx.async_execute(
                                                 "INSERT INTO " + table_ + " VALUES ($1)", 1);
                                         }) ||
                      timer.async_wait(asio::use_awaitable));
        EXPECT_EQ(winner.index(), 1u);
        // The exit, shielded, ran its COMMIT to the end.
        EXPECT_GE(std::chrono::steady_clock::now() - start, 290ms);
        EXPECT_EQ(c.transaction_state(), db::transaction_state::idle);
    });
    EXPECT_EQ(admin.query_value<std::int64_t>("SELECT count(*) FROM " + table_), 1);
    admin.execute_script("DROP TABLE " + table_ + "; DROP FUNCTION " + table_ + "_slow()");
}

TEST_F(AsyncPostgres, ACommitWhoseSessionIsLostIsACommitOutcomeUnknown) {
    auto admin = sync_connect();
    const auto e = exception_from([&] {
        with_connection([&](async_connection& c) -> task<void> {
            co_await ctxmgr::async_with(
                c.async_transaction(), [&](async_connection& tx) -> task<void> {
                    co_await tx.async_execute("SELECT 1");
                    const int pid = tx.backend_pid();
                    EXPECT_TRUE(admin.query_value<bool>("SELECT pg_terminate_backend($1)", pid));
                    for (int i = 0;
                         i < 250 &&
                         admin.query_value<std::int64_t>(
                             "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid) != 0;
                         ++i) {
                        co_await pause(20ms);
                    }
                });
        });
    });
    ASSERT_TRUE(ctxmgr::holds<db::commit_outcome_unknown>(e)) << ctxmgr::describe(e);
    EXPECT_NE(what_of(e).find("the outcome of COMMIT"), std::string::npos) << what_of(e);
}

// libpq closes the socket of a broken link at once, and the next connection may get its number.
// Closing the broken connection afterwards must not remove the new one's registration with
// the executor (its statements would then never hear the answer).
TEST_F(AsyncPostgres, ClosingALostConnectionLeavesAConnectionThatReusedItsSocketNumberWorking) {
    auto admin = sync_connect();
    const auto outcome = run_awaitable([&]() -> task<std::pair<int, std::int64_t>> {
        const auto executor = co_await asio::this_coro::executor;
        auto lost = postgres::async_connect(executor, server_.conninfo);
        async_connection& first = (co_await lost.async_enter()).get();
        const int first_socket = PQsocket(first.native_handle());
        EXPECT_TRUE(
            admin.query_value<bool>("SELECT pg_terminate_backend($1)", first.backend_pid()));
        for (int i = 0; i < 250 && first.is_open(); ++i) {
            try {
                co_await first.async_execute("SELECT 1");
            } catch (const db::connection_error&) {
                break;  // libpq has dropped the link and closed its socket
            }
            co_await pause(20ms);
        }
        EXPECT_FALSE(first.is_open());
        auto next = postgres::async_connect(executor, server_.conninfo);
        async_connection& second = (co_await next.async_enter()).get();
        const int second_socket = PQsocket(second.native_handle());
        lost.exit(nullptr);  // closes the lost connection
        // An answer the executor is no longer told of would let the timer win.
        const auto raced =
            co_await (second.async_query_value<std::int64_t>("SELECT 1") || pause(2s));
        next.exit(nullptr);
        co_return std::pair{second_socket == first_socket ? 1 : 0,
                            raced.index() == 0 ? std::get<0>(raced) : -1};
    }());
    EXPECT_EQ(outcome.second, 1);  // -1: the answer was never heard
    // The case this test is for: the new connection took the lost one's number.
    EXPECT_EQ(outcome.first, 1) << "the socket number was not reused; the test proves less";
}

// Making a manager touches no server.
TEST(AsyncPostgresNeverEntered, AManagerNeverEnteredReportsItsLine) {
    ctxmgr::testing::unraisable_log log;
    unsigned line = 0;
    {
        asio::io_context io;
        const auto unused = postgres::async_connect(io.get_executor(), "host=/nonexistent");
        line = __LINE__ - 1;
    }
    const auto reports = log.reports();
    ASSERT_EQ(reports.size(), 1u);
    EXPECT_TRUE(ctxmgr::testing::reports_never_entered(reports[0], "postgres::async_connect",
                                                       "async_postgres_test.cpp", line))
        << reports[0];
}

// A server restarted under 200 coroutines committing transactions, each on a connection of
// its own, on one thread: every acknowledged commit is there once, a commit whose outcome is
// unknown is there at most once (and never retried), every other failure is retried on a new
// connection until it commits.
// A pool of async connections, borrowed by coroutines: nothing on the borrower's thread waits
// for the server.
class AsyncPostgresPool : public AsyncPostgres {
  protected:
    using async_pool = ctxmgr::pool<async_connection>;
    // A pool whose connections are made on the pool's thread for `io`.
    async_pool make_pool(asio::io_context& io, ctxmgr::pool_options options) {
        return async_pool(
            [ex = io.get_executor(), conninfo = server_.conninfo] {
                return async_connection::open(ex, conninfo);
            },
            std::move(options));
    }
};

// A pool of async connections lends only to coroutines.
template <class Pool>
concept lends_synchronously = requires(Pool& p) {
    p.connection();
};
static_assert(!lends_synchronously<ctxmgr::pool<async_connection>>);
static_assert(lends_synchronously<ctxmgr::pool<postgres::connection>>);

TEST_F(AsyncPostgresPool, ManyCoroutinesOnOneThreadShareAFewConnections) {
    asio::io_context io;
    // Four connections made before the coroutines start: the overlap below does not wait for
    // the pool's thread to make them.
    auto pool = make_pool(io, {.name = "async", .max_size = 4, .min_idle = 4});
    ASSERT_TRUE(ctxmgr::testing::eventually([&] { return pool.stats().idle == 4; }));
    sync_connect().execute_script("CREATE TABLE " + table_ + " (id int PRIMARY KEY)");
    constexpr int coroutines = 100;
    int borrowing = 0;
    int most_at_once = 0;
    int done = 0;
    for (int id = 0; id < coroutines; ++id) {
        asio::co_spawn(
            io,
            [&, id]() -> task<void> {
                co_await ctxmgr::async_with(
                    pool.async_connection(), [&](async_connection& db) -> task<void> {
                        most_at_once = std::max(most_at_once, ++borrowing);
                        // Lets the coroutines queued behind this one run while it holds its
                        // connection: however fast the server answers (a statement may
                        // complete without suspending), they borrow the others meanwhile.
                        co_await asio::post(io, asio::use_awaitable);
                        co_await ctxmgr::async_with(db.async_transaction(), [&]() -> task<void> {
                            co_await db.async_execute("INSERT INTO " + table_ + " VALUES ($1)", id);
                        });
                        --borrowing;
                    });
                ++done;
            },
            [](const std::exception_ptr& e) {
                if (e) std::rethrow_exception(e);
            });
    }
    io.run();
    EXPECT_EQ(done, coroutines);
    EXPECT_GT(most_at_once, 1);  // the borrowers overlapped on the one thread
    EXPECT_LE(most_at_once, 4);
    auto check = sync_connect();
    EXPECT_EQ(check.query_value<std::int64_t>("SELECT count(*) FROM " + table_), coroutines);
    check.execute_script("DROP TABLE " + table_);
    const auto s = pool.stats();
    EXPECT_EQ(s.in_use, 0U);
    EXPECT_LE(s.created, 4U);
}

TEST_F(AsyncPostgresPool, ATransactionLeftOpenIsRolledBackByTheAwaitedExitAndTheConnectionKept) {
    asio::io_context io;
    auto pool = make_pool(io, {.max_size = 1});
    sync_connect().execute_script("CREATE TABLE " + table_ + " (id int)");
    const auto pids = run_awaitable(io, [&]() -> task<std::pair<int, int>> {
        const int first = co_await ctxmgr::async_with(
            pool.async_connection(), [&](async_connection& db) -> task<int> {
                co_await db.async_execute_script("BEGIN");
                co_await db.async_execute("INSERT INTO " + table_ + " VALUES (1)");
                co_return db.backend_pid();  // leaves the transaction open
            });
        const int second = co_await ctxmgr::async_with(
            pool.async_connection(), [&](async_connection& db) -> task<int> {
                EXPECT_EQ(db.transaction_state(), db::transaction_state::idle);
                co_return db.backend_pid();
            });
        co_return std::pair{first, second};
    }());
    EXPECT_EQ(pids.first, pids.second);  // rolled back and lent again, not replaced
    auto check = sync_connect();
    EXPECT_EQ(check.query_value<std::int64_t>("SELECT count(*) FROM " + table_), 0);
    check.execute_script("DROP TABLE " + table_);
    EXPECT_EQ(pool.stats().destroyed, 0U);
}

// validate_after_idle 0: every borrow pings. A server process that stopped answering is caught
// by the borrower's awaited ping, within validation_timeout, while its thread goes on serving
// other coroutines; the borrower gets a new connection.
TEST_F(AsyncPostgresPool, ASessionThatStoppedAnsweringFailsTheAwaitedPingAndIsReplaced) {
    asio::io_context io;
    auto pool =
        make_pool(io, {.max_size = 2, .validate_after_idle = 0ms, .validation_timeout = 300ms});
    const int stuck = run_awaitable(io, [&]() -> task<int> {
        co_return co_await ctxmgr::async_with(
            pool.async_connection(),
            [&](async_connection& db) -> task<int> { co_return db.backend_pid(); });
    }());
    ctxmgr::testing::stopped_backend stopped(stuck);
    if (!stopped.stopped()) GTEST_SKIP() << "the server's processes cannot be signalled here";
    int ticks = 0;
    bool borrowed = false;
    const auto began = std::chrono::steady_clock::now();
    const int replacement = run_awaitable(io, [&]() -> task<int> {
        asio::co_spawn(
            co_await asio::this_coro::executor,
            [&]() -> task<void> {
                while (!borrowed) {
                    ++ticks;
                    co_await pause(10ms);
                }
            },
            asio::detached);
        const int pid = co_await ctxmgr::async_with(
            pool.async_connection(), [&](async_connection& db) -> task<int> {
                EXPECT_EQ(co_await db.async_query_value<std::int64_t>("SELECT 7"), 7);
                co_return db.backend_pid();
            });
        borrowed = true;
        co_return pid;
    }());
    const auto took = std::chrono::steady_clock::now() - began;
    EXPECT_NE(replacement, stuck);
    EXPECT_GE(took, 300ms);
    EXPECT_GE(ticks, 10);  // the thread was not blocked while the ping waited
    EXPECT_EQ(pool.stats().destroyed, 1U);
}

TEST_F(AsyncPostgresPool, ABorrowerCancelledWhileWaitingTakesNothingAndTheOthersGoOn) {
    asio::io_context io;
    auto pool = make_pool(io, {.max_size = 1});
    const auto outcome = run_awaitable(io, [&]() -> task<std::pair<bool, std::int64_t>> {
        const auto executor = co_await asio::this_coro::executor;
        asio::steady_timer release(executor, std::chrono::steady_clock::time_point::max());
        bool holder_done = false;
        asio::co_spawn(
            executor,
            [&]() -> task<void> {
                co_await ctxmgr::async_with(
                    pool.async_connection(), [&](async_connection&) -> task<void> {
                        asio::error_code ignored;
                        co_await release.async_wait(
                            asio::redirect_error(asio::use_awaitable, ignored));
                    });
                holder_done = true;
            },
            asio::detached);
        co_await pause(10ms);
        // Waits behind the holder and is cancelled by the timer.
        const auto raced =
            co_await (ctxmgr::async_with(pool.async_connection(),
                                         [](async_connection&) -> task<void> { co_return; }) ||
                      pause(50ms));
        const bool cancelled = raced.index() == 1;
        release.cancel();
        while (!holder_done) co_await pause(1ms);
        const auto value = co_await ctxmgr::async_with(
            pool.async_connection(), [](async_connection& db) -> task<std::int64_t> {
                co_return co_await db.async_query_value<std::int64_t>("SELECT 42");
            });
        co_return std::pair{cancelled, value};
    }());
    EXPECT_TRUE(outcome.first);
    EXPECT_EQ(outcome.second, 42);
    const auto s = pool.stats();
    EXPECT_EQ(s.in_use, 0U);
    EXPECT_EQ(s.waiting, 0U);
    EXPECT_EQ(s.created, 1U);
}

class AsyncPostgresDedicated : public ctxmgr::testing::dedicated_postgres_test {
  protected:
    // (coroutine, sequence) of each commit, by what its coroutine learned of it.
    struct ledger {
        std::vector<std::pair<int, int>> acknowledged;
        std::vector<std::pair<int, int>> unknown;
        int retried = 0;
    };

    // Checks `seen` against the table.
    void expect_exactly_once(const std::string& conninfo, const ledger& seen, int coroutines,
                             int per_coroutine) {
        auto c = postgres::connect(conninfo);
        EXPECT_EQ(c.query_value<std::int64_t>(
                      "SELECT count(*) FROM (SELECT 1 FROM ledger GROUP BY coroutine, seq "
                      "HAVING count(*) > 1) AS doubled"),
                  0);
        for (const auto& [coroutine, seq] : seen.acknowledged) {
            EXPECT_EQ(c.query_value<std::int64_t>(
                          "SELECT count(*) FROM ledger WHERE coroutine = $1 AND seq = $2",
                          coroutine, seq),
                      1)
                << coroutine << '/' << seq;
        }
        std::int64_t unknown_applied = 0;
        for (const auto& [coroutine, seq] : seen.unknown) {
            unknown_applied += c.query_value<std::int64_t>(
                "SELECT count(*) FROM ledger WHERE coroutine = $1 AND seq = $2", coroutine, seq);
        }
        EXPECT_EQ(seen.acknowledged.size() + seen.unknown.size(),
                  static_cast<std::size_t>(coroutines * per_coroutine));
        EXPECT_EQ(c.query_value<std::int64_t>("SELECT count(*) FROM ledger"),
                  static_cast<std::int64_t>(seen.acknowledged.size()) + unknown_applied);
    }

    // `coroutines` coroutines on `io` run by `threads` threads, each committing `per_coroutine`
    // rows of the table ledger through commit(id, seq); a connection_error is run again (for
    // 60 s at most), a commit_outcome_unknown never. The server restarts once a third of the
    // commits are in. Then every commit must be in the table exactly once.
    template <class Commit>
    ledger restart_under_load(asio::io_context& io, int coroutines, int per_coroutine, int threads,
                              Commit commit) {
        postgres::connect(server_.conninfo)
            .execute_script("CREATE TABLE ledger (coroutine int NOT NULL, seq int NOT NULL)");
        std::mutex seen_mutex;
        ledger seen;
        std::atomic<int> committed{0};
        const auto give_up_at = std::chrono::steady_clock::now() + 60s;
        for (int id = 0; id < coroutines; ++id) {
            asio::co_spawn(
                io,
                [&, id]() -> task<void> {
                    for (int seq = 0; seq < per_coroutine; ++seq) {
                        for (;;) {
                            try {
                                co_await commit(id, seq);
                                std::lock_guard lock(seen_mutex);
                                seen.acknowledged.emplace_back(id, seq);
                                ++committed;
                                break;
                            } catch (const db::commit_outcome_unknown&) {
                                std::lock_guard lock(seen_mutex);
                                seen.unknown.emplace_back(id, seq);  // never run again
                                break;
                            } catch (const db::connection_error&) {
                                if (std::chrono::steady_clock::now() > give_up_at) throw;
                                std::lock_guard lock(seen_mutex);
                                ++seen.retried;
                            }
                            co_await pause(20ms);
                        }
                    }
                },
                asio::detached);
        }
        // The restart, from another thread, once a third of the commits are in.
        std::thread restarter([&] {
            while (committed.load() < coroutines * per_coroutine / 3 &&
                   std::chrono::steady_clock::now() < give_up_at) {
                std::this_thread::sleep_for(1ms);
            }
            cluster_->restart();
        });
        std::vector<std::thread> more;
        for (int i = 1; i < threads; ++i) more.emplace_back([&] { io.run(); });
        io.run();
        for (auto& t : more) t.join();
        restarter.join();
        expect_exactly_once(server_.conninfo, seen, coroutines, per_coroutine);
        return seen;
    }
    template <class Commit>
    ledger restart_under_load(int coroutines, int per_coroutine, int threads, Commit commit) {
        asio::io_context io;
        return restart_under_load(io, coroutines, per_coroutine, threads, std::move(commit));
    }

    // Recovered from the restart: the sessions it ended were replaced, and every borrow now
    // succeeds.
    template <class Pool>
    void expect_recovered(asio::io_context& io, Pool& pool) {
        for (int i = 0; i < 20; ++i) {
            run_awaitable(io, [&]() -> task<void> {
                co_await ctxmgr::async_with(pool.async_connection(), [&](auto& c) -> task<void> {
                    EXPECT_EQ(co_await query_bigint(c, i), i);
                });
            }());
        }
        const auto s = pool.stats();
        EXPECT_EQ(s.in_use, 0U);
        EXPECT_EQ(s.waiting, 0U);
        EXPECT_GT(s.destroyed, 0U);
    }
    static task<std::int64_t> query_bigint(postgres::connection& c, std::int64_t v) {
        co_return c.query_value<std::int64_t>("SELECT $1::bigint", v);
    }
    static task<std::int64_t> query_bigint(async_connection& c, std::int64_t v) {
        co_return co_await c.async_query_value<std::int64_t>("SELECT $1::bigint", v);
    }
};

TEST_F(AsyncPostgresDedicated, ARestartUnder200CoroutineTransactionsLosesNoCommitAndDoublesNone) {
    start({.max_connections = 230});
    CTXMGR_REQUIRE_POSTGRES(server_);
    const postgres::options options{.connect_timeout = 5s};
    const ledger seen = restart_under_load(200, 6, 1, [&](int id, int seq) -> task<void> {
        co_await ctxmgr::async_with(
            postgres::async_connect(co_await asio::this_coro::executor, server_.conninfo, options),
            [&](async_connection& db) -> task<void> {
                co_await ctxmgr::async_with(db.async_transaction(), [&]() -> task<void> {
                    co_await db.async_execute("INSERT INTO ledger VALUES ($1, $2)", id, seq);
                });
            });
    });
    EXPECT_GT(seen.retried, 0);  // the restart cut transactions in flight
}

// The same through a pool of synchronous PostgreSQL connections borrowed by coroutines on two
// threads: after the restart the pool replaces what the server ended, and the borrowers go on.
TEST_F(AsyncPostgresDedicated, APoolBorrowedByCoroutinesRecoversFromARestart) {
    start({.max_connections = 30});
    CTXMGR_REQUIRE_POSTGRES(server_);
    const std::string conninfo = server_.conninfo;
    ctxmgr::pool pool([conninfo] { return postgres::connect(conninfo, {.connect_timeout = 5s}); },
                      {.name = "restart", .max_size = 8, .acquire_timeout = 30s});
    restart_under_load(200, 3, 2, [&](int id, int seq) -> task<void> {
        co_await ctxmgr::async_with(
            pool.async_connection(), [&](postgres::connection& db) -> task<void> {
                ctxmgr::with(db.transaction(), [&](postgres::connection& tx) {
                    tx.execute("INSERT INTO ledger VALUES ($1, $2)", id, seq);
                });
                co_return;
            });
    });
    asio::io_context io;
    expect_recovered(io, pool);
}

// The same through a pool of async connections on one thread.
TEST_F(AsyncPostgresDedicated, APoolOfAsyncConnectionsRecoversFromARestart) {
    start({.max_connections = 30});
    CTXMGR_REQUIRE_POSTGRES(server_);
    asio::io_context io;
    ctxmgr::pool pool(
        [ex = io.get_executor(), conninfo = server_.conninfo] {
            return async_connection::open(ex, conninfo, {.connect_timeout = 5s});
        },
        {.name = "restart", .max_size = 8, .acquire_timeout = 30s});
    restart_under_load(io, 200, 3, 1, [&](int id, int seq) -> task<void> {
        co_await ctxmgr::async_with(
            pool.async_connection(), [&](async_connection& db) -> task<void> {
                co_await ctxmgr::async_with(db.async_transaction(), [&]() -> task<void> {
                    co_await db.async_execute("INSERT INTO ledger VALUES ($1, $2)", id, seq);
                });
            });
    });
    expect_recovered(io, pool);
}

}  // namespace
