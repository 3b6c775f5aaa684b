#include <ctxmgr/tracking.hpp>
#include <ctxmgr/unraisable.hpp>
#include <ctxmgr/with.hpp>

#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <initializer_list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "child.hpp"
#include "recording.hpp"

extern char** environ;

namespace {

using namespace std::chrono_literals;

// Tests of the registry itself; they skip in a build with tracking compiled out.
class Tracking : public ::testing::Test {
  protected:
    void SetUp() override {
        if (!ctxmgr::tracking_enabled) {
            GTEST_SKIP() << "tracking is compiled out (CTXMGR_TRACKING=OFF): nothing registers";
        }
    }
};

// A user type holding a registration, the way the header's example does.
class user_socket {
  public:
    explicit user_socket(int fd, std::source_location where = std::source_location::current())
        : tracked_("socket", "fd " + std::to_string(fd), where) {}
    void close() noexcept { tracked_.release(); }
    [[nodiscard]] std::uint64_t id() const noexcept { return tracked_.id(); }

  private:
    [[no_unique_address]] ctxmgr::tracked tracked_;
};

std::optional<ctxmgr::resource_info> find_live(std::uint64_t id) {
    for (auto& resource : ctxmgr::live_resources()) {
        if (resource.id == id) return resource;
    }
    return std::nullopt;
}

bool is_live(std::uint64_t id) {
    return find_live(id).has_value();
}

std::vector<std::uint64_t> ids_of(const std::vector<ctxmgr::resource_info>& resources) {
    std::vector<std::uint64_t> ids;
    for (const auto& resource : resources) ids.push_back(resource.id);
    return ids;
}

using ctxmgr::testing::contains;

using ctxmgr::testing::unraisable_log;

// --- the type in both builds -------------------------------------------------------------

TEST(TrackingBuild, ARegistrationIsOnePointerOrNothing) {
    ctxmgr::tracked resource("socket", "fd 3");
    if constexpr (ctxmgr::tracking_enabled) {
        EXPECT_EQ(sizeof(ctxmgr::tracked), sizeof(void*));
        EXPECT_TRUE(resource.registered());
        EXPECT_TRUE(is_live(resource.id()));
    } else {
        EXPECT_TRUE(std::is_empty_v<ctxmgr::tracked>);
        EXPECT_FALSE(resource.registered());
        EXPECT_EQ(resource.id(), 0u);
        EXPECT_TRUE(ctxmgr::live_resources().empty());
        EXPECT_TRUE(ctxmgr::held_longer_than(0ns).empty());
    }
    static_assert(std::is_nothrow_move_constructible_v<ctxmgr::tracked>);
    static_assert(std::is_nothrow_move_assignable_v<ctxmgr::tracked>);
    static_assert(!std::is_copy_constructible_v<ctxmgr::tracked>);
    static_assert(!std::is_copy_assignable_v<ctxmgr::tracked>);
}

TEST(TrackingBuild, ExpectNoLeaksChecksNothingWhenCompiledOut) {
    std::unique_ptr<ctxmgr::tracked> kept;
    auto forget = [&] { kept = std::make_unique<ctxmgr::tracked>("socket", "fd 4"); };
    if constexpr (ctxmgr::tracking_enabled) {
        EXPECT_THROW(ctxmgr::with(ctxmgr::expect_no_leaks(), forget), ctxmgr::leak_error);
    } else {
        EXPECT_NO_THROW(ctxmgr::with(ctxmgr::expect_no_leaks(), forget));
    }
    kept.reset();
}

// --- registering, releasing, moving ------------------------------------------------------

TEST_F(Tracking, ConstructingRegistersAndDestroyingUnregisters) {
    std::uint64_t id = 0;
    const auto before = std::chrono::steady_clock::now();
    const auto line = std::source_location::current().line() + 2;
    {
        ctxmgr::tracked resource("socket", "fd 7");
        ASSERT_TRUE(resource.registered());
        id = resource.id();
        ASSERT_NE(id, 0u);
        const auto info = find_live(id);
        ASSERT_TRUE(info.has_value());
        EXPECT_EQ(info->kind, "socket");
        EXPECT_EQ(info->description, "fd 7");
        EXPECT_EQ(info->where.line(), line);
        EXPECT_STREQ(info->where.file_name(), std::source_location::current().file_name());
        EXPECT_STREQ(info->where.function_name(), std::source_location::current().function_name());
        EXPECT_GE(info->thread, 1u);
        // The coarse clock lags the fine one by at most a tick (1 to 4 ms).
        EXPECT_GE(info->acquired_at, before - 10ms);
        EXPECT_LE(info->acquired_at, std::chrono::steady_clock::now());
        EXPECT_GE(info->age(), 0ns);
    }
    EXPECT_FALSE(is_live(id));
}

TEST_F(Tracking, ADefaultConstructedRegistrationRegistersNothing) {
    const auto before = ctxmgr::live_resources().size();
    ctxmgr::tracked nothing;
    EXPECT_FALSE(nothing.registered());
    EXPECT_EQ(nothing.id(), 0u);
    EXPECT_EQ(ctxmgr::live_resources().size(), before);
    nothing.describe("ignored");
    nothing.release();
    EXPECT_FALSE(nothing.registered());
}

TEST_F(Tracking, ReleaseUnregistersAndIsIdempotent) {
    ctxmgr::tracked resource("socket", "fd 8");
    const auto id = resource.id();
    resource.release();
    EXPECT_FALSE(resource.registered());
    EXPECT_EQ(resource.id(), 0u);
    EXPECT_FALSE(is_live(id));
    resource.release();
    EXPECT_FALSE(resource.registered());
}

TEST_F(Tracking, MovingTransfersTheRegistration) {
    ctxmgr::tracked first("socket", "fd 9");
    const auto id = first.id();
    ctxmgr::tracked second(std::move(first));
    EXPECT_FALSE(first.registered());  // NOLINT(bugprone-use-after-move): moved-from is empty
    EXPECT_EQ(second.id(), id);
    EXPECT_TRUE(is_live(id));

    ctxmgr::tracked third("socket", "fd 10");
    const auto replaced = third.id();
    third = std::move(second);
    EXPECT_EQ(third.id(), id);
    EXPECT_FALSE(is_live(replaced)) << "the registration a move-assignment replaces ends";
    EXPECT_TRUE(is_live(id));

    auto& alias = third;
    third = std::move(alias);
    EXPECT_EQ(third.id(), id) << "self-move-assignment keeps the registration";
    EXPECT_TRUE(is_live(id));

    third = ctxmgr::tracked();
    EXPECT_FALSE(is_live(id));
}

TEST_F(Tracking, DescribeReplacesTheDescription) {
    ctxmgr::tracked connection("tcp connection", "connecting");
    connection.describe("127.0.0.1:41000 -> 127.0.0.1:5432");
    EXPECT_EQ(find_live(connection.id())->description, "127.0.0.1:41000 -> 127.0.0.1:5432");
}

TEST_F(Tracking, KindsLongerThan31CharactersAreCut) {
    ctxmgr::tracked resource("a kind of resource with a long name", "x");
    EXPECT_EQ(find_live(resource.id())->kind, "a kind of resource with a long ");
    ctxmgr::tracked exact("exactly thirty-one characters!!", "y");
    EXPECT_EQ(find_live(exact.id())->kind, "exactly thirty-one characters!!");
}

TEST_F(Tracking, IdsAreUniqueAndNeverReused) {
    std::set<std::uint64_t> seen;
    for (int i = 0; i < 3000; ++i) {  // past a block of ids
        ctxmgr::tracked resource("socket", "fd");
        EXPECT_TRUE(seen.insert(resource.id()).second) << resource.id();
    }
}

// --- listing -------------------------------------------------------------------------------

TEST_F(Tracking, LiveResourcesAreOldestFirst) {
    ctxmgr::tracked a("socket", "a");
    ctxmgr::tracked b("socket", "b");  // usually in the same clock tick: ordered by id
    std::this_thread::sleep_for(10ms);
    ctxmgr::tracked c("socket", "c");
    std::this_thread::sleep_for(10ms);
    // Another thread, a later tick. In one tick, other threads' resources are in id order,
    // which says nothing of time.
    std::optional<ctxmgr::tracked> d;
    std::thread([&] { d.emplace("socket", "d"); }).join();

    std::vector<std::uint64_t> order;
    for (auto id : ids_of(ctxmgr::live_resources())) {
        if (id == a.id() || id == b.id() || id == c.id() || id == d->id()) order.push_back(id);
    }
    EXPECT_EQ(order, (std::vector<std::uint64_t>{a.id(), b.id(), c.id(), d->id()}));
}

TEST_F(Tracking, AcquiredAtIsNeverEarlierThanAClockReadBeforeTheAcquisition) {
    if (!ctxmgr::tracking_enabled) GTEST_SKIP() << "tracking is compiled out";
    // The coarse clock lags the precise one by up to a tick at almost every reading, so a
    // few thousand registrations over several ticks meet the lag many times.
    const auto stop = std::chrono::steady_clock::now() + 50ms;
    int checked = 0;
    while (checked < 20'000 && std::chrono::steady_clock::now() < stop) {
        const auto before = std::chrono::steady_clock::now();
        ctxmgr::tracked resource("socket", "timed");
        for (const auto& info : ctxmgr::live_resources()) {
            if (info.id != resource.id()) continue;
            ASSERT_GE(info.acquired_at, before) << "after " << checked << " registrations";
            EXPECT_GE(info.age(), std::chrono::steady_clock::duration::zero());
        }
        ++checked;
    }
    EXPECT_GT(checked, 100);
}

TEST_F(Tracking, ForgottenResourceIsReportedWithTheUsersLine) {
    // Not make_unique: the default argument would name the line inside make_unique.
    const auto line = std::source_location::current().line() + 1;
    std::unique_ptr<user_socket> forgotten(new user_socket(7));

    std::ostringstream report;
    ctxmgr::report_live(report);
    const std::string expected_start = std::string("socket fd 7 acquired at ") +
                                       std::source_location::current().file_name() + ':' +
                                       std::to_string(line) + " in " +
                                       std::source_location::current().function_name() + ", held ";
    EXPECT_TRUE(contains(report.str(), expected_start)) << report.str();

    const auto info = find_live(forgotten->id());
    ASSERT_TRUE(info.has_value());
    const std::string line_text = ctxmgr::describe(*info);
    EXPECT_TRUE(line_text.starts_with(expected_start)) << line_text;
    EXPECT_TRUE(line_text.ends_with(", thread " + std::to_string(info->thread))) << line_text;
    EXPECT_TRUE(contains(report.str(), line_text.substr(0, expected_start.size())));
    forgotten->close();
}

TEST_F(Tracking, DescribeWritesTheDocumentedLine) {
    ctxmgr::resource_info info;
    info.kind = "file";
    info.description = "\"/tmp/x\"";
    info.thread = 3;
    info.acquired_at = std::chrono::steady_clock::now() - 1500ms;
    const std::string text = ctxmgr::describe(info);
    const std::string start = "file \"/tmp/x\" acquired at ";
    EXPECT_TRUE(text.starts_with(start)) << text;
    // The age is read when describing: 1.5 s plus the little time since (three digits).
    EXPECT_TRUE(contains(text, ", held 1.5")) << text;
    EXPECT_TRUE(text.ends_with(" s, thread 3")) << text;

    info.description.clear();
    EXPECT_TRUE(ctxmgr::describe(info).starts_with("file acquired at ")) << "no double space";
}

TEST_F(Tracking, HeldLongerThanKeepsOnlyTheOldOnes) {
    ctxmgr::tracked old_one("socket", "old");
    std::this_thread::sleep_for(40ms);
    ctxmgr::tracked young("socket", "young");
    const auto ids = ids_of(ctxmgr::held_longer_than(20ms));
    EXPECT_NE(std::find(ids.begin(), ids.end(), old_one.id()), ids.end());
    EXPECT_EQ(std::find(ids.begin(), ids.end(), young.id()), ids.end());
    const auto all = ids_of(ctxmgr::held_longer_than(-1s));
    EXPECT_NE(std::find(all.begin(), all.end(), young.id()), all.end());
}

// --- threads -------------------------------------------------------------------------------

TEST_F(Tracking, ThreadsAreNumberedByCtxmgr) {
    ctxmgr::tracked here("socket", "main");
    std::uint64_t other_thread = 0;
    std::thread([&] {
        ctxmgr::tracked there("socket", "other");
        other_thread = find_live(there.id())->thread;
    }).join();
    const auto own_thread = find_live(here.id())->thread;
    EXPECT_GE(own_thread, 1u);
    EXPECT_GT(other_thread, own_thread) << "numbered in the order threads first register";
}

TEST_F(Tracking, AResourceRegisteredOnOneThreadIsReleasedOnAnother) {
    ctxmgr::tracked moved_here;
    std::thread([&] { moved_here = ctxmgr::tracked("socket", "from another thread"); }).join();
    const auto id = moved_here.id();
    ASSERT_TRUE(is_live(id));
    moved_here.release();  // the registering thread has exited
    EXPECT_FALSE(is_live(id));

    ctxmgr::tracked sent("socket", "to another thread");
    const auto sent_id = sent.id();
    std::thread([moved = std::move(sent)]() mutable { moved.release(); }).join();
    EXPECT_FALSE(is_live(sent_id));
}

TEST_F(Tracking, ExitedThreadsLeaveTheirShardToTheNextThread) {
    std::thread([] { ctxmgr::tracked warm_up("socket", "warm up"); }).join();
    const auto shards = ctxmgr::detail::tracking_shards();
    for (int i = 0; i < 8; ++i) {
        std::thread([] { ctxmgr::tracked resource("socket", "one thread after another"); }).join();
    }
    EXPECT_EQ(ctxmgr::detail::tracking_shards(), shards);
}

TEST_F(Tracking, ThreadsRegisterAndUnregisterWhileAnotherLists) {
    constexpr int threads = 4;
    constexpr int per_thread = 5000;
    std::atomic<int> writers_done{0};
    std::atomic<int> listings{0};
    std::thread reader([&] {
        // Bounded: between 20 and 400 listings, the later ones while the writers run.
        for (int i = 0; i < 400 && (i < 20 || writers_done.load() < threads); ++i) {
            for (const auto& resource : ctxmgr::live_resources()) {
                EXPECT_EQ(resource.kind, "socket");
                EXPECT_TRUE(resource.description.starts_with("worker "));
            }
            ++listings;
        }
    });
    std::vector<std::vector<std::uint64_t>> ids(threads);
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t) {
        workers.emplace_back([&, t] {
            std::vector<ctxmgr::tracked> held;
            for (int i = 0; i < per_thread; ++i) {
                held.emplace_back("socket", "worker " + std::to_string(t));
                ids[static_cast<std::size_t>(t)].push_back(held.back().id());
                if (held.size() == 16) held.clear();
            }
            ++writers_done;
        });
    }
    for (auto& worker : workers) worker.join();
    reader.join();

