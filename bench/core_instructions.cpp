// Runs one core kernel a fixed number of times, for callgrind's instruction counts:
//   core_instructions <kernel> [iterations]
// bench/instructions runs it under callgrind and compares a kernel with its baseline.
#include "core_kernels.hpp"
#include "instructions_main.hpp"

int main(int argc, char** argv) {
    kernels::counter a, b;
    int work = 0;
    const kernels::kernel_cases cases = {
        {"with_trivial", [&] { kernels::with_trivial(a, work); }},
        {"handwritten_trivial", [&] { kernels::handwritten_trivial(a, work); }},
        {"with_two", [&] { kernels::with_two(a, b, work); }},
        {"handwritten_two", [&] { kernels::handwritten_two(a, b, work); }},
        {"exit_stack_callbacks<4>", [&] { kernels::exit_stack_callbacks<4>(work); }},
        {"handwritten_guards<4>", [&] { kernels::handwritten_guards<4>(work); }},
        {"with_contextmanager", [&] { kernels::with_contextmanager(work); }},
        {"with_class_manager", [&] { kernels::with_class_manager(work); }},
        {"handwritten_coroutine", [&] { kernels::handwritten_coroutine(work); }},
        {"guard_finally", [&] { kernels::guard_finally(work); }},
        {"guard_scope_fail", [&] { kernels::guard_scope_fail(work); }},
        {"guard_handwritten", [&] { kernels::guard_handwritten(work); }},
        {"guard_handwritten_fail", [&] { kernels::guard_handwritten_fail(work); }},
        {"exit_stack_callbacks<1>", [&] { kernels::exit_stack_callbacks<1>(work); }},
        {"handwritten_guards<1>", [&] { kernels::handwritten_guards<1>(work); }},
        {"exit_stack_callbacks<16>", [&] { kernels::exit_stack_callbacks<16>(work); }},
        {"handwritten_guards<16>", [&] { kernels::handwritten_guards<16>(work); }},
    };
    return kernels::run_kernel(argc, argv, cases, work);
}
