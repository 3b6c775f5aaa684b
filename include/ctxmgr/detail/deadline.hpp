// The moment a timed wait gives up, on the steady clock: the one representation every timed
// wait in the library uses (locks, file locks, TCP, the pool, PostgreSQL and its advisory
// locks), so that "within 50 ms" rounds, saturates and expires the same way everywhere.
//
// - A duration is rounded up to the clock's resolution (a wait is never shortened) and
//   saturated: `duration::max()` (of any representation) waits for ever instead of
//   overflowing; zero, negative or NaN means "already due" (one attempt, no wait).
// - A time point of another clock (`system_clock`) is converted once, when the deadline is
//   made; later changes of that clock do not move it.
// - A default-constructed deadline, and any clock's time_point::max(), never expire.
//
// Internal: not part of the public API.
#pragma once

#include <chrono>
#include <climits>
#include <optional>
#include <type_traits>

namespace ctxmgr::detail {

// A duration as the steady clock's, rounded up and saturated. <= 0 (or NaN) is zero.
template <class Rep, class Period>
constexpr std::chrono::steady_clock::duration steady_duration(
    const std::chrono::duration<Rep, Period>& d) noexcept {
    using target = std::chrono::steady_clock::duration;
    if (!(d > std::chrono::duration<Rep, Period>::zero())) return target::zero();
    if (std::chrono::duration<long double, target::period>(d) >=
        std::chrono::duration<long double, target::period>(target::max())) {
        return target::max();
    }
    return std::chrono::ceil<target>(d);
}

class deadline {
  public:
    using clock = std::chrono::steady_clock;

    // Never.
    constexpr deadline() noexcept = default;

    // `d` after `now`, saturated at the clock's end.
    template <class Rep, class Period>
    [[nodiscard]] static deadline after(const std::chrono::duration<Rep, Period>& d,
                                        clock::time_point now = clock::now()) noexcept {
        const auto wait = steady_duration(d);
        deadline result;
        if (wait <= clock::time_point::max() - now) result.at_ = now + wait;
        return result;
    }

    // `d` after now, or never when there is no `d`.
    template <class Rep, class Period>
    [[nodiscard]] static deadline after(
        const std::optional<std::chrono::duration<Rep, Period>>& d) noexcept {
        return d ? after(*d) : deadline();
    }

    // A time point of any clock, read once, now; its time_point::max() is never.
    template <class Clock, class Duration>
    [[nodiscard]] static deadline at(const std::chrono::time_point<Clock, Duration>& t) noexcept {
        if (t == std::chrono::time_point<Clock, Duration>::max()) return {};
        const auto now = clock::now();
        if constexpr (std::is_same_v<Clock, clock>) {
            return after(t - now, now);
        } else {
            return after(t - Clock::now(), now);
        }
    }

    [[nodiscard]] constexpr bool timed() const noexcept { return at_ != clock::time_point::max(); }

    // For condition_variable::wait_until and try_lock_until: time_point::max() when untimed.
    [[nodiscard]] constexpr clock::time_point time_point() const noexcept { return at_; }

    [[nodiscard]] bool expired(clock::time_point now = clock::now()) const noexcept {
        return timed() && now >= at_;
    }

    // What is left, zero once expired, duration::max() when untimed.
    [[nodiscard]] clock::duration remaining(clock::time_point now = clock::now()) const noexcept {
        if (!timed()) return clock::duration::max();
        return now >= at_ ? clock::duration::zero() : at_ - now;
    }

    // What is left in whole milliseconds rounded up (an API that takes milliseconds must not
    // return just before the deadline and spin), saturated; milliseconds::max() when untimed.
    [[nodiscard]] std::chrono::milliseconds remaining_ms(
        clock::time_point now = clock::now()) const noexcept {
        if (!timed()) return std::chrono::milliseconds::max();
        return std::chrono::ceil<std::chrono::milliseconds>(remaining(now));
    }

    // poll(2)'s argument: -1 to wait for ever, else remaining_ms() capped at INT_MAX.
    [[nodiscard]] int poll_timeout(clock::time_point now = clock::now()) const noexcept {
        if (!timed()) return -1;
        const auto ms = remaining_ms(now).count();
        return ms > INT_MAX ? INT_MAX : static_cast<int>(ms);
    }

    friend constexpr bool operator==(const deadline&, const deadline&) noexcept = default;
    friend constexpr auto operator<=>(const deadline&, const deadline&) noexcept = default;

  private:
    clock::time_point at_ = clock::time_point::max();
};

}  // namespace ctxmgr::detail