    std::set<std::uint64_t> unique;
    for (const auto& some : ids) unique.insert(some.begin(), some.end());
    EXPECT_EQ(unique.size(), std::size_t{threads} * per_thread) << "ids are never shared";
    for (const auto& resource : ctxmgr::live_resources()) {
        EXPECT_FALSE(unique.contains(resource.id)) << ctxmgr::describe(resource);
    }
    EXPECT_GE(listings.load(), 20);
}

TEST_F(Tracking, ResourcesMovedBetweenThreadsWhileOthersRegister) {
    // Producers register, a consumer releases: every release crosses a thread.
    std::mutex mutex;
    std::vector<ctxmgr::tracked> queue;
    std::atomic<int> producers_done{0};
    std::vector<std::thread> producers;
    for (int p = 0; p < 2; ++p) {
        producers.emplace_back([&] {
            for (int i = 0; i < 1000; ++i) {
                ctxmgr::tracked resource("socket", "queued");
                std::lock_guard lock(mutex);
                queue.push_back(std::move(resource));
            }
            ++producers_done;
        });
    }
    std::thread consumer([&] {
        for (int round = 0; round < 100000; ++round) {
            std::vector<ctxmgr::tracked> taken;
            {
                std::lock_guard lock(mutex);
                taken.swap(queue);
            }
            taken.clear();
            if (producers_done.load() == 2) break;
            std::this_thread::yield();
        }
    });
    for (auto& producer : producers) producer.join();
    consumer.join();
    queue.clear();
    for (const auto& resource : ctxmgr::live_resources()) {
        EXPECT_NE(resource.description, "queued") << ctxmgr::describe(resource);
    }
}

