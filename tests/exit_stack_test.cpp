#include <ctxmgr/exit_stack.hpp>
#include <ctxmgr/with.hpp>

#include <gtest/gtest.h>

#include <array>
#include <exception>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "allocation_counter.hpp"
#include "recording.hpp"

namespace {

using ctxmgr::exit_stack;
using ctxmgr::testing::exception_from;
using ctxmgr::testing::on_exit;
using ctxmgr::testing::other_error;
using ctxmgr::testing::recorder;
using ctxmgr::testing::suppressing_recorder;
using ctxmgr::testing::test_error;
using ctxmgr::testing::throw_recorded;
using ctxmgr::testing::trace;
using ctxmgr::testing::unraisable_capture;
using ctxmgr::testing::what_of;
using events = std::vector<std::string>;

TEST(ExitStack, IsAContextManagerWhoseTargetIsItself) {
    static_assert(ctxmgr::context_manager<exit_stack>);
    static_assert(ctxmgr::can_suppress_v<exit_stack>);
    static_assert(!std::is_copy_constructible_v<exit_stack>);
    static_assert(std::is_nothrow_move_constructible_v<exit_stack>);
    static_assert(std::is_nothrow_move_assignable_v<exit_stack>);
    exit_stack stack;
    EXPECT_EQ(&stack.enter(), &stack);
}

TEST(ExitStack, CallbacksRunLastInFirstOut) {
    std::string order;
    {
        exit_stack stack;
        for (char c : std::string("abcd")) stack.callback([&order, c] { order += c; });
        EXPECT_EQ(stack.size(), 4u);
        EXPECT_EQ(order, "");
    }
    EXPECT_EQ(order, "dcba");
}

TEST(ExitStack, CallbackArgumentsAreDecayedAndStoredAtRegistration) {
    std::vector<std::string> got;
    std::string text = "before";
    {
        exit_stack stack;
        stack.callback(
            [&got](const std::string& s, int n) { got.push_back(s + std::to_string(n)); }, text, 1);
        text = "after";
    }
    EXPECT_EQ(got, (std::vector<std::string>{"before1"}));
}

TEST(ExitStack, CallbackReturningTrueDoesNotSuppress) {
    exit_stack stack;
    stack.callback([] { return true; });
    const auto e = std::make_exception_ptr(test_error("boom"));
    EXPECT_FALSE(stack.exit(e));
}

TEST(ExitStack, CallbackAcceptsPlainFunctionsAndPointers) {
    static int calls = 0;
    struct f {
        static void bump(int by) { calls += by; }
    };
    {
        exit_stack stack;
        stack.callback(&f::bump, 2);
        stack.callback(f::bump, 3);
    }
    EXPECT_EQ(calls, 5);
}

TEST(ExitStack, PushExitFunctionMaySuppress) {
    exit_stack stack;
    std::exception_ptr seen;
    stack.push([&](std::exception_ptr e) {
        seen = e;
        return true;
    });
    const auto e = std::make_exception_ptr(test_error("boom"));
    EXPECT_TRUE(stack.exit(e));
    EXPECT_EQ(seen, e);
}

TEST(ExitStack, ExitReturnsTrueOnlyForASuppressedNonNullException) {
    exit_stack stack;
    stack.push([](std::exception_ptr) { return true; });
    EXPECT_FALSE(stack.exit(nullptr));
}

TEST(ExitStack, PushManagerRegistersItsExitWithoutEnteringIt) {
    trace log;
    recorder m{log, "m"};
    {
        exit_stack stack;
        stack.push(m);
    }
    EXPECT_EQ(log.events, (events{"exit m"}));
}

TEST(ExitStack, PushOwnsAnRvalueManager) {
    trace log;
    {
        exit_stack stack;
        stack.push(recorder{log, "owned"});
    }
    EXPECT_EQ(log.events, (events{"exit owned"}));
}

TEST(ExitStack, EnterContextEntersAndReturnsTheTarget) {
    trace log;
    recorder m{log, "m"};
    {
        exit_stack stack;
        const std::string target = stack.enter_context(m);
        EXPECT_EQ(target, "m");
        EXPECT_EQ(log.events, (events{"enter m"}));
    }
    EXPECT_EQ(log.events, (events{"enter m", "exit m"}));
}

struct counter_manager {
    int value = 0;
    int& enter() { return ++value; }
    void exit(std::exception_ptr) { value = -1; }
};

TEST(ExitStack, EnterContextOnAnLvalueReferencesIt) {
    counter_manager m;
    {
        exit_stack stack;
        int& target = stack.enter_context(m);
        EXPECT_EQ(&target, &m.value);
    }
    EXPECT_EQ(m.value, -1);
}

TEST(ExitStack, OwnedManagersKeepTheirAddressWhenTheStackGrowsOrMoves) {
    exit_stack stack;
    std::vector<int*> targets;
    for (int i = 0; i < 20; ++i) targets.push_back(&stack.enter_context(counter_manager{}));
    exit_stack moved = stack.pop_all();
    for (int* t : targets) EXPECT_EQ(*t, 1);  // still the live managers' values
    moved.close();
}

TEST(ExitStack, EnterContextThatThrowsRegistersNothing) {
    trace log;
    recorder bad{log, "bad", true};
    exit_stack stack;
    EXPECT_THROW(stack.enter_context(bad), test_error);
    EXPECT_EQ(stack.size(), 0u);
    stack.close();
    EXPECT_EQ(log.events, (events{"enter bad"}));
}

TEST(ExitStack, EnterContextWithVoidTarget) {
    struct void_manager {
        int* count;
        void enter() { ++*count; }
        void exit(std::exception_ptr) { ++*count; }
    };
    int count = 0;
    {
        exit_stack stack;
        static_assert(std::is_void_v<decltype(stack.enter_context(void_manager{&count}))>);
        stack.enter_context(void_manager{&count});
    }
    EXPECT_EQ(count, 2);
}

TEST(ExitStack, EveryExitRunsWhenSeveralThrowAndTheLastThrownPropagates) {
    trace log;
    exit_stack stack;
    stack.push(recorder{log, "a"});
    stack.push(recorder{log, "b", false, on_exit::throw_error});
    stack.push(recorder{log, "c"});
    stack.push(recorder{log, "d", false, on_exit::throw_error});
    try {
        stack.close();
        FAIL() << "close() should throw";
    } catch (const other_error& e) {
        EXPECT_STREQ(e.what(), "exit b failed");
    }
    EXPECT_EQ(log.events, (events{"exit d", "exit c: exit d failed", "exit b: exit d failed",
                                  "exit a: exit b failed"}));
    EXPECT_EQ(stack.size(), 0u);
}

TEST(ExitStack, SuppressionClearsThePendingExceptionForTheRest) {
    trace log;
    exit_stack stack;
    stack.push(recorder{log, "a"});
    stack.push(suppressing_recorder{log, "b", false, on_exit::suppress});
    stack.push(recorder{log, "c"});
    EXPECT_TRUE(stack.exit(std::make_exception_ptr(test_error("boom"))));
    EXPECT_EQ(log.events, (events{"exit c: boom", "exit b: boom", "exit a"}));
}

TEST(ExitStack, AnExceptionThrownAfterASuppressionPropagates) {
    trace log;
    exit_stack stack;
    stack.push(recorder{log, "a", false, on_exit::throw_error});
    stack.push(suppressing_recorder{log, "b", false, on_exit::suppress});
    EXPECT_THROW(stack.exit(std::make_exception_ptr(test_error("boom"))), other_error);
}

TEST(ExitStack, ASuppressedReplacementStillCountsAsSuppressingTheOriginal) {
    trace log;
    exit_stack stack;
    stack.push(suppressing_recorder{log, "a", false, on_exit::suppress});
    stack.push(recorder{log, "b", false, on_exit::throw_error});
    EXPECT_TRUE(stack.exit(std::make_exception_ptr(test_error("boom"))));
    EXPECT_EQ(log.events, (events{"exit b: boom", "exit a: exit b failed"}));
}

TEST(ExitStack, ExitsRunInsideTheHandlerOfThePendingException) {
    trace log;
    exit_stack stack;
    stack.push(recorder{log, "a", false, on_exit::throw_nested});
    stack.push(recorder{log, "b", false, on_exit::throw_error});
    try {
        stack.close();
        FAIL() << "close() should throw";
    } catch (const other_error& e) {
        EXPECT_STREQ(e.what(), "exit a failed");
        const auto* nested = dynamic_cast<const std::nested_exception*>(&e);
        ASSERT_NE(nested, nullptr);
        EXPECT_EQ(what_of(nested->nested_ptr()), "exit b failed");
    }
}

TEST(ExitStack, WithSeesTheBodysExceptionAndTheStackMaySuppressIt) {
    trace log;
    const std::optional<int> r = ctxmgr::with(exit_stack(), [&](exit_stack& stack) -> int {
        stack.push(suppressing_recorder{log, "s", false, on_exit::suppress});
        stack.push(recorder{log, "r"});
        throw test_error("boom");
    });
    EXPECT_FALSE(r.has_value());
    EXPECT_EQ(log.events, (events{"exit r: boom", "exit s: boom"}));
}

TEST(ExitStack, WithRethrowsTheOriginalObjectWhenNothingSuppresses) {
    trace log;
    std::exception_ptr thrown;
    const auto caught = exception_from([&] {
        ctxmgr::with(exit_stack(), [&](exit_stack& stack) {
            stack.push(recorder{log, "r"});
            throw_recorded(thrown);
        });
    });
    EXPECT_EQ(caught, thrown);
    EXPECT_EQ(log.seen.at(0), thrown);
}

TEST(ExitStack, PopAllMovesEveryPendingExitAndLeavesTheStackEmpty) {
    std::string order;
    exit_stack kept;
    {
        exit_stack stack;
        stack.callback([&] { order += 'a'; });
        stack.callback([&] { order += 'b'; });
        kept = stack.pop_all();
        EXPECT_EQ(stack.size(), 0u);
        EXPECT_EQ(kept.size(), 2u);
    }
    EXPECT_EQ(order, "");
    kept.close();
    EXPECT_EQ(order, "ba");
}

TEST(ExitStack, PopAllTransfersHeapStorageToo) {
    std::string order;
    exit_stack stack;
    for (int i = 0; i < 30; ++i) stack.callback([&order, i] { order += std::to_string(i % 10); });
    exit_stack other = stack.pop_all();
    EXPECT_EQ(stack.size(), 0u);
    stack.callback([&] { order += '!'; });  // the emptied stack is still usable
    stack.close();
    other.close();
    EXPECT_EQ(order, "!987654321098765432109876543210");
}

TEST(ExitStack, PopAllIsPythonsTransferIdiom) {
    // Acquire several things; if any acquisition fails, release those taken so far;
    // on success hand them all to the caller.
    trace log;
    auto acquire = [&](bool fail_third) {
        exit_stack stack;
        stack.enter_context(recorder{log, "1"});
        stack.enter_context(recorder{log, "2"});
        stack.enter_context(recorder{log, "3", fail_third});
        return stack.pop_all();
    };
    EXPECT_THROW(static_cast<void>(acquire(true)), test_error);
    EXPECT_EQ(log.events, (events{"enter 1", "enter 2", "enter 3", "exit 2", "exit 1"}));
    log.events.clear();
    {
        exit_stack held = acquire(false);
        EXPECT_EQ(held.size(), 3u);
        EXPECT_EQ(log.events, (events{"enter 1", "enter 2", "enter 3"}));
    }
    EXPECT_EQ(log.events.back(), "exit 1");
}

TEST(ExitStack, CloseUnwindsNowAndLeavesTheStackReusable) {
    int runs = 0;
    exit_stack stack;
    stack.callback([&] { ++runs; });
    stack.close();
    EXPECT_EQ(runs, 1);
    EXPECT_EQ(stack.size(), 0u);
    stack.close();
    EXPECT_EQ(runs, 1);
    stack.callback([&] { ++runs; });
    stack.close();
    EXPECT_EQ(runs, 2);
}

TEST(ExitStack, DestructorReportsWhatItCannotThrowToTheUnraisableHook) {
    unraisable_capture capture;
    int runs = 0;
    {
        exit_stack stack;
        stack.callback([&] { ++runs; });
        stack.callback([] { throw test_error("cannot close"); });
    }
    EXPECT_EQ(runs, 1);
    EXPECT_EQ(capture.reports, (std::vector<std::string>{"exit_stack destructor: cannot close"}));
}

TEST(ExitStack, MoveAssignmentUnwindsThePendingExitsFirst) {
    unraisable_capture capture;
    std::string order;
    exit_stack target;
    target.callback([&] { order += "old"; });
    target.callback([] { throw test_error("old failed"); });
    exit_stack source;
    source.callback([&] { order += "new"; });
    target = std::move(source);
    EXPECT_EQ(order, "old");
    EXPECT_EQ(capture.reports,
              (std::vector<std::string>{"exit_stack move assignment: old failed"}));
    EXPECT_EQ(source.size(), 0u);  // NOLINT(bugprone-use-after-move): moved-from is empty
    EXPECT_EQ(target.size(), 1u);
    target.close();
    EXPECT_EQ(order, "oldnew");
}

TEST(ExitStack, ExitsMayRegisterMoreExitsWhileUnwinding) {
    std::string order;
    exit_stack stack;
    stack.callback([&] { order += 'a'; });
    stack.callback([&] {
        order += 'b';
        for (int i = 0; i < 20; ++i) stack.callback([&] { order += '.'; });  // reallocates
    });
    stack.close();
    EXPECT_EQ(order, "b....................a");
}

TEST(ExitStack, FourSmallCallbacksNeverTouchTheHeap) {
    int sum = 0;
    int* p = &sum;
    ctxmgr::testing::allocation_scope allocations;
    {
        exit_stack stack;
        stack.callback([p] { *p += 1; });
        stack.callback([p, q = p] { *p += *q > 0 ? 10 : 0; });   // two pointers
        stack.callback([](int* x, int y) { *x += y; }, p, 100);  // function + args
        stack.push([p](std::exception_ptr) { *p += 1000; });
        exit_stack moved = std::move(stack);
        moved.close();
    }
    EXPECT_EQ(allocations.count(), 0u);
    EXPECT_EQ(sum, 1111);
}

TEST(ExitStack, InlineCapacityIsUsedBeforeAnyAllocation) {
    int count = 0;
    ctxmgr::testing::allocation_scope allocations;
    {
        exit_stack stack;
        for (std::size_t i = 0; i < exit_stack::inline_capacity; ++i) {
            stack.callback([&count] { ++count; });
        }
    }
    EXPECT_EQ(allocations.count(), 0u);
    EXPECT_EQ(count, static_cast<int>(exit_stack::inline_capacity));
}

TEST(ExitStack, LargeCallablesAreBoxedAndStillRun) {
    std::array<int, 16> big{};
    big[15] = 7;
    int got = 0;
    {
        exit_stack stack;
        stack.callback([big, &got] { got = big[15]; });
    }
    EXPECT_EQ(got, 7);
}

// A callable whose copy throws on demand.
struct fragile {
    static inline bool throw_on_copy = false;
    int* calls;
    explicit fragile(int* c) : calls(c) {}
    fragile(const fragile& other) : calls(other.calls) {
        if (throw_on_copy) throw test_error("copy failed");
    }
    fragile(fragile&&) noexcept(false) = default;
    void operator()() const { ++*calls; }
};

TEST(ExitStack, CallbackThatCannotBeStoredRunsAtOnceAndThrows) {
    int calls = 0;
    fragile f(&calls);
    exit_stack stack;
    fragile::throw_on_copy = true;
    EXPECT_THROW(stack.callback(f), test_error);
    fragile::throw_on_copy = false;
    EXPECT_EQ(calls, 1);  // run at once rather than lost
    EXPECT_EQ(stack.size(), 0u);
}

TEST(ExitStack, ExitFunctionThatCannotBeStoredRunsAtOnceWithTheError) {
    struct fragile_exit {
        std::exception_ptr* seen;
        fragile_exit(std::exception_ptr* s) : seen(s) {}
        fragile_exit(const fragile_exit&) { throw test_error("copy failed"); }
        void operator()(std::exception_ptr e) const { *seen = e; }
    };
    std::exception_ptr seen;
    fragile_exit f(&seen);
    exit_stack stack;
    EXPECT_THROW(stack.push(f), test_error);
    EXPECT_EQ(what_of(seen), "copy failed");
}

TEST(ExitStack, ThrowingCallbacksStillLetTheOthersRun) {
    unraisable_capture capture;
    std::string order;
    {
        exit_stack stack;
        stack.callback([&] { order += 'a'; });
        stack.callback([&]() { throw test_error("b"); });
        stack.callback([&] { order += 'c'; });
        stack.callback([&]() { throw test_error("d"); });
    }
    EXPECT_EQ(order, "ca");
    EXPECT_EQ(capture.reports, (std::vector<std::string>{"exit_stack destructor: b"}));
}

}  // namespace

