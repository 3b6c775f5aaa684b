#include <ctxmgr/contextlib.hpp>
#include <ctxmgr/contextmanager.hpp>
#include <ctxmgr/exit_stack.hpp>
#include <ctxmgr/scope.hpp>
#include <ctxmgr/with.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "allocation_counter.hpp"
#include "recording.hpp"

namespace {

using ctxmgr::contextmanager;
using ctxmgr::protocol_error;
using ctxmgr::testing::other_error;
using ctxmgr::testing::test_error;
using ctxmgr::testing::what_of;

contextmanager<int> traced(std::vector<std::string>& log, int value = 7) {
    log.push_back("setup");
    co_yield value;
    log.push_back("teardown");
}

TEST(ContextManager, CallingRunsNothing) {
    std::vector<std::string> log;
    ctxmgr::testing::unraisable_log reports;
    auto m = traced(log);
    EXPECT_TRUE(log.empty());
    ctxmgr::with(m, [](int&) {});  // a manager never entered would report
    static_assert(ctxmgr::context_manager<contextmanager<int>>);
    static_assert(!std::is_copy_constructible_v<contextmanager<int>>);
}

TEST(ContextManager, EnterRunsToTheYieldAndExitRunsTheTeardown) {
    std::vector<std::string> log;
    auto m = traced(log, 9);
    EXPECT_EQ(m.enter(), 9);
    EXPECT_EQ(log, (std::vector<std::string>{"setup"}));
    EXPECT_FALSE(m.exit(nullptr));
    EXPECT_EQ(log, (std::vector<std::string>{"setup", "teardown"}));
}

TEST(ContextManager, WorksInWith) {
    std::vector<std::string> log;
    const std::optional<int> r = ctxmgr::with(traced(log), [&](int& v) {
        log.push_back("body " + std::to_string(v));
        return v * 2;
    });
    EXPECT_EQ(r, 14);
    EXPECT_EQ(log, (std::vector<std::string>{"setup", "body 7", "teardown"}));
}

TEST(ContextManager, BodysExceptionIsRethrownAtTheYieldAndSkipsTheTeardown) {
    std::vector<std::string> log;
    EXPECT_THROW(ctxmgr::with(traced(log), [](int&) { throw test_error("boom"); }), test_error);
    EXPECT_EQ(log, (std::vector<std::string>{"setup"}));
}

contextmanager<void> guarded(std::vector<std::string>& log) {
    ctxmgr::finally cleanup([&] { log.push_back("cleanup"); });
    log.push_back("setup");
    co_yield {};
}

TEST(ContextManager, AGuardInTheCoroutineRunsOnEveryPath) {
    std::vector<std::string> log;
    ctxmgr::with(guarded(log), [] {});
    EXPECT_THROW(ctxmgr::with(guarded(log), [] { throw test_error("x"); }), test_error);
    EXPECT_EQ(log, (std::vector<std::string>{"setup", "cleanup", "setup", "cleanup"}));
}

contextmanager<void> swallowing(std::string& seen) {
    try {
        co_yield {};
    } catch (const test_error& e) {
        seen = e.what();
    }
}

TEST(ContextManager, FinishingNormallyAfterTheExceptionSuppressesIt) {
    std::string seen;
    ctxmgr::with(swallowing(seen), [] { throw test_error("swallowed"); });
    EXPECT_EQ(seen, "swallowed");
    auto m = swallowing(seen);
    m.enter();
    EXPECT_TRUE(m.exit(std::make_exception_ptr(test_error("again"))));
    EXPECT_EQ(seen, "again");
}

TEST(ContextManager, SuppressionMakesWithReturnAnEmptyOptional) {
    std::string seen;
    const std::optional<int> r =
        ctxmgr::with(swallowing(seen), []() -> int { throw test_error("gone"); });
    EXPECT_FALSE(r.has_value());
}

contextmanager<void> rethrowing(int& cleanups) {
    try {
        co_yield {};
    } catch (...) {
        ++cleanups;
        throw;
    }
}

TEST(ContextManager, RethrowingPropagatesTheOriginalObject) {
    int cleanups = 0;
    std::exception_ptr thrown;
    const auto caught = ctxmgr::testing::exception_from([&] {
        ctxmgr::with(rethrowing(cleanups), [&] { ctxmgr::testing::throw_recorded(thrown); });
    });
    EXPECT_EQ(cleanups, 1);
    EXPECT_EQ(caught, thrown);
    auto m = rethrowing(cleanups);
    m.enter();
    EXPECT_FALSE(m.exit(thrown));
}

contextmanager<void> replacing(bool nested) {
    try {
        co_yield {};
    } catch (const test_error&) {
        if (nested) std::throw_with_nested(other_error("replaced"));
        throw other_error("replaced");
    }
}

TEST(ContextManager, ThrowingSomethingElseReplacesTheException) {
    EXPECT_THROW(ctxmgr::with(replacing(false), [] { throw test_error("x"); }), other_error);
}

TEST(ContextManager, ThrowWithNestedInTheTeardownChainsTheOriginal) {
    try {
        ctxmgr::with(replacing(true), [] { throw test_error("original"); });
        FAIL();
    } catch (const other_error& e) {
        const auto* nested = dynamic_cast<const std::nested_exception*>(&e);
        ASSERT_NE(nested, nullptr);
        EXPECT_EQ(what_of(nested->nested_ptr()), "original");
    }
}

TEST(ContextManager, ExceptionOfTheSameTypeButAnotherObjectIsAReplacement) {
    auto m = []() -> contextmanager<void> {
        try {
            co_yield {};
        } catch (const test_error&) {
            throw test_error("a new one");
        }
    }();
    m.enter();
    const auto original = std::make_exception_ptr(test_error("original"));
    try {
        static_cast<void>(m.exit(original));
        FAIL();
    } catch (const test_error& e) {
        EXPECT_STREQ(e.what(), "a new one");
    }
}

contextmanager<int> never_yields(bool throw_instead) {
    if (throw_instead) throw test_error("setup failed");
    co_return;
}

TEST(ContextManager, NotYieldingIsAProtocolError) {
    auto m = never_yields(false);
    try {
        m.enter();
        FAIL();
    } catch (const protocol_error& e) {
        EXPECT_STREQ(e.what(), "contextmanager: the coroutine did not yield");
    }
}

TEST(ContextManager, SetupExceptionPropagatesFromEnterAndExitIsNotCalled) {
    int body_runs = 0;
    EXPECT_THROW(ctxmgr::with(never_yields(true), [&](int&) { ++body_runs; }), test_error);
    EXPECT_EQ(body_runs, 0);
}

contextmanager<int> yields_twice() {
    co_yield 1;
    co_yield 2;
}

TEST(ContextManager, YieldingTwiceIsAProtocolError) {
    try {
        ctxmgr::with(yields_twice(), [](int&) {});
        FAIL();
    } catch (const protocol_error& e) {
        EXPECT_STREQ(e.what(), "contextmanager: the coroutine did not stop (it yielded twice)");
    }
}

contextmanager<void> does_not_stop() {
    try {
        co_yield {};
    } catch (...) {
    }
    co_yield {};
}

TEST(ContextManager, NotStoppingAfterTheExceptionIsAProtocolErrorWithTheOriginalNested) {
    try {
        ctxmgr::with(does_not_stop(), [] { throw test_error("original"); });
        FAIL();
    } catch (const protocol_error& e) {
        EXPECT_STREQ(
            e.what(),
            "contextmanager: the coroutine did not stop after the exception was thrown in");
        const auto* nested = dynamic_cast<const std::nested_exception*>(&e);
        ASSERT_NE(nested, nullptr);
        EXPECT_EQ(what_of(nested->nested_ptr()), "original");
    }
}

TEST(ContextManager, ExitCalledOutsideTheHandlerStillNestsTheExceptionItWasGiven) {
    auto m = does_not_stop();
    m.enter();
    const std::exception_ptr given = std::make_exception_ptr(test_error("given"));
    try {
        static_cast<void>(m.exit(given));  // no handler of `given` is active here
        FAIL();
    } catch (const protocol_error& e) {
        const auto* nested = dynamic_cast<const std::nested_exception*>(&e);
        ASSERT_NE(nested, nullptr);
        EXPECT_EQ(nested->nested_ptr(), given);
    }
}

// Counts its live objects: an exception the manager kept and never freed stays counted.
struct counted_error : std::exception {
    static inline int live = 0;
    counted_error() noexcept { ++live; }
    counted_error(const counted_error&) noexcept { ++live; }
    counted_error& operator=(const counted_error&) = delete;
    ~counted_error() override { --live; }
};

enum class ending { setup_throws, teardown_throws, lets_through, suppresses, yields_again };

contextmanager<void> ends_by(ending how) {
    if (how == ending::setup_throws) throw counted_error();
    try {
        co_yield {};
    } catch (...) {
        if (how == ending::suppresses) co_return;
        if (how == ending::lets_through) throw;
    }
    if (how == ending::yields_again) co_yield {};  // a protocol_error, the body's nested
    if (how == ending::teardown_throws) throw counted_error();
}

TEST(ContextManager, EveryExceptionThatEndsACoroutineIsFreed) {
    for (const ending how : {ending::setup_throws, ending::teardown_throws, ending::lets_through,
                             ending::suppresses, ending::yields_again}) {
        for (const bool body_throws : {false, true}) {
            try {
                ctxmgr::with(ends_by(how), [&] {
                    if (body_throws) throw counted_error();
                });
            } catch (...) {
            }
            EXPECT_EQ(counted_error::live, 0)
                << "ending " << static_cast<int>(how) << ", body throws " << body_throws;
        }
    }
    {
        auto entered = ends_by(ending::teardown_throws);
        entered.enter();
    }  // destroyed at its co_yield, never exited
    EXPECT_EQ(counted_error::live, 0);
    {
        ctxmgr::exit_stack stack;
        stack.enter_context(ends_by(ending::teardown_throws));
        EXPECT_THROW(stack.close(), counted_error);
    }
    EXPECT_EQ(counted_error::live, 0);
    {
        auto m = ends_by(ending::teardown_throws);
        m.enter();
        m = ends_by(ending::lets_through);  // the entered frame is destroyed at its co_yield
        m.enter();
        const std::exception_ptr e = std::make_exception_ptr(counted_error());
        EXPECT_FALSE(m.exit(e));  // let through: not suppressed, for the caller to rethrow
    }
    EXPECT_EQ(counted_error::live, 0);
}

TEST(ContextManager, EnteringTwiceIsAProtocolError) {
    std::vector<std::string> log;
    auto m = traced(log);
    m.enter();
    EXPECT_THROW(m.enter(), protocol_error);
    m.exit(nullptr);
    EXPECT_THROW(m.enter(), protocol_error);
}

TEST(ContextManager, ExitWithoutEnterAndExitingTwiceAreProtocolErrors) {
    std::vector<std::string> log;
    auto m = traced(log);
    EXPECT_THROW(static_cast<void>(m.exit(nullptr)), protocol_error);
    m.enter();
    m.exit(nullptr);
    EXPECT_THROW(static_cast<void>(m.exit(nullptr)), protocol_error);
}

struct destruction_witness {
    int* destroyed;
    ~destruction_witness() { ++*destroyed; }
};

constexpr unsigned with_local_first_line = __LINE__ + 1;
contextmanager<void> with_local(int& destroyed) {
    destruction_witness local{&destroyed};
    co_yield {};
}
constexpr unsigned with_local_last_line = __LINE__ - 1;

TEST(ContextManager, DestroyingAnEnteredManagerDestroysTheFrameAndItsLocals) {
    int destroyed = 0;
    {
        auto m = with_local(destroyed);
        m.enter();
        EXPECT_EQ(destroyed, 0);
    }
    EXPECT_EQ(destroyed, 1);
}

TEST(ContextManager, DestroyingANeverEnteredManagerRunsNothingAndReportsTheCoroutine) {
    int destroyed = 0;
    ctxmgr::testing::unraisable_log log;
    { auto m = with_local(destroyed); }
    EXPECT_EQ(destroyed, 0);  // the body never started, so the local never existed
    const auto reports = log.reports();
    ASSERT_EQ(reports.size(), 1u);
    // The coroutine, as the compiler locates its frame: its first line or its last.
    using ctxmgr::testing::reports_never_entered;
    EXPECT_TRUE(reports_never_entered(reports[0], "contextmanager", "contextmanager_test.cpp",
                                      with_local_first_line) ||
                reports_never_entered(reports[0], "contextmanager", "contextmanager_test.cpp",
                                      with_local_last_line))
        << reports[0];
    // The function's signature as the compiler spells it: "with_local(int&)" (GCC) or
    // "with_local(int &)" (Clang).
    EXPECT_TRUE(ctxmgr::testing::contains(reports[0], "with_local(int&)") ||
                ctxmgr::testing::contains(reports[0], "with_local(int &)"))
        << reports[0];
}

TEST(ContextManager, OutOfMemoryTheNeverEnteredReportStillArrives) {
    std::vector<std::string> trace;
    int calls = 0;
    bool out_of_memory = false;
    std::string where(64, ' ');  // room enough: the hook must not allocate either
    auto previous =
        ctxmgr::set_unraisable_hook([&](std::exception_ptr e, std::string_view reported) {
            ++calls;
            out_of_memory = ctxmgr::holds<std::bad_alloc>(e);
            where.assign(reported);
        });
    std::optional<contextmanager<int>> m(traced(trace));
    {
        ctxmgr::testing::allocation_failure failing;
        m.reset();
    }
    ctxmgr::set_unraisable_hook(std::move(previous));
    EXPECT_EQ(calls, 1);
    EXPECT_TRUE(out_of_memory);
    EXPECT_EQ(where, "ctxmgr::contextmanager");
}

TEST(ContextManager, EnteredOrMovedFromManagersDoNotReport) {
    std::vector<std::string> trace;
    ctxmgr::testing::unraisable_log log;
    ctxmgr::with(traced(trace), [](int&) {});
    {
        auto a = traced(trace);
        auto b = std::move(a);
        b.enter();
        b.exit(nullptr);
    }
    {
        // Entered, and the setup threw: it was used as a manager.
        auto m = []() -> contextmanager<void> {
            throw test_error("setup failed");
            co_yield {};
        }();
        EXPECT_THROW(m.enter(), test_error);
    }
    EXPECT_TRUE(log.reports().empty()) << log.reports().front();
    // Assigning over a manager never entered drops it.
    int destroyed = 0;
    auto m = with_local(destroyed);
    m = with_local(destroyed);
    EXPECT_EQ(log.reports().size(), 1u);
    m.enter();
    m.exit(nullptr);
    EXPECT_EQ(log.reports().size(), 1u);
}

TEST(ContextManager, MoveTransfersTheCoroutine) {
    std::vector<std::string> log;
    auto a = traced(log);
    auto b = std::move(a);
    EXPECT_THROW(a.enter(), protocol_error);  // NOLINT(bugprone-use-after-move)
    EXPECT_EQ(b.enter(), 7);
    b.exit(nullptr);
    EXPECT_EQ(log, (std::vector<std::string>{"setup", "teardown"}));
}

contextmanager<std::string&> reference_target(std::string& s) {
    co_yield s;
}

TEST(ContextManager, ReferenceTargetRefersToTheYieldedObject) {
    std::string s = "a";
    ctxmgr::with(reference_target(s), [](std::string& t) { t += "b"; });
    EXPECT_EQ(s, "ab");
}

contextmanager<std::unique_ptr<int>> move_only_target() {
    co_yield std::make_unique<int>(5);
}

TEST(ContextManager, ByValueTargetMovesFromAnRvalueYield) {
    const auto r = ctxmgr::with(move_only_target(), [](std::unique_ptr<int>& p) { return *p; });
    EXPECT_EQ(r, 5);
}

contextmanager<std::string> copied_target(const std::string& source) {
    co_yield source;
}

TEST(ContextManager, ByValueTargetCopiesAnLvalueYield) {
    const std::string source = "kept";
    ctxmgr::with(copied_target(source), [](std::string& t) { t = "changed"; });
    EXPECT_EQ(source, "kept");
}

TEST(ContextManager, DecorateMakesAFreshManagerPerCall) {
    std::vector<std::string> log;
    auto decorated = ctxmgr::decorate([&] { return traced(log); },
                                      [&](int x) {
                                          log.push_back("call " + std::to_string(x));
                                          return x + 1;
                                      });
    EXPECT_EQ(decorated(1), 2);
    EXPECT_EQ(decorated(2), 3);
    EXPECT_EQ(log, (std::vector<std::string>{"setup", "call 1", "teardown", "setup", "call 2",
                                             "teardown"}));
}

ctxmgr::contextmanager<> bare() {
    co_yield {};
}

// The global allocations of 100 rounds of `round`, after a first that warms the frame slots
// at the same call site (a frame Clang elides at one call site may be allocated at another).
template <class Round>
std::size_t allocations_after_the_first(Round round) {
    std::optional<ctxmgr::testing::allocation_scope> allocations;
    for (int i = 0; i <= 100; ++i) {
        round();
        if (i == 0) allocations.emplace();
    }
    return allocations->count();
}

TEST(ContextManager, NestedAndAlternatingFramesAreRecycledToo) {
    if constexpr (!ctxmgr::detail::frame_cache_enabled) {
        GTEST_SKIP() << "the frame cache is off under AddressSanitizer";
    } else {
        std::vector<std::string> log;
        log.reserve(1000);
        EXPECT_EQ(allocations_after_the_first([&] {
                      ctxmgr::with(traced(log), [](int&) { ctxmgr::with(bare(), [] {}); });
                      ctxmgr::with(bare(), [] {});
                      ctxmgr::with(traced(log), [](int&) {});
                  }),
                  0u);
    }
}

TEST(ContextManager, AFreedFrameIsNeverLentToACoroutineOfAnotherSize) {
    if constexpr (!ctxmgr::detail::frame_cache_enabled) {
        GTEST_SKIP() << "the frame cache is off under AddressSanitizer";
    } else {
        // A larger frame lent to a smaller one would come back recorded at the smaller size,
        // and the larger coroutine would reach the allocator again.
        const auto wide = []() -> ctxmgr::contextmanager<> {
            volatile char scratch[512] = {};  // kept in the frame, across the co_yield
            co_yield {};
            scratch[0] = scratch[511];
        };
        EXPECT_EQ(allocations_after_the_first([&] {
                      ctxmgr::with(wide(), [] {});
                      ctxmgr::with(bare(), [] {});
                  }),
                  0u);
    }
}

TEST(ContextManager, FramesAreRecycledAfterTheFirstUse) {
    if constexpr (!ctxmgr::detail::frame_cache_enabled) {
        GTEST_SKIP() << "the frame cache is off under AddressSanitizer, so freed frames stay "
                        "poisoned";
    } else {
        std::vector<std::string> log;
        log.reserve(1000);
        EXPECT_EQ(allocations_after_the_first([&] { ctxmgr::with(traced(log), [](int&) {}); }), 0u);
    }
}

TEST(ContextManager, ManagersMayBeEnteredOnOneThreadAndExitedOnAnother) {
    std::vector<std::string> log;
    std::vector<contextmanager<int>> managers;
    for (int i = 0; i < 32; ++i) {
        managers.push_back(traced(log, i));
        managers.back().enter();
    }
    std::thread other([&] {
        for (auto& m : managers) m.exit(nullptr);
        managers.clear();  // frames freed on this thread go to its cache
        for (int i = 0; i < 32; ++i) ctxmgr::with(traced(log), [](int&) {});
    });
    other.join();
    EXPECT_EQ(std::count(log.begin(), log.end(), "teardown"), 64);
}

}  // namespace
