// Network benchmarks: a loopback round trip (64 bytes out, the 64-byte echo back) on one open
// connection, and connect + graceful close cycles, each next to the same exchange written with
// raw POSIX calls, in the same run, against the same raw server thread (net_kernels.hpp).
// Wall time (UseRealTime: the client mostly waits for the server thread and the kernel).
// Reproduce: see docs/performance.md.
#include <benchmark/benchmark.h>

#include <string>

#include "net_kernels.hpp"

namespace {

const std::string message(net_bench::message_size, 'm');

template <std::size_t (*Kernel)(ctxmgr::tcp::connection&, std::string_view)>
void roundtrip_ctxmgr(benchmark::State& state) {
    net_bench::server peer(net_bench::server::echo);
    auto c = ctxmgr::tcp::connect("127.0.0.1", peer.port());
    for (auto _ : state) benchmark::DoNotOptimize(Kernel(c, message));
    c.close();
}

template <std::size_t (*Kernel)(int, std::string_view)>
void roundtrip_raw(benchmark::State& state) {
    net_bench::server peer(net_bench::server::echo);
    const int fd = net_bench::raw_connect(peer.port(), false);
    for (auto _ : state) benchmark::DoNotOptimize(Kernel(fd, message));
    net_bench::raw_graceful_close(fd, false);
}

template <void (*Kernel)(std::uint16_t)>
void connect_close(benchmark::State& state) {
    net_bench::server peer(net_bench::server::close_at_once);
    for (auto _ : state) Kernel(peer.port());
    state.SetItemsProcessed(state.iterations());
}

// A fixed number of connect/close cycles per repetition: every cycle leaves a TIME_WAIT entry
// on the server side for 60 s, and the kernel's table of them is shared with everyone.
constexpr int cycles = 2000;

BENCHMARK(roundtrip_ctxmgr<kernels::roundtrip_ctxmgr>)->Name("roundtrip/ctxmgr")->UseRealTime();
BENCHMARK(roundtrip_raw<kernels::roundtrip_raw>)->Name("roundtrip/raw")->UseRealTime();
BENCHMARK(roundtrip_ctxmgr<kernels::roundtrip_timed_ctxmgr>)
    ->Name("roundtrip_timed/ctxmgr")
    ->UseRealTime();
BENCHMARK(roundtrip_raw<kernels::roundtrip_timed_raw>)->Name("roundtrip_timed/raw")->UseRealTime();
BENCHMARK(connect_close<kernels::connect_close_ctxmgr>)
    ->Name("connect_close/ctxmgr")
    ->Iterations(cycles)
    ->UseRealTime();
BENCHMARK(connect_close<kernels::connect_close_raw>)
    ->Name("connect_close/raw")
    ->Iterations(cycles)
    ->UseRealTime();
BENCHMARK(connect_close<kernels::connect_close_raw_same_calls>)
    ->Name("connect_close/raw_same_calls")
    ->Iterations(cycles)
    ->UseRealTime();
BENCHMARK(connect_close<kernels::connect_close_timed_ctxmgr>)
    ->Name("connect_close_timed/ctxmgr")
    ->Iterations(cycles)
    ->UseRealTime();
BENCHMARK(connect_close<kernels::connect_close_timed_raw>)
    ->Name("connect_close_timed/raw")
    ->Iterations(cycles)
    ->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