// A manager whose enter() registers a callback on the stack it is entered on.
struct registers_on_enter {
    exit_stack* stack;
    events* log;
    void enter() {
        stack->callback([log = log] { log->push_back("registered by enter"); });
    }
    void exit(std::exception_ptr) { log->push_back("manager exit"); }
};

TEST(ExitStack, EnterMayRegisterOnTheSameStackAtEveryStorageBoundary) {
    // 7 fills the inline array but one; 15 does the same for the first heap block: the exit
    // must go into a slot of its own, never past the end of the storage.
    for (int before : {0, 6, 7, 8, 14, 15, 16, 31}) {
        events log;
        {
            exit_stack stack;
            for (int i = 0; i < before; ++i) stack.callback([&log] { log.push_back("earlier"); });
            stack.enter_context(registers_on_enter{&stack, &log});
            EXPECT_EQ(stack.size(), static_cast<std::size_t>(before + 2)) << before;
        }
        ASSERT_EQ(log.size(), static_cast<std::size_t>(before + 2)) << before;
        // Python's order: enter() ran before the exit was pushed, so the exit unwinds first.
        EXPECT_EQ(log[0], "manager exit") << before;
        EXPECT_EQ(log[1], "registered by enter") << before;
        for (int i = 0; i < before; ++i)
            EXPECT_EQ(log[static_cast<std::size_t>(2 + i)], "earlier") << before;
    }
}

