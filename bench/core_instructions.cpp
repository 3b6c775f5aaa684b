// Runs one core kernel a fixed number of times, for callgrind's instruction counts:
//   core_instructions <kernel> [iterations]
// bench/instructions runs it under callgrind and compares a kernel with its baseline.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <string>

#include "core_kernels.hpp"

int main(int argc, char** argv) {
    kernels::counter a, b;
    int work = 0;
    const std::map<std::string, std::function<void()>> cases = {
        {"with_trivial", [&] { kernels::with_trivial(a, work); }},
        {"handwritten_trivial", [&] { kernels::handwritten_trivial(a, work); }},
        {"with_two", [&] { kernels::with_two(a, b, work); }},
        {"handwritten_two", [&] { kernels::handwritten_two(a, b, work); }},
        {"exit_stack_callbacks<4>", [&] { kernels::exit_stack_callbacks<4>(work); }},
        {"handwritten_guards<4>", [&] { kernels::handwritten_guards<4>(work); }},
        {"with_contextmanager", [&] { kernels::with_contextmanager(work); }},
        {"with_class_manager", [&] { kernels::with_class_manager(work); }},
        {"guard_finally", [&] { kernels::guard_finally(work); }},
        {"guard_scope_fail", [&] { kernels::guard_scope_fail(work); }},
        {"guard_handwritten", [&] { kernels::guard_handwritten(work); }},
        {"guard_handwritten_fail", [&] { kernels::guard_handwritten_fail(work); }},
        {"exit_stack_callbacks<1>", [&] { kernels::exit_stack_callbacks<1>(work); }},
        {"handwritten_guards<1>", [&] { kernels::handwritten_guards<1>(work); }},
        {"exit_stack_callbacks<16>", [&] { kernels::exit_stack_callbacks<16>(work); }},
        {"handwritten_guards<16>", [&] { kernels::handwritten_guards<16>(work); }},
    };
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
