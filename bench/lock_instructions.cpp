// Runs one lock kernel a fixed number of times, for callgrind's instruction counts:
//   lock_instructions <kernel> [iterations]
// bench/instructions runs it under callgrind and compares a kernel with its baseline, e.g.
//   bench/instructions build/default/bench/lock_instructions with_lock scoped_lock
#include "instructions_main.hpp"
#include "lock_kernels.hpp"

int main(int argc, char** argv) {
    std::mutex a, b;
    std::timed_mutex t;
    std::shared_mutex s;
    int work = 0;
    const kernels::kernel_cases cases = {
        {"with_lock", [&] { kernels::with_lock(a, work); }},
        {"scoped_lock", [&] { kernels::scoped_lock(a, work); }},
        {"with_lock_barrier", [&] { kernels::with_lock_barrier(a, work); }},
        {"scoped_lock_barrier", [&] { kernels::scoped_lock_barrier(a, work); }},
        {"with_lock_two", [&] { kernels::with_lock_two(a, b, work); }},
        {"scoped_lock_two", [&] { kernels::scoped_lock_two(a, b, work); }},
        {"with_lock_for", [&] { kernels::with_lock_for(t, work); }},
        {"unique_lock_for", [&] { kernels::unique_lock_for(t, work); }},
        {"with_shared", [&] { kernels::with_shared(s, work); }},
        {"shared_lock", [&] { kernels::shared_lock(s, work); }},
        {"with_lock_nested", [&] { kernels::with_lock_nested(a, b, work); }},
        {"scoped_lock_nested", [&] { kernels::scoped_lock_nested(a, b, work); }},
        {"with_lock_then_lock", [&] { kernels::with_lock_then_lock(a, b, work); }},
    };
    return kernels::run_kernel(argc, argv, cases, work);
}
