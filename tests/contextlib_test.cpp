#include <ctxmgr/contextlib.hpp>

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>

#include "recording.hpp"

namespace {

using ctxmgr::testing::test_error;

struct closable {
    int closes = 0;
    bool fail = false;
    void close() {
        ++closes;
        if (fail) throw test_error("close failed");
    }
};

TEST(Closing, CallsCloseOnTheLvalueItRefersTo) {
    closable c;
    ctxmgr::with(ctxmgr::closing(c), [&](closable& target) { EXPECT_EQ(&target, &c); });
    EXPECT_EQ(c.closes, 1);
}

TEST(Closing, ClosesOnException) {
    closable c;
    EXPECT_THROW(ctxmgr::with(ctxmgr::closing(c), [](closable&) { throw std::runtime_error("x"); }),
                 std::runtime_error);
    EXPECT_EQ(c.closes, 1);
}

TEST(Closing, OwnsAnRvalue) {
    static_assert(std::is_same_v<decltype(ctxmgr::closing(closable{})), ctxmgr::closing<closable>>);
    closable c;
    static_assert(std::is_same_v<decltype(ctxmgr::closing(c)), ctxmgr::closing<closable&>>);
    const int closes =
        ctxmgr::with(ctxmgr::closing(closable{}), [](closable& t) { return t.closes; });
    EXPECT_EQ(closes, 0);
}

TEST(Closing, ExitThrowsWhatCloseThrows) {
    closable c;
    c.fail = true;
    EXPECT_THROW(ctxmgr::with(ctxmgr::closing(c), [](closable&) {}), test_error);
    EXPECT_THROW(ctxmgr::with(ctxmgr::closing(c), [](closable&) { throw std::runtime_error("x"); }),
                 test_error);
}

struct base_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};
struct derived_error : base_error {
    using base_error::base_error;
};

TEST(Suppress, SwallowsTheListedTypesAndTheirSubclasses) {
    const std::optional<int> r =
        ctxmgr::with(ctxmgr::suppress<base_error>(), []() -> int { throw derived_error("x"); });
    EXPECT_FALSE(r.has_value());
    EXPECT_EQ(ctxmgr::with(ctxmgr::suppress<base_error>(), [] { return 3; }), 3);
}

TEST(Suppress, LetsOtherTypesThrough) {
    EXPECT_THROW(ctxmgr::with(ctxmgr::suppress<base_error>(), [] { throw std::logic_error("x"); }),
                 std::logic_error);
}

TEST(Suppress, AcceptsSeveralTypes) {
    ctxmgr::with(ctxmgr::suppress<std::out_of_range, std::invalid_argument>(),
                 [] { throw std::invalid_argument("x"); });
    ctxmgr::with(ctxmgr::suppress<std::out_of_range, std::invalid_argument>(),
                 [] { throw std::out_of_range("x"); });
    SUCCEED();
}

TEST(Suppress, WithNoTypesSuppressesNothing) {
    EXPECT_THROW(ctxmgr::with(ctxmgr::suppress<>(), [] { throw 1; }), int);
}

TEST(NullContext, EnterReturnsNothingOrTheValue) {
    static_assert(std::is_void_v<decltype(ctxmgr::nullcontext().enter())>);
    static_assert(!ctxmgr::can_suppress_v<ctxmgr::nullcontext<int>>);
    EXPECT_EQ(ctxmgr::with(ctxmgr::nullcontext(5), [](int& v) { return v; }), 5);
    int x = 1;
    ctxmgr::with(ctxmgr::nullcontext(x), [](int& v) { v = 2; });
    EXPECT_EQ(x, 2);
    EXPECT_THROW(ctxmgr::with(ctxmgr::nullcontext(), [] { throw test_error("x"); }), test_error);
}

TEST(Redirect, StdoutGoesToTheTargetAndComesBack) {
    std::ostringstream captured;
    std::streambuf* const original = std::cout.rdbuf();
    ctxmgr::with(ctxmgr::redirect_stdout(captured), [&](std::ostream& target) {
        EXPECT_EQ(&target, &captured);
        std::cout << "hello";
    });
    EXPECT_EQ(captured.str(), "hello");
    EXPECT_EQ(std::cout.rdbuf(), original);
}

TEST(Redirect, RestoresOnException) {
    std::ostringstream captured;
    std::streambuf* const original = std::cerr.rdbuf();
    EXPECT_THROW(ctxmgr::with(ctxmgr::redirect_stderr(captured),
                              [] {
                                  std::cerr << "oops";
                                  throw test_error("x");
                              }),
                 test_error);
    EXPECT_EQ(std::cerr.rdbuf(), original);
    EXPECT_EQ(captured.str(), "oops");
}

TEST(Redirect, IsReentrant) {
    std::ostringstream outer, inner;
    std::streambuf* const original = std::cout.rdbuf();
    ctxmgr::redirect_stdout to_outer(outer);
    ctxmgr::with(to_outer, [&] {
        std::cout << "1";
        ctxmgr::with(ctxmgr::redirect_stdout(inner), [] { std::cout << "2"; });
        ctxmgr::with(to_outer, [] { std::cout << "3"; });  // the same object again
        std::cout << "4";
    });
    EXPECT_EQ(outer.str(), "134");
    EXPECT_EQ(inner.str(), "2");
    EXPECT_EQ(std::cout.rdbuf(), original);
}

