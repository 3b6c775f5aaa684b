#include <ctxmgr/async_with.hpp>
#include <ctxmgr/contextlib.hpp>
#include <ctxmgr/lock.hpp>

#include <gtest/gtest.h>
#include <asio/bind_cancellation_slot.hpp>
#include <asio/cancellation_signal.hpp>
#include <asio/co_spawn.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/io_context.hpp>
#include <asio/post.hpp>
#include <asio/steady_timer.hpp>
#include <asio/system_error.hpp>

#include <algorithm>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "async_recording.hpp"
#include "recording.hpp"

namespace {

using ctxmgr::testing::async_recorder;
using ctxmgr::testing::async_suppressing_recorder;
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

// Every rule is checked three times, and must come out as with() does: with synchronous
// managers (enter/exit called directly), and with asynchronous ones (both halves suspend) from
// a coroutine that nothing can cancel (the exits awaited in place) and from one that could be
// (the exits shielded in threads of their own).
struct sync_managers {
    using plain = recorder;
    using suppressing = suppressing_recorder;
    using caller = ctxmgr::testing::uncancellable_caller;
};
struct async_managers {
    using plain = async_recorder;
    using suppressing = async_suppressing_recorder;
    using caller = ctxmgr::testing::uncancellable_caller;
};
struct async_managers_cancellable_caller : async_managers {
    using caller = ctxmgr::testing::cancellable_caller;
};

template <class Flavor>
class AsyncWith : public ::testing::Test {
  protected:
    using plain = typename Flavor::plain;
    using suppressing = typename Flavor::suppressing;