// --- expect_no_leaks -----------------------------------------------------------------------

TEST_F(Tracking, ExpectNoLeaksThrowsLeakErrorNamingTheLeak) {
    std::unique_ptr<user_socket> forgotten;
    const auto line = std::source_location::current().line() + 2;
    auto body = [&] {
        forgotten.reset(new user_socket(11));
        user_socket released(12);
        released.close();
    };
    try {
        ctxmgr::with(ctxmgr::expect_no_leaks(), body);
        ADD_FAILURE() << "expect_no_leaks did not throw";
    } catch (const ctxmgr::leak_error& e) {
        const std::string what = e.what();
        EXPECT_TRUE(contains(what, "1 resource acquired inside expect_no_leaks")) << what;
        EXPECT_TRUE(contains(what, std::string("socket fd 11 acquired at ") +
                                       std::source_location::current().file_name() + ':' +
                                       std::to_string(line)))
            << what;
        EXPECT_FALSE(contains(what, "fd 12")) << what;
    }
    forgotten.reset();
}

TEST_F(Tracking, ExpectNoLeaksWithAPendingExceptionReportsToTheHookAndLetsItPropagate) {
    unraisable_log hook;
    std::unique_ptr<user_socket> forgotten;
    EXPECT_THROW(ctxmgr::with(ctxmgr::expect_no_leaks(),
                              [&] {
                                  forgotten = std::make_unique<user_socket>(13);
                                  throw std::out_of_range("the body failed");
                              }),
                 std::out_of_range);
    const auto reports = hook.reports();
    ASSERT_EQ(reports.size(), 1u);
    EXPECT_TRUE(contains(reports[0], "ctxmgr::leak_error")) << reports[0];
    EXPECT_TRUE(contains(reports[0], "socket fd 13 acquired at ")) << reports[0];
    forgotten.reset();
}

