// The behaviour both back ends share, tested once and run on each: SQLite (a file in a
// temporary directory) and PostgreSQL (the shared test server; skipped with the reason when
// there is none, failed under CI=true).
#include <ctxmgr/db.hpp>
#include <ctxmgr/postgres.hpp>
#include <ctxmgr/sqlite.hpp>
#include <ctxmgr/tracking.hpp>
#include <ctxmgr/with.hpp>

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <source_location>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "postgres_cluster.hpp"
#include "recording.hpp"
#include "temp_directory.hpp"

namespace {

using ctxmgr::testing::exception_from;
using ctxmgr::testing::test_error;
namespace db = ctxmgr::db;

static_assert(db::connection<ctxmgr::sqlite::connection>);
static_assert(db::connection<ctxmgr::postgres::connection>);
static_assert(!std::is_copy_constructible_v<ctxmgr::sqlite::connection>);
static_assert(!std::is_copy_constructible_v<db::rows>);
static_assert(std::ranges::input_range<db::rows>);
static_assert(db::bindable<int> && db::bindable<std::optional<double>> &&
              db::bindable<const char*> && db::bindable<db::bytes> && db::bindable<bool>);
static_assert(!db::bindable<char> && !db::bindable<std::nullptr_t> &&
              !db::bindable<std::vector<int>> && !db::bindable<long double>);

struct sqlite_backend {
    using connection = ctxmgr::sqlite::connection;
    static constexpr std::string_view name = "sqlite";
    struct state {
        ctxmgr::testing::temp_directory directory;
    };
    static bool prepare(state&, std::string&) { return true; }
    static connection connect(const state& s, std::size_t cache = 128,
                              std::source_location where = std::source_location::current()) {
        return ctxmgr::sqlite::connect(s.directory.file("test.db"), {.statement_cache_size = cache},
                                       where);
    }
    static std::string expected_description(const state& s) {
        return '"' + s.directory.file("test.db") + '"';
    }
};

struct postgres_backend {
    using connection = ctxmgr::postgres::connection;
    static constexpr std::string_view name = "postgresql";
    struct state {
        ctxmgr::testing::postgres_server server;
    };
    static bool prepare(state& s, std::string& why) {
        s.server = ctxmgr::testing::shared_postgres();
        why = s.server.unavailable;
        return s.server.available();
    }
    static connection connect(const state& s, std::size_t cache = 128,
                              std::source_location where = std::source_location::current()) {
        return ctxmgr::postgres::connect(s.server.conninfo, {.statement_cache_size = cache}, where);
    }
    static std::string expected_description(const state& s) {
        return ctxmgr::postgres::redact_secrets(s.server.conninfo);
    }
};

template <class Backend>
class Db : public ::testing::Test {
  protected:
    using connection = typename Backend::connection;

    void SetUp() override {
        std::string why;
        if (!Backend::prepare(state_, why)) {
            const ctxmgr::testing::postgres_server server{"", why};
            CTXMGR_REQUIRE_POSTGRES(server);
        }
    }

    void TearDown() override {
        if (tables_.empty()) return;
        auto c = connect();
        for (auto it = tables_.rbegin(); it != tables_.rend(); ++it) {
            c.execute_script("DROP TABLE IF EXISTS " + *it);
        }
    }

    connection connect(std::size_t cache = 128,
                       std::source_location where = std::source_location::current()) {
        return Backend::connect(state_, cache, where);
    }

    // A table name no other test (or concurrent test process) uses; dropped at the end.
    std::string table(std::string_view stem) {
        static std::atomic<int> counter{0};
        std::string name =
            std::string(stem) + '_' + std::to_string(::getpid()) + '_' + std::to_string(++counter);
        tables_.push_back(name);
        return name;
    }

    // A table with a column of each kind; the types mean the same on both back ends.
    std::string make_table(connection& c) {
        const std::string t = table("t");
        c.execute("CREATE TABLE " + t +
                  " (id BIGINT PRIMARY KEY, name TEXT, score DOUBLE PRECISION, flag BOOLEAN, "
                  "data BYTEA)");
        return t;
    }

    std::vector<std::int64_t> ids(connection& c, const std::string& t) {
        std::vector<std::int64_t> out;
        for (auto row : c.query("SELECT id FROM " + t + " ORDER BY id")) {
            out.push_back(row.template get<std::int64_t>(0));
        }
        return out;
    }