    template <class T>
    static T run(asio::awaitable<T> a) {
        return Flavor::caller::run(std::move(a));
    }
};
using flavors = ::testing::Types<sync_managers, async_managers, async_managers_cancellable_caller>;
TYPED_TEST_SUITE(AsyncWith, flavors);

// ---- step 1: enter in order; a failing enter exits the ones entered, innermost first ----

TYPED_TEST(AsyncWith, EntersInOrderRunsBodyExitsInReverse) {
    trace log;
    typename TestFixture::plain a{log, "a"}, b{log, "b"}, c{log, "c"};
    TestFixture::run(ctxmgr::async_with(a, b, c, [&]() -> task<void> {
        co_await pause();
        log.add("body");
    }));
    EXPECT_EQ(log.events,
              (events{"enter a", "enter b", "enter c", "body", "exit c", "exit b", "exit a"}));
    for (const auto& e : log.seen) EXPECT_EQ(e, nullptr);
}

TYPED_TEST(AsyncWith, FailingEnterExitsOnlyTheManagersAlreadyEnteredInnermostFirst) {
    trace log;
    typename TestFixture::plain a{log, "a"}, b{log, "b"}, c{log, "c", true}, d{log, "d"};
    EXPECT_THROW(TestFixture::run(ctxmgr::async_with(a, b, c, d,
                                                     [&]() -> task<void> {
                                                         log.add("body");
                                                         co_return;
                                                     })),
                 test_error);
    EXPECT_EQ(log.events, (events{"enter a", "enter b", "enter c", "exit b: enter c failed",
                                  "exit a: enter c failed"}));
}

TYPED_TEST(AsyncWith, OuterManagerMaySuppressAFailingEnter) {
    trace log;
    typename TestFixture::suppressing a{log, "a", false, on_exit::suppress};
    typename TestFixture::plain b{log, "b", true};
    const std::optional<int> result =
        TestFixture::run(ctxmgr::async_with(a, b, []() -> task<int> { co_return 1; }));
    EXPECT_FALSE(result.has_value());
    EXPECT_EQ(log.events, (events{"enter a", "enter b", "exit a: enter b failed"}));
}

TYPED_TEST(AsyncWith, ExitSeesTheOriginalEnterException) {
    trace log;
    typename TestFixture::plain a{log, "a"}, b{log, "b", true};
    const auto caught = exception_from(
        [&] { TestFixture::run(ctxmgr::async_with(a, b, []() -> task<void> { co_return; })); });
    ASSERT_EQ(log.seen.size(), 1u);
    EXPECT_EQ(log.seen[0], caught);
}

// ---- step 2: the body gets the targets --------------------------------------------------

struct void_manager {
    int* entered;
    void enter() { ++*entered; }
    void exit(std::exception_ptr) {}
};

struct async_void_manager {
    int* entered;
    task<void> async_enter() {
        co_await pause();
        ++*entered;
    }
    task<void> async_exit(std::exception_ptr) { co_return; }
};

TYPED_TEST(AsyncWith, BodyReceivesNonVoidTargetsInOrder) {
    trace log;
    int entered = 0;
    typename TestFixture::plain a{log, "a"};
    void_manager v{&entered};
    async_void_manager av{&entered};
    typename TestFixture::plain b{log, "b"};
    std::string got;
    TestFixture::run(
        ctxmgr::async_with(a, v, av, b, [&](std::string& x, std::string& y) -> task<void> {
            got = x + y;
            co_return;
        }));
    EXPECT_EQ(got, "ab");
    EXPECT_EQ(entered, 2);
}

TYPED_TEST(AsyncWith, BodyWithoutParametersIsAccepted) {
    trace log;
    typename TestFixture::plain a{log, "a"};
    bool ran = false;
    TestFixture::run(ctxmgr::async_with(a, [&]() -> task<void> {
        ran = true;
        co_return;
    }));
    EXPECT_TRUE(ran);
    EXPECT_EQ(log.events, (events{"enter a", "exit a"}));
}

// A reference target travels through the awaitable as a reference_wrapper.
struct async_ref_manager {
    int value = 0;
    task<std::reference_wrapper<int>> async_enter() { co_return std::ref(value); }
    task<void> async_exit(std::exception_ptr) { co_return; }
};
struct ref_manager {
    int value = 0;
    int& enter() { return value; }
    void exit(std::exception_ptr) {}
};

TEST(AsyncWithTargets, ReferenceTargetRefersToTheManagersObject) {
    static_assert(std::is_same_v<ctxmgr::async_target_t<async_ref_manager>, int&>);
    async_ref_manager m;
    ref_manager s;
    run_awaitable(ctxmgr::async_with(m, s, [](int& v, int& w) -> task<void> {
        v = 42;
        w = 43;
        co_return;
    }));
    EXPECT_EQ(m.value, 42);
    EXPECT_EQ(s.value, 43);
}

// A by-value target that records its destruction (a moved-from one says so).
struct witness {
    trace* log;
    explicit witness(trace* l) : log(l) {}
    witness(witness&& other) noexcept : log(std::exchange(other.log, nullptr)) {}
    ~witness() {
        if (log != nullptr) log->add("target destroyed");
    }
};

struct async_witness_manager {
    trace& log;
    std::string name;
    task<witness> async_enter() {
        log.add("enter " + name);
        co_return witness(&log);
    }
    task<void> async_exit(std::exception_ptr) {
        co_await pause();
        log.add("exit " + name);
    }
};

TYPED_TEST(AsyncWith, ByValueTargetLivesUntilEveryExitHasRun) {
    trace log;
    typename TestFixture::plain outer{log, "outer"};
    async_witness_manager inner{log, "inner"};
    TestFixture::run(ctxmgr::async_with(outer, inner, [&](std::string&, witness& w) -> task<void> {
        EXPECT_EQ(w.log, &log);
        co_return;
    }));
    EXPECT_EQ(log.events, (events{"enter outer", "enter inner", "exit inner", "exit outer",
                                  "target destroyed"}));
}

TYPED_TEST(AsyncWith, ByValueTargetIsDestroyedWhenTheBodyThrows) {
    trace log;
    async_witness_manager m{log, "m"};
    EXPECT_THROW(TestFixture::run(ctxmgr::async_with(m,
                                                     [](witness&) -> task<void> {
                                                         co_await pause();
                                                         throw test_error("x");
                                                     })),
                 test_error);
    EXPECT_EQ(log.events, (events{"enter m", "exit m", "target destroyed"}));
}

TYPED_TEST(AsyncWith, TargetOfAFailingEnterIsNeverBuilt) {
    trace log;
    async_witness_manager ok{log, "ok"};
    typename TestFixture::plain failing{log, "failing", true};
    EXPECT_THROW(TestFixture::run(ctxmgr::async_with(
                     ok, failing, [](witness&, std::string&) -> task<void> { co_return; })),
                 test_error);
    EXPECT_EQ(log.events, (events{"enter ok", "enter failing", "exit ok", "target destroyed"}));
}

// Rvalue managers and bodies are moved into the coroutine's frame, so an awaitable made in
// one full-expression may run later.
TYPED_TEST(AsyncWith, RvalueManagersLiveInTheFrame) {
    trace log;
    auto later = ctxmgr::async_with(typename TestFixture::plain{log, "r"},
                                    [&log](std::string& name) -> task<int> {
                                        log.add("body " + name);
                                        co_return 5;
                                    });
    EXPECT_TRUE(log.events.empty());
    EXPECT_EQ(TestFixture::run(std::move(later)), 5);
    EXPECT_EQ(log.events, (events{"enter r", "body r", "exit r"}));
}

// ---- step 3: exits see the pending exception -------------------------------------------

TYPED_TEST(AsyncWith, EveryExitSeesTheBodysException) {
    trace log;
    typename TestFixture::plain a{log, "a"}, b{log, "b"};
    EXPECT_THROW(TestFixture::run(ctxmgr::async_with(a, b,
                                                     []() -> task<void> {
                                                         co_await pause();
                                                         throw test_error("boom");
                                                     })),
                 test_error);
    EXPECT_EQ(log.events, (events{"enter a", "enter b", "exit b: boom", "exit a: boom"}));
}

TYPED_TEST(AsyncWith, InnerSuppressionHidesTheExceptionFromOuterManagers) {
    trace log;
    typename TestFixture::plain a{log, "a"};
    typename TestFixture::suppressing b{log, "b", false, on_exit::suppress};
    TestFixture::run(ctxmgr::async_with(a, b, []() -> task<void> {
        co_await pause();
        throw test_error("boom");
    }));
    EXPECT_EQ(log.events, (events{"enter a", "enter b", "exit b: boom", "exit a"}));
    EXPECT_EQ(log.seen[1], nullptr);
}

TYPED_TEST(AsyncWith, ExitThatThrowsReplacesThePendingExceptionForOuterManagers) {
    trace log;
    typename TestFixture::plain a{log, "a"}, b{log, "b", false, on_exit::throw_error};
    EXPECT_THROW(TestFixture::run(ctxmgr::async_with(a, b,
                                                     []() -> task<void> {
                                                         co_await pause();
                                                         throw test_error("boom");
                                                     })),
                 other_error);
    EXPECT_EQ(log.events, (events{"enter a", "enter b", "exit b: boom", "exit a: exit b failed"}));
}

TYPED_TEST(AsyncWith, ExitThatThrowsOnTheNormalPathReachesOuterManagers) {
    trace log;
    typename TestFixture::plain a{log, "a"}, b{log, "b", false, on_exit::throw_error};
    EXPECT_THROW(TestFixture::run(ctxmgr::async_with(a, b, []() -> task<void> { co_return; })),
                 other_error);
    EXPECT_EQ(log.events, (events{"enter a", "enter b", "exit b", "exit a: exit b failed"}));
}

// The synchronous recorder chains with std::throw_with_nested (inside the handler), the
// asynchronous one with throw_chained: the same chain comes out.
TYPED_TEST(AsyncWith, ChainedExitFailureNestsTheBodysOwnException) {
    trace log;
    typename TestFixture::plain a{log, "a", false, on_exit::throw_nested};
    std::exception_ptr body_error;
    try {
        TestFixture::run(ctxmgr::async_with(a, [&]() -> task<void> {
            co_await pause();
            throw_recorded(body_error);
        }));
        FAIL() << "expected an exception";
    } catch (const other_error& e) {
        const auto* nested = dynamic_cast<const std::nested_exception*>(&e);
        ASSERT_NE(nested, nullptr);
        EXPECT_EQ(nested->nested_ptr(), body_error);
    }
}

TYPED_TEST(AsyncWith, OuterManagerMaySuppressAnExceptionThrownByAnInnerExit) {
    trace log;
    typename TestFixture::suppressing a{log, "a", false, on_exit::suppress};
    typename TestFixture::plain b{log, "b", false, on_exit::throw_error};
    const std::optional<int> r =
        TestFixture::run(ctxmgr::async_with(a, b, []() -> task<int> { co_return 5; }));
    EXPECT_FALSE(r.has_value());
    EXPECT_EQ(log.events, (events{"enter a", "enter b", "exit b", "exit a: exit b failed"}));
}

// ---- step 4: the original exception object propagates -----------------------------------

TYPED_TEST(AsyncWith, RethrowsTheOriginalExceptionObject) {
    trace log;
    typename TestFixture::plain a{log, "a"}, b{log, "b"};
    std::exception_ptr thrown;
    const auto caught = exception_from([&] {
        TestFixture::run(ctxmgr::async_with(a, b, [&]() -> task<void> {
            co_await pause();
            throw_recorded(thrown);
        }));
    });
    EXPECT_EQ(thrown, caught);
    EXPECT_EQ(log.seen[0], thrown);
    EXPECT_EQ(log.seen[1], thrown);
}

TYPED_TEST(AsyncWith, NonStandardExceptionsPropagateToo) {
    trace log;
    typename TestFixture::plain a{log, "a"};
    EXPECT_THROW(TestFixture::run(ctxmgr::async_with(a,
                                                     []() -> task<void> {
                                                         co_await pause();
                                                         throw 42;
                                                     })),
                 int);
    EXPECT_EQ(log.events, (events{"enter a", "exit a: ?"}));
}

// ---- step 5: the result ----------------------------------------------------------------

TYPED_TEST(AsyncWith, ReturnsTheBodysResult) {
    trace log;
    typename TestFixture::plain a{log, "a"};
    auto seven = []() -> task<int> { co_return 7; };
    static_assert(std::is_same_v<decltype(ctxmgr::async_with(a, seven)), task<int>>);
    EXPECT_EQ(TestFixture::run(ctxmgr::async_with(a, seven)), 7);
}

TYPED_TEST(AsyncWith, ReturnsOptionalWhenAManagerMaySuppress) {
    trace log;
    typename TestFixture::suppressing s{log, "s", false, on_exit::suppress};
    typename TestFixture::plain outer{log, "outer"};
    auto body = []() -> task<std::string> { co_return "x"; };
    static_assert(std::is_same_v<decltype(ctxmgr::async_with(outer, s, body)),
                                 task<std::optional<std::string>>>);
    static_assert(
        std::is_same_v<ctxmgr::async_with_result_t<decltype(outer)&, decltype(s)&, decltype(body)>,
                       std::optional<std::string>>);
    EXPECT_EQ(TestFixture::run(ctxmgr::async_with(outer, s, body)), "x");
    EXPECT_EQ(TestFixture::run(ctxmgr::async_with(outer, s,
                                                  []() -> task<std::string> {
                                                      co_await pause();
                                                      throw test_error("no");
                                                  })),
              std::nullopt);
}

TYPED_TEST(AsyncWith, SuppressibleVoidBodyReturnsVoid) {
    trace log;
    typename TestFixture::suppressing s{log, "s", false, on_exit::suppress};
    auto body = []() -> task<void> {
        throw test_error("swallowed");
        co_return;
    };
    static_assert(std::is_same_v<decltype(ctxmgr::async_with(s, body)), task<void>>);
    TestFixture::run(ctxmgr::async_with(s, body));
    EXPECT_EQ(log.events.back(), "exit s: swallowed");
}

TYPED_TEST(AsyncWith, MoveOnlyResultsAreReturned) {
    trace log;
    typename TestFixture::plain a{log, "a"};
    auto p = TestFixture::run(ctxmgr::async_with(
        a, []() -> task<std::unique_ptr<int>> { co_return std::make_unique<int>(9); }));
    EXPECT_EQ(*p, 9);
    typename TestFixture::suppressing s{log, "s"};
    auto q = TestFixture::run(ctxmgr::async_with(
        s, []() -> task<std::unique_ptr<int>> { co_return std::make_unique<int>(8); }));
    ASSERT_TRUE(q.has_value());
    EXPECT_EQ(**q, 8);
}

TEST(AsyncWithResult, ZeroManagersJustAwaitsTheBody) {
    EXPECT_EQ(run_awaitable(ctxmgr::async_with([]() -> task<int> { co_return 4; })), 4);
}

TEST(AsyncWithResult, AnRvalueBodyLivesUntilItsCoroutineHasFinished) {
    // The body's coroutine refers to the closure it was called on: async_with's frame keeps
    // the closure, moved in, until the co_await is over, with no manager as with some.
    auto later =
        ctxmgr::async_with([word = std::string("kept past a suspension")]() -> task<std::string> {
            co_await pause();
            co_return word;
        });
    EXPECT_EQ(run_awaitable(std::move(later)), "kept past a suspension");
}

// ---- synchronous managers of the library --------------------------------------------------

TEST(AsyncWithSync, LockIsHeldAcrossTheBodysAwaitsAndReleased) {
    std::mutex m;
    bool held_inside = false;
    run_awaitable(ctxmgr::async_with(ctxmgr::lock(m), [&]() -> task<void> {
        co_await pause();
        held_inside = !m.try_lock();
    }));
    EXPECT_TRUE(held_inside);
    ASSERT_TRUE(m.try_lock());
    m.unlock();
}

TEST(AsyncWithSync, SuppressFromContextlibWorks) {
    const std::optional<int> r =
        run_awaitable(ctxmgr::async_with(ctxmgr::suppress<test_error>(), []() -> task<int> {
            co_await pause();
            throw test_error("gone");
        }));
    EXPECT_FALSE(r.has_value());
}

// ---- async_decorate ---------------------------------------------------------------------

TEST(AsyncDecorate, RunsTheFunctionInAFreshManagerPerCall) {
    trace log;
    int made = 0;
    auto twice = ctxmgr::async_decorate(
        [&] {
            return async_recorder{log, "m" + std::to_string(++made)};
        },
        [&](int x) -> task<int> {
            co_await pause();
            log.add("call " + std::to_string(x));
            co_return 2 * x;
        });
    EXPECT_EQ(run_awaitable(twice(4)), 8);
    EXPECT_EQ(run_awaitable(twice(5)), 10);
    EXPECT_EQ(log.events,
              (events{"enter m1", "call 4", "exit m1", "enter m2", "call 5", "exit m2"}));
}

// ---- step 6: cancellation ---------------------------------------------------------------

// A manager whose enter and exit each wait on a timer and record whether the wait completed
// or was cancelled, and that can cancel the whole with at one of its await points.
struct cancel_point {
    std::string at;  // "enter a", "body", "exit b", ...
    asio::cancellation_signal* signal = nullptr;
    trace* log = nullptr;