TEST_F(Tracking, ExpectNoLeaksIgnoresWhatWasLiveBeforeAndWhatWasReleased) {
    user_socket before(14);
    ctxmgr::expect_no_leaks check;
    check.enter();
    user_socket inside(15);
    EXPECT_EQ(ids_of(check.leaks()), std::vector<std::uint64_t>{inside.id()});
    inside.close();
    before.close();
    EXPECT_TRUE(check.leaks().empty());
    EXPECT_NO_THROW(check.exit(nullptr));
}

TEST_F(Tracking, ExpectNoLeaksCountsResourcesFromOtherThreads) {
    ctxmgr::expect_no_leaks check;
    check.enter();
    ctxmgr::tracked from_thread;
    std::thread([&] { from_thread = ctxmgr::tracked("socket", "from a thread"); }).join();
    EXPECT_THROW(check.exit(nullptr), ctxmgr::leak_error);
    from_thread.release();
}

TEST(TrackingProtocol, ExpectNoLeaksMisuseIsAProtocolError) {
    ctxmgr::expect_no_leaks check;
    EXPECT_THROW(check.exit(nullptr), ctxmgr::protocol_error);
    check.enter();
    EXPECT_THROW(check.enter(), ctxmgr::protocol_error);
    check.exit(nullptr);
    EXPECT_TRUE(check.leaks().empty());
}

