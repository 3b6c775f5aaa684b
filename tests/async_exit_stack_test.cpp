#include <ctxmgr/async_exit_stack.hpp>
#include <ctxmgr/async_with.hpp>

#include <gtest/gtest.h>
#include <asio/bind_cancellation_slot.hpp>
#include <asio/cancellation_signal.hpp>
#include <asio/co_spawn.hpp>
#include <asio/io_context.hpp>
#include <asio/post.hpp>

#include <chrono>
#include <exception>
#include <functional>
#include <optional>
#include <string>
#include <system_error>
#include <vector>

#include "async_recording.hpp"
#include "recording.hpp"

namespace {

using ctxmgr::testing::async_recorder;
using ctxmgr::testing::async_suppressing_recorder;
using ctxmgr::testing::contains;
using ctxmgr::testing::exception_from;
using ctxmgr::testing::on_exit;
using ctxmgr::testing::other_error;
using ctxmgr::testing::pause;
using ctxmgr::testing::recorder;
using ctxmgr::testing::run_awaitable;
using ctxmgr::testing::suppressing_recorder;
using ctxmgr::testing::test_error;
using ctxmgr::testing::throw_recorded;
using ctxmgr::testing::trace;
using events = std::vector<std::string>;
using namespace std::chrono_literals;

template <class T>
using task = asio::awaitable<T>;

// The unwinding rules hold from a caller that nothing can cancel (asynchronous exits awaited in
// place) and from one that could be cancelled (asynchronous exits shielded).
template <class Caller>
class AsyncExitStackUnwinding : public ::testing::Test {};
using callers =
    ::testing::Types<ctxmgr::testing::uncancellable_caller, ctxmgr::testing::cancellable_caller>;
TYPED_TEST_SUITE(AsyncExitStackUnwinding, callers);

TYPED_TEST(AsyncExitStackUnwinding, UnwindsSynchronousAndAsynchronousExitsLastInFirstOut) {
    trace log;
    async_recorder a{log, "a"};
    recorder b{log, "b"};
    TypeParam::run([&]() -> task<void> {
        ctxmgr::async_exit_stack stack;
        EXPECT_EQ(co_await stack.enter_async_context(a), "a");
        EXPECT_EQ(stack.enter_context(b), "b");
        stack.callback([&](int n) { log.add("callback " + std::to_string(n)); }, 1);
        stack.push_async_callback(
            [&](int n) -> task<void> {
                co_await pause();
                log.add("async callback " + std::to_string(n));
            },
            2);
        stack.push([&](std::exception_ptr) { log.add("push"); });
        stack.push_async_exit([&](std::exception_ptr) -> task<void> {
            co_await pause();
            log.add("push_async_exit");
        });
        EXPECT_EQ(stack.size(), 6u);
        co_await stack.aclose();
        EXPECT_TRUE(stack.empty());
    }());
    EXPECT_EQ(log.events, (events{"enter a", "enter b", "push_async_exit", "push",
                                  "async callback 2", "callback 1", "exit b", "exit a"}));
}

TYPED_TEST(AsyncExitStackUnwinding, AsAnAsyncManagerItsExitsSeeTheBodysException) {
    trace log;
    async_recorder a{log, "a"};
    recorder b{log, "b"};
    std::exception_ptr thrown;
    const auto caught = exception_from([&] {
        TypeParam::run(ctxmgr::async_with(
            ctxmgr::async_exit_stack(), [&](ctxmgr::async_exit_stack& stack) -> task<void> {
                co_await stack.enter_async_context(a);
                co_await stack.enter_async_context(b);  // a synchronous one is accepted too
                throw_recorded(thrown);
            }));
    });
    EXPECT_EQ(caught, thrown);  // the original object
    EXPECT_EQ(log.events, (events{"enter a", "enter b", "exit b: boom", "exit a: boom"}));
    EXPECT_EQ(log.seen[0], thrown);
    EXPECT_EQ(log.seen[1], thrown);
}

TYPED_TEST(AsyncExitStackUnwinding, SuppressionClearsTheExceptionForTheRest) {
    trace log;
    async_recorder outer{log, "outer"};
    async_suppressing_recorder swallow{log, "swallow", false, on_exit::suppress};
    const std::optional<int> r = TypeParam::run(ctxmgr::async_with(
        ctxmgr::async_exit_stack(), [&](ctxmgr::async_exit_stack& stack) -> task<int> {
            co_await stack.enter_async_context(outer);
            co_await stack.enter_async_context(swallow);
            throw test_error("boom");
        }));
    EXPECT_FALSE(r.has_value());
    EXPECT_EQ(log.events,
              (events{"enter outer", "enter swallow", "exit swallow: boom", "exit outer"}));
}

TYPED_TEST(AsyncExitStackUnwinding, EveryExitRunsAndTheLastExceptionThrownPropagatesChained) {
    trace log;
    async_recorder a{log, "a", false, on_exit::throw_nested};
    recorder b{log, "b", false, on_exit::throw_error};
    async_recorder c{log, "c"};
    try {
        TypeParam::run([&]() -> task<void> {
            ctxmgr::async_exit_stack stack;
            co_await stack.enter_async_context(a);
            co_await stack.enter_async_context(b);
            co_await stack.enter_async_context(c);
            co_await stack.aclose();
        }());
        FAIL() << "expected other_error";
    } catch (const other_error& e) {
        EXPECT_STREQ(e.what(), "exit a failed");
        // a's async exit chained what b threw with throw_chained.
        EXPECT_EQ(ctxmgr::describe(std::current_exception()),
                  "ctxmgr::testing::other_error: exit a failed\n"
                  "  nested: ctxmgr::testing::other_error: exit b failed");
    }
    EXPECT_EQ(log.events, (events{"enter a", "enter b", "enter c", "exit c", "exit b",
                                  "exit a: exit b failed"}));
}

TEST(AsyncExitStack, AFailingEnterRegistersNothing) {
    trace log;
    async_recorder good{log, "good"}, bad{log, "bad", true};
    run_awaitable([&]() -> task<void> {
        ctxmgr::async_exit_stack stack;
        co_await stack.enter_async_context(good);
        EXPECT_THROW(co_await stack.enter_async_context(bad), test_error);
        EXPECT_EQ(stack.size(), 1u);
        co_await stack.aclose();
    }());
    EXPECT_EQ(log.events, (events{"enter good", "enter bad", "exit good"}));
}

// A manager whose async_enter registers on the same stack unwinds before what it registered.
struct registering_manager {
    ctxmgr::async_exit_stack* stack;
    trace* log;
    task<void> async_enter() {
        co_await pause();
        stack->callback([l = log] { l->add("registered by enter"); });
        log->add("enter");
    }
    task<void> async_exit(std::exception_ptr) {
        log->add("exit");
        co_return;
    }
};

TEST(AsyncExitStack, AManagerRegisteringOnTheSameStackUnwindsBeforeWhatItRegistered) {
    trace log;
    run_awaitable([&]() -> task<void> {
        ctxmgr::async_exit_stack stack;
        co_await stack.enter_async_context(registering_manager{&stack, &log});
        co_await stack.aclose();
    }());
    EXPECT_EQ(log.events, (events{"enter", "exit", "registered by enter"}));
}

TEST(AsyncExitStack, RvalueManagersAreOwnedAndReferenceTargetsComeWrapped) {
    struct holder {
        int value = 3;
        task<std::reference_wrapper<int>> async_enter() { co_return std::ref(value); }
        task<void> async_exit(std::exception_ptr) { co_return; }
    };
    run_awaitable([&]() -> task<void> {
        ctxmgr::async_exit_stack stack;
        std::reference_wrapper<int> v = co_await stack.enter_async_context(holder{});
        EXPECT_EQ(v.get(), 3);
        v.get() = 4;  // refers to the owned manager's member
        co_await stack.aclose();
    }());
}

TEST(AsyncExitStack, PopAllMovesThePendingExitsToANewStack) {
    trace log;
    async_recorder a{log, "a"};
    run_awaitable([&]() -> task<void> {
        std::optional<ctxmgr::async_exit_stack> popped;
        {
            ctxmgr::async_exit_stack stack;
            co_await stack.enter_async_context(a);
            popped.emplace(stack.pop_all());
            EXPECT_TRUE(stack.empty());
        }
        EXPECT_EQ(log.events, (events{"enter a"}));
        co_await popped->aclose();
    }());
    EXPECT_EQ(log.events, (events{"enter a", "exit a"}));
}

TEST(AsyncExitStack, DestroyedWithPendingAsyncExitsReportsThemAndRunsTheSynchronousOnes) {
    ctxmgr::testing::unraisable_capture reports;
    trace log;
    async_recorder a{log, "a"};
    recorder b{log, "b"};
    run_awaitable([&]() -> task<void> {
        ctxmgr::async_exit_stack stack;
        co_await stack.enter_async_context(a);
        stack.enter_context(b);
        stack.push_async_callback([]() -> task<void> { co_return; });
    }());
    EXPECT_EQ(log.events, (events{"enter a", "enter b", "exit b"}));
    ASSERT_EQ(reports.reports.size(), 1u);
    const std::string& report = reports.reports[0];
    EXPECT_TRUE(contains(report,
                         "async_exit_stack destructor: async_exit_stack destroyed with 2 "
                         "asynchronous exits never awaited"))
        << report;
    EXPECT_TRUE(contains(report, "the exit of ctxmgr::testing::basic_async_recorder<false>"))
        << report;
    EXPECT_TRUE(contains(report, "the callback")) << report;
}

// Cancelled in the body: every exit still runs to completion, shielded.
TEST(AsyncExitStack, CancelledBodyStillRunsEveryExitToCompletion) {
    trace log;
    asio::io_context io;
    asio::cancellation_signal signal;
    std::exception_ptr outcome;
    auto main = [&]() -> task<void> {
        co_await ctxmgr::async_with(
            ctxmgr::async_exit_stack(), [&](ctxmgr::async_exit_stack& stack) -> task<void> {
                stack.push_async_callback([&]() -> task<void> {
                    co_await pause(20ms);
                    log.add("first exit done");
                });
                stack.push_async_exit([&](std::exception_ptr e) -> task<void> {
                    co_await pause(20ms);
                    log.add(e ? "second exit done, saw the cancellation" : "second exit done");
                });
                asio::post(io, [&] { signal.emit(asio::cancellation_type::terminal); });
                co_await pause(5s);
                log.add("body finished");
            });
    };
    asio::co_spawn(
        io, main(),
        asio::bind_cancellation_slot(signal.slot(), [&](std::exception_ptr e) { outcome = e; }));
    io.run();
    EXPECT_TRUE(ctxmgr::testing::holds_system_error(outcome, asio::error::operation_aborted));
    EXPECT_EQ(log.events, (events{"second exit done, saw the cancellation", "first exit done"}));
}

TEST(AsyncExitStack, AnExitOverrunningTheTimeoutIsCancelledAndTheOthersStillRun) {
    const auto previous = ctxmgr::set_async_exit_timeout(20ms);
    trace log;
    try {
        run_awaitable([&]() -> task<void> {
            ctxmgr::async_exit_stack stack;
            stack.callback([&] { log.add("outer exit"); });
            stack.push_async_exit([&](std::exception_ptr) -> task<void> {
                try {
                    co_await pause(5s);
                } catch (const std::system_error&) {
                    log.add("slow exit cancelled");
                    throw;
                }
            });
            co_await stack.aclose();
        }());
        ADD_FAILURE() << "expected timeout_error";
    } catch (const ctxmgr::timeout_error& e) {
        EXPECT_TRUE(contains(e.what(), "timed out after 20 ms waiting for the exit function"))
            << e.what();
    }
    ctxmgr::set_async_exit_timeout(previous);
    EXPECT_EQ(log.events, (events{"slow exit cancelled", "outer exit"}));
}

}  // namespace
