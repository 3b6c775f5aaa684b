// The CPUs this process may run on, and pinning the calling thread to one of them: for tests of
// what depends on the CPU a thread runs on.
#pragma once

#include <pthread.h>
#include <sched.h>

#include <cerrno>
#include <cstddef>
#include <system_error>
#include <vector>

namespace ctxmgr::testing {

// In increasing order; never empty.
inline std::vector<int> allowed_cpus() {
    cpu_set_t allowed;
    if (::sched_getaffinity(0, sizeof allowed, &allowed) != 0) {
        throw std::system_error(errno, std::generic_category(), "sched_getaffinity");
    }
    std::vector<int> cpus;
    for (std::size_t cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
        if (CPU_ISSET(cpu, &allowed)) cpus.push_back(static_cast<int>(cpu));
    }
    return cpus;
}

// The calling thread runs on `cpu` alone from now on.
inline void pin_this_thread(int cpu) {
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(static_cast<std::size_t>(cpu), &one);
    if (const int error = ::pthread_setaffinity_np(::pthread_self(), sizeof one, &one);
        error != 0) {
        throw std::system_error(error, std::generic_category(), "pthread_setaffinity_np");
    }
}

}  // namespace ctxmgr::testing