// --- watch_held_too_long -------------------------------------------------------------------

TEST_F(Tracking, WatchdogCallsBackOnceForEachResourceThatCrossesTheThreshold) {
    std::mutex mutex;
    std::map<std::uint64_t, int> calls;
    std::vector<std::string> descriptions;
    auto callback = [&](const ctxmgr::resource_info& resource) {
        std::lock_guard lock(mutex);
        ++calls[resource.id];
        descriptions.push_back(resource.description);
    };
    ctxmgr::tracked slow("socket", "slow");
    std::uint64_t brief_id = 0;
    std::uint64_t late_id = 0;
    ctxmgr::with(ctxmgr::watch_held_too_long(50ms, callback), [&] {
        {
            ctxmgr::tracked brief("socket", "brief");  // released long before 50 ms
            brief_id = brief.id();
        }
        ctxmgr::tracked late("socket", "late");
        late_id = late.id();
        std::this_thread::sleep_for(300ms);  // many checks (every 12.5 ms) past the threshold
    });
    std::lock_guard lock(mutex);
    EXPECT_EQ(calls[slow.id()], 1);
    EXPECT_EQ(calls[late_id], 1);
    EXPECT_EQ(calls.count(brief_id), 0u);
}

TEST_F(Tracking, AWatchOfOneOwnerSeesThatOwnersResourcesAlone) {
    const int pool_a = 0;
    const int pool_b = 0;
    std::mutex mutex;
    std::map<std::uint64_t, int> calls;
    auto callback = [&](const ctxmgr::resource_info& resource) {
        std::lock_guard lock(mutex);
        ++calls[resource.id];
    };
    const auto here = std::source_location::current();
    ctxmgr::tracked mine(ctxmgr::detail::tracking_owner{&pool_a}, "pooled connection", "a", here);
    ctxmgr::tracked theirs(ctxmgr::detail::tracking_owner{&pool_b}, "pooled connection", "b", here);
    ctxmgr::tracked nobodys("socket", "c");
    ctxmgr::with(
        ctxmgr::watch_held_too_long(ctxmgr::detail::tracking_owner{&pool_a}, -1ms, callback),
        [&] { std::this_thread::sleep_for(50ms); });
    std::lock_guard lock(mutex);
    EXPECT_EQ(calls[mine.id()], 1);
    EXPECT_EQ(calls.count(theirs.id()), 0u);
    EXPECT_EQ(calls.count(nobodys.id()), 0u);
    EXPECT_EQ(calls.size(), 1u);
}