    typename Backend::state state_;
    std::vector<std::string> tables_;
};

using backends = ::testing::Types<sqlite_backend, postgres_backend>;
struct backend_names {
    template <class T>
    static std::string GetName(int) {
        return std::string(T::name);
    }
};
TYPED_TEST_SUITE(Db, backends, backend_names);

TYPED_TEST(Db, ConnectionIsItsOwnManagerAndExitCloses) {
    auto c = this->connect();
    ASSERT_TRUE(c.is_open());
    EXPECT_TRUE(c.ping());
    EXPECT_EQ(c.backend(), TypeParam::name);
    ctxmgr::with(c, [&](auto& same) {
        EXPECT_EQ(&same, &c);
        EXPECT_EQ(same.template query_value<std::int64_t>("SELECT 1"), 1);
    });
    EXPECT_FALSE(c.is_open());
    EXPECT_FALSE(c.ping());
    EXPECT_EQ(c.transaction_state(), db::transaction_state::unknown);
    c.close();  // idempotent
    EXPECT_THROW(c.execute("SELECT 1"), ctxmgr::closed_error);
    EXPECT_THROW(static_cast<void>(c.enter()), ctxmgr::closed_error);
    const auto e = exception_from([&] { c.execute("SELECT 1"); });
    EXPECT_NE(std::string(ctxmgr::testing::what_of(e)).find(c.description()), std::string::npos);
}

TYPED_TEST(Db, ExitWithAPendingExceptionClosesAndLetsItThrough) {
    auto c = this->connect();
    std::exception_ptr thrown;
    const auto e = exception_from(
        [&] { ctxmgr::with(c, [&](auto&) { ctxmgr::testing::throw_recorded(thrown); }); });
    EXPECT_EQ(e, thrown);
    EXPECT_FALSE(c.is_open());
}

TYPED_TEST(Db, MovedFromConnectionIsClosed) {
    auto a = this->connect();
    auto b = std::move(a);
    EXPECT_FALSE(a.is_open());  // NOLINT(bugprone-use-after-move): that is the point
    EXPECT_THROW(a.execute("SELECT 1"), ctxmgr::closed_error);
    EXPECT_EQ(b.template query_value<std::int64_t>("SELECT 2"), 2);
    auto c = this->connect();
    c = std::move(b);  // closes c's own session first
    EXPECT_EQ(c.template query_value<std::int64_t>("SELECT 3"), 3);
}

TYPED_TEST(Db, RegistersWithTheLeakTrackerWithoutAPassword) {
    if (!ctxmgr::tracking_enabled) GTEST_SKIP() << "tracking is compiled out";
    const auto line = std::source_location::current().line() + 1;
    auto c = this->connect(128, std::source_location::current());
    const auto live = ctxmgr::live_resources();
    const auto found =
        std::find_if(live.begin(), live.end(), [&](const auto& r) { return r.kind == c.kind(); });
    ASSERT_NE(found, live.end());
    EXPECT_EQ(found->description, TypeParam::expected_description(this->state_));
    EXPECT_EQ(found->description, c.description());
    EXPECT_EQ(found->where.line(), line);
    EXPECT_EQ(found->description.find("password="), std::string::npos);
    c.close();
    const auto after = ctxmgr::live_resources();
    EXPECT_TRUE(std::none_of(after.begin(), after.end(),
                             [&](const auto& r) { return r.kind == c.kind(); }));
}

TYPED_TEST(Db, ExecuteCountsTheRowsItChanged) {
    auto c = this->connect();
    const auto t = this->make_table(c);
    EXPECT_EQ(c.execute("INSERT INTO " + t + " (id) VALUES ($1), ($2), ($3)", 1, 2, 3), 3);
    EXPECT_EQ(c.execute("UPDATE " + t + " SET name = $1 WHERE id >= $2", "x", 2), 2);
    EXPECT_EQ(c.execute("UPDATE " + t + " SET name = $1 WHERE id > $2", "x", 99), 0);
    EXPECT_EQ(c.execute("SELECT id FROM " + t), 3);  // rows returned
    EXPECT_EQ(c.execute("DELETE FROM " + t + " WHERE id = $1", 1), 1);
    const auto other = this->table("u");
    EXPECT_EQ(c.execute("CREATE TABLE " + other + " (x BIGINT)"), 0);  // not the last DELETE's 1
}

TYPED_TEST(Db, ACommitIsSeenByAnotherConnection) {
    auto writer = this->connect();
    auto reader = this->connect();
    const auto t = this->make_table(writer);
    ctxmgr::with(writer.transaction(), [&](auto& tx) {
        tx.execute("INSERT INTO " + t + " (id, name) VALUES ($1, $2)", 7, "seven");
        EXPECT_EQ(tx.transaction_state(), db::transaction_state::active);
    });
    EXPECT_EQ(writer.transaction_state(), db::transaction_state::idle);
    EXPECT_EQ(
        reader.template query_value<std::string>("SELECT name FROM " + t + " WHERE id = $1", 7),
        "seven");
}

TYPED_TEST(Db, AnExceptionLeavesNoRowAndPropagatesUnchanged) {
    auto c = this->connect();
    const auto t = this->make_table(c);
    std::exception_ptr thrown;
    const auto e = exception_from([&] {
        ctxmgr::with(c.transaction(), [&](auto& tx) {
            tx.execute("INSERT INTO " + t + " (id) VALUES ($1)", 1);
            ctxmgr::testing::throw_recorded(thrown);
        });
    });
    EXPECT_EQ(e, thrown);  // the very object, not a copy, and nothing nested
    EXPECT_EQ(c.transaction_state(), db::transaction_state::idle);
    EXPECT_TRUE(this->ids(c, t).empty());
    auto other = this->connect();
    EXPECT_EQ(other.template query_value<std::int64_t>("SELECT count(*) FROM " + t), 0);
}

TYPED_TEST(Db, AConnectionErrorFromElsewhereStillRollsBackALiveConnection) {
    auto c = this->connect();
    const auto t = this->make_table(c);
    EXPECT_THROW(ctxmgr::with(c.transaction(),
                              [&](auto& tx) {
                                  tx.execute("INSERT INTO " + t + " (id) VALUES (1)");
                                  // Another connection of the block lost its server.
                                  throw db::connection_error("postgresql", "08006", 0,
                                                             "another server went away", "");
                              }),
                 db::connection_error);
    EXPECT_EQ(c.transaction_state(), db::transaction_state::idle);
    EXPECT_TRUE(this->ids(c, t).empty());
}

TYPED_TEST(Db, AnInnerSavepointRolledBackKeepsTheOuterWork) {
    auto c = this->connect();
    const auto t = this->make_table(c);
    ctxmgr::with(c.transaction(), [&](auto& tx) {
        tx.execute("INSERT INTO " + t + " (id) VALUES ($1)", 1);
        auto inner = tx.transaction();
        EXPECT_THROW(ctxmgr::with(inner,
                                  [&](auto& sp) {
                                      sp.execute("INSERT INTO " + t + " (id) VALUES ($1)", 2);
                                      throw test_error("inner");
                                  }),
                     test_error);
        EXPECT_TRUE(inner.is_savepoint());
        EXPECT_EQ(tx.transaction_state(), db::transaction_state::active);
        ctxmgr::with(tx.transaction(),
                     [&](auto& sp) { sp.execute("INSERT INTO " + t + " (id) VALUES ($1)", 3); });
        tx.execute("INSERT INTO " + t + " (id) VALUES ($1)", 4);
    });
    EXPECT_EQ(this->ids(c, t), (std::vector<std::int64_t>{1, 3, 4}));
}

TYPED_TEST(Db, AnOuterRollbackUndoesReleasedSavepoints) {
    auto c = this->connect();
    const auto t = this->make_table(c);
    EXPECT_THROW(ctxmgr::with(c.transaction(),
                              [&](auto& tx) {
                                  ctxmgr::with(tx.transaction(), [&](auto& sp) {
                                      sp.execute("INSERT INTO " + t + " (id) VALUES (1)");
                                  });
                                  throw test_error("outer");
                              }),
                 test_error);
    EXPECT_TRUE(this->ids(c, t).empty());
}

TYPED_TEST(Db, AFailingCommitThrowsAndLeavesNoTransactionOpen) {
    auto c = this->connect();
    const auto parent = this->table("parent");
    const auto child = this->table("child");
    c.execute("CREATE TABLE " + parent + " (id BIGINT PRIMARY KEY)");
    c.execute("CREATE TABLE " + child + " (id BIGINT, parent_id BIGINT REFERENCES " + parent +
              " (id) DEFERRABLE INITIALLY DEFERRED)");
    const auto e = exception_from([&] {
        ctxmgr::with(c.transaction(), [&](auto& tx) {
            // Accepted now; the deferred foreign key is checked by COMMIT.
            tx.execute("INSERT INTO " + child + " (id, parent_id) VALUES ($1, $2)", 1, 99);
        });
    });
    ASSERT_TRUE(ctxmgr::holds<db::constraint_violation>(e)) << ctxmgr::describe(e);
    EXPECT_EQ(c.transaction_state(), db::transaction_state::idle);
    EXPECT_EQ(c.template query_value<std::int64_t>("SELECT count(*) FROM " + child), 0);
    c.execute("INSERT INTO " + child + " (id) VALUES (2)");  // the connection goes on
}

TYPED_TEST(Db, NullsBothWays) {
    auto c = this->connect();
    const auto t = this->make_table(c);
    c.execute("INSERT INTO " + t + " (id, name, score, flag, data) VALUES ($1, $2, $3, $4, $5)", 1,
              std::optional<std::string>(), std::optional<double>(), std::nullopt,
              std::optional<db::bytes>());
    const std::optional<db::row> row = c.query_one("SELECT name, score, flag, data, id FROM " + t);
    ASSERT_TRUE(row.has_value());
    for (std::size_t i = 0; i < 4; ++i) EXPECT_TRUE(row->is_null(i)) << i;
    EXPECT_FALSE(row->is_null("id"));
    EXPECT_EQ(row->get<std::optional<std::string>>(0), std::nullopt);
    EXPECT_EQ(row->get<std::optional<double>>("score"), std::nullopt);
    EXPECT_EQ(row->get<std::optional<bool>>(2), std::nullopt);
    EXPECT_EQ(row->get<std::optional<db::bytes>>(3), std::nullopt);
    EXPECT_EQ(row->get<std::optional<std::int64_t>>(4), 1);
    const auto e = exception_from([&] { static_cast<void>(row->get<std::string>(0)); });
    ASSERT_TRUE(ctxmgr::holds<db::conversion_error>(e));
    EXPECT_NE(ctxmgr::testing::what_of(e).find("column 0 \"name\" is NULL"), std::string::npos)
        << ctxmgr::testing::what_of(e);
    // And a present optional binds its value.
    c.execute("UPDATE " + t + " SET name = $1 WHERE id = $2", std::optional<std::string>("n"), 1);
    EXPECT_EQ(c.template query_value<std::optional<std::string>>("SELECT name FROM " + t), "n");
    // A null const char* is NULL, as in C.
    const char* nothing = nullptr;
    c.execute("UPDATE " + t + " SET name = $1 WHERE id = $2", nothing, 1);
    EXPECT_EQ(c.template query_value<std::optional<std::string>>("SELECT name FROM " + t),
              std::nullopt);
}

TYPED_TEST(Db, ValuesRoundTripWithoutLoss) {
    auto c = this->connect();
    const auto t = this->make_table(c);
    const db::bytes blob{std::byte{0}, std::byte{1}, std::byte{0xff}, std::byte{0}};
    const std::string text = "caf\xc3\xa9 \xe2\x9c\x93 'quoted' \"double\" \\ back";
    const auto insert =
        "INSERT INTO " + t + " (id, name, score, flag, data) VALUES ($1, $2, $3, $4, $5)";
    c.execute(insert, std::numeric_limits<std::int64_t>::min(), text, 0.1, true, blob);
    c.execute(insert, std::numeric_limits<std::int64_t>::max(), std::string_view(), -1e300, false,
              db::bytes{});
    auto rows = c.query("SELECT id, name, score, flag, data FROM " + t + " ORDER BY id");
    EXPECT_EQ(rows.columns(), 5u);
    EXPECT_EQ(rows.name(3), "flag");
    std::vector<std::int64_t> seen;
    for (auto row : rows) {
        seen.push_back(row.template get<std::int64_t>("id"));
        if (seen.size() == 1) {
            EXPECT_EQ(row.template get<std::string>(1), text);
            EXPECT_EQ(row.template get<std::string_view>(1), text);
            EXPECT_EQ(row.template get<double>(2), 0.1);
            EXPECT_TRUE(row.template get<bool>(3));
            EXPECT_EQ(row.template get<db::bytes>(4), blob);
        } else {
            EXPECT_EQ(row.template get<std::optional<std::string>>(1), "");  // empty, not NULL
            EXPECT_EQ(row.template get<double>(2), -1e300);
            EXPECT_FALSE(row.template get<bool>(3));
            EXPECT_EQ(row.template get<std::optional<db::bytes>>(4), db::bytes{});
        }
    }
    EXPECT_EQ(seen, (std::vector<std::int64_t>{std::numeric_limits<std::int64_t>::min(),
                                               std::numeric_limits<std::int64_t>::max()}));
}

TYPED_TEST(Db, TextParametersOfEveryShapeBindTheirCharactersOnly) {
    auto c = this->connect();
    const std::string_view longer = "abcdef";
    const char array[8] = "ab\0cd";  // a char array is a C string: up to its first NUL
    const std::string owned = "owned";
    EXPECT_EQ(c.template query_value<std::string>("SELECT $1", longer.substr(0, 3)), "abc");
    EXPECT_EQ(c.template query_value<std::string>("SELECT $1", array), "ab");
    EXPECT_EQ(c.template query_value<std::string>("SELECT $1", owned), "owned");
    EXPECT_EQ(c.template query_value<std::string>("SELECT $1 || $2", longer.substr(3), "!"),
              "def!");
}

TYPED_TEST(Db, BadSqlThrowsAnErrorNamingTheSql) {
    auto c = this->connect();
    const std::string sql = "SELEC id FROM nowhere WHERE id = $1";
    const auto e = exception_from([&] { c.execute(sql, 1); });
    ASSERT_TRUE(ctxmgr::holds<db::error>(e)) << ctxmgr::describe(e);
    try {
        std::rethrow_exception(e);
    } catch (const db::error& error) {
        EXPECT_EQ(error.sql(), sql);
        EXPECT_EQ(error.backend(), TypeParam::name);
        EXPECT_NE(std::string(error.what()).find(sql), std::string::npos);
        EXPECT_NE(std::string(error.what()).find("syntax error"), std::string::npos)
            << error.what();
        if (TypeParam::name == "postgresql") {
            EXPECT_EQ(error.sqlstate(), "42601");
        } else {
            EXPECT_EQ(error.code(), 1);  // SQLITE_ERROR
        }
    }
    EXPECT_EQ(c.template query_value<std::int64_t>("SELECT 5"), 5);
}

TYPED_TEST(Db, AParameterHoldingSqlStaysData) {
    auto c = this->connect();
    const auto t = this->make_table(c);
    const std::string hostile = "'; DROP TABLE " + t + "; --";
    c.execute("INSERT INTO " + t + " (id, name) VALUES ($1, $2)", 1, hostile);
    EXPECT_EQ(
        c.template query_value<std::string>("SELECT name FROM " + t + " WHERE name = $1", hostile),
        hostile);
    EXPECT_EQ(c.template query_value<std::int64_t>("SELECT count(*) FROM " + t), 1);
}

TYPED_TEST(Db, ParametersInAnyOrderAndRepeated) {
    auto c = this->connect();
    EXPECT_EQ(c.template query_value<std::int64_t>("SELECT $2 * 100 + $1 * 10 + $2", 1, 2), 212);
    EXPECT_EQ(c.template query_value<std::int64_t>("SELECT $3 - $1 + $3 - $2", 1, 2, 10), 17);
}

TYPED_TEST(Db, DollarNumbersInLiteralsIdentifiersAndCommentsAreNotParameters) {
    auto c = this->connect();
    const std::optional<db::row> row =
        c.query_one("SELECT '$1 and ''$2''' AS \"$3\", /* $4 */ $1 AS n -- $5\n", 7);
    ASSERT_TRUE(row.has_value());
    EXPECT_EQ(row->get<std::string>(0), "$1 and '$2'");
    EXPECT_EQ(row->name(0), "$3");
    EXPECT_EQ(row->get<std::int64_t>("n"), 7);
}

TYPED_TEST(Db, TheWrongNumberOfParametersIsAnErrorBeforeAnythingRuns) {
    auto c = this->connect();
    const auto t = this->make_table(c);
    for (int given : {1, 3}) {
        const auto e = exception_from([&] {
            if (given == 1) {
                c.execute("INSERT INTO " + t + " (id, name) VALUES ($1, $2)", 1);
            } else {
                c.execute("INSERT INTO " + t + " (id, name) VALUES ($1, $2)", 1, "a", "b");
            }
        });
        ASSERT_TRUE(ctxmgr::holds<db::error>(e));
        EXPECT_FALSE(ctxmgr::holds<db::connection_error>(e));
        // "1 parameter", "3 parameters": the noun agrees with the count.
        const std::string expected = given == 1 ? "bind: 1 parameter given, the statement takes 2"
                                                : "bind: 3 parameters given, the statement takes 2";
        EXPECT_NE(ctxmgr::testing::what_of(e).find(expected), std::string::npos)
            << ctxmgr::testing::what_of(e);
    }
    EXPECT_TRUE(c.ping());
    EXPECT_TRUE(this->ids(c, t).empty());
}

TYPED_TEST(Db, ConstraintViolationsAreTyped) {
    auto c = this->connect();
    const auto t = this->make_table(c);
    c.execute("INSERT INTO " + t + " (id) VALUES ($1)", 1);
    const auto e = exception_from([&] { c.execute("INSERT INTO " + t + " (id) VALUES ($1)", 1); });
    ASSERT_TRUE(ctxmgr::holds<db::constraint_violation>(e)) << ctxmgr::describe(e);
    try {
        std::rethrow_exception(e);
    } catch (const db::error& error) {
        if (TypeParam::name == "postgresql") {
            EXPECT_EQ(error.sqlstate(), "23505");
        } else {
            EXPECT_EQ(error.code(), 1555);  // SQLITE_CONSTRAINT_PRIMARYKEY
        }
    }
}

TYPED_TEST(Db, RowsAreReadByIndexAndByName) {
    auto c = this->connect();
    const auto t = this->make_table(c);
    for (int i = 1; i <= 3; ++i) {
        c.execute("INSERT INTO " + t + " (id, name) VALUES ($1, $2)", i, "n" + std::to_string(i));
    }
    std::vector<std::string> names;
    for (auto row : c.query("SELECT id, name FROM " + t + " WHERE id >= $1 ORDER BY id", 2)) {
        EXPECT_EQ(row.size(), 2u);
        EXPECT_EQ(row.index("name"), 1u);
        names.push_back(row.template get<std::string>("name"));
        EXPECT_THROW(static_cast<void>(row.template get<std::string>("nope")), std::out_of_range);
        EXPECT_THROW(static_cast<void>(row.template get<std::string>(2)), std::out_of_range);
    }
    EXPECT_EQ(names, (std::vector<std::string>{"n2", "n3"}));
    // An empty result iterates zero times.
    int count = 0;
    for (auto row : c.query("SELECT id FROM " + t + " WHERE id > 100")) count += row.size() > 0;
    EXPECT_EQ(count, 0);
}

TYPED_TEST(Db, QueryOneOwnsItsRowBeyondTheConnection) {
    std::optional<db::row> kept;
    {
        auto c = this->connect();
        kept = c.query_one("SELECT $1 AS a, $2 AS b", 41, "text");
        EXPECT_EQ(c.query_one("SELECT 1 WHERE 1 = 0"), std::nullopt);
    }
    ASSERT_TRUE(kept.has_value());
    EXPECT_EQ(kept->get<std::int64_t>("a"), 41);
    EXPECT_EQ(kept->get<std::string>("b"), "text");
}

TYPED_TEST(Db, QueryValueOfNoRowIsNullOrAnError) {
    auto c = this->connect();
    EXPECT_EQ(c.template query_value<std::optional<std::int64_t>>("SELECT 1 WHERE 1 = 0"),
              std::nullopt);
    const auto e = exception_from(
        [&] { static_cast<void>(c.template query_value<std::int64_t>("SELECT 1 WHERE 1 = 0")); });
    ASSERT_TRUE(ctxmgr::holds<db::conversion_error>(e));
    EXPECT_NE(ctxmgr::testing::what_of(e).find("no row"), std::string::npos);
}

TYPED_TEST(Db, ValuesOfAnotherKindAreConversionErrors) {
    auto c = this->connect();
    const auto t = this->make_table(c);
    c.execute("INSERT INTO " + t + " (id, name, score) VALUES ($1, $2, $3)", 300, "abc", 1.5);
    const std::optional<db::row> row = c.query_one("SELECT id, name, score FROM " + t);
    ASSERT_TRUE(row.has_value());
    const auto e = exception_from([&] { static_cast<void>(row->get<std::int64_t>("name")); });
    ASSERT_TRUE(ctxmgr::holds<db::conversion_error>(e));
    const std::string what = ctxmgr::testing::what_of(e);
    EXPECT_NE(what.find("column 1 \"name\""), std::string::npos) << what;
    EXPECT_NE(what.find("SELECT id, name, score FROM"), std::string::npos) << what;
    EXPECT_THROW(static_cast<void>(row->get<std::int8_t>("id")), db::conversion_error);
    EXPECT_EQ(row->get<std::int16_t>("id"), 300);
    EXPECT_THROW(static_cast<void>(row->get<std::int64_t>("score")), db::conversion_error);
    EXPECT_THROW(static_cast<void>(row->get<bool>("id")), db::conversion_error);
    EXPECT_EQ(row->get<double>("id"), 300.0);                       // an integer is an exact double
    EXPECT_EQ(row->get<std::string>("score").substr(0, 3), "1.5");  // numbers read as text
}

TYPED_TEST(Db, AParameterThatDoesNotFitIsRefusedAndNothingIsWritten) {
    auto c = this->connect();
    const auto t = this->make_table(c);
    const std::uint64_t huge = std::numeric_limits<std::uint64_t>::max();
    const auto e =
        exception_from([&] { c.execute("INSERT INTO " + t + " (id) VALUES ($1)", huge); });
    ASSERT_TRUE(ctxmgr::holds<db::conversion_error>(e));
    EXPECT_NE(ctxmgr::testing::what_of(e).find("parameter $1: 18446744073709551615"),
              std::string::npos)
        << ctxmgr::testing::what_of(e);
    EXPECT_TRUE(this->ids(c, t).empty());
    c.execute("INSERT INTO " + t + " (id) VALUES ($1)", std::uint64_t{5});
    EXPECT_EQ(this->ids(c, t), std::vector<std::int64_t>{5});
}

TYPED_TEST(Db, ARunTimeListOfParameters) {
    auto c = this->connect();
    std::vector<db::param> params{1, "two", 3.5, std::nullopt};
    const std::optional<db::row> row =
        c.query_one("SELECT $1 AS a, $2 AS b, $3 AS c, $4 AS d", params);
    ASSERT_TRUE(row.has_value());
    EXPECT_EQ(row->get<std::int64_t>("a"), 1);
    EXPECT_EQ(row->get<std::string>("b"), "two");
    EXPECT_EQ(row->get<double>("c"), 3.5);
    EXPECT_TRUE(row->is_null("d"));
    EXPECT_EQ(c.execute("SELECT $1", std::span<const db::param>(params.data(), 1)), 1);
}

// A parameter holds one value: its accessors answer for its kind, view() empty for the kinds
// that are not text or bytes.
TEST(Param, EachKindKeepsItsValueAndViewIsEmptyForTheOthers) {
    const db::param integer(42);
    EXPECT_EQ(integer.type(), db::param::kind::integer);
    EXPECT_EQ(integer.integer(), 42);
    EXPECT_TRUE(integer.view().empty());
    const db::param real(2.5);
    EXPECT_EQ(real.real(), 2.5);
    EXPECT_TRUE(real.view().empty());
    const std::string abc = "abc";  // a parameter refers to its value
    const db::param text(abc);
    EXPECT_EQ(text.type(), db::param::kind::text);
    EXPECT_EQ(text.view(), "abc");
    EXPECT_TRUE(text.nul_terminated());
    const db::bytes data{std::byte{1}, std::byte{2}};
    const db::param blob(data);
    EXPECT_EQ(blob.type(), db::param::kind::blob);
    EXPECT_EQ(blob.view().size(), 2U);
    const db::param none(std::optional<std::int64_t>{});
    EXPECT_EQ(none.type(), db::param::kind::null);
    EXPECT_EQ(none.declared_type(), db::param::kind::integer);
    EXPECT_TRUE(none.view().empty());
    db::param copied = text;
    copied = integer;  // a copy takes the other's kind and value
    EXPECT_EQ(copied.integer(), 42);
    EXPECT_TRUE(copied.view().empty());
}

TYPED_TEST(Db, TransactionStateComesFromTheBackEnd) {
    auto c = this->connect();
    EXPECT_EQ(c.transaction_state(), db::transaction_state::idle);
    EXPECT_FALSE(c.rollback_any());
    c.execute_script("BEGIN");  // not through ctxmgr's bookkeeping
    EXPECT_EQ(c.transaction_state(), db::transaction_state::active);
    EXPECT_TRUE(c.rollback_any());
    EXPECT_EQ(c.transaction_state(), db::transaction_state::idle);
    // A transaction() inside a transaction opened by hand becomes a savepoint.
    const auto t = this->make_table(c);
    c.execute_script("BEGIN");
    auto tx = c.transaction();
    ctxmgr::with(tx, [&](auto& conn) { conn.execute("INSERT INTO " + t + " (id) VALUES (1)"); });
    EXPECT_TRUE(tx.is_savepoint());
    EXPECT_EQ(c.transaction_state(), db::transaction_state::active);
    c.execute_script("ROLLBACK");
    EXPECT_TRUE(this->ids(c, t).empty());
}

TYPED_TEST(Db, RollbackAnyEndsSavepointsToo) {
    auto c = this->connect();
    const auto t = this->make_table(c);
    auto outer = c.transaction();
    auto inner = c.transaction();
    outer.enter();
    inner.enter();
    c.execute("INSERT INTO " + t + " (id) VALUES (1)");
    EXPECT_TRUE(c.rollback_any());
    EXPECT_EQ(c.transaction_state(), db::transaction_state::idle);
    EXPECT_TRUE(this->ids(c, t).empty());
    // Their exits find nothing open and say so; a new transaction is unaffected by them.
    ctxmgr::with(c.transaction(), [&](auto& tx) {
        tx.execute("INSERT INTO " + t + " (id) VALUES (2)");
        const auto e = exception_from([&] { inner.exit(nullptr); });
        EXPECT_TRUE(ctxmgr::holds<db::error>(e));
        EXPECT_NE(ctxmgr::testing::what_of(e).find("rollback_any"), std::string::npos);
        EXPECT_THROW(outer.exit(nullptr), db::error);
        EXPECT_EQ(tx.transaction_state(), db::transaction_state::active);
    });
    EXPECT_EQ(this->ids(c, t), std::vector<std::int64_t>{2});
}

TYPED_TEST(Db, TransactionMisuseIsAProtocolError) {
    auto c = this->connect();
    auto outer = c.transaction();
    auto inner = c.transaction();
    EXPECT_THROW(outer.exit(nullptr), ctxmgr::protocol_error);  // never entered
    outer.enter();
    EXPECT_THROW(outer.enter(), ctxmgr::protocol_error);
    inner.enter();
    EXPECT_THROW(outer.exit(nullptr), ctxmgr::protocol_error);  // inner still entered
    inner.exit(nullptr);
    outer.exit(nullptr);
    EXPECT_EQ(c.transaction_state(), db::transaction_state::idle);
    EXPECT_THROW(outer.exit(nullptr), ctxmgr::protocol_error);  // twice
}

TYPED_TEST(Db, ATransactionNeverEnteredReportsItsLineAndBeginsNothing) {
    auto c = this->connect();
    ctxmgr::testing::unraisable_log log;
    unsigned line = 0;
    {
        auto tx = c.transaction();  // the RAII habit: this begins nothing
        line = __LINE__ - 1;
        EXPECT_EQ(c.transaction_state(), db::transaction_state::idle);
    }
    auto reports = log.reports();
    ASSERT_EQ(reports.size(), 1u);
    EXPECT_TRUE(
        ctxmgr::testing::reports_never_entered(reports[0], "db::transaction", "db_test.cpp", line))
        << reports[0];
    // Entered (by with, by hand, or through the one it was moved to): no report.
    ctxmgr::with(c.transaction(), [](auto&) {});
    {
        auto tx = c.transaction();
        auto moved = std::move(tx);
        moved.enter();
        moved.exit(nullptr);
    }
    EXPECT_EQ(log.reports().size(), 1u) << log.reports().back();
}

TYPED_TEST(Db, ATransactionEndedInsideTheBlockIsReportedAtExit) {
    auto c = this->connect();
    const auto t = this->make_table(c);
    const auto e = exception_from([&] {
        ctxmgr::with(c.transaction(), [&](auto& tx) {
            tx.execute("INSERT INTO " + t + " (id) VALUES (1)");
            tx.execute_script("ROLLBACK");
        });
    });
    ASSERT_TRUE(ctxmgr::holds<db::error>(e));
    EXPECT_NE(ctxmgr::testing::what_of(e).find("already ended"), std::string::npos);
    EXPECT_EQ(c.transaction_state(), db::transaction_state::idle);
}

TYPED_TEST(Db, ATransactionNeverExitedIsRolledBackByItsDestructor) {
    auto c = this->connect();
    const auto t = this->make_table(c);
    {
        auto tx = c.transaction();
        tx.enter();
        c.execute("INSERT INTO " + t + " (id) VALUES (1)");
    }
    EXPECT_EQ(c.transaction_state(), db::transaction_state::idle);
    EXPECT_TRUE(this->ids(c, t).empty());
}

TYPED_TEST(Db, StatementsArePreparedOnceAndTheCacheIsBounded) {
    auto c = this->connect(4);
    const auto t = this->make_table(c);
    const std::size_t before = c.cached_statements();
    for (int i = 0; i < 5; ++i) c.execute("INSERT INTO " + t + " (id) VALUES ($1)", i);
    EXPECT_EQ(c.cached_statements(), std::min<std::size_t>(before + 1, 4));
    for (int i = 0; i < 10; ++i) {
        EXPECT_EQ(c.template query_value<std::int64_t>("SELECT $1 + " + std::to_string(i), 1),
                  i + 1);
    }
    EXPECT_EQ(c.cached_statements(), 4u);
    // Evicted statements are prepared again when they come back.
    c.execute("INSERT INTO " + t + " (id) VALUES ($1)", 100);
    EXPECT_EQ(this->ids(c, t).size(), 6u);
    // Without a cache, every call prepares afresh and nothing is kept.
    auto uncached = this->connect(0);
    EXPECT_EQ(uncached.template query_value<std::int64_t>("SELECT $1", 3), 3);
    EXPECT_EQ(uncached.template query_value<std::int64_t>("SELECT $1", 4), 4);
    EXPECT_EQ(uncached.cached_statements(), 0u);
}

TYPED_TEST(Db, TheSameStatementCanRunWhileItsRowsAreRead) {
    auto c = this->connect();
    const auto t = this->make_table(c);
    for (int i = 1; i <= 3; ++i) c.execute("INSERT INTO " + t + " (id) VALUES ($1)", i);
    const std::string sql = "SELECT id FROM " + t + " WHERE id >= $1 ORDER BY id";
    std::int64_t sum = 0;
    for (auto outer : c.query(sql, 1)) {
        for (auto inner : c.query(sql, outer.template get<std::int64_t>(0))) {
            sum += inner.template get<std::int64_t>(0);
        }
    }
    EXPECT_EQ(sum, (1 + 2 + 3) + (2 + 3) + 3);
}

TYPED_TEST(Db, RowsOutliveTheirParameters) {
    auto c = this->connect();
    auto rows = c.query("SELECT $1 AS v", std::string(100, 'x'));  // the string dies here
    std::string got;
    for (auto row : rows) got = row.template get<std::string>(0);
    EXPECT_EQ(got, std::string(100, 'x'));
}

}  // namespace
