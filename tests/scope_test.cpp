#include <ctxmgr/scope.hpp>

#include <gtest/gtest.h>

#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "recording.hpp"

namespace {

using ctxmgr::testing::test_error;
using ctxmgr::testing::unraisable_capture;

// Runs body in a scope holding all three guards and says which ran.
template <class Body>
std::string guards_run(Body body) {
    std::string ran;
    try {
        ctxmgr::finally f([&] { ran += "finally "; });
        ctxmgr::scope_fail fail([&] { ran += "fail "; });
        ctxmgr::scope_success success([&] { ran += "success "; });
        body();
    } catch (const test_error&) {
    }
    return ran;
}

TEST(Scope, OnNormalExitFinallyAndSuccessRun) {
    EXPECT_EQ(guards_run([] {}), "success finally ");
}

TEST(Scope, OnExceptionFinallyAndFailRun) {
    EXPECT_EQ(guards_run([] { throw test_error("x"); }), "fail finally ");
}

TEST(Scope, ReleaseDisarms) {
    int runs = 0;
    {
        ctxmgr::finally f([&] { ++runs; });
        EXPECT_TRUE(f.active());
        f.release();
        f.release();
        EXPECT_FALSE(f.active());
    }
    try {
        ctxmgr::scope_fail g([&] { ++runs; });
        g.release();
        throw test_error("x");
    } catch (const test_error&) {
    }
    EXPECT_EQ(runs, 0);
}

// A destructor that runs during unwinding and uses guards for its own, successful work:
// they must judge by the exceptions in flight when they were made, not by "any in flight".
struct cleanup_during_unwinding {
    std::string* ran;
    ~cleanup_during_unwinding() {
        ctxmgr::scope_fail fail([this] { *ran += "fail "; });
        ctxmgr::scope_success success([this] { *ran += "success "; });
    }
};

TEST(Scope, GuardsInsideADestructorDuringUnwindingJudgeTheirOwnScope) {
    std::string ran;
    try {
        cleanup_during_unwinding c{&ran};
        throw test_error("x");
    } catch (const test_error&) {
    }
    EXPECT_EQ(ran, "success ");
}

TEST(Scope, AnExceptionFromTheFunctionGoesToTheUnraisableHook) {
    unraisable_capture capture;
    {
        ctxmgr::finally f([] { throw test_error("cleanup failed"); });
    }
    {
        ctxmgr::scope_success s([] { throw test_error("success failed"); });
    }
    EXPECT_EQ(capture.reports, (std::vector<std::string>{"ctxmgr::finally: cleanup failed",
                                                         "ctxmgr::scope_success: success failed"}));
}

TEST(Scope, AThrowingFunctionDuringUnwindingDoesNotTerminate) {
    unraisable_capture capture;
    EXPECT_THROW(
        {
            ctxmgr::scope_fail f([] { throw test_error("second"); });
            throw test_error("first");
        },
        test_error);
    EXPECT_EQ(capture.reports, (std::vector<std::string>{"ctxmgr::scope_fail: second"}));
}

struct throws_on_copy {
    static inline bool armed = false;
    int* calls;
    explicit throws_on_copy(int* c) : calls(c) {}
    throws_on_copy(const throws_on_copy& other) : calls(other.calls) {
        if (armed) throw test_error("copy failed");
    }
    void operator()() const { ++*calls; }
};

TEST(Scope, IfStoringTheFunctionThrowsFinallyAndFailRunItAtOnce) {
    int calls = 0;
    throws_on_copy f(&calls);
    throws_on_copy::armed = true;
    EXPECT_THROW(ctxmgr::finally guard(f), test_error);
    EXPECT_EQ(calls, 1);
    EXPECT_THROW(ctxmgr::scope_fail guard(f), test_error);
    EXPECT_EQ(calls, 2);
    EXPECT_THROW(ctxmgr::scope_success guard(f), test_error);
    EXPECT_EQ(calls, 2);  // the scope did not succeed
    throws_on_copy::armed = false;
}

TEST(Scope, NoexceptFollowsTheFunctionsTraits) {
    auto lambda = [] {};
    static_assert(
        std::is_nothrow_constructible_v<ctxmgr::finally<decltype(lambda)>, decltype(lambda)>);
    static_assert(
        !std::is_nothrow_constructible_v<ctxmgr::finally<throws_on_copy>, throws_on_copy&>);
    static_assert(!std::is_copy_constructible_v<ctxmgr::finally<decltype(lambda)>>);
    static_assert(!std::is_move_assignable_v<ctxmgr::finally<decltype(lambda)>>);
    static_assert(std::is_nothrow_destructible_v<ctxmgr::finally<decltype(lambda)>>);
}

ctxmgr::finally<std::function<void()>> make_guard(int* runs) {
    return ctxmgr::finally<std::function<void()>>([runs] { ++*runs; });
}

TEST(Scope, MovingTransfersResponsibility) {
    int runs = 0;
    {
        auto guard = make_guard(&runs);
        auto moved = std::move(guard);
        EXPECT_FALSE(guard.active());  // NOLINT(bugprone-use-after-move)
        EXPECT_TRUE(moved.active());
    }
    EXPECT_EQ(runs, 1);
}

TEST(Scope, AcceptsFunctionPointers) {
    static int calls = 0;
    struct f {
        static void bump() { ++calls; }
    };
    { ctxmgr::finally guard(&f::bump); }
    { ctxmgr::finally guard(f::bump); }
    EXPECT_EQ(calls, 2);
}

}  // namespace