TEST_F(Tracking, WatchdogCallbackExceptionsGoToTheUnraisableHook) {
    unraisable_log hook;
    ctxmgr::tracked slow("socket", "slow");
    std::atomic<int> calls{0};
    ctxmgr::with(ctxmgr::watch_held_too_long(-1ms,
                                             [&](const ctxmgr::resource_info& resource) {
                                                 if (resource.id != slow.id()) return;
                                                 ++calls;
                                                 throw std::runtime_error("callback failed");
                                             }),
                 [&] {
                     for (int i = 0; i < 200 && calls.load() == 0; ++i) {
                         std::this_thread::sleep_for(1ms);
                     }
                 });
    EXPECT_EQ(calls.load(), 1);
    const auto reports = hook.reports();
    ASSERT_EQ(reports.size(), 1u);
    EXPECT_TRUE(contains(reports[0], "watch_held_too_long callback for socket slow")) << reports[0];
    EXPECT_TRUE(contains(reports[0], "callback failed")) << reports[0];
}

TEST_F(Tracking, WatchdogExitStopsPromptly) {
    // A long threshold checks every 100 ms: a sleeping watchdog would take up to that long.
    ctxmgr::watch_held_too_long watch(1h, [](const ctxmgr::resource_info&) {});
    watch.enter();
    std::this_thread::sleep_for(5ms);
    const auto start = std::chrono::steady_clock::now();
    watch.exit(nullptr);
    EXPECT_LT(std::chrono::steady_clock::now() - start, 50ms);
}

TEST(TrackingProtocol, WatchdogMisuseIsAProtocolError) {
    ctxmgr::watch_held_too_long watch(1h, [](const ctxmgr::resource_info&) {});
    watch.enter();
    EXPECT_THROW(watch.enter(), ctxmgr::protocol_error);
    ctxmgr::watch_held_too_long moved(std::move(watch));
    EXPECT_THROW(watch.enter(), ctxmgr::protocol_error);  // NOLINT(bugprone-use-after-move)
    moved.exit(nullptr);
    moved.enter();  // may run again once exited
    moved.exit(nullptr);
    ctxmgr::watch_held_too_long empty(1h, nullptr);
    EXPECT_THROW(empty.enter(), ctxmgr::protocol_error);
}

TEST(TrackingProtocol, ARunningWatchdogIsStoppedByItsDestructorOrAMoveAssignment) {
    ctxmgr::watch_held_too_long first(1h, [](const ctxmgr::resource_info&) {});
    first.enter();
    ctxmgr::watch_held_too_long second(1h, [](const ctxmgr::resource_info&) {});
    second.enter();
    first = std::move(second);  // stops first's watchdog, takes over second's
    EXPECT_THROW(first.enter(), ctxmgr::protocol_error);
}

// --- made but never entered -----------------------------------------------------------------

TEST(TrackingProtocol, ManagersMadeAndNeverEnteredReportTheirLine) {
    ctxmgr::testing::unraisable_log log;
    const unsigned first = __LINE__ + 1;
    static_cast<void>(ctxmgr::expect_no_leaks());
    static_cast<void>(ctxmgr::watch_held_too_long(1h, [](const ctxmgr::resource_info&) {}));
    const auto reports = log.reports();
    const char* const names[] = {"expect_no_leaks", "watch_held_too_long"};
    ASSERT_EQ(reports.size(), std::size(names));
    for (unsigned i = 0; i < std::size(names); ++i) {
        EXPECT_TRUE(ctxmgr::testing::reports_never_entered(reports[i], names[i],
                                                           "tracking_test.cpp", first + i))
            << reports[i];
    }
}

