// Paired measurements for benchmarks whose variants share a noisy machine: every variant
// runs once per iteration, in an order that rotates, so that all see the same moments, and
// each is summed up by its median.
#pragma once

#include <benchmark/benchmark.h>
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <functional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace bench {

struct run_result {
    double queries_per_second;
    double switches_per_query;
};

// Context switches of this process so far, every thread's (getrusage).
inline long context_switches() {
    rusage usage{};
    ::getrusage(RUSAGE_SELF, &usage);
    return usage.ru_nvcsw + usage.ru_nivcsw;
}

// Times run(), which does `queries` operations.
template <class Run>
run_result timed(double queries, Run&& run) {
    const long switches = context_switches();
    const auto start = std::chrono::steady_clock::now();
    std::forward<Run>(run)();
    const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
    return {queries / took.count(), static_cast<double>(context_switches() - switches) / queries};
}

// `threads` threads run query(thread) per_thread times each, started together.
template <class Query>
run_result run_threads(int threads, int per_thread, Query&& query) {
    std::atomic<int> ready{0};
    std::atomic<bool> go{false};
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t) {
        workers.emplace_back([&, t] {
            ++ready;
            while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
            for (int i = 0; i < per_thread; ++i) query(static_cast<std::size_t>(t));
        });
    }
    while (ready.load() < threads) std::this_thread::yield();
    return timed(static_cast<double>(threads) * per_thread, [&] {
        go.store(true, std::memory_order_release);
        for (auto& w : workers) w.join();
    });
}

inline double median(std::vector<double> v) {
    std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(v.size() / 2), v.end());
    return v[v.size() / 2];
}

struct variant {
    std::string name;
    std::function<run_result()> run;
};

// Runs every variant once per iteration, in an order that rotates; sets each variant's median
// throughput and context switches per operation as counters `<name>_<unit>` and
// `<name>_switches`, and returns the medians.
inline std::vector<double> run_paired(benchmark::State& state, const std::vector<variant>& variants,
                                      const char* unit) {
    std::vector<std::vector<double>> rates(variants.size());
    std::vector<std::vector<double>> switches(variants.size());
    std::size_t turn = 0;
    for (auto _ : state) {
        for (std::size_t k = 0; k < variants.size(); ++k) {
            const std::size_t which = (turn + k) % variants.size();
            const run_result r = variants[which].run();
            rates[which].push_back(r.queries_per_second);
            switches[which].push_back(r.switches_per_query);
        }
        ++turn;
    }
    std::vector<double> medians;
    for (std::size_t i = 0; i < variants.size(); ++i) {
        medians.push_back(median(rates[i]));
        state.counters[variants[i].name + "_" + unit] = medians.back();
        state.counters[variants[i].name + "_switches"] = median(switches[i]);
    }
    return medians;
}

}  // namespace bench