TEST(Chdir, ChangesAndRestoresTheWorkingDirectory) {
    const auto before = std::filesystem::current_path();
    const auto target = std::filesystem::temp_directory_path();
    ctxmgr::with(ctxmgr::chdir(target), [&] {
        EXPECT_EQ(std::filesystem::current_path(), std::filesystem::canonical(target));
    });
    EXPECT_EQ(std::filesystem::current_path(), before);
    EXPECT_THROW(ctxmgr::with(ctxmgr::chdir(target), [] { throw test_error("x"); }), test_error);
    EXPECT_EQ(std::filesystem::current_path(), before);
}

TEST(Chdir, AMissingDirectoryIsAnIoErrorNamingIt) {
    const auto before = std::filesystem::current_path();
    try {
        ctxmgr::with(ctxmgr::chdir("/nonexistent/ctxmgr"), [] { FAIL() << "body ran"; });
        FAIL();
    } catch (const ctxmgr::io_error& e) {
        EXPECT_EQ(e.code(), std::errc::no_such_file_or_directory);
        EXPECT_STREQ(e.what(), "chdir \"/nonexistent/ctxmgr\": No such file or directory");
    }
    EXPECT_EQ(std::filesystem::current_path(), before);
}

TEST(Chdir, FailingToChangeBackNestsThePendingException) {
    const auto before = std::filesystem::current_path();
    const auto scratch =
        std::filesystem::temp_directory_path() / ("ctxmgr-chdir-" + std::to_string(::getpid()));
    std::filesystem::create_directories(scratch / "inner");
    ctxmgr::chdir outer(scratch);
    outer.enter();
    ctxmgr::chdir inner("inner");
    inner.enter();
    std::filesystem::remove(scratch / "inner");
    std::filesystem::remove(scratch);  // the directory inner goes back to is gone
    try {
        inner.exit(std::make_exception_ptr(test_error("body failed")));
        FAIL();
    } catch (const ctxmgr::io_error& e) {
        EXPECT_EQ(e.code(), std::errc::no_such_file_or_directory);
        EXPECT_NE(std::string(e.what()).find("chdir back to"), std::string::npos) << e.what();
        const auto* nested = dynamic_cast<const std::nested_exception*>(&e);
        ASSERT_NE(nested, nullptr);
        EXPECT_EQ(ctxmgr::testing::what_of(nested->nested_ptr()), "body failed");
    }
    outer.exit(nullptr);  // back to where the test started
    EXPECT_EQ(std::filesystem::current_path(), before);
}

// --- made but never entered -----------------------------------------------------------------

TEST(NeverEntered, RedirectAndChdirMadeAndDroppedReportTheirLineAndChangeNothing) {
    std::ostringstream captured;
    std::streambuf* const original = std::cout.rdbuf();
    const auto before = std::filesystem::current_path();
    ctxmgr::testing::unraisable_log log;
    const unsigned first = __LINE__ + 1;
    static_cast<void>(ctxmgr::redirect_stdout(captured));
    static_cast<void>(ctxmgr::redirect_stderr(captured));
    static_cast<void>(ctxmgr::chdir(std::filesystem::temp_directory_path()));
    EXPECT_EQ(std::cout.rdbuf(), original);
    EXPECT_EQ(std::filesystem::current_path(), before);
    const auto reports = log.reports();
    const char* const names[] = {"redirect_stdout", "redirect_stderr", "chdir"};
    ASSERT_EQ(reports.size(), std::size(names));
    for (unsigned i = 0; i < std::size(names); ++i) {
        EXPECT_TRUE(ctxmgr::testing::reports_never_entered(reports[i], names[i],
                                                           "contextlib_test.cpp", first + i))
            << reports[i];
    }
}

TEST(NeverEntered, EnteredOrMovedFromManagersDoNotReport) {
    std::ostringstream captured;
    ctxmgr::testing::unraisable_log log;
    ctxmgr::with(ctxmgr::redirect_stdout(captured), [] {});
    {
        ctxmgr::redirect_stderr first(captured);
        auto moved = std::move(first);
        ctxmgr::with(moved, [] {});
    }
    {
        // Entered, though enter() fails: it was used as a manager.
        ctxmgr::chdir missing("/nonexistent/ctxmgr");
        EXPECT_THROW(missing.enter(), ctxmgr::io_error);
        ctxmgr::chdir first(std::filesystem::temp_directory_path());
        auto moved = std::move(first);
        ctxmgr::with(moved, [] {});
    }
    EXPECT_TRUE(log.reports().empty()) << log.reports().front();
}

TEST(Decorate, RunsTheFunctionInsideAFreshManagerEveryCall) {
    int made = 0;
    auto safe_div = ctxmgr::decorate(
        [&] {
            ++made;
            return ctxmgr::suppress<std::domain_error>();
        },
        [](int a, int b) {
            if (b == 0) throw std::domain_error("division by zero");
            return a / b;
        });
    EXPECT_EQ(safe_div(6, 3), 2);
    EXPECT_EQ(safe_div(1, 0), std::nullopt);
    EXPECT_EQ(made, 2);
}

TEST(Decorate, ResultIsPlainWhenTheManagerCannotSuppress) {
    const auto twice =
        ctxmgr::decorate([] { return ctxmgr::nullcontext(); }, [](int x) { return 2 * x; });
    static_assert(std::is_same_v<decltype(twice(1)), int>);
    EXPECT_EQ(twice(21), 42);
}

}  // namespace