TEST(TrackingProtocol, ManagersEnteredOrMovedFromDoNotReport) {
    ctxmgr::testing::unraisable_log log;
    ctxmgr::with(ctxmgr::expect_no_leaks(), [] {});
    {
        ctxmgr::watch_held_too_long watch(1h, [](const ctxmgr::resource_info&) {});
        ctxmgr::watch_held_too_long moved(std::move(watch));
        ctxmgr::with(moved, [] {});
        ctxmgr::expect_no_leaks check;
        ctxmgr::expect_no_leaks moved_check(std::move(check));
        ctxmgr::with(moved_check, [] {});
    }
    EXPECT_TRUE(log.reports().empty()) << log.reports().front();
}

// --- at exit, and across fork ---------------------------------------------------------------

struct child_result {
    int status = 0;
    std::string out;
    std::string err;
};

class pipe_pair {
  public:
    pipe_pair() {
        if (::pipe2(fds_, O_CLOEXEC) != 0) throw std::system_error(errno, std::generic_category());
    }
    pipe_pair(const pipe_pair&) = delete;
    pipe_pair& operator=(const pipe_pair&) = delete;
    ~pipe_pair() {
        close_write();
        ::close(fds_[0]);
    }
    [[nodiscard]] int read_end() const noexcept { return fds_[0]; }
    [[nodiscard]] int write_end() const noexcept { return fds_[1]; }
    void close_write() noexcept {
        if (fds_[1] >= 0) ::close(std::exchange(fds_[1], -1));
    }
    std::string read_all() {
        std::string text;
        char buffer[4096];
        for (ssize_t n; (n = ::read(fds_[0], buffer, sizeof buffer)) != 0;) {
            if (n < 0 && errno == EINTR) continue;
            if (n < 0) break;
            text.append(buffer, static_cast<std::size_t>(n));
        }
        return text;
    }

  private:
    int fds_[2] = {-1, -1};
};

// Runs tracking_exit_child <mode> with CTXMGR_LEAKS set to `leaks` (unset for nullptr).
child_result run_exit_child(const char* mode, const char* leaks) {
    std::vector<std::string> environment;
    for (char** variable = environ; *variable != nullptr; ++variable) {
        if (!std::string_view(*variable).starts_with("CTXMGR_LEAKS=")) {
            environment.emplace_back(*variable);
        }
    }
    if (leaks != nullptr) environment.push_back(std::string("CTXMGR_LEAKS=") + leaks);
    std::vector<char*> envp;
    for (auto& variable : environment) envp.push_back(variable.data());
    envp.push_back(nullptr);
    std::string program = CTXMGR_TRACKING_EXIT_CHILD;
    std::string mode_argument = mode;
    char* argv[] = {program.data(), mode_argument.data(), nullptr};

    pipe_pair out, err;
    posix_spawn_file_actions_t actions;
    ::posix_spawn_file_actions_init(&actions);
    ::posix_spawn_file_actions_adddup2(&actions, out.write_end(), 1);
    ::posix_spawn_file_actions_adddup2(&actions, err.write_end(), 2);
    pid_t pid = 0;
    const int spawned = ::posix_spawn(&pid, program.c_str(), &actions, nullptr, argv, envp.data());
    ::posix_spawn_file_actions_destroy(&actions);
    if (spawned != 0) throw std::system_error(spawned, std::generic_category(), "posix_spawn");
    out.close_write();
    err.close_write();
    child_result result;
    // The child writes a few lines, far less than a pipe holds, so reading one pipe to the
    // end before the other cannot block it.
    result.out = out.read_all();
    result.err = err.read_all();
    ::waitpid(pid, &result.status, 0);
    return result;
}

// `ctxmgr: still live at exit: test socket "leaked on purpose" acquired at <file>:<line> in`
bool reports_the_leak(const child_result& child) {
    const std::string line = child.out.substr(0, child.out.find('\n'));
    return contains(child.err,
                    "ctxmgr: still live at exit: test socket \"leaked on purpose\" acquired at ") &&
           contains(child.err, "tracking_exit_child.cpp:" + line + " in ");
}

TEST_F(Tracking, AtExitLiveResourcesAreReportedToStderrByDefault) {
    for (const char* setting : {static_cast<const char*>(nullptr), "warn", ""}) {
        const auto child = run_exit_child("leak", setting);
        EXPECT_TRUE(WIFEXITED(child.status) && WEXITSTATUS(child.status) == 0) << child.status;
        EXPECT_TRUE(reports_the_leak(child)) << child.err;
        EXPECT_EQ(std::count(child.err.begin(), child.err.end(), '\n'), 1) << child.err;
    }
}

