#include <ctxmgr/errors.hpp>

#include <gtest/gtest.h>

#include <cerrno>
#include <chrono>
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

}  // namespace
