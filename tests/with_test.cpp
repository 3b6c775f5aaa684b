#include <ctxmgr/with.hpp>

#include <gtest/gtest.h>

#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "allocation_counter.hpp"
#include "recording.hpp"

namespace {

using ctxmgr::testing::exception_from;
using ctxmgr::testing::on_exit;
using ctxmgr::testing::other_error;
using ctxmgr::testing::recorder;
using ctxmgr::testing::suppressing_recorder;
using ctxmgr::testing::test_error;
using ctxmgr::testing::throw_recorded;
using ctxmgr::testing::trace;
using events = std::vector<std::string>;

// ---- step 1: enter in order; a failing enter exits the ones entered, innermost first ----

TEST(With, EntersInOrderRunsBodyExitsInReverse) {
    trace log;
    recorder a{log, "a"}, b{log, "b"}, c{log, "c"};
    ctxmgr::with(a, b, c, [&] { log.add("body"); });
    EXPECT_EQ(log.events,
              (events{"enter a", "enter b", "enter c", "body", "exit c", "exit b", "exit a"}));
    for (const auto& e : log.seen) EXPECT_EQ(e, nullptr);
}

TEST(With, FailingEnterExitsOnlyTheManagersAlreadyEnteredInnermostFirst) {
    trace log;
    recorder a{log, "a"}, b{log, "b"}, c{log, "c", true}, d{log, "d"};
    EXPECT_THROW(ctxmgr::with(a, b, c, d, [&] { log.add("body"); }), test_error);
    EXPECT_EQ(log.events, (events{"enter a", "enter b", "enter c", "exit b: enter c failed",
                                  "exit a: enter c failed"}));
}

TEST(With, OuterManagerMaySuppressAFailingEnter) {
    trace log;
    suppressing_recorder a{log, "a", false, on_exit::suppress};
    recorder b{log, "b", true};
    const std::optional<int> result = ctxmgr::with(a, b, [] { return 1; });
    EXPECT_FALSE(result.has_value());
    EXPECT_EQ(log.events, (events{"enter a", "enter b", "exit a: enter b failed"}));
}

TEST(With, ExitSeesTheOriginalEnterException) {
    trace log;
    recorder a{log, "a"}, b{log, "b", true};
    const auto caught = exception_from([&] { ctxmgr::with(a, b, [] {}); });
    ASSERT_EQ(log.seen.size(), 1u);
    EXPECT_EQ(log.seen[0], caught);
}

// ---- step 2: the body gets the targets --------------------------------------------------

struct void_manager {
    int* entered;
    void enter() { ++*entered; }
    void exit(std::exception_ptr) {}
};

struct ref_manager {
    int value = 0;
    int& enter() { return value; }
    void exit(std::exception_ptr) {}
};

TEST(With, BodyReceivesNonVoidTargetsInOrder) {
    trace log;
    int entered = 0;
    recorder a{log, "a"};
    void_manager v{&entered};
    recorder b{log, "b"};
    std::string got;
    ctxmgr::with(a, v, b, [&](std::string& x, std::string& y) { got = x + y; });
    EXPECT_EQ(got, "ab");
    EXPECT_EQ(entered, 1);
}

TEST(With, BodyWithoutParametersIsAccepted) {
    trace log;
    recorder a{log, "a"};
    bool ran = false;
    ctxmgr::with(a, [&] { ran = true; });
    EXPECT_TRUE(ran);
    EXPECT_EQ(log.events, (events{"enter a", "exit a"}));
}

TEST(With, ReferenceTargetRefersToTheManagersObject) {
    ref_manager m;
    ctxmgr::with(m, [](int& v) { v = 42; });
    EXPECT_EQ(m.value, 42);
}

// A by-value target that records its destruction.
struct witness {
    trace* log;
    explicit witness(trace* l) : log(l) {}
    witness(const witness&) = delete;
    witness(witness&&) = delete;
    ~witness() { log->add("target destroyed"); }
};

struct witness_manager {
    trace& log;
    std::string name;
    witness enter() {
        log.add("enter " + name);
        return witness(&log);  // guaranteed elision: never copied or moved
    }
    void exit(std::exception_ptr) { log.add("exit " + name); }
};

TEST(With, ByValueTargetLivesUntilEveryExitHasRun) {
    trace log;
    recorder outer{log, "outer"};
    witness_manager inner{log, "inner"};
    ctxmgr::with(outer, inner, [&](std::string&, witness& w) { EXPECT_EQ(w.log, &log); });
    EXPECT_EQ(log.events, (events{"enter outer", "enter inner", "exit inner", "exit outer",
                                  "target destroyed"}));
}

TEST(With, ByValueTargetIsDestroyedWhenTheBodyThrows) {
    trace log;
    witness_manager m{log, "m"};
    EXPECT_THROW(ctxmgr::with(m, [](witness&) { throw test_error("x"); }), test_error);
    EXPECT_EQ(log.events, (events{"enter m", "exit m", "target destroyed"}));
}

TEST(With, TargetOfAFailingEnterIsNeverBuilt) {
    trace log;
    witness_manager ok{log, "ok"};
    recorder failing{log, "failing", true};
    EXPECT_THROW(ctxmgr::with(ok, failing, [](witness&, std::string&) {}), test_error);
    EXPECT_EQ(log.events, (events{"enter ok", "enter failing", "exit ok", "target destroyed"}));
}

// Neither managers nor the body are copied or moved.
struct pinned_manager {
    int entered = 0;
    pinned_manager() = default;
    pinned_manager(const pinned_manager&) = delete;
    pinned_manager(pinned_manager&&) = delete;
    int& enter() { return ++entered; }
    void exit(std::exception_ptr) {}
};

struct pinned_body {
    pinned_body() = default;
    pinned_body(const pinned_body&) = delete;
    pinned_body(pinned_body&&) = delete;
    int operator()(int& v) && { return v * 10; }  // rvalue-qualified: an rvalue body stays one
};

TEST(With, UsesLvalueManagersInPlaceAndRvaluesForTheCall) {
    pinned_manager m;
    EXPECT_EQ(ctxmgr::with(m, pinned_body{}), 10);
    EXPECT_EQ(m.entered, 1);
    EXPECT_EQ(ctxmgr::with(pinned_manager{}, pinned_body{}), 10);
}

TEST(With, LvalueBodyIsCalledAsAnLvalue) {
    struct body {
        int calls = 0;
        void operator()() & { ++calls; }
    } b;
    ctxmgr::with(b);
    trace log;
    recorder r{log, "r"};
    ctxmgr::with(r, b);
    EXPECT_EQ(b.calls, 2);
}

// ---- step 3: exits see the pending exception -------------------------------------------

TEST(With, EveryExitSeesTheBodysException) {
    trace log;
    recorder a{log, "a"}, b{log, "b"};
    EXPECT_THROW(ctxmgr::with(a, b, [] { throw test_error("boom"); }), test_error);
    EXPECT_EQ(log.events, (events{"enter a", "enter b", "exit b: boom", "exit a: boom"}));
}

TEST(With, InnerSuppressionHidesTheExceptionFromOuterManagers) {
    trace log;
    recorder a{log, "a"};
    suppressing_recorder b{log, "b", false, on_exit::suppress};
    ctxmgr::with(a, b, [] { throw test_error("boom"); });
    EXPECT_EQ(log.events, (events{"enter a", "enter b", "exit b: boom", "exit a"}));
    EXPECT_EQ(log.seen[1], nullptr);
}

TEST(With, ExitThatThrowsReplacesThePendingExceptionForOuterManagers) {
    trace log;
    recorder a{log, "a"}, b{log, "b", false, on_exit::throw_error};
    EXPECT_THROW(ctxmgr::with(a, b, [] { throw test_error("boom"); }), other_error);
    EXPECT_EQ(log.events, (events{"enter a", "enter b", "exit b: boom", "exit a: exit b failed"}));
}

TEST(With, ExitThatThrowsOnTheNormalPathReachesOuterManagers) {
    trace log;
    recorder a{log, "a"}, b{log, "b", false, on_exit::throw_error};
    EXPECT_THROW(ctxmgr::with(a, b, [] {}), other_error);
    EXPECT_EQ(log.events, (events{"enter a", "enter b", "exit b", "exit a: exit b failed"}));
}

TEST(With, ThrowWithNestedInExitChainsTheBodysException) {
    trace log;
    recorder a{log, "a", false, on_exit::throw_nested};
    std::exception_ptr body_error;
    try {
        ctxmgr::with(a, [&] { throw_recorded(body_error); });
        FAIL() << "expected an exception";
    } catch (const other_error& e) {
        const auto* nested = dynamic_cast<const std::nested_exception*>(&e);
        ASSERT_NE(nested, nullptr);
        EXPECT_EQ(nested->nested_ptr(), body_error);
    }
}

TEST(With, OuterManagerMaySuppressAnExceptionThrownByAnInnerExit) {
    trace log;
    suppressing_recorder a{log, "a", false, on_exit::suppress};
    recorder b{log, "b", false, on_exit::throw_error};
    const std::optional<int> r = ctxmgr::with(a, b, [] { return 5; });
    EXPECT_FALSE(r.has_value());
    EXPECT_EQ(log.events, (events{"enter a", "enter b", "exit b", "exit a: exit b failed"}));
}

// ---- step 4: the original exception object propagates -----------------------------------

TEST(With, RethrowsTheOriginalExceptionObject) {
    trace log;
    recorder a{log, "a"}, b{log, "b"};
    std::exception_ptr thrown;
    const auto caught =
        exception_from([&] { ctxmgr::with(a, b, [&] { throw_recorded(thrown); }); });
    EXPECT_EQ(thrown, caught);
    EXPECT_EQ(log.seen[0], thrown);
    EXPECT_EQ(log.seen[1], thrown);
}

TEST(With, NonStandardExceptionsPropagateToo) {
    trace log;
    recorder a{log, "a"};
    EXPECT_THROW(ctxmgr::with(a, [] { throw 42; }), int);
    EXPECT_EQ(log.events, (events{"enter a", "exit a: ?"}));
}

// ---- step 5: the result ----------------------------------------------------------------

TEST(With, ReturnsTheBodysResult) {
    trace log;
    recorder a{log, "a"};
    static_assert(std::is_same_v<decltype(ctxmgr::with(a, [] { return 1; })), int>);
    EXPECT_EQ(ctxmgr::with(a, [] { return 7; }), 7);
}

TEST(With, ReturnsAReferenceUnchanged) {
    trace log;
    recorder a{log, "a"};
    int x = 1;
    int& r = ctxmgr::with(a, [&]() -> int& { return x; });
    EXPECT_EQ(&r, &x);
    int&& rr = ctxmgr::with(a, [&]() -> int&& { return std::move(x); });
    EXPECT_EQ(&rr, &x);
}

TEST(With, ReturnsOptionalWhenAManagerMaySuppress) {
    trace log;
    suppressing_recorder s{log, "s", false, on_exit::suppress};
    recorder plain{log, "plain"};
    using result = decltype(ctxmgr::with(plain, s, [] { return std::string("x"); }));
    static_assert(std::is_same_v<result, std::optional<std::string>>);
    static_assert(
        std::is_same_v<ctxmgr::with_result_t<recorder&, suppressing_recorder&, std::string (*)()>,
                       std::optional<std::string>>);
    EXPECT_EQ(ctxmgr::with(plain, s, [] { return std::string("x"); }), "x");
    EXPECT_EQ(ctxmgr::with(plain, s, []() -> std::string { throw test_error("no"); }),
              std::nullopt);
}

TEST(With, SuppressibleVoidBodyReturnsVoid) {
    trace log;
    suppressing_recorder s{log, "s", false, on_exit::suppress};
    static_assert(std::is_void_v<decltype(ctxmgr::with(s, [] {}))>);
    ctxmgr::with(s, [] { throw test_error("swallowed"); });
    EXPECT_EQ(log.events.back(), "exit s: swallowed");
}

TEST(With, BoolExitReturningTrueWithoutAnExceptionChangesNothing) {
    struct always_true {
        void enter() {}
        bool exit(std::exception_ptr) { return true; }
    } m;
    EXPECT_EQ(ctxmgr::with(m, [] { return 3; }), 3);
}

TEST(With, MoveOnlyResultsAreReturned) {
    trace log;
    recorder a{log, "a"};
    auto p = ctxmgr::with(a, [] { return std::make_unique<int>(9); });
    EXPECT_EQ(*p, 9);
    suppressing_recorder s{log, "s"};
    auto q = ctxmgr::with(s, [] { return std::make_unique<int>(8); });
    ASSERT_TRUE(q.has_value());
    EXPECT_EQ(**q, 8);
}

TEST(With, ZeroManagersJustCallsTheBody) {
    EXPECT_EQ(ctxmgr::with([] { return 4; }), 4);
}

// ---- cost ----------------------------------------------------------------------------

struct counting_manager {
    int* count;
    int& enter() { return ++*count; }
    void exit(std::exception_ptr e) {
        if (e) *count += 100;
    }
};

TEST(With, AllocatesNothing) {
    int count = 0;
    counting_manager a{&count}, b{&count};
    ctxmgr::testing::allocation_scope allocations;
    for (int i = 0; i < 100; ++i) {
        ctxmgr::with(a, b, counting_manager{&count}, [](int&, int&, int& c) { c += 1; });
    }
    EXPECT_EQ(allocations.count(), 0u);
    EXPECT_EQ(count, 400);
}

}  // namespace