TEST(ExitStack, EnterMayRegisterOnTheSameStackWhenEnteredByReference) {
    events log;
    {
        exit_stack stack;
        for (int i = 0; i < 15; ++i) stack.callback([] {});
        registers_on_enter manager{&stack, &log};
        stack.enter_context(manager);
    }
    EXPECT_EQ(log, (events{"manager exit", "registered by enter"}));
}

// True when `e` carries no nested exception (or is not a nested_exception at all).
bool nests_nothing(const std::exception& e) {
    const auto* nested = dynamic_cast<const std::nested_exception*>(&e);
    return nested == nullptr || !nested->nested_ptr();
}

TEST(ExitStack, AfterASuppressionLaterExitsDoNotSeeTheSuppressedException) {
    exit_stack stack;
    stack.push([](std::exception_ptr e) {
        if (!e) std::throw_with_nested(std::logic_error("x"));
    });
    stack.push([](std::exception_ptr) { return true; });
    try {
        ctxmgr::with(stack, [] { throw std::runtime_error("body"); });
        FAIL() << "the later exit's logic_error should propagate";
    } catch (const std::logic_error& e) {
        EXPECT_STREQ(e.what(), "x");
        EXPECT_TRUE(nests_nothing(e)) << ctxmgr::describe(std::current_exception());
    }
}

