#include <ctxmgr/exit_stack.hpp>
#include <ctxmgr/lock.hpp>
#include <ctxmgr/with.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <functional>
#include <future>
#include <mutex>
#include <random>
#include <shared_mutex>
#include <source_location>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

#include "recording.hpp"

namespace {

using namespace std::chrono_literals;
using ctxmgr::testing::exception_from;
using ctxmgr::testing::test_error;

using ctxmgr::testing::contains;

std::string line_of(const std::source_location& where) {
    return "lock_test.cpp:" + std::to_string(where.line());
}

// A Lockable user type that counts its holds and records every call, and can be told to
// throw or to report busy.
struct recording_mutex {
    std::vector<std::string>* log;
    std::string name;
    int holds = 0;
    bool busy = false;      // try_lock and try_lock_until fail
    bool throw_on = false;  // lock, try_lock and try_lock_until throw

    void lock() {
        log->push_back("lock " + name);
        if (throw_on)
            throw std::system_error(std::make_error_code(std::errc::resource_deadlock_would_occur));
        ++holds;
    }
    bool try_lock() {
        log->push_back("try_lock " + name);
        if (throw_on)
            throw std::system_error(std::make_error_code(std::errc::device_or_resource_busy));
        if (busy) return false;
        ++holds;
        return true;
    }
    bool try_lock_until(const std::chrono::steady_clock::time_point&) {
        log->push_back("try_lock_until " + name);
        if (throw_on)
            throw std::system_error(std::make_error_code(std::errc::device_or_resource_busy));
        if (busy) return false;
        ++holds;
        return true;
    }
    void unlock() {
        log->push_back("unlock " + name);
        --holds;
    }
};

// Runs `f` on a thread that holds `m` (exclusively) from before f starts until it returns.
template <class M, class F>
void while_held_elsewhere(M& m, F&& f) {
    std::promise<void> locked;
    std::promise<void> done;
    std::thread holder([&] {
        std::unique_lock guard(m);
        locked.set_value();
        done.get_future().wait();
    });
    locked.get_future().wait();
    try {
        std::forward<F>(f)();
    } catch (...) {
        done.set_value();
        holder.join();
        throw;
    }
    done.set_value();
    holder.join();
}

// The mutexes of a test may sit at addresses that later tests reuse: forget their order at
// the end (in a build with the checker; see forget_lock_order).
template <class... Ms>
struct forget_at_end {
    std::tuple<Ms&...> mutexes;
    explicit forget_at_end(Ms&... ms) : mutexes(ms...) {}
    ~forget_at_end() {
        std::apply([](Ms&... ms) { (ctxmgr::forget_lock_order(ms), ...); }, mutexes);
    }
};

// --- lock(m): exactly lock() and unlock() --------------------------------------------------

TEST(Lock, HeaderExampleRuns) {
    std::mutex m, a, b;
    std::timed_mutex t;
    std::shared_mutex s;
    int counter = 0;
    ctxmgr::with(ctxmgr::lock(m), [&] { ++counter; });
    ctxmgr::with(ctxmgr::lock(a, b), [&] { ++counter; });
    ctxmgr::with(ctxmgr::lock_for(std::chrono::milliseconds(50), t), [&] { ++counter; });
    EXPECT_EQ(ctxmgr::with(ctxmgr::shared(s), [&] { return counter; }), 3);
}

TEST(Lock, OneMutexIsExactlyLockThenUnlock) {
    std::vector<std::string> log;
    recording_mutex m{&log, "m"};
    ctxmgr::with(ctxmgr::lock(m), [&] {
        EXPECT_EQ(m.holds, 1);
        log.push_back("body");
    });
    EXPECT_EQ(log, (std::vector<std::string>{"lock m", "body", "unlock m"}));
    EXPECT_EQ(m.holds, 0);
}

TEST(Lock, ManagerTypesAreDecidedOnPurpose) {
    using manager = ctxmgr::lock<std::mutex>;
    static_assert(ctxmgr::context_manager<manager>);
    static_assert(std::is_void_v<ctxmgr::enter_result_t<manager>>);
    static_assert(!ctxmgr::can_suppress_v<manager>);
    static_assert(std::is_nothrow_move_constructible_v<manager>);
    static_assert(!std::is_copy_constructible_v<manager>);
    static_assert(!std::is_move_assignable_v<manager>);
    static_assert(!std::is_convertible_v<std::mutex&, manager>, "explicit");
    static_assert(noexcept(std::declval<manager&>().exit(std::exception_ptr())));
    static_assert(std::is_same_v<decltype(ctxmgr::lock(std::declval<std::mutex&>(),
                                                       std::declval<std::timed_mutex&>())),
                                 ctxmgr::lock<std::mutex, std::timed_mutex>>);
    static_assert(std::is_same_v<decltype(ctxmgr::lock_for(1s, std::declval<std::timed_mutex&>())),
                                 ctxmgr::lock_for<std::timed_mutex>>);
    static_assert(std::is_same_v<decltype(ctxmgr::lock_until(std::chrono::system_clock::now(),
                                                             std::declval<std::timed_mutex&>())),
                                 ctxmgr::lock_until<std::timed_mutex>>);
    static_assert(std::is_same_v<decltype(ctxmgr::shared(std::declval<std::shared_mutex&>())),
                                 ctxmgr::shared<std::shared_mutex>>);
    // The reference, the call site and the flag: nothing else rides along.
    EXPECT_LE(sizeof(ctxmgr::lock<std::mutex>), 3 * sizeof(void*));
}

TEST(Lock, SeveralAreAllHeldInTheBodyAndUnlockedInReverseOrder) {
    std::vector<std::string> log;
    recording_mutex a{&log, "a"}, b{&log, "b"}, c{&log, "c"};
    ctxmgr::with(ctxmgr::lock(a, b, c), [&] {
        EXPECT_EQ(a.holds + b.holds + c.holds, 3);
        log.clear();
    });
    EXPECT_EQ(log, (std::vector<std::string>{"unlock c", "unlock b", "unlock a"}));
    EXPECT_EQ(a.holds + b.holds + c.holds, 0);
}

TEST(Lock, BodyExceptionPropagatesUnchangedAndUnlocks) {
    std::mutex m;
    std::exception_ptr thrown;
    const auto caught = exception_from(
        [&] { ctxmgr::with(ctxmgr::lock(m), [&] { ctxmgr::testing::throw_recorded(thrown); }); });
    ASSERT_TRUE(caught);
    try {
        std::rethrow_exception(caught);
    } catch (const test_error& e) {
        try {
            std::rethrow_exception(thrown);
        } catch (const test_error& original) {
            EXPECT_EQ(&e, &original) << "the very exception object, not a copy";
        }
    }
    ASSERT_TRUE(m.try_lock()) << "unlocked on the exception path";
    m.unlock();
}

TEST(Lock, LockThatThrowsLeavesNothingLockedAndSkipsTheBody) {
    std::vector<std::string> log;
    recording_mutex a{&log, "a"}, b{&log, "b"};
    b.throw_on = true;
    bool ran = false;
    EXPECT_THROW(ctxmgr::with(ctxmgr::lock(b), [&] { ran = true; }), std::system_error);
    EXPECT_THROW(ctxmgr::with(ctxmgr::lock(a, b), [&] { ran = true; }), std::system_error);
    EXPECT_FALSE(ran);
    EXPECT_EQ(a.holds, 0);
    EXPECT_EQ(b.holds, 0);
}

TEST(Lock, EnteredTwiceIsAProtocolErrorNamingTheLine) {
    std::mutex m;
    auto manager = ctxmgr::lock(m);
    const auto line = __LINE__ - 1;
    manager.enter();
    try {
        manager.enter();
        ADD_FAILURE() << "no protocol_error";
    } catch (const ctxmgr::protocol_error& e) {
        EXPECT_TRUE(contains(e.what(), "entered again before exit")) << e.what();
        EXPECT_TRUE(contains(e.what(), "lock_test.cpp:" + std::to_string(line))) << e.what();
        EXPECT_TRUE(contains(e.what(), "std::mutex at 0x")) << e.what();
    }
    manager.exit(nullptr);
    ASSERT_TRUE(m.try_lock()) << "held once, released once";
    m.unlock();
}

TEST(Lock, TheSameMutexTwiceIsAProtocolErrorAndLocksNothing) {
    std::mutex a, b;
    std::timed_mutex t;
    bool ran = false;
    const auto e1 =
        exception_from([&] { ctxmgr::with(ctxmgr::lock(a, b, a), [&] { ran = true; }); });
    const auto e2 =
        exception_from([&] { ctxmgr::with(ctxmgr::lock_for(1s, t, t), [&] { ran = true; }); });
    EXPECT_FALSE(ran);
    for (const auto& e : {e1, e2}) {
        ASSERT_TRUE(ctxmgr::holds<ctxmgr::protocol_error>(e));
        EXPECT_TRUE(contains(ctxmgr::describe(e), "the same mutex is passed twice"))
            << ctxmgr::describe(e);
    }
    ASSERT_TRUE(a.try_lock());
    ASSERT_TRUE(b.try_lock());
    ASSERT_TRUE(t.try_lock());
    a.unlock();
    b.unlock();
    t.unlock();
}

TEST(Lock, ExitWithoutEnterDoesNothingAndTheDestructorUnlocksWhatWasEntered) {
    std::vector<std::string> log;
    recording_mutex m{&log, "m"};
    {
        auto manager = ctxmgr::lock(m);
        manager.exit(nullptr);
        EXPECT_TRUE(log.empty());
        manager.enter();
    }
    EXPECT_EQ(log, (std::vector<std::string>{"lock m", "unlock m"}));
    EXPECT_EQ(m.holds, 0);
}

TEST(Lock, MovingAnEnteredManagerMovesTheHold) {
    std::vector<std::string> log;
    recording_mutex m{&log, "m"};
    auto first = ctxmgr::lock(m);
    first.enter();
    auto second = std::move(first);
    first.exit(nullptr);
    EXPECT_EQ(m.holds, 1) << "the moved-from manager holds nothing";
    second.exit(nullptr);
    EXPECT_EQ(m.holds, 0);
    EXPECT_EQ(log, (std::vector<std::string>{"lock m", "unlock m"}));
}

TEST(Lock, AManagerCanBeEnteredAgainAfterExit) {
    std::mutex m;
    auto manager = ctxmgr::lock(m);
    int runs = 0;
    for (int i = 0; i < 3; ++i) ctxmgr::with(manager, [&] { ++runs; });
    EXPECT_EQ(runs, 3);
    ASSERT_TRUE(m.try_lock());
    m.unlock();
}

TEST(Lock, WorksInAnExitStack) {
    std::mutex a;
    std::timed_mutex b;
    {
        ctxmgr::exit_stack stack;
        stack.enter_context(ctxmgr::lock(a));
        stack.enter_context(ctxmgr::lock_for(1s, b));
        EXPECT_FALSE(a.try_lock());
        EXPECT_FALSE(b.try_lock());
    }
    ASSERT_TRUE(a.try_lock());
    ASSERT_TRUE(b.try_lock());
    a.unlock();
    b.unlock();
}

// --- made but never entered -----------------------------------------------------------------

using ctxmgr::testing::reports_never_entered;
using ctxmgr::testing::unraisable_log;

TEST(Lock, MadeAndNeverEnteredReportsTheManagerItsLineAndHowToUseIt) {
    std::mutex m;
    unraisable_log log;
    unsigned line = 0;
    {
        auto guard = ctxmgr::lock(m);  // the RAII habit: this locks nothing
        line = __LINE__ - 1;
        ASSERT_TRUE(m.try_lock()) << "nothing was locked";
        m.unlock();
    }
    const auto reports = log.reports();
    ASSERT_EQ(reports.size(), 1u);
    EXPECT_TRUE(reports_never_entered(reports[0], "lock", "lock_test.cpp", line)) << reports[0];
}

TEST(Lock, EveryMutexManagerReportsUnderItsOwnName) {
    std::mutex a, b;
    std::timed_mutex t;
    std::shared_timed_mutex s;
    const auto deadline = std::chrono::steady_clock::now() + 1s;
    unraisable_log log;
    const unsigned first = __LINE__ + 1;
    static_cast<void>(ctxmgr::lock(a, b));
    static_cast<void>(ctxmgr::lock_for(1s, t));
    static_cast<void>(ctxmgr::lock_until(deadline, t));
    static_cast<void>(ctxmgr::shared(s));
    static_cast<void>(ctxmgr::shared_for(1s, s));
    static_cast<void>(ctxmgr::shared_until(deadline, s));
    const auto reports = log.reports();
    const char* const names[] = {"lock",   "lock_for",   "lock_until",
                                 "shared", "shared_for", "shared_until"};
    ASSERT_EQ(reports.size(), std::size(names));
    for (unsigned i = 0; i < std::size(names); ++i) {
        EXPECT_TRUE(reports_never_entered(reports[i], names[i], "lock_test.cpp", first + i))
            << reports[i];
    }
}

TEST(Lock, EnteredManagersDoNotReportEvenWhenEnterThrows) {
    std::vector<std::string> calls;
    recording_mutex busy{&calls, "busy"};
    busy.throw_on = true;
    std::mutex m;
    std::timed_mutex t;
    unraisable_log log;
    ctxmgr::with(ctxmgr::lock(m), ctxmgr::lock_for(1s, t), [] {});
    {
        ctxmgr::exit_stack stack;
        stack.enter_context(ctxmgr::lock(m));
        auto manager = ctxmgr::lock_for(1s, t);
        stack.enter_context(manager);
    }
    EXPECT_THROW(ctxmgr::with(ctxmgr::lock(busy), [] {}), std::system_error);
    {
        auto manager = ctxmgr::lock(m);
        manager.enter();
        manager.exit(nullptr);
    }
    EXPECT_TRUE(log.reports().empty()) << log.reports().front();
}

TEST(Lock, ManagersAfterOneWhoseEnterThrowsDoNotReport) {
    // with(a, b, body) destroys b unentered when a's enter() throws: no misuse of b.
    std::vector<std::string> calls;
    recording_mutex busy{&calls, "busy"};
    busy.throw_on = true;
    std::mutex m;
    unraisable_log log;
    bool ran = false;
    EXPECT_THROW(ctxmgr::with(ctxmgr::lock(busy), ctxmgr::lock(m), [&] { ran = true; }),
                 std::system_error);
    EXPECT_FALSE(ran);
    EXPECT_TRUE(log.reports().empty()) << log.reports().front();
}

TEST(Lock, AMovedFromManagerDoesNotReport) {
    std::mutex m;
    unraisable_log log;
    {
        auto first = ctxmgr::lock(m);
        auto second = std::move(first);
        ctxmgr::with(second, [] {});
    }
    EXPECT_TRUE(log.reports().empty()) << log.reports().front();
    unsigned line = 0;
    {
        auto first = ctxmgr::lock(m);
        line = __LINE__ - 1;
        auto second = std::move(first);
        static_cast<void>(second);
    }
    const auto reports = log.reports();
    ASSERT_EQ(reports.size(), 1u) << "the mark moves: the moved-from manager does not report";
    EXPECT_TRUE(reports_never_entered(reports[0], "lock", "lock_test.cpp", line)) << reports[0];
}

// exit_stack::push registers a manager's exit without entering it (CPython's
// ExitStack.push): nothing is acquired, so the manager still reports.
TEST(Lock, PushedWithoutEnteringStillReports) {
    std::mutex m;
    unraisable_log log;
    unsigned line = 0;
    {
        ctxmgr::exit_stack stack;
        stack.push(ctxmgr::lock(m));
        line = __LINE__ - 1;
    }
    const auto reports = log.reports();
    ASSERT_EQ(reports.size(), 1u);
    EXPECT_TRUE(reports_never_entered(reports[0], "lock", "lock_test.cpp", line)) << reports[0];
}

// --- across threads ------------------------------------------------------------------------

TEST(Lock, ExcludesOtherThreads) {
    std::mutex m;
    long counter = 0;  // not atomic: only the lock makes the increments safe
    std::atomic<int> inside{0};
    std::atomic<int> most_inside{0};
    constexpr int per_thread = 20000;
    auto work = [&] {
        for (int i = 0; i < per_thread; ++i) {
            ctxmgr::with(ctxmgr::lock(m), [&] {
                const int now = ++inside;
                int seen = most_inside.load();
                while (now > seen && !most_inside.compare_exchange_weak(seen, now)) {
                }
                ++counter;
                --inside;
            });
        }
    };
    std::thread t1(work), t2(work);
    t1.join();
    t2.join();
    EXPECT_EQ(counter, 2L * per_thread);
    EXPECT_EQ(most_inside.load(), 1);
}

// Threads take random overlapping sets of mutexes, each set in a random argument order,
// with lock and lock_for: the std::lock algorithm must never deadlock, and each mutex must
// exclude. Bounded: a fixed number of rounds, and a watchdog that fails the run after 120 s.
TEST(Lock, RandomOverlappingSetsNeverDeadlock) {
    constexpr int mutex_count = 5;
    constexpr int thread_count = 4;
    constexpr int rounds = 3000;
    std::array<std::timed_mutex, mutex_count> mutexes;
    std::array<std::atomic<int>, mutex_count> owners{};  // holders of each, must stay <= 1
    std::atomic<int> violations{0};
    std::atomic<int> finished{0};

    auto take = [&](std::vector<int> set, bool timed) {
        auto body = [&] {
            for (int i : set) {
                if (owners[static_cast<std::size_t>(i)].fetch_add(1) != 0) ++violations;
            }
            std::this_thread::yield();
            for (int i : set) owners[static_cast<std::size_t>(i)].fetch_sub(1);
        };
        auto& m = mutexes;
        auto at = [&](std::size_t k) -> std::timed_mutex& {
            return m[static_cast<std::size_t>(set[k])];
        };
        if (set.size() == 2) {
            if (timed) {
                ctxmgr::with(ctxmgr::lock_for(60s, at(0), at(1)), body);
            } else {
                ctxmgr::with(ctxmgr::lock(at(0), at(1)), body);
            }
        } else {
            if (timed) {
                ctxmgr::with(ctxmgr::lock_for(60s, at(0), at(1), at(2)), body);
            } else {
                ctxmgr::with(ctxmgr::lock(at(0), at(1), at(2)), body);
            }
        }
    };
    std::vector<std::thread> threads;
    for (int t = 0; t < thread_count; ++t) {
        threads.emplace_back([&, t] {
            std::mt19937 random(static_cast<unsigned>(t) * 7919u + 1u);
            std::vector<int> all(mutex_count);
            for (int i = 0; i < mutex_count; ++i) all[static_cast<std::size_t>(i)] = i;
            for (int round = 0; round < rounds; ++round) {
                std::shuffle(all.begin(), all.end(), random);
                const std::size_t size = 2 + random() % 2;
                take(std::vector<int>(all.begin(), all.begin() + static_cast<long>(size)),
                     random() % 2 == 0);
            }
            ++finished;
        });
    }
    const auto deadline = std::chrono::steady_clock::now() + 120s;
    while (finished.load() < thread_count) {
        if (std::chrono::steady_clock::now() > deadline) {
            std::fprintf(stderr, "RandomOverlappingSetsNeverDeadlock: deadlocked (%d of %d done)\n",
                         finished.load(), thread_count);
            std::_Exit(1);
        }
        std::this_thread::sleep_for(10ms);
    }
    for (auto& thread : threads) thread.join();
    EXPECT_EQ(violations.load(), 0);
}

// --- timeouts ----------------------------------------------------------------------------

TEST(LockFor, TimesOutWithTheExactTypeNamingTheLockTheLineAndTheWait) {
    std::timed_mutex m;
    bool ran = false;
    std::exception_ptr e;
    std::source_location at;
    std::chrono::steady_clock::duration elapsed{};
    while_held_elsewhere(m, [&] {
        const auto start = std::chrono::steady_clock::now();
        at = std::source_location::current();
        e = exception_from([&] {
            ctxmgr::with(ctxmgr::lock_for<std::timed_mutex>(50ms, m, at), [&] { ran = true; });
        });
        elapsed = std::chrono::steady_clock::now() - start;
    });
    EXPECT_FALSE(ran);
    ASSERT_TRUE(e);
    try {
        std::rethrow_exception(e);
    } catch (const ctxmgr::timeout_error& error) {
        EXPECT_EQ(typeid(error), typeid(ctxmgr::timeout_error));
        EXPECT_GE(error.waited(), 50ms);
        EXPECT_GE(elapsed, 50ms);
        const std::string what = error.what();
        EXPECT_TRUE(contains(what, "timed out after ")) << what;
        EXPECT_TRUE(contains(what, "waiting for std::timed_mutex at 0x")) << what;
        EXPECT_TRUE(contains(what, "(lock_for at ")) << what;
        EXPECT_TRUE(contains(what, line_of(at))) << what;
    }
    ASSERT_TRUE(m.try_lock()) << "nothing stays locked";
    m.unlock();
}

TEST(LockFor, SeveralTimeOutTogetherNamingTheBusyOneAndLeaveNothingLocked) {
    std::timed_mutex free_one, busy_one;
    std::exception_ptr e;
    std::chrono::steady_clock::duration elapsed{};
    while_held_elsewhere(busy_one, [&] {
        const auto start = std::chrono::steady_clock::now();
        e = exception_from(
            [&] { ctxmgr::with(ctxmgr::lock_for(60ms, free_one, busy_one), [] {}); });
        elapsed = std::chrono::steady_clock::now() - start;
        EXPECT_TRUE(free_one.try_lock()) << "the free one is not left locked";
        free_one.unlock();
    });
    ASSERT_TRUE(ctxmgr::holds<ctxmgr::timeout_error>(e));
    const auto what = ctxmgr::describe(e);
    EXPECT_TRUE(contains(what, "2 locks: std::timed_mutex at 0x")) << what;
    char busy[48], free[48];
    std::snprintf(busy, sizeof busy, "%p (busy)", static_cast<void*>(&busy_one));
    std::snprintf(free, sizeof free, "%p, ", static_cast<void*>(&free_one));
    EXPECT_TRUE(contains(what, busy)) << what;
    EXPECT_TRUE(contains(what, free)) << what;
    // One deadline bounds the whole algorithm, not one per mutex or per round.
    EXPECT_GE(elapsed, 60ms);
    EXPECT_LT(elapsed, 10s);
}

TEST(LockFor, SucceedsWhenTheLockIsFreedInTime) {
    std::timed_mutex a, b;
    std::promise<void> locked;
    std::thread holder([&] {
        std::scoped_lock guard(a, b);
        locked.set_value();
        std::this_thread::sleep_for(30ms);
    });
    locked.get_future().wait();
    bool ran = false;
    ctxmgr::with(ctxmgr::lock_for(30s, b, a), [&] { ran = true; });
    holder.join();
    EXPECT_TRUE(ran);
}

TEST(LockFor, ZeroOrNegativeTriesOnceAndHugeDurationsDoNotOverflow) {
    std::timed_mutex m;
    bool ran = false;
    ctxmgr::with(ctxmgr::lock_for(0s, m), [&] { ran = true; });
    ctxmgr::with(ctxmgr::lock_for(-5s, m), [&] { ran = true; });
    ctxmgr::with(ctxmgr::lock_for(std::chrono::hours::max(), m), [&] { ran = true; });
    ctxmgr::with(ctxmgr::lock_for(std::chrono::nanoseconds::max(), m), [&] { ran = true; });
    ctxmgr::with(ctxmgr::lock_for(std::chrono::duration<double>(0.01), m), [&] { ran = true; });
    EXPECT_TRUE(ran);
    while_held_elsewhere(m, [&] {
        const auto start = std::chrono::steady_clock::now();
        EXPECT_THROW(ctxmgr::with(ctxmgr::lock_for(-1s, m), [] {}), ctxmgr::timeout_error);
        EXPECT_THROW(ctxmgr::with(ctxmgr::lock_for(0ms, m), [] {}), ctxmgr::timeout_error);
        EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
    });
}

TEST(LockFor, AfterABusyTryLockItBacksOffAndStartsFromTheBusyOne) {
    std::vector<std::string> log;
    recording_mutex a{&log, "a"}, b{&log, "b"};
    b.busy = true;  // b never gives in
    const auto e = exception_from([&] { ctxmgr::with(ctxmgr::lock_for(20ms, a, b), [] {}); });
    EXPECT_TRUE(ctxmgr::holds<ctxmgr::timeout_error>(e));
    EXPECT_EQ(a.holds, 0);
    EXPECT_EQ(b.holds, 0);
    EXPECT_EQ(log, (std::vector<std::string>{"try_lock_until a", "try_lock b", "unlock a",
                                             "try_lock_until b"}));
}

TEST(LockFor, ATryLockThatThrowsLeavesNothingLocked) {
    std::vector<std::string> log;
    recording_mutex a{&log, "a"}, b{&log, "b"};
    b.throw_on = true;
    EXPECT_THROW(ctxmgr::with(ctxmgr::lock_for(1s, a, b), [] {}), std::system_error);
    EXPECT_EQ(a.holds, 0);
    EXPECT_EQ(log, (std::vector<std::string>{"try_lock_until a", "try_lock b", "unlock a"}));
}

TEST(LockUntil, AnyClockBecomesOneSteadyDeadline) {
    std::timed_mutex m;
    bool ran = false;
    ctxmgr::with(ctxmgr::lock_until(std::chrono::steady_clock::now() - 1s, m), [&] { ran = true; });
    EXPECT_TRUE(ran) << "a past deadline still tries once";
    std::exception_ptr e;
    std::chrono::steady_clock::duration elapsed{};
    while_held_elsewhere(m, [&] {
        const auto start = std::chrono::steady_clock::now();
        e = exception_from([&] {
            ctxmgr::with(ctxmgr::lock_until(std::chrono::system_clock::now() + 40ms, m), [] {});
        });
        elapsed = std::chrono::steady_clock::now() - start;
    });
    ASSERT_TRUE(ctxmgr::holds<ctxmgr::timeout_error>(e));
    EXPECT_TRUE(contains(ctxmgr::describe(e), "(lock_until at ")) << ctxmgr::describe(e);
    EXPECT_GE(elapsed, 39ms);  // the system clock's tick may round the conversion
}

// --- shared ------------------------------------------------------------------------------

TEST(Shared, ReadersShareAndExcludeWriters) {
    std::shared_timed_mutex m;
    std::atomic<int> readers{0};
    std::atomic<bool> go{false};
    auto reader = [&] {
        ctxmgr::with(ctxmgr::shared(m), [&] {
            ++readers;
            const auto deadline = std::chrono::steady_clock::now() + 30s;
            while (!go.load() && std::chrono::steady_clock::now() < deadline) {
                std::this_thread::sleep_for(1ms);
            }
        });
    };
    std::thread r1(reader), r2(reader);
    const auto deadline = std::chrono::steady_clock::now() + 30s;
    while (readers.load() < 2 && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(1ms);
    }
    EXPECT_EQ(readers.load(), 2) << "both readers inside at once";
    EXPECT_THROW(ctxmgr::with(ctxmgr::lock_for(1ms, m), [] {}), ctxmgr::timeout_error)
        << "no writer while readers are inside";
    go = true;
    r1.join();
    r2.join();
    ctxmgr::with(ctxmgr::lock(m), [] {});
}

TEST(Shared, TimedSharedWaitsForTheWriterAndNamesTheMode) {
    std::shared_timed_mutex m;
    std::exception_ptr e;
    while_held_elsewhere(m, [&] {
        e = exception_from([&] { ctxmgr::with(ctxmgr::shared_for(30ms, m), [] {}); });
        EXPECT_THROW(
            ctxmgr::with(ctxmgr::shared_until(std::chrono::steady_clock::now() + 5ms, m), [] {}),
            ctxmgr::timeout_error);
    });
    ASSERT_TRUE(ctxmgr::holds<ctxmgr::timeout_error>(e));
    const auto what = ctxmgr::describe(e);
    EXPECT_TRUE(contains(what, "std::shared_timed_mutex at 0x")) << what;
    EXPECT_TRUE(contains(what, ", shared (shared_for at ")) << what;
    int runs = 0;
    ctxmgr::with(ctxmgr::shared_for(1s, m), [&] { ++runs; });
    ctxmgr::with(ctxmgr::shared_until(std::chrono::steady_clock::now() + 1s, m), [&] { ++runs; });
    EXPECT_EQ(runs, 2);
    ASSERT_TRUE(m.try_lock());
    m.unlock();
}

TEST(Shared, EnteredTwiceIsAProtocolError) {
    std::shared_mutex m;
    auto manager = ctxmgr::shared(m);
    manager.enter();
    EXPECT_THROW(manager.enter(), ctxmgr::protocol_error);
    manager.exit(nullptr);
    ASSERT_TRUE(m.try_lock());
    m.unlock();
}

// --- lock-order checking -----------------------------------------------------------------

// A Lockable that ThreadSanitizer does not know as a mutex: its own deadlock detector would
// otherwise report, and with halt_on_error stop at, the inversions these tests make on
// purpose for ctxmgr's checker to report.
class spin_mutex {
  public:
    void lock() noexcept {
        while (!try_lock()) std::this_thread::yield();
    }
    bool try_lock() noexcept { return !locked_.exchange(true, std::memory_order_acquire); }
    void unlock() noexcept { locked_.store(false, std::memory_order_release); }