    // Emits the cancellation through the executor, so it arrives while `here` is awaited.
    void maybe_cancel(const std::string& here, const asio::any_io_executor& executor) const {
        if (here != at) return;
        log->add("cancel at " + here);
        asio::post(executor, [s = signal] { s->emit(asio::cancellation_type::terminal); });
    }
};

task<void> timed_step(const cancel_point& point, const std::string& here,
                      std::chrono::milliseconds delay) {
    auto executor = co_await asio::this_coro::executor;
    point.maybe_cancel(here, executor);
    asio::steady_timer timer(executor, delay);
    try {
        co_await timer.async_wait(asio::use_awaitable);
        point.log->add(here + " done");
    } catch (const asio::system_error&) {
        point.log->add(here + " cancelled");
        throw;
    }
}

struct cancellable_manager {
    const cancel_point* point;
    std::string name;
    std::map<std::string, int>* exits;

    task<void> async_enter() { co_await timed_step(*point, "enter " + name, 20ms); }
    task<void> async_exit(std::exception_ptr) {
        ++(*exits)[name];
        co_await timed_step(*point, "exit " + name, 20ms);
    }
};

TEST(AsyncWithCancellation, CancelledAtEveryAwaitPointExitsEachEnteredManagerOnce) {
    const std::vector<std::string> points = {"enter a", "enter b", "enter c", "body",
                                             "exit c",  "exit b",  "exit a"};
    for (const auto& at : points) {
        SCOPED_TRACE("cancelled at " + at);
        trace log;
        asio::cancellation_signal signal;
        cancel_point point{at, &signal, &log};
        std::map<std::string, int> exits;
        cancellable_manager a{&point, "a", &exits}, b{&point, "b", &exits}, c{&point, "c", &exits};
        asio::io_context io;
        std::exception_ptr outcome;
        bool done = false;
        bool after_ran = false;
        auto main = [&]() -> task<void> {
            co_await ctxmgr::async_with(a, b, c, [&]() -> task<void> {
                // Only a cancellation ends it early.
                co_await timed_step(point, "body", at == "body" ? 5s : 10ms);
            });
            // A cancellation that arrived while the exits ran shows at the next co_await.
            co_await pause();
            after_ran = true;
        };
        asio::co_spawn(io, main(),
                       asio::bind_cancellation_slot(signal.slot(), [&](std::exception_ptr e) {
                           outcome = e;
                           done = true;
                       }));
        const auto started = std::chrono::steady_clock::now();
        io.run();
        EXPECT_LT(std::chrono::steady_clock::now() - started, 4s);
        ASSERT_TRUE(done);
        EXPECT_TRUE(ctxmgr::testing::holds_system_error(outcome, asio::error::operation_aborted))
            << ctxmgr::describe(outcome);
        EXPECT_FALSE(after_ran);
        const int entered = at == "enter a" ? 0 : at == "enter b" ? 1 : at == "enter c" ? 2 : 3;
        const char* names[] = {"a", "b", "c"};
        for (int i = 0; i < 3; ++i) {
            EXPECT_EQ(exits[names[i]], i < entered ? 1 : 0) << names[i];
            if (i < entered) {
                // Shielded: every exit's wait ran to its end.
                EXPECT_NE(std::find(log.events.begin(), log.events.end(),
                                    std::string("exit ") + names[i] + " done"),
                          log.events.end());
            }
        }
        for (const auto& e : log.events) {
            EXPECT_FALSE(e.starts_with("exit") && e.ends_with("cancelled")) << e;
        }
    }
}

TEST(AsyncWithCancellation, TimerRaceThroughAwaitableOperatorsStillRunsExits) {
    using namespace asio::experimental::awaitable_operators;
    trace log;
    cancel_point nowhere{"", nullptr, &log};
    std::map<std::string, int> exits;
    cancellable_manager a{&nowhere, "a", &exits};
    run_awaitable([&]() -> task<void> {
        asio::steady_timer timeout(co_await asio::this_coro::executor, 100ms);
        auto winner =
            co_await (ctxmgr::async_with(
                          a, [&]() -> task<void> { co_await timed_step(nowhere, "body", 5s); }) ||
                      timeout.async_wait(asio::use_awaitable));
        EXPECT_EQ(winner.index(), 1u);
    }());
    EXPECT_EQ(exits["a"], 1);
    // On a slow machine the timer may fire before the body starts: then the body is skipped
    // (Asio's check at the co_await), and the exit runs all the same.
    ASSERT_FALSE(log.events.empty());
    EXPECT_EQ(log.events.front(), "enter a done");
    EXPECT_EQ(log.events.back(), "exit a done");
    EXPECT_LE(log.events.size(), 3u);
}

// An exit that overruns async_exit_timeout() is cancelled and replaced by timeout_error,
// chained with the pending exception; the outer exits still run.
struct slow_exit {
    trace* log;
    std::chrono::milliseconds takes;
    task<void> async_enter() { co_return; }
    task<void> async_exit(std::exception_ptr) {
        asio::steady_timer timer(co_await asio::this_coro::executor, takes);
        try {
            co_await timer.async_wait(asio::use_awaitable);
            log->add("slow exit finished");
        } catch (const asio::system_error&) {
            log->add("slow exit cancelled");
            throw;
        }
    }
};

class exit_timeout_scope {
  public:
    explicit exit_timeout_scope(std::chrono::nanoseconds limit)
        : previous_(ctxmgr::set_async_exit_timeout(limit)) {}
    exit_timeout_scope(const exit_timeout_scope&) = delete;
    exit_timeout_scope& operator=(const exit_timeout_scope&) = delete;
    ~exit_timeout_scope() { ctxmgr::set_async_exit_timeout(previous_); }

