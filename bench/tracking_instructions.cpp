// Runs one leak-tracking kernel a fixed number of times, for callgrind's instruction counts:
//   tracking_instructions <kernel> [iterations]
// A registration and its release (constructing and destroying a ctxmgr::tracked) against the
// same data in an object that registers nothing, with a description in the string's inline
// buffer (_short) and one that allocates (_long), e.g.
//   bench/instructions build/default/bench/tracking_instructions tracked_short untracked_short
//   bench/instructions build/default/bench/tracking_instructions precise_clock coarse_clock
#include <ctxmgr/tracking.hpp>

#include <chrono>
#include <ctime>

#include <source_location>
#include <string>
#include <string_view>

#include "instructions_main.hpp"

namespace kernels {

constexpr std::string_view short_description = "fd 7";
constexpr std::string_view long_description = "file \"/var/lib/app/data/2024/records.db\"";

struct untracked {
    std::string_view kind;
    std::string description;
    std::source_location where;
};

// Out of line (callgrind counts inside each kernel by name), each object's size or length
// going into `work` so that nothing is optimised away.
[[gnu::noinline]] void tracked(std::string_view description, int& work) {
    ctxmgr::tracked registration("socket", std::string(description));
    work += static_cast<int>(sizeof registration);
}

[[gnu::noinline]] void untracked_object(std::string_view description, int& work) {
    untracked object{"socket", std::string(description), std::source_location::current()};
    work += static_cast<int>(object.description.size());
}

[[gnu::noinline]] void tracked_short(int& work) {
    tracked(short_description, work);
}
[[gnu::noinline]] void untracked_short(int& work) {
    untracked_object(short_description, work);
}
[[gnu::noinline]] void tracked_long(int& work) {
    tracked(long_description, work);
}
[[gnu::noinline]] void untracked_long(int& work) {
    untracked_object(long_description, work);
}

// The two clocks a registration could stamp with: the precise one it reads (so that
// acquired_at orders registrations exactly) and the coarse one (a 4 ms tick).
[[gnu::noinline]] void precise_clock(int& work) {
    work += static_cast<int>(std::chrono::steady_clock::now().time_since_epoch().count() & 1);
}
[[gnu::noinline]] void coarse_clock(int& work) {
    timespec now{};
    ::clock_gettime(CLOCK_MONOTONIC_COARSE, &now);
    work += static_cast<int>(now.tv_nsec & 1);
}

}  // namespace kernels

int main(int argc, char** argv) {
    int work = 0;
    const kernels::kernel_cases cases = {
        {"tracked_short", [&] { kernels::tracked_short(work); }},
        {"untracked_short", [&] { kernels::untracked_short(work); }},
        {"tracked_long", [&] { kernels::tracked_long(work); }},
        {"untracked_long", [&] { kernels::untracked_long(work); }},
        {"precise_clock", [&] { kernels::precise_clock(work); }},
        {"coarse_clock", [&] { kernels::coarse_clock(work); }},
    };
    return kernels::run_kernel(argc, argv, cases, work);
}