  private:
    std::atomic<bool> locked_{false};
};

// Collects reports; throws instead when asked, so that a test can stop a lock that would
// really deadlock.
class LockOrder : public ::testing::Test {
  protected:
    void SetUp() override {
        if (!ctxmgr::lock_order_check_enabled) {
            GTEST_SKIP() << "the lock-order checker is compiled out in this build "
                            "(CTXMGR_LOCK_ORDER_CHECK=0); checked.LockOrder.* run it";
        }
        previous_ = ctxmgr::set_lock_order_handler([this](std::string_view report) {
            {
                std::lock_guard guard(reports_mutex_);
                reports_.emplace_back(report);
            }
            if (throw_on_report_) throw test_error("lock-order report");
        });
    }
    void TearDown() override {
        if (!ctxmgr::lock_order_check_enabled) return;
        ctxmgr::set_lock_order_handler(std::move(previous_));
        for (auto* each : {&a, &b, &c}) ctxmgr::forget_lock_order(*each);
        ctxmgr::forget_lock_order(m);
        ctxmgr::forget_lock_order(t);
        ctxmgr::forget_lock_order(r);
    }

    std::vector<std::string> reports() {
        std::lock_guard guard(reports_mutex_);
        return reports_;
    }

    spin_mutex a, b, c;
    std::mutex m;
    std::timed_mutex t;
    std::recursive_mutex r;
    std::atomic<bool> throw_on_report_{false};

