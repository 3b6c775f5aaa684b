#include <ctxmgr/async_contextlib.hpp>
#include <ctxmgr/async_contextmanager.hpp>
#include <ctxmgr/async_with.hpp>

#include <gtest/gtest.h>
#include <asio/bind_cancellation_slot.hpp>
#include <asio/cancellation_signal.hpp>
#include <asio/co_spawn.hpp>
#include <asio/io_context.hpp>
#include <asio/post.hpp>

#include <chrono>
#include <exception>
#include <optional>
#include <string>
#include <vector>

#include "async_recording.hpp"
#include "recording.hpp"

namespace {

using ctxmgr::async_yield;
using ctxmgr::testing::exception_from;
using ctxmgr::testing::other_error;
using ctxmgr::testing::pause;
using ctxmgr::testing::run_awaitable;
using ctxmgr::testing::test_error;
using ctxmgr::testing::throw_recorded;
using ctxmgr::testing::trace;
using events = std::vector<std::string>;
using namespace std::chrono_literals;

template <class T>
using task = asio::awaitable<T>;

// Setup, hand over, teardown; both halves await a timer.
task<void> tagged(async_yield<std::string> yield, trace* log, std::string name) {
    co_await pause(1ms);
    log->add("setup " + name);
    co_await yield("<" + name + ">");
    co_await pause(1ms);
    log->add("teardown " + name);
}

TEST(AsyncContextmanager, SetupTargetAndTeardownAroundTheBody) {
    trace log;
    static_assert(ctxmgr::async_context_manager<ctxmgr::async_contextmanager<std::string>>);
    run_awaitable(ctxmgr::async_with(ctxmgr::async_contextmanager(tagged, &log, std::string("p")),
                                     [&](std::string& tag) -> task<void> {
                                         co_await pause();
                                         log.add("body " + tag);
                                     }));
    EXPECT_EQ(log.events, (events{"setup p", "body <p>", "teardown p"}));
}

TEST(AsyncContextmanager, TeardownIsSkippedWhenTheBodyThrowsAndTheSameObjectPropagates) {
    trace log;
    std::exception_ptr thrown;
    const auto caught = exception_from([&] {
        run_awaitable(
            ctxmgr::async_with(ctxmgr::async_contextmanager(tagged, &log, std::string("p")),
                               [&](std::string&) -> task<void> {
                                   co_await pause();
                                   throw_recorded(thrown);
                               }));
    });
    EXPECT_EQ(caught, thrown);
    EXPECT_EQ(log.events, (events{"setup p"}));
}

task<void> guarded(async_yield<int> yield, trace* log, bool swallow, bool replace) {
    try {
        co_await yield(7);
        log->add("normal teardown");
    } catch (const test_error& e) {
        log->add(std::string("caught ") + e.what());
        if (replace) throw other_error("replaced");
        if (!swallow) throw;
    }
}

TEST(AsyncContextmanager, RethrowingTheExceptionPropagatesTheSameObject) {
    trace log;
    std::exception_ptr thrown;
    const auto caught = exception_from([&] {
        run_awaitable(ctxmgr::async_with(ctxmgr::async_contextmanager(guarded, &log, false, false),
                                         [&](int& v) -> task<int> {
                                             EXPECT_EQ(v, 7);
                                             throw_recorded(thrown);
                                             co_return 1;
                                         }));
    });
    EXPECT_EQ(caught, thrown);
    EXPECT_EQ(log.events, (events{"caught boom"}));
}

TEST(AsyncContextmanager, FinishingNormallyAfterTheExceptionSuppressesIt) {
    trace log;
    const std::optional<int> r = run_awaitable(ctxmgr::async_with(
        ctxmgr::async_contextmanager(guarded, &log, true, false), [](int&) -> task<int> {
            co_await pause();
            throw test_error("boom");
        }));
    EXPECT_FALSE(r.has_value());
    EXPECT_EQ(log.events, (events{"caught boom"}));
    EXPECT_EQ(
        run_awaitable(ctxmgr::async_with(ctxmgr::async_contextmanager(guarded, &log, true, false),
                                         [](int& v) -> task<int> { co_return v; })),
        7);
}

TEST(AsyncContextmanager, ThrowingSomethingElseReplacesTheException) {
    trace log;
    EXPECT_THROW(
        run_awaitable(ctxmgr::async_with(ctxmgr::async_contextmanager(guarded, &log, false, true),
                                         [](int&) -> task<void> {
                                             throw test_error("boom");
                                             co_return;
                                         })),
        other_error);
}

task<void> never_yields(async_yield<int>) {
    co_return;
}
task<void> setup_fails(async_yield<int>) {
    co_await pause();
    throw test_error("setup failed");
}
task<void> yields_twice(async_yield<int> yield, trace* log) {
    struct unwound {
        trace* log;
        ~unwound() { log->add("locals destroyed"); }
    } guard{log};
    co_await yield(1);
    co_await yield(2);
    log->add("after the second yield");
}

task<void> yields_again_after_catching(async_yield<int> yield) {
    try {
        co_await yield(1);
    } catch (const test_error&) {
    }
    co_await yield(2);
}

TEST(AsyncContextmanager, NotYieldingIsAProtocolError) {
    EXPECT_THROW(run_awaitable(ctxmgr::async_with(ctxmgr::async_contextmanager(never_yields),
                                                  [](int&) -> task<void> { co_return; })),
                 ctxmgr::protocol_error);
    EXPECT_THROW(run_awaitable(ctxmgr::async_with(ctxmgr::async_contextmanager(setup_fails),
                                                  [](int&) -> task<void> { co_return; })),
                 test_error);
}

TEST(AsyncContextmanager, YieldingTwiceIsAProtocolErrorAndUnwindsTheCoroutine) {
    trace log;
    try {
        run_awaitable(ctxmgr::async_with(ctxmgr::async_contextmanager(yields_twice, &log),
                                         [](int&) -> task<void> { co_return; }));
        FAIL() << "expected protocol_error";
    } catch (const ctxmgr::protocol_error& e) {
        EXPECT_STREQ(e.what(),
                     "async_contextmanager: the coroutine did not stop (it yielded twice)");
    }
    EXPECT_EQ(log.events, (events{"locals destroyed"}));

    std::exception_ptr thrown;
    try {
        run_awaitable(ctxmgr::async_with(ctxmgr::async_contextmanager(yields_again_after_catching),
                                         [&](int&) -> task<void> {
                                             co_await pause();
                                             throw_recorded(thrown);
                                         }));
        FAIL() << "expected protocol_error";
    } catch (const ctxmgr::protocol_error& e) {
        EXPECT_STREQ(e.what(),
                     "async_contextmanager: the coroutine did not stop after the exception was "
                     "thrown in");
        const auto* nested = dynamic_cast<const std::nested_exception*>(&e);
        ASSERT_NE(nested, nullptr);
        EXPECT_EQ(nested->nested_ptr(), thrown);
    }
}

TEST(AsyncContextmanager, EnteringTwiceIsAProtocolError) {
    trace log;
    run_awaitable([&]() -> task<void> {
        ctxmgr::async_contextmanager m(tagged, &log, std::string("x"));
        co_await m.async_enter();
        EXPECT_THROW(co_await m.async_enter(), ctxmgr::protocol_error);
        co_await m.async_exit(nullptr);
        EXPECT_THROW(co_await m.async_exit(nullptr), ctxmgr::protocol_error);
    }());
    EXPECT_EQ(log.events, (events{"setup x", "teardown x"}));
}

task<void> refers(async_yield<std::string&> yield, std::string& out) {
    out += "<p>";
    co_await yield(out);
    out += "</p>";
}
task<void> nothing(async_yield<> yield, trace* log) {
    log->add("in");
    co_await yield();
    log->add("out");
}

TEST(AsyncContextmanager, ReferenceAndVoidTargets) {
    std::string html;
    run_awaitable(ctxmgr::async_with(ctxmgr::async_contextmanager(refers, std::ref(html)),
                                     [&](std::string& s) -> task<void> {
                                         EXPECT_EQ(&s, &html);
                                         s += "hi";
                                         co_return;
                                     }));
    EXPECT_EQ(html, "<p>hi</p>");
    trace log;
    run_awaitable(
        ctxmgr::async_with(ctxmgr::async_contextmanager(nothing, &log), [&]() -> task<void> {
            log.add("body");
            co_return;
        }));
    EXPECT_EQ(log.events, (events{"in", "body", "out"}));
}

TEST(AsyncContextmanager, ALambdaNamesItsTarget) {
    int seen = 0;
    run_awaitable(ctxmgr::async_with(
        ctxmgr::async_contextmanager<int>(
            [](async_yield<int> yield, int base) -> task<void> { co_await yield(base + 1); }, 41),
        [&](int& v) -> task<void> {
            seen = v;
            co_return;
        }));
    EXPECT_EQ(seen, 42);
}

TEST(AsyncContextmanager, DestroyedWhileEnteredUnwindsTheCoroutine) {
    trace log;
    run_awaitable([&]() -> task<void> {
        {
            ctxmgr::async_contextmanager m(yields_twice, &log);
            co_await m.async_enter();
        }
        co_await pause(5ms);  // the unwinding runs on the executor
    }());
    EXPECT_EQ(log.events, (events{"locals destroyed"}));
}

// A cancellation while the setup awaits reaches the setup; the enter throws what it threw.
task<void> slow_setup(async_yield<int> yield, trace* log) {
    try {
        co_await pause(5s);
    } catch (const std::system_error&) {
        log->add("setup cancelled");
        throw;
    }
    co_await yield(1);
}

TEST(AsyncContextmanager, CancellationDuringTheSetupReachesIt) {
    trace log;
    asio::io_context io;
    asio::cancellation_signal signal;
    std::exception_ptr outcome;
    bool body_ran = false;
    auto main = [&]() -> task<void> {
        co_await ctxmgr::async_with(ctxmgr::async_contextmanager(slow_setup, &log),
                                    [&](int&) -> task<void> {
                                        body_ran = true;
                                        co_return;
                                    });
    };
    asio::co_spawn(
        io, main(),
        asio::bind_cancellation_slot(signal.slot(), [&](std::exception_ptr e) { outcome = e; }));
    asio::post(io, [&] { signal.emit(asio::cancellation_type::terminal); });
    const auto started = std::chrono::steady_clock::now();
    io.run();
    EXPECT_LT(std::chrono::steady_clock::now() - started, 4s);
    EXPECT_TRUE(ctxmgr::testing::holds_system_error(outcome, asio::error::operation_aborted))
        << ctxmgr::describe(outcome);
    EXPECT_FALSE(body_ran);
    EXPECT_EQ(log.events, (events{"setup cancelled"}));
}

// async_with's exit timeout reaches a teardown that overruns it.
task<void> slow_teardown(async_yield<int> yield, trace* log) {
    co_await yield(1);
    try {
        co_await pause(5s);
    } catch (const std::system_error&) {
        log->add("teardown cancelled");
        throw;
    }
}

TEST(AsyncContextmanager, AnOverrunningTeardownIsCancelledByTheExitTimeout) {
    const auto previous = ctxmgr::set_async_exit_timeout(20ms);
    trace log;
    EXPECT_THROW(run_awaitable(ctxmgr::async_with(ctxmgr::async_contextmanager(slow_teardown, &log),
                                                  [](int&) -> task<void> { co_return; })),
                 ctxmgr::timeout_error);
    ctxmgr::set_async_exit_timeout(previous);
    EXPECT_EQ(log.events, (events{"teardown cancelled"}));
}

// ---- aclosing, async_nullcontext ----------------------------------------------------------

struct async_stream {
    trace* log;
    task<void> async_close() {
        co_await pause();
        log->add("closed");
    }
};

TEST(AsyncContextlib, AclosingAwaitsAsyncCloseOnEveryPath) {
    trace log;
    async_stream s{&log};
    run_awaitable(ctxmgr::async_with(ctxmgr::aclosing(s), [&](async_stream& t) -> task<void> {
        EXPECT_EQ(&t, &s);
        log.add("body");
        co_return;
    }));
    EXPECT_THROW(run_awaitable(ctxmgr::async_with(ctxmgr::aclosing(async_stream{&log}),
                                                  [](async_stream&) -> task<void> {
                                                      throw test_error("x");
                                                      co_return;
                                                  })),
                 test_error);
    EXPECT_EQ(log.events, (events{"body", "closed", "closed"}));
}

TEST(AsyncContextlib, AsyncNullcontextHandsOverItsValue) {
    int x = 5;
    run_awaitable(ctxmgr::async_with(ctxmgr::async_nullcontext(x), ctxmgr::async_nullcontext(),
                                     [&](int& v) -> task<void> {
                                         EXPECT_EQ(&v, &x);
                                         co_return;
                                     }));
    static_assert(!ctxmgr::async_can_suppress_v<ctxmgr::async_nullcontext<int>>);
}

}  // namespace
