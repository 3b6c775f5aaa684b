// Nanosecond time stamps for the hot paths of src/ (internal): the leak tracker stamps every
// registration and the pool every borrow and return, too often for steady_clock::now()
// (a vDSO call of ~20 ns here) when a 4 ms tick will do.
#pragma once

#include <chrono>
#include <cstdint>
#include <ctime>

namespace ctxmgr::detail {

// CLOCK_MONOTONIC_COARSE in nanoseconds: the last timer tick, a few ns to read.
inline std::int64_t coarse_now_ns() noexcept {
    timespec now{};
    ::clock_gettime(CLOCK_MONOTONIC_COARSE, &now);
    return std::int64_t{now.tv_sec} * 1'000'000'000 + now.tv_nsec;
}

// steady_clock::now() in the same nanoseconds.
inline std::int64_t precise_now_ns() noexcept {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

// steady_clock is CLOCK_MONOTONIC on Linux, the coarse clock's epoch.
inline std::chrono::steady_clock::time_point to_steady(std::int64_t ns) noexcept {
    return std::chrono::steady_clock::time_point(
        std::chrono::duration_cast<std::chrono::steady_clock::duration>(
            std::chrono::nanoseconds(ns)));
}

}  // namespace ctxmgr::detail
