// Leak-tracking benchmarks: registering and unregistering a resource (constructing and
// destroying a ctxmgr::tracked), next to the same object without tracking, in the same run,
// on one thread and on two. With two threads, google benchmark's CPU column is the cost of
// one pair on one thread and its Time column the wall time per pair of both threads
// together. Built twice: tracking_bench, and tracking_off_bench from this
// file with CTXMGR_TRACKING=0 (what a build with the option OFF gets). Reproduce: see
// docs/performance.md.
#include <benchmark/benchmark.h>

#include <ctxmgr/tracking.hpp>

#include <source_location>
#include <string>
#include <string_view>

namespace {

// Short enough for the string's inline buffer, and a path long enough to allocate.
constexpr std::string_view short_description = "fd 7";
constexpr std::string_view long_description = "file \"/var/lib/app/data/2024/records.db\"";

std::string_view description_for(const benchmark::State& state) {
    return state.range(0) == 0 ? short_description : long_description;
}

// A resource's registration: what every resource of the library pays on acquire and release.
void tracked_pair(benchmark::State& state) {
    const auto description = description_for(state);
    const auto where = std::source_location::current();
    for (auto _ : state) {
        ctxmgr::tracked registration("socket", std::string(description), where);
        benchmark::DoNotOptimize(registration);
    }
}
BENCHMARK(tracked_pair)->ArgName("long")->Arg(0)->Arg(1)->Threads(1)->Threads(2);

// The baseline: the same data (kind, description, line) in an object that registers nothing.
struct untracked {
    std::string_view kind;
    std::string description;
    std::source_location where;
};

void untracked_pair(benchmark::State& state) {
    const auto description = description_for(state);
    const auto where = std::source_location::current();
    for (auto _ : state) {
        untracked object{"socket", std::string(description), where};
        benchmark::DoNotOptimize(object);
    }
}
BENCHMARK(untracked_pair)->ArgName("long")->Arg(0)->Arg(1)->Threads(1)->Threads(2);

}  // namespace

BENCHMARK_MAIN();
