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

template <auto Kernel>
void one_mutex(benchmark::State& state) {
    int work = 0;
    for (auto _ : state) Kernel(first_mutex, work);
}

template <auto Kernel>
void two_mutexes(benchmark::State& state) {
    int work = 0;
    for (auto _ : state) Kernel(first_mutex, second_mutex, work);
}

template <auto Kernel>
void timed(benchmark::State& state) {
    int work = 0;
    for (auto _ : state) Kernel(timed_mutex, work);
}

template <auto Kernel>
void shared(benchmark::State& state) {
    int work = 0;
    for (auto _ : state) Kernel(shared_mutex, work);
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

BENCHMARK(one_mutex<kernels::with_lock>)->Name("with_lock")->Threads(1)->Threads(2);
BENCHMARK(one_mutex<kernels::scoped_lock>)->Name("scoped_lock")->Threads(1)->Threads(2);
BENCHMARK(two_mutexes<kernels::with_lock_two>)->Name("with_lock_two")->Threads(1)->Threads(2);
BENCHMARK(two_mutexes<kernels::scoped_lock_two>)->Name("scoped_lock_two")->Threads(1)->Threads(2);
BENCHMARK(two_mutexes<kernels::with_lock_nested>)->Name("with_lock_nested");
BENCHMARK(two_mutexes<kernels::with_lock_then_lock>)->Name("with_lock_then_lock");
BENCHMARK(two_mutexes<kernels::scoped_lock_nested>)->Name("scoped_lock_nested");
BENCHMARK(timed<kernels::with_lock_for>)->Name("with_lock_for");
BENCHMARK(timed<kernels::unique_lock_for>)->Name("unique_lock_for");
BENCHMARK(shared<kernels::with_shared>)->Name("with_shared");
BENCHMARK(shared<kernels::shared_lock>)->Name("shared_lock");
BENCHMARK(file<kernels::with_file_lock>)->Name("with_file_lock");
BENCHMARK(file<kernels::raw_fcntl_lock>)->Name("raw_fcntl_lock");

BENCHMARK_MAIN();
