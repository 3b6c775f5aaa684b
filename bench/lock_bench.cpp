// Lock benchmarks: each ctxmgr manager next to the standard guard it replaces, uncontended
// (one thread) and contended (two threads on the same mutexes: Google Benchmark's Time
// column is then the wall time per acquisition of both threads together, CPU the cost on
// one thread), and file_lock next to the raw open/fcntl/close calls. Built twice:
// lock_bench, and, in a build without the lock-order checker, lock_checked_bench from this
// file against the library with the checker compiled in (its cost when on). Reproduce: see
// docs/performance.md.
#include <benchmark/benchmark.h>

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "lock_kernels.hpp"

namespace {

// Shared by the threads of a contended run.
std::mutex first_mutex, second_mutex;
std::timed_mutex timed_mutex;
std::shared_mutex shared_mutex;

// Runs Kernel(mutexes..., work).
template <auto Kernel, auto&... Mutexes>
void on(benchmark::State& state) {
    int work = 0;
    for (auto _ : state) Kernel(Mutexes..., work);
}

// A lock file in a fresh directory of $TMPDIR (or /tmp), removed at the end.
template <auto Kernel>
void file(benchmark::State& state) {
    std::string directory = (std::filesystem::temp_directory_path() / "lock_bench.XXXXXX").string();
    if (::mkdtemp(directory.data()) == nullptr) {
        state.SkipWithError("mkdtemp failed");
        return;
    }
    const std::string path = directory + "/bench.lock";
    int work = 0;
    for (auto _ : state) Kernel(path.c_str(), work);
    std::filesystem::remove_all(directory);
}

}  // namespace

BENCHMARK(on<kernels::with_lock, first_mutex>)->Name("with_lock")->Threads(1)->Threads(2);
BENCHMARK(on<kernels::scoped_lock, first_mutex>)->Name("scoped_lock")->Threads(1)->Threads(2);
BENCHMARK(on<kernels::with_lock_two, first_mutex, second_mutex>)
    ->Name("with_lock_two")
    ->Threads(1)
    ->Threads(2);
BENCHMARK(on<kernels::scoped_lock_two, first_mutex, second_mutex>)
    ->Name("scoped_lock_two")
    ->Threads(1)
    ->Threads(2);
BENCHMARK(on<kernels::with_lock_nested, first_mutex, second_mutex>)->Name("with_lock_nested");
BENCHMARK(on<kernels::with_lock_then_lock, first_mutex, second_mutex>)->Name("with_lock_then_lock");
BENCHMARK(on<kernels::scoped_lock_nested, first_mutex, second_mutex>)->Name("scoped_lock_nested");
BENCHMARK(on<kernels::with_lock_for, timed_mutex>)->Name("with_lock_for");
BENCHMARK(on<kernels::unique_lock_for, timed_mutex>)->Name("unique_lock_for");
BENCHMARK(on<kernels::with_shared, shared_mutex>)->Name("with_shared");
BENCHMARK(on<kernels::shared_lock, shared_mutex>)->Name("shared_lock");
BENCHMARK(file<kernels::with_file_lock>)->Name("with_file_lock");
BENCHMARK(file<kernels::raw_fcntl_lock>)->Name("raw_fcntl_lock");

BENCHMARK_MAIN();
