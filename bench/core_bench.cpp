// Core benchmarks: with, exit_stack, contextmanager and the scope guards, each next to its
// baseline in the same run. Reproduce: see docs/performance.md.
#include <benchmark/benchmark.h>

#include "core_kernels.hpp"

namespace {

// Runs a kernel that takes the work counter.
template <auto Kernel>
void on_work(benchmark::State& state) {
    int work = 0;
    for (auto _ : state) Kernel(work);
}

// Runs a kernel that takes one or two managers and the work counter.
template <auto Kernel>
void on_manager(benchmark::State& state) {
    kernels::counter m;
    int work = 0;
    for (auto _ : state) Kernel(m, work);
}

template <auto Kernel>
void on_two_managers(benchmark::State& state) {
    kernels::counter a, b;
    int work = 0;
    for (auto _ : state) Kernel(a, b, work);
}

}  // namespace

BENCHMARK(on_manager<kernels::with_trivial>)->Name("with_trivial");
BENCHMARK(on_manager<kernels::handwritten_trivial>)->Name("handwritten_trivial");
BENCHMARK(on_two_managers<kernels::with_two>)->Name("with_two_managers");
BENCHMARK(on_two_managers<kernels::handwritten_two>)->Name("handwritten_two_managers");
BENCHMARK(on_work<kernels::exit_stack_callbacks<1>>)->Name("exit_stack_callbacks<1>");
BENCHMARK(on_work<kernels::exit_stack_callbacks<4>>)->Name("exit_stack_callbacks<4>");
BENCHMARK(on_work<kernels::exit_stack_callbacks<16>>)->Name("exit_stack_callbacks<16>");
BENCHMARK(on_work<kernels::handwritten_guards<1>>)->Name("handwritten_guards<1>");
BENCHMARK(on_work<kernels::handwritten_guards<4>>)->Name("handwritten_guards<4>");
BENCHMARK(on_work<kernels::handwritten_guards<16>>)->Name("handwritten_guards<16>");
BENCHMARK(on_work<kernels::with_contextmanager>)->Name("contextmanager_coroutine");
BENCHMARK(on_work<kernels::with_class_manager>)->Name("contextmanager_class");
BENCHMARK(on_work<kernels::handwritten_coroutine>)->Name("contextmanager_floor");
BENCHMARK(on_work<kernels::guard_finally>)->Name("guard_finally");
BENCHMARK(on_work<kernels::guard_scope_fail>)->Name("guard_scope_fail");
BENCHMARK(on_work<kernels::guard_handwritten>)->Name("guard_handwritten");
BENCHMARK(on_work<kernels::guard_handwritten_fail>)->Name("guard_handwritten_fail");
#if defined(CTXMGR_BENCH_ABSL)
BENCHMARK(on_work<kernels::guard_absl_cleanup>)->Name("guard_absl_cleanup");
#endif
#if defined(CTXMGR_BENCH_GSL)
BENCHMARK(on_work<kernels::guard_gsl_finally>)->Name("guard_gsl_finally");
#endif

BENCHMARK_MAIN();