TEST(ExitStack, CloseInsideACatchBlockDoesNotChainTheCallersException) {
    exit_stack stack;
    stack.callback([] {
        EXPECT_EQ(std::current_exception(), nullptr);
        std::throw_with_nested(std::logic_error("x"));
    });
    try {
        throw std::runtime_error("handled by the caller");
    } catch (const std::runtime_error&) {
        try {
            stack.close();
            FAIL() << "close() should throw";
        } catch (const std::logic_error& e) {
            EXPECT_TRUE(nests_nothing(e)) << ctxmgr::describe(std::current_exception());
        }
        // The caller's handler is intact after close().
        EXPECT_EQ(what_of(std::current_exception()), "handled by the caller");
    }
}

TEST(ExitStack, AnExitReceivingAnExceptionChainsThatOneAlone) {
    exit_stack stack;
    stack.push([](std::exception_ptr e) {
        if (e) std::throw_with_nested(std::logic_error("release failed"));
    });
    try {
        try {
            throw std::runtime_error("outer, handled by the caller");
        } catch (const std::runtime_error&) {
            static_cast<void>(stack.exit(std::make_exception_ptr(std::out_of_range("pending"))));
        }
        FAIL() << "exit should throw";
    } catch (const std::logic_error& e) {
        const auto* nested = dynamic_cast<const std::nested_exception*>(&e);
        ASSERT_NE(nested, nullptr);
        EXPECT_EQ(ctxmgr::describe(nested->nested_ptr()), "std::out_of_range: pending");
    }
}

TEST(ExitStack, WithOfSeveralManagersGivesLaterExitsNoSuppressedException) {
    struct chains_when_clean {
        void enter() {}
        void exit(std::exception_ptr e) {
            if (!e) std::throw_with_nested(std::logic_error("outer exit"));
        }
    };
    struct suppresses {
        void enter() {}
        bool exit(std::exception_ptr) { return true; }
    };
    try {
        static_cast<void>(ctxmgr::with(chains_when_clean{}, suppresses{},
                                       [] { throw std::runtime_error("body"); }));
        FAIL() << "the outer exit's logic_error should propagate";
    } catch (const std::logic_error& e) {
        EXPECT_TRUE(nests_nothing(e)) << ctxmgr::describe(std::current_exception());
    }
}
