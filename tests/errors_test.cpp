#include <ctxmgr/errors.hpp>

#include <gtest/gtest.h>

#include <cerrno>
#include <chrono>
#include <exception>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace {

TEST(Errors, HierarchyFollowsTheArchitecture) {
    static_assert(std::is_base_of_v<std::logic_error, ctxmgr::protocol_error>);
    static_assert(std::is_base_of_v<ctxmgr::protocol_error, ctxmgr::closed_error>);
    static_assert(std::is_base_of_v<std::system_error, ctxmgr::io_error>);
    static_assert(std::is_base_of_v<std::system_error, ctxmgr::network_error>);
    static_assert(std::is_base_of_v<std::runtime_error, ctxmgr::timeout_error>);
    static_assert(std::is_base_of_v<std::runtime_error, ctxmgr::leak_error>);
    static_assert(std::is_base_of_v<std::runtime_error, ctxmgr::db::error>);
    static_assert(std::is_base_of_v<ctxmgr::db::error, ctxmgr::db::constraint_violation>);
    static_assert(std::is_base_of_v<ctxmgr::db::error, ctxmgr::db::serialization_failure>);
    static_assert(std::is_base_of_v<ctxmgr::db::error, ctxmgr::db::connection_error>);
    static_assert(
        std::is_base_of_v<ctxmgr::db::connection_error, ctxmgr::db::commit_outcome_unknown>);
}

TEST(Errors, IoErrorNamesTheOperationAndThePathAndKeepsErrno) {
    const ctxmgr::io_error e("write", "/tmp/x", ENOSPC);
    EXPECT_STREQ(e.what(), "write \"/tmp/x\": No space left on device");
    EXPECT_EQ(e.code().value(), ENOSPC);
    EXPECT_EQ(e.code(), std::errc::no_space_on_device);
    EXPECT_EQ(e.path(), "/tmp/x");
}

TEST(Errors, NetworkErrorNamesThePeer) {
    const ctxmgr::network_error e("connect", "127.0.0.1:5", ECONNREFUSED);
    EXPECT_STREQ(e.what(), "connect 127.0.0.1:5: Connection refused");
    EXPECT_EQ(e.code(), std::errc::connection_refused);
    EXPECT_EQ(e.peer(), "127.0.0.1:5");
}

TEST(Errors, TimeoutErrorSaysWhatAndHowLong) {
    using namespace std::chrono_literals;
    const ctxmgr::timeout_error e("lock \"jobs\"", 1500ms);
    EXPECT_STREQ(e.what(), "timed out after 1.5 s waiting for lock \"jobs\"");
    EXPECT_EQ(e.waited(), 1500ms);
}

TEST(Errors, FormatDurationPicksTheUnit) {
    using namespace std::chrono_literals;
    EXPECT_EQ(ctxmgr::format_duration(1200ms), "1.2 s");
    EXPECT_EQ(ctxmgr::format_duration(20ms), "20 ms");
    EXPECT_EQ(ctxmgr::format_duration(300us), "300 us");
    EXPECT_EQ(ctxmgr::format_duration(12ns), "12 ns");
    EXPECT_EQ(ctxmgr::format_duration(90s), "90 s");
}

TEST(Errors, DbErrorCarriesEverythingAndShortensTheSql) {
    const std::string sql = "INSERT INTO t VALUES (" + std::string(300, '1') + ")";
    const ctxmgr::db::constraint_violation e("postgresql", "23505", 0, "duplicate key", sql);
    EXPECT_EQ(e.backend(), "postgresql");
    EXPECT_EQ(e.sqlstate(), "23505");
    EXPECT_EQ(e.code(), 0);
    EXPECT_EQ(e.message(), "duplicate key");
    EXPECT_EQ(e.sql().size(), ctxmgr::db::error::max_sql_length);
    EXPECT_EQ(e.sql().substr(e.sql().size() - 3), "...");
    const std::string what = e.what();
    EXPECT_NE(what.find("postgresql [23505]: duplicate key (in: INSERT INTO t"), std::string::npos)
        << what;
    const ctxmgr::db::error s("sqlite", "", 2067, "UNIQUE constraint failed: t.id", "INSERT");
    EXPECT_STREQ(s.what(), "sqlite [code 2067]: UNIQUE constraint failed: t.id (in: INSERT)");
    EXPECT_EQ(s.code_name(), "");
}

TEST(Errors, ADatabaseErrorNamesItsCodeWhenItHasAName) {
    const ctxmgr::db::constraint_violation e("sqlite", "", 1555, "UNIQUE constraint failed: t.id",
                                             "INSERT", "SQLITE_CONSTRAINT_PRIMARYKEY");
    EXPECT_EQ(e.code(), 1555);
    EXPECT_EQ(e.code_name(), "SQLITE_CONSTRAINT_PRIMARYKEY");
    EXPECT_STREQ(
        e.what(),
        "sqlite [SQLITE_CONSTRAINT_PRIMARYKEY]: UNIQUE constraint failed: t.id (in: INSERT)");
}

TEST(Errors, AnIoErrorWithAReasonPutsItBeforeTheErrnoText) {
    const ctxmgr::io_error e("read", "/tmp/x", EBADF, "not readable");
    EXPECT_EQ(e.code(), std::error_code(EBADF, std::generic_category()));
    EXPECT_EQ(e.path(), "/tmp/x");
    EXPECT_EQ(std::string(e.what()),
              "read \"/tmp/x\": not readable: " + std::generic_category().message(EBADF));
}

