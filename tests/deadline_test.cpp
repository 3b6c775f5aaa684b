// The one deadline every timed wait uses: rounding, saturation, other clocks, untimed waits.
#include <ctxmgr/detail/deadline.hpp>

#include <gtest/gtest.h>

#include <chrono>
#include <climits>
#include <cmath>
#include <optional>

namespace {

using namespace std::chrono_literals;
using ctxmgr::detail::deadline;
using ctxmgr::detail::steady_duration;
using std::chrono::nanoseconds;
using std::chrono::steady_clock;

TEST(Deadline, DurationsAreRoundedUpAndSaturated) {
    EXPECT_EQ(steady_duration(std::chrono::duration<double, std::nano>(1.5)), nanoseconds(2));
    EXPECT_EQ(steady_duration(std::chrono::duration<double>(-1.0)), nanoseconds(0));
    EXPECT_EQ(steady_duration(std::chrono::duration<double>(std::nan(""))), nanoseconds(0));
    EXPECT_EQ(steady_duration(std::chrono::hours::max()), nanoseconds::max());
    EXPECT_EQ(steady_duration(std::chrono::duration<double>(1e300)), nanoseconds::max());
    EXPECT_EQ(steady_duration(1500ms), nanoseconds(1'500'000'000));
}

TEST(Deadline, DefaultIsNeverAndWaitsForEver) {
    const deadline never;
    EXPECT_FALSE(never.timed());
    EXPECT_FALSE(never.expired(steady_clock::time_point::max()));
    EXPECT_EQ(never.time_point(), steady_clock::time_point::max());
    EXPECT_EQ(never.remaining(), steady_clock::duration::max());
    EXPECT_EQ(never.remaining_ms(), std::chrono::milliseconds::max());
    EXPECT_EQ(never.poll_timeout(), -1);
    EXPECT_EQ(deadline::after(std::optional<std::chrono::milliseconds>()), never);
}

TEST(Deadline, AfterSaturatesAtTheClocksEnd) {
    const auto now = steady_clock::now();
    EXPECT_FALSE(deadline::after(nanoseconds::max(), now).timed());
    EXPECT_FALSE(deadline::after(std::chrono::hours::max(), now).timed());
    EXPECT_FALSE(deadline::after(std::chrono::duration<double>(1e300), now).timed());
    EXPECT_EQ(deadline::after(5ms, now).time_point(), now + 5ms);
}

TEST(Deadline, ZeroNegativeAndNanAreDueAtOnce) {
    const auto now = steady_clock::now();
    for (const auto& d : {deadline::after(0ms, now), deadline::after(-1s, now),
                          deadline::after(std::chrono::duration<double>(std::nan("")), now)}) {
        EXPECT_TRUE(d.timed());
        EXPECT_EQ(d.time_point(), now);
        EXPECT_TRUE(d.expired(now));
        EXPECT_EQ(d.remaining(now), steady_clock::duration::zero());
        EXPECT_EQ(d.poll_timeout(now), 0);
    }
}

TEST(Deadline, RemainingIsRoundedUpToWholeMillisecondsForPoll) {
    const auto now = steady_clock::now();
    const auto d = deadline::after(1500us, now);
    EXPECT_FALSE(d.expired(now));
    EXPECT_EQ(d.remaining(now), 1500us);
    EXPECT_EQ(d.remaining_ms(now), 2ms) << "a wait in milliseconds never ends early";
    EXPECT_EQ(d.poll_timeout(now), 2);
    EXPECT_EQ(d.poll_timeout(now + 1500us), 0);
    EXPECT_TRUE(d.expired(now + 1500us));
    EXPECT_EQ(deadline::after(std::chrono::hours(24 * 365), now).poll_timeout(now), INT_MAX);
}

TEST(Deadline, AnyClockBecomesOneSteadyDeadlineReadOnce) {
    const auto past = deadline::at(steady_clock::now() - 1s);
    EXPECT_TRUE(past.expired()) << "a past deadline is due, not an error";
    const auto in_an_hour = deadline::at(std::chrono::system_clock::now() + 1h).remaining();
    EXPECT_GT(in_an_hour, 59min);
    EXPECT_LE(in_an_hour, 1h + 1s);
    EXPECT_FALSE(deadline::at(std::chrono::system_clock::time_point::max()).timed());
}

TEST(Deadline, OrdersByTimeWithNeverLast) {
    const auto now = steady_clock::now();
    EXPECT_LT(deadline::after(1ms, now), deadline::after(2ms, now));
    EXPECT_LT(deadline::after(24h, now), deadline());
}

}  // namespace
