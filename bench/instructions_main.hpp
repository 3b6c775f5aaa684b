// What the instruction-count programs (core, lock, pool) share: run the
// kernel named on the command line a fixed number of times, so that bench/instructions can
// count its instructions under callgrind:
//   <program> <kernel> [iterations]
#pragma once

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <string>

namespace kernels {

// Each kernel by name, as a call with its arguments bound.
using kernel_cases = std::map<std::string, std::function<void()>>;

// Runs the case named by argv[1], argv[2] times (100000 by default), then prints `work` so
// that the kernels' effect is used. Lists the cases and returns 2 for a missing or unknown name.
inline int run_kernel(int argc, char** argv, const kernel_cases& cases, const int& work) {
    if (argc < 2 || cases.count(argv[1]) == 0) {
        std::fprintf(stderr, "usage: %s <kernel> [iterations]; kernels:", argv[0]);
        for (const auto& [name, _] : cases) std::fprintf(stderr, " %s", name.c_str());
        std::fprintf(stderr, "\n");
        return 2;
    }
    const long iterations = argc > 2 ? std::atol(argv[2]) : 100000;
    const auto& run = cases.at(argv[1]);
    for (long i = 0; i < iterations; ++i) run();
    std::printf("%s: %ld iterations, work %d\n", argv[1], iterations, work);
    return 0;
}

}  // namespace kernels