  private:
    ctxmgr::lock_order_handler previous_;
    std::mutex reports_mutex_;
    std::vector<std::string> reports_;
};

// Takes `inner` while holding `outer`, naming the given lines as the acquisition sites.
template <class Outer, class Inner>
void nested(Outer& outer, std::source_location outer_at, Inner& inner,
            std::source_location inner_at) {
    ctxmgr::with(ctxmgr::lock<Outer>(outer, outer_at),
                 [&] { ctxmgr::with(ctxmgr::lock<Inner>(inner, inner_at), [] {}); });
}

TEST_F(LockOrder, AnInversionIsReportedOnceWithAllFourSites) {
    const auto a_first = std::source_location::current();
    const auto b_second = std::source_location::current();
    nested(a, a_first, b, b_second);
    EXPECT_TRUE(reports().empty());
    const auto b_first = std::source_location::current();
    const auto a_second = std::source_location::current();
    nested(b, b_first, a, a_second);  // no deadlock happens: one thread
    const auto got = reports();
    ASSERT_EQ(got.size(), 1u);
    const std::string& report = got[0];
    EXPECT_TRUE(report.starts_with("lock-order inversion (possible deadlock)")) << report;
    for (const auto& where : {a_first, b_second, b_first, a_second}) {
        EXPECT_TRUE(contains(report, line_of(where))) << line_of(where) << " in\n" << report;
    }
    EXPECT_TRUE(contains(report, "now:")) << report;
    EXPECT_TRUE(contains(report, "earlier:")) << report;
    EXPECT_TRUE(contains(report, "::spin_mutex at 0x")) << report;
    // The first time only.
    nested(b, b_first, a, a_second);
    nested(a, a_first, b, b_second);
    EXPECT_EQ(reports().size(), 1u);
}

TEST_F(LockOrder, TheDefaultWhereNamesTheCallersLine) {
    ctxmgr::with(ctxmgr::lock(a), [&] { ctxmgr::with(ctxmgr::lock(b), [] {}); });
    const auto inverted = std::source_location::current().line() + 1;
    ctxmgr::with(ctxmgr::lock(b), [&] { ctxmgr::with(ctxmgr::lock(a), [] {}); });
    ASSERT_EQ(reports().size(), 1u);
    EXPECT_TRUE(contains(reports()[0], "lock_test.cpp:" + std::to_string(inverted)))
        << reports()[0];
}

TEST_F(LockOrder, ConsistentOrdersStaySilent) {
    for (int i = 0; i < 3; ++i) {
        ctxmgr::with(ctxmgr::lock(a), [&] {
            ctxmgr::with(ctxmgr::lock(b), [&] { ctxmgr::with(ctxmgr::lock(c), [] {}); });
        });
        ctxmgr::with(ctxmgr::lock(a), [&] { ctxmgr::with(ctxmgr::lock(c), [] {}); });
        ctxmgr::with(ctxmgr::lock(b), ctxmgr::lock(c), [] {});
        ctxmgr::with(ctxmgr::lock(c), [] {});  // alone: no order at all
    }
    EXPECT_TRUE(reports().empty()) << reports()[0];
}

TEST_F(LockOrder, TheMultiLockTakesASetAndStaysSilentInAnyOrder) {
    ctxmgr::with(ctxmgr::lock(a, b), [] {});
    ctxmgr::with(ctxmgr::lock(b, a), [] {});
    ctxmgr::with(ctxmgr::lock(c, b, a), [] {});
    ctxmgr::with(ctxmgr::lock_for(1s, t), [] {});
    EXPECT_TRUE(reports().empty()) << reports()[0];
}

TEST_F(LockOrder, OrderAgainstTheMembersOfASetIsChecked) {
    ctxmgr::with(ctxmgr::lock(c), [&] { ctxmgr::with(ctxmgr::lock(a, b), [] {}); });
    EXPECT_TRUE(reports().empty());
    ctxmgr::with(ctxmgr::lock(b), [&] { ctxmgr::with(ctxmgr::lock(c), [] {}); });
    ASSERT_EQ(reports().size(), 1u);
}

TEST_F(LockOrder, ALongerCycleListsEveryEdge) {
    const auto here = std::source_location::current();
    nested(a, here, b, here);
    nested(b, here, c, here);
    EXPECT_TRUE(reports().empty());
    nested(c, here, a, here);
    const auto got = reports();
    ASSERT_EQ(got.size(), 1u);
    std::size_t earlier = 0;
    for (std::size_t at = got[0].find("earlier:"); at != std::string::npos;
         at = got[0].find("earlier:", at + 1)) {
        ++earlier;
    }
    EXPECT_EQ(earlier, 2u) << got[0];
}

TEST_F(LockOrder, TimedAndSharedAcquisitionsCount) {
    std::shared_timed_mutex s;
    forget_at_end forget(s);
    ctxmgr::with(ctxmgr::lock_for(1s, t), [&] { ctxmgr::with(ctxmgr::shared(s), [] {}); });
    EXPECT_TRUE(reports().empty());
    ctxmgr::with(ctxmgr::shared_for(1s, s), [&] { ctxmgr::with(ctxmgr::lock(t), [] {}); });
    ASSERT_EQ(reports().size(), 1u);
    EXPECT_TRUE(contains(reports()[0], "std::shared_timed_mutex at 0x")) << reports()[0];
    EXPECT_TRUE(contains(reports()[0], "std::timed_mutex at 0x")) << reports()[0];
}

TEST_F(LockOrder, AHandlerThatThrowsStopsTheAcquisition) {
    nested(a, std::source_location::current(), b, std::source_location::current());
    throw_on_report_ = true;
    bool ran = false;
    const auto e = exception_from([&] {
        ctxmgr::with(ctxmgr::lock(b), [&] { ctxmgr::with(ctxmgr::lock(a), [&] { ran = true; }); });
    });
    EXPECT_TRUE(ctxmgr::holds<test_error>(e));
    EXPECT_FALSE(ran);
    ASSERT_TRUE(a.try_lock()) << "the lock whose check threw was not taken";
    ASSERT_TRUE(b.try_lock()) << "the outer one was released by the unwinding";
    a.unlock();
    b.unlock();
}

TEST_F(LockOrder, TakingAHeldNonRecursiveMutexIsReportedBeforeItDeadlocks) {
    throw_on_report_ = true;
    ctxmgr::with(ctxmgr::lock(m),
                 [&] { EXPECT_THROW(ctxmgr::with(ctxmgr::lock(m), [] {}), test_error); });
    ASSERT_EQ(reports().size(), 1u);
    EXPECT_TRUE(reports()[0].starts_with("recursive locking")) << reports()[0];
    EXPECT_TRUE(contains(reports()[0], "std::mutex at 0x")) << reports()[0];
    // Of a user type nothing is known: it may be recursive, so taking it again is not reported.
    std::vector<std::string> log;
    recording_mutex user{&log, "user"};
    forget_at_end forget(user);
    ctxmgr::with(ctxmgr::lock(user), [&] { ctxmgr::with(ctxmgr::lock(user), [] {}); });
    EXPECT_EQ(log.size(), 4u);
    EXPECT_EQ(reports().size(), 1u) << reports().back();
    // A recursive mutex may be taken again, and that adds no order.
    ctxmgr::with(ctxmgr::lock(r), [&] {
        ctxmgr::with(ctxmgr::lock(b), [&] { ctxmgr::with(ctxmgr::lock(r), [] {}); });
    });
    EXPECT_EQ(reports().size(), 1u) << reports().back();
}

TEST_F(LockOrder, ForgettingAMutexForgetsItsOrder) {
    nested(a, std::source_location::current(), b, std::source_location::current());
    ctxmgr::forget_lock_order(a);  // as if `a` were destroyed and its address reused
    nested(b, std::source_location::current(), a, std::source_location::current());
    EXPECT_TRUE(reports().empty()) << reports()[0];
}

TEST_F(LockOrder, OrdersOfDifferentThreadsMeet) {
    std::thread first(
        [&] { ctxmgr::with(ctxmgr::lock(a), [&] { ctxmgr::with(ctxmgr::lock(b), [] {}); }); });
    first.join();
    std::thread second(
        [&] { ctxmgr::with(ctxmgr::lock(b), [&] { ctxmgr::with(ctxmgr::lock(a), [] {}); }); });
    second.join();
    const auto got = reports();
    ASSERT_EQ(got.size(), 1u);
    // Two different thread numbers are named.
    const auto now = got[0].find("now:");
    const auto earlier = got[0].find("earlier:");
    ASSERT_NE(now, std::string::npos);
    ASSERT_NE(earlier, std::string::npos);
    auto thread_after = [&](std::size_t at) {
        const auto start = got[0].find("thread ", at) + 7;
        return got[0].substr(start, got[0].find(' ', start) - start);
    };
    EXPECT_NE(thread_after(now), thread_after(earlier)) << got[0];
}

TEST_F(LockOrder, SetLockOrderHandlerReturnsThePreviousOne) {
    int calls = 0;
    auto fixtures = ctxmgr::set_lock_order_handler([&](std::string_view) { ++calls; });
    nested(a, std::source_location::current(), b, std::source_location::current());
    nested(b, std::source_location::current(), a, std::source_location::current());
    EXPECT_EQ(calls, 1);
    EXPECT_TRUE(reports().empty());
    auto mine = ctxmgr::set_lock_order_handler(std::move(fixtures));
    mine("called through the returned handler");
    EXPECT_EQ(calls, 2);
    // An empty handler stands for the default, which comes back as a callable.
    auto restored = ctxmgr::set_lock_order_handler(nullptr);
    auto the_default = ctxmgr::set_lock_order_handler(std::move(restored));
    using handler_pointer = void (*)(std::string_view) noexcept;
    ASSERT_NE(the_default.target<handler_pointer>(), nullptr);
    EXPECT_EQ(*the_default.target<handler_pointer>(), &ctxmgr::default_lock_order_handler);
    // The fixture's handler is back in place.
    nested(a, std::source_location::current(), c, std::source_location::current());
    nested(c, std::source_location::current(), a, std::source_location::current());
    EXPECT_EQ(reports().size(), 1u);
    EXPECT_EQ(calls, 2);
}

TEST_F(LockOrder, TheDefaultHandlerPrintsAndAborts) {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    EXPECT_DEATH(
        {
            ctxmgr::set_lock_order_handler(nullptr);
            nested(a, std::source_location::current(), b, std::source_location::current());
            nested(b, std::source_location::current(), a, std::source_location::current());
        },
        "ctxmgr: lock-order inversion \\(possible deadlock\\)");
}

TEST(LockOrderOff, NothingIsCheckedWhenCompiledOut) {
    if constexpr (ctxmgr::lock_order_check_enabled) {
        GTEST_SKIP() << "this build has the checker; LockOrder.* test it";
    } else {
        int calls = 0;
        auto previous = ctxmgr::set_lock_order_handler([&](std::string_view) { ++calls; });
        std::mutex a, b;
        ctxmgr::with(ctxmgr::lock(a), [&] { ctxmgr::with(ctxmgr::lock(b), [] {}); });
        ctxmgr::with(ctxmgr::lock(b), [&] { ctxmgr::with(ctxmgr::lock(a), [] {}); });
        ctxmgr::set_lock_order_handler(std::move(previous));
        EXPECT_EQ(calls, 0);
    }
}

}  // namespace
