#include <ctxmgr/scope.hpp>

#include <gtest/gtest.h>

#include <functional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "recording.hpp"

namespace {

using ctxmgr::testing::exception_from;
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
    static_assert(std::is_nothrow_move_constructible_v<ctxmgr::scope_fail<decltype(lambda)>>);
    // Not even from a non-const lvalue, where a constructor template would match better than
    // the deleted copy constructor.
    using function_guard = ctxmgr::scope_success<std::function<void()>>;
    static_assert(!std::is_constructible_v<function_guard, function_guard&>);
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

// Class template argument deduction names each guard's own type: finally, scope_fail and
// scope_success are class templates with deduction guides, not aliases of one template.
TEST(Scope, EachGuardDeducesItsTypeFromALambda) {
    std::string ran;
    auto on_exit = [&] { ran += "finally "; };
    auto on_failure = [&] { ran += "fail "; };
    auto on_success = [&] { ran += "success "; };
    static_cast<void>(exception_from([&] {
        ctxmgr::finally f(on_exit);
        ctxmgr::scope_fail fail(on_failure);
        static_assert(std::is_same_v<decltype(f), ctxmgr::finally<decltype(on_exit)>>);
        static_assert(std::is_same_v<decltype(fail), ctxmgr::scope_fail<decltype(on_failure)>>);
        throw test_error("x");
    }));
    {
        ctxmgr::scope_success success(on_success);
        static_assert(
            std::is_same_v<decltype(success), ctxmgr::scope_success<decltype(on_success)>>);
    }
    EXPECT_EQ(ran, "fail finally success ");
}

int function_calls = 0;
void count_call() {
    ++function_calls;
}
using function_pointer = void (*)();

TEST(Scope, EachGuardDeducesAFunctionPointerFromAFunctionOrItsAddress) {
    function_calls = 0;
    static_cast<void>(exception_from([] {
        ctxmgr::finally by_name(count_call);
        ctxmgr::finally by_address(&count_call);
        ctxmgr::scope_fail fail_by_name(count_call);
        ctxmgr::scope_fail fail_by_address(&count_call);
        static_assert(std::is_same_v<decltype(by_name), ctxmgr::finally<function_pointer>>);
        static_assert(std::is_same_v<decltype(by_address), ctxmgr::finally<function_pointer>>);
        static_assert(std::is_same_v<decltype(fail_by_name), ctxmgr::scope_fail<function_pointer>>);
        static_assert(
            std::is_same_v<decltype(fail_by_address), ctxmgr::scope_fail<function_pointer>>);
        throw test_error("x");
    }));
    EXPECT_EQ(function_calls, 4);
    {
        ctxmgr::scope_success by_name(count_call);
        ctxmgr::scope_success by_address(&count_call);
        static_assert(std::is_same_v<decltype(by_name), ctxmgr::scope_success<function_pointer>>);
        static_assert(
            std::is_same_v<decltype(by_address), ctxmgr::scope_success<function_pointer>>);
    }
    EXPECT_EQ(function_calls, 6);
}

// `auto g2 = std::move(g1)` needs no deduction; `finally g2 = std::move(g1)` deduces g1's own
// type (the copy deduction candidate), not a guard of a guard.
TEST(Scope, MovingIntoADeducedGuardRunsTheFunctionOnceFromTheNewGuard) {
    int runs = 0;
    {
        ctxmgr::finally g1([&] { ++runs; });
        ctxmgr::finally g2 = std::move(g1);
        static_assert(std::is_same_v<decltype(g2), decltype(g1)>);
        EXPECT_FALSE(g1.active());  // NOLINT(bugprone-use-after-move)
        EXPECT_TRUE(g2.active());
    }
    EXPECT_EQ(runs, 1);

    runs = 0;
    static_cast<void>(exception_from([&] {
        ctxmgr::scope_fail g1([&] { ++runs; });
        ctxmgr::scope_fail g2 = std::move(g1);
        static_assert(std::is_same_v<decltype(g2), decltype(g1)>);
        EXPECT_FALSE(g1.active());  // NOLINT(bugprone-use-after-move)
        EXPECT_TRUE(g2.active());
        throw test_error("x");
    }));
    EXPECT_EQ(runs, 1);

    runs = 0;
    {
        ctxmgr::scope_success g1([&] { ++runs; });
        ctxmgr::scope_success g2 = std::move(g1);
        static_assert(std::is_same_v<decltype(g2), decltype(g1)>);
        EXPECT_FALSE(g1.active());  // NOLINT(bugprone-use-after-move)
        EXPECT_TRUE(g2.active());
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
