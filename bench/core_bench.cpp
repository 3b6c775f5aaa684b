// Core benchmarks: with, exit_stack, contextmanager and the scope guards, each next to its
// baseline in the same run. Reproduce: see docs/performance.md.
#include <benchmark/benchmark.h>

#include "core_kernels.hpp"

namespace {

void with_trivial(benchmark::State& state) {
    kernels::counter m;
    int work = 0;
    for (auto _ : state) kernels::with_trivial(m, work);
}
BENCHMARK(with_trivial);

void handwritten_trivial(benchmark::State& state) {
    kernels::counter m;
    int work = 0;
    for (auto _ : state) kernels::handwritten_trivial(m, work);
}
BENCHMARK(handwritten_trivial);

void with_two_managers(benchmark::State& state) {
    kernels::counter a, b;
    int work = 0;
    for (auto _ : state) kernels::with_two(a, b, work);
}
BENCHMARK(with_two_managers);

void handwritten_two_managers(benchmark::State& state) {
    kernels::counter a, b;
    int work = 0;
    for (auto _ : state) kernels::handwritten_two(a, b, work);
}
BENCHMARK(handwritten_two_managers);

template <int N>
void exit_stack_callbacks(benchmark::State& state) {
    int work = 0;
    for (auto _ : state) kernels::exit_stack_callbacks<N>(work);
}
BENCHMARK(exit_stack_callbacks<1>);
BENCHMARK(exit_stack_callbacks<4>);
BENCHMARK(exit_stack_callbacks<16>);

template <int N>
void handwritten_guards(benchmark::State& state) {
    int work = 0;
    for (auto _ : state) kernels::handwritten_guards<N>(work);
}
BENCHMARK(handwritten_guards<1>);
BENCHMARK(handwritten_guards<4>);
BENCHMARK(handwritten_guards<16>);

void contextmanager_coroutine(benchmark::State& state) {
    int work = 0;
    for (auto _ : state) kernels::with_contextmanager(work);
}
BENCHMARK(contextmanager_coroutine);

void contextmanager_class(benchmark::State& state) {
    int work = 0;
    for (auto _ : state) kernels::with_class_manager(work);
}
BENCHMARK(contextmanager_class);

void guard_finally(benchmark::State& state) {
    int work = 0;
    for (auto _ : state) kernels::guard_finally(work);
}
BENCHMARK(guard_finally);

void guard_scope_fail(benchmark::State& state) {
    int work = 0;
    for (auto _ : state) kernels::guard_scope_fail(work);
}
BENCHMARK(guard_scope_fail);

void guard_handwritten(benchmark::State& state) {
    int work = 0;
    for (auto _ : state) kernels::guard_handwritten(work);
}
BENCHMARK(guard_handwritten);

void guard_handwritten_fail(benchmark::State& state) {
    int work = 0;
    for (auto _ : state) kernels::guard_handwritten_fail(work);
}
BENCHMARK(guard_handwritten_fail);

#if defined(CTXMGR_BENCH_ABSL)
void guard_absl_cleanup(benchmark::State& state) {
    int work = 0;
    for (auto _ : state) kernels::guard_absl_cleanup(work);
}
BENCHMARK(guard_absl_cleanup);
#endif

#if defined(CTXMGR_BENCH_GSL)
void guard_gsl_finally(benchmark::State& state) {
    int work = 0;
    for (auto _ : state) kernels::guard_gsl_finally(work);
}
BENCHMARK(guard_gsl_finally);
#endif

}  // namespace

BENCHMARK_MAIN();
