// Runs one network kernel a fixed number of times against the raw server thread, for
// callgrind's instruction counts:
//   net_instructions <kernel> [iterations]
// bench/instructions runs it under callgrind, counting only inside the kernel function and
// its callees on the client thread: user-space instructions only (callgrind does not see the
// kernel's work in system calls, which is most of the time here; see docs/performance.md).
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <string>

#include "net_kernels.hpp"

int main(int argc, char** argv) {
    const std::string message(net_bench::message_size, 'm');
    using runner = std::function<void(long)>;
    const auto roundtrip = [&](auto kernel) -> runner {
        return [&, kernel](long iterations) {
            net_bench::server peer(net_bench::server::echo);
            auto c = ctxmgr::tcp::connect("127.0.0.1", peer.port());
            for (long i = 0; i < iterations; ++i) kernel(c, message);
            c.close();
        };
    };
    const auto roundtrip_raw = [&](auto kernel) -> runner {
        return [&, kernel](long iterations) {
            net_bench::server peer(net_bench::server::echo);
            const int fd = net_bench::raw_connect(peer.port(), false);
            for (long i = 0; i < iterations; ++i) kernel(fd, message);
            net_bench::raw_graceful_close(fd, false);
        };
    };
    const auto cycles = [](auto kernel) -> runner {
        return [kernel](long iterations) {
            net_bench::server peer(net_bench::server::close_at_once);
            for (long i = 0; i < iterations; ++i) kernel(peer.port());
        };
    };
    const std::map<std::string, runner> cases = {
        {"roundtrip_ctxmgr", roundtrip(kernels::roundtrip_ctxmgr)},
        {"roundtrip_raw", roundtrip_raw(kernels::roundtrip_raw)},
        {"roundtrip_timed_ctxmgr", roundtrip(kernels::roundtrip_timed_ctxmgr)},
        {"roundtrip_timed_raw", roundtrip_raw(kernels::roundtrip_timed_raw)},
        {"connect_close_ctxmgr", cycles(kernels::connect_close_ctxmgr)},
        {"connect_close_raw", cycles(kernels::connect_close_raw)},
        {"connect_close_raw_same_calls", cycles(kernels::connect_close_raw_same_calls)},
        {"connect_close_timed_ctxmgr", cycles(kernels::connect_close_timed_ctxmgr)},
        {"connect_close_timed_raw", cycles(kernels::connect_close_timed_raw)},
    };
    if (argc < 2 || cases.count(argv[1]) == 0) {
        std::fprintf(stderr, "usage: %s <kernel> [iterations]; kernels:", argv[0]);
        for (const auto& [name, _] : cases) std::fprintf(stderr, " %s", name.c_str());
        std::fprintf(stderr, "\n");
        return 2;
    }
    const long iterations = argc > 2 ? std::atol(argv[2]) : 2000;
    cases.at(argv[1])(iterations);
    std::printf("%s: %ld iterations\n", argv[1], iterations);
    return 0;
}
