#include <ctxmgr/release.hpp>

#include <gtest/gtest.h>

#include <exception>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "recording.hpp"

namespace {

using ctxmgr::testing::unraisable_capture;

// The exception nested in `e`, which `e` keeps alive.
const std::exception* nested_in(const std::exception& e) {
    const auto* nested = dynamic_cast<const std::nested_exception*>(&e);
    if (nested == nullptr || !nested->nested_ptr()) return nullptr;
    try {
        std::rethrow_exception(nested->nested_ptr());
    } catch (const std::exception& inner) {
        return &inner;
    }
}

TEST(Release, OnExitWithNothingPendingLetsTheFailurePropagateAsItIs) {
    const auto failure = std::make_exception_ptr(ctxmgr::db::connection_error(
        "postgresql", "08006", 0, "server closed the connection", "COMMIT"));
    try {
        ctxmgr::release_on_exit(nullptr, [&] { std::rethrow_exception(failure); });
        FAIL();
    } catch (const ctxmgr::db::connection_error&) {
        EXPECT_EQ(std::current_exception(), failure);
    }
}

TEST(Release, OnExitWithAPendingExceptionChainsTheFailureKeepingItsType) {
    const auto pending = std::make_exception_ptr(std::runtime_error("body"));
    try {
        ctxmgr::release_on_exit(pending, [] {
            throw ctxmgr::db::serialization_failure("postgresql", "40001", 0, "could not",
                                                    "COMMIT");
        });
        FAIL();
    } catch (const ctxmgr::db::serialization_failure& e) {
        EXPECT_EQ(e.sqlstate(), "40001");
        EXPECT_EQ(dynamic_cast<const std::nested_exception&>(e).nested_ptr(), pending);
    }
}

TEST(Release, OnExitThatSucceedsThrowsNothing) {
    int released = 0;
    ctxmgr::release_on_exit(std::make_exception_ptr(std::runtime_error("body")),
                            [&] { ++released; });
    ctxmgr::release_on_exit(nullptr, [&] { ++released; });
    EXPECT_EQ(released, 2);
}

TEST(Release, InDestructorReportsTheFailureWithTheDescription) {
    unraisable_capture capture;
    ctxmgr::release_in_destructor([] { throw ctxmgr::io_error("close", "/data/f", 5); },
                                  [] { return std::string("file \"/data/f\""); }, "file",
                                  "close in destructor");
    ASSERT_EQ(capture.reports.size(), 1u);
    EXPECT_EQ(capture.reports[0],
              "file \"/data/f\": close in destructor: close \"/data/f\": Input/output error");
}

TEST(Release, InDestructorStillReportsWhenDescribingRunsOutOfMemory) {
    unraisable_capture capture;
    ctxmgr::release_in_destructor([] { throw ctxmgr::io_error("close", "/data/f", 5); },
                                  []() -> std::string { throw std::bad_alloc(); }, "file",
                                  "close in destructor");
    ASSERT_EQ(capture.reports.size(), 1u);
    // The failure itself, under the fixed words.
    EXPECT_EQ(capture.reports[0],
              "file: close in destructor: close \"/data/f\": Input/output error");
}

TEST(Release, InDestructorDoesNotDescribeWhenNothingFailed) {
    unraisable_capture capture;
    bool described = false;
    ctxmgr::release_in_destructor([] {},
                                  [&] {
                                      described = true;
                                      return std::string("x");
                                  },
                                  "x", "close");
    EXPECT_FALSE(described);
    EXPECT_TRUE(capture.reports.empty());
}

TEST(Release, FailureChainPutsTheLastFailureOutsideAndThePendingOneAtTheBottom) {
    const auto pending = std::make_exception_ptr(std::runtime_error("body"));
    ctxmgr::failure_chain failures(pending);
    EXPECT_FALSE(failures.failed());
    failures.throw_if_failed();  // nothing yet
    failures.add(ctxmgr::io_error("fsync", "/f", 5));
    try {
        throw ctxmgr::db::connection_error("postgresql", "08006", 0, "lost", "ROLLBACK");
    } catch (...) {
        failures.add_current();
    }
    ASSERT_TRUE(failures.failed());
    try {
        failures.throw_if_failed();
        FAIL();
    } catch (const ctxmgr::db::connection_error& last) {
        const std::exception* middle = nested_in(last);
        ASSERT_NE(middle, nullptr);
        EXPECT_NE(dynamic_cast<const ctxmgr::io_error*>(middle), nullptr);
        const std::exception* bottom = nested_in(*middle);
        ASSERT_NE(bottom, nullptr);
        EXPECT_STREQ(bottom->what(), "body");
    }
}

}  // namespace
