// How far CLOCK_MONOTONIC_COARSE lags behind CLOCK_MONOTONIC on this machine, against the
// coarse clock's stated resolution: why the leak tracker stamps registrations with the
// precise clock. On a virtual machine whose timer ticks come late under load, the lag
// exceeds the resolution, so a coarse reading plus one tick is not an upper bound.
//   build/default/bench/coarse_clock_lag [readings]
#include <time.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

namespace {

std::int64_t now_ns(clockid_t clock) {
    timespec t{};
    ::clock_gettime(clock, &t);
    return std::int64_t{t.tv_sec} * 1'000'000'000 + t.tv_nsec;
}

}  // namespace

int main(int argc, char** argv) {
    const long readings = argc > 1 ? std::atol(argv[1]) : 5'000'000;
    timespec resolution{};
    ::clock_getres(CLOCK_MONOTONIC_COARSE, &resolution);
    std::int64_t worst = 0;
    long late = 0;
    for (long i = 0; i < readings; ++i) {
        const std::int64_t precise = now_ns(CLOCK_MONOTONIC);
        const std::int64_t coarse = now_ns(CLOCK_MONOTONIC_COARSE);
        const std::int64_t lag = precise - coarse;
        worst = std::max(worst, lag);
        if (lag >= resolution.tv_nsec) ++late;
    }
    std::printf(
        "coarse resolution %ld ns; worst lag %lld ns over %ld readings; %ld readings lag a "
        "whole tick or more\n",
        resolution.tv_nsec, static_cast<long long>(worst), readings, late);
    return 0;
}