TEST(Errors, DescribeRendersTheTypeAndTheNestedChain) {
    std::exception_ptr e;
    try {
        try {
            throw ctxmgr::io_error("fsync", "/data/f", EIO);
        } catch (...) {
            std::throw_with_nested(ctxmgr::protocol_error("close failed"));
        }
    } catch (...) {
        e = std::current_exception();
    }
    const std::string text = ctxmgr::describe(e);
    EXPECT_NE(text.find("protocol_error: close failed"), std::string::npos) << text;
    EXPECT_NE(text.find("\n  nested: ctxmgr::io_error: fsync \"/data/f\": Input/output error"),
              std::string::npos)
        << text;
    EXPECT_EQ(ctxmgr::describe(std::exception_ptr()), "no exception");
    EXPECT_EQ(ctxmgr::describe(std::make_exception_ptr(7)),
              "unknown exception (not derived from std::exception)");
}

TEST(Errors, ThrowChainedNestsThePendingException) {
    const auto pending = std::make_exception_ptr(std::runtime_error("body failed"));
    try {
        ctxmgr::throw_chained(ctxmgr::io_error("close", "/x", EIO), pending);
        FAIL();
    } catch (const ctxmgr::io_error& e) {
        const auto* nested = dynamic_cast<const std::nested_exception*>(&e);
        ASSERT_NE(nested, nullptr);
        EXPECT_EQ(nested->nested_ptr(), pending);
    }
    try {
        ctxmgr::throw_chained(ctxmgr::io_error("close", "/x", EIO), nullptr);
        FAIL();
    } catch (const ctxmgr::io_error& e) {
        EXPECT_EQ(dynamic_cast<const std::nested_exception*>(&e), nullptr);
    }
}

// Rethrows `failure` with `pending` nested, as a release does from a handler that catches
// every library error by its base class.
template <class Base>
void release_failing_with(const std::exception_ptr& failure, const std::exception_ptr& pending) {
    try {
        std::rethrow_exception(failure);
    } catch (const Base&) {
        ctxmgr::rethrow_chained(std::current_exception(), pending);
    }
}

template <class Failure>
void expect_chained_keeps_type(Failure failure) {
    const auto pending = std::make_exception_ptr(std::runtime_error("body failed"));
    try {
        release_failing_with<std::exception>(std::make_exception_ptr(failure), pending);
        FAIL() << "rethrow_chained must throw";
    } catch (const Failure& e) {
        EXPECT_STREQ(e.what(), failure.what());
        const auto* nested = dynamic_cast<const std::nested_exception*>(&e);
        ASSERT_NE(nested, nullptr);
        EXPECT_EQ(nested->nested_ptr(), pending);
        const std::string text = ctxmgr::describe(std::current_exception());
        EXPECT_EQ(text.find("const "), std::string::npos) << text;
        EXPECT_NE(text.find("nested: std::runtime_error: body failed"), std::string::npos) << text;
    } catch (...) {
        FAIL() << "caught as another type: " << ctxmgr::describe(std::current_exception());
    }
}

TEST(Errors, RethrowChainedKeepsTheDynamicTypeOfEveryLibraryError) {
    expect_chained_keeps_type(ctxmgr::protocol_error("enter twice"));
    expect_chained_keeps_type(ctxmgr::closed_error("read closed file"));
    expect_chained_keeps_type(ctxmgr::io_error("close", "/x", EIO));
    expect_chained_keeps_type(ctxmgr::network_error("send", "127.0.0.1:1", EPIPE));
    expect_chained_keeps_type(ctxmgr::timeout_error("a lock", std::chrono::seconds(1)));
    expect_chained_keeps_type(ctxmgr::too_many_waiters("pool \"p\": 4 waiting"));
    expect_chained_keeps_type(ctxmgr::leak_error("1 live"));
    expect_chained_keeps_type(ctxmgr::db::error("sqlite", "", 1, "m", "COMMIT"));
    expect_chained_keeps_type(ctxmgr::db::constraint_violation("sqlite", "", 19, "m", "INSERT"));
    expect_chained_keeps_type(
        ctxmgr::db::serialization_failure("postgresql", "40001", 0, "m", "COMMIT"));
    expect_chained_keeps_type(
        ctxmgr::db::connection_error("postgresql", "08006", 0, "m", "COMMIT"));
    expect_chained_keeps_type(
        ctxmgr::db::commit_outcome_unknown("postgresql", "57P01", 0, "m", "COMMIT"));
    expect_chained_keeps_type(ctxmgr::db::conversion_error("sqlite", "", 0, "m", "SELECT"));
}

TEST(Errors, RethrowChainedCatchableAsTheDerivedTypeAfterACatchByBase) {
    const auto pending = std::make_exception_ptr(std::runtime_error("body failed"));
    try {
        release_failing_with<ctxmgr::db::error>(
            std::make_exception_ptr(
                ctxmgr::db::serialization_failure("postgresql", "40001", 0, "could not", "COMMIT")),
            pending);
        FAIL();
    } catch (const ctxmgr::db::serialization_failure& e) {
        EXPECT_EQ(e.sqlstate(), "40001");
        EXPECT_EQ(dynamic_cast<const std::nested_exception&>(e).nested_ptr(), pending);
    }
}

TEST(Errors, RethrowChainedPassesOtherTypesOnAsTheyAre) {
    struct own_error : std::runtime_error {
        using std::runtime_error::runtime_error;
    };
    const auto pending = std::make_exception_ptr(std::runtime_error("body failed"));
    const auto failure = std::make_exception_ptr(own_error("mine"));
    try {
        ctxmgr::rethrow_chained(failure, pending);
        FAIL();
    } catch (const own_error&) {
        EXPECT_EQ(std::current_exception(), failure);  // the same object, not a sliced copy
    }
    try {
        ctxmgr::rethrow_chained(failure, nullptr);
        FAIL();
    } catch (const own_error&) {
        EXPECT_EQ(std::current_exception(), failure);
    }
}

}  // namespace