TEST_F(Tracking, AtExitNothingIsReportedWhenNothingIsLive) {
    const auto child = run_exit_child("clean", "warn");
    EXPECT_TRUE(WIFEXITED(child.status) && WEXITSTATUS(child.status) == 0) << child.status;
    EXPECT_EQ(child.err, "");
}

TEST_F(Tracking, AtExitIgnoreReportsNothing) {
    const auto child = run_exit_child("leak", "ignore");
    EXPECT_TRUE(WIFEXITED(child.status) && WEXITSTATUS(child.status) == 0) << child.status;
    EXPECT_EQ(child.err, "");
}

TEST_F(Tracking, AtExitAbortReportsThenAborts) {
    const auto child = run_exit_child("leak", "abort");
    EXPECT_TRUE(WIFSIGNALED(child.status) && WTERMSIG(child.status) == SIGABRT) << child.status;
    EXPECT_TRUE(reports_the_leak(child)) << child.err;
    EXPECT_TRUE(contains(child.err, "CTXMGR_LEAKS=abort")) << child.err;
}

TEST_F(Tracking, AtExitABadSettingIsNamedThenTakenAsWarn) {
    const auto child = run_exit_child("leak", "loud");
    EXPECT_TRUE(WIFEXITED(child.status) && WEXITSTATUS(child.status) == 0) << child.status;
    EXPECT_TRUE(
        child.err.starts_with("ctxmgr: CTXMGR_LEAKS=\"loud\" is not one of warn, ignore, "
                              "abort; using warn\n"))
        << child.err;
    EXPECT_TRUE(reports_the_leak(child)) << child.err;
}

TEST_F(Tracking, AtExitAForkedChildReportsOnlyItsOwnResources) {
    const auto child = run_exit_child("fork", "warn");
    EXPECT_TRUE(WIFEXITED(child.status) && WEXITSTATUS(child.status) == 0) << child.status;
    EXPECT_TRUE(contains(child.err, "test socket \"the child's\" acquired at")) << child.err;
    EXPECT_FALSE(contains(child.err, "the parent's")) << child.err;
    EXPECT_EQ(std::count(child.err.begin(), child.err.end(), '\n'), 1) << child.err;
}

using ctxmgr::testing::in_child;

TEST_F(Tracking, AForkedChildListsOnlyItsOwnResources) {
    ctxmgr::tracked parents("socket", "the parent's");
    const auto parent_id = parents.id();
    EXPECT_TRUE(in_child([&] {
        if (is_live(parent_id)) return false;
        ctxmgr::tracked own("socket", "the child's");
        const auto live = ids_of(ctxmgr::live_resources());
        const bool listed = std::find(live.begin(), live.end(), own.id()) != live.end();
        own.release();
        parents.release();  // the child's copy unregisters cleanly too
        return listed && ctxmgr::live_resources().empty();
    }));
    EXPECT_TRUE(is_live(parent_id)) << "the parent still has its resource";
}

TEST_F(Tracking, ForkingWhileOtherThreadsRegisterAndListDoesNotDeadlockTheChild) {
    // One thread holds its shard lock, the other the registry mutex and every shard lock,
    // for much of their time: without the fork handlers, a child would often inherit a
    // lock that no thread of its own will ever release.
    std::atomic<bool> stop{false};
    std::atomic<long> rounds{0};
    auto until_stopped = [&](auto step) {
        return [&, step] {
            // Bounded even if the main thread never says stop.
            for (long i = 0; i < 10'000'000 && !stop.load(std::memory_order_relaxed); ++i) {
                step();
                rounds.fetch_add(1, std::memory_order_relaxed);
            }
        };
    };
    std::vector<ctxmgr::tracked> held;
    for (int i = 0; i < 32; ++i) held.emplace_back("socket", "held while forking");
    std::thread registering(until_stopped([] { ctxmgr::tracked resource("socket", "busy"); }));
    std::thread listing(until_stopped([] { static_cast<void>(ctxmgr::live_resources()); }));
    while (rounds.load() < 1000) std::this_thread::yield();
    // Each fork catches a held lock only now and then: many forks, so that a regression
    // fails this test almost surely.
    constexpr int forks = 60;
    int children_ok = 0;
    for (int i = 0; i < forks; ++i) {
        children_ok += in_child([] {
            ctxmgr::tracked own("socket", "in the child");
            return ctxmgr::live_resources().size() == 1;
        });
    }
    stop = true;
    registering.join();
    listing.join();
    EXPECT_EQ(children_ok, forks);
}

}  // namespace