  private:
    std::chrono::nanoseconds previous_;
};

TEST(AsyncWithCancellation, ExitOverrunningTheTimeoutIsCancelledAndReplacedByTimeoutError) {
    exit_timeout_scope limit(30ms);
    EXPECT_EQ(ctxmgr::async_exit_timeout(), 30ms);
    trace log;
    async_recorder outer{log, "outer"};
    slow_exit slow{&log, 5s};
    std::exception_ptr body_error;
    try {
        run_awaitable(ctxmgr::async_with(outer, slow, [&]() -> task<void> {
            co_await pause();
            throw_recorded(body_error);
        }));
        FAIL() << "expected timeout_error";
    } catch (const ctxmgr::timeout_error& e) {
        EXPECT_TRUE(ctxmgr::testing::contains(e.what(), "slow_exit")) << e.what();
        EXPECT_TRUE(ctxmgr::testing::contains(e.what(), "30 ms")) << e.what();
        const auto* nested = dynamic_cast<const std::nested_exception*>(&e);
        ASSERT_NE(nested, nullptr);
        EXPECT_EQ(nested->nested_ptr(), body_error);
    }
    EXPECT_EQ(log.events, (events{"enter outer", "slow exit cancelled",
                                  "exit outer: timed out after 30 ms waiting for the exit of "
                                  "(anonymous namespace)::slow_exit"}));
}

TEST(AsyncWithCancellation, ExitWithinTheTimeoutCompletes) {
    exit_timeout_scope limit(2s);
    trace log;
    slow_exit slow{&log, 10ms};
    run_awaitable(ctxmgr::async_with(slow, []() -> task<void> { co_return; }));
    EXPECT_EQ(log.events, (events{"slow exit finished"}));
}

}  // namespace
