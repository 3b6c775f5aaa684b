// The code the lock benchmarks measure, shared by lock_bench.cpp (Google Benchmark, wall
// time) and lock_instructions.cpp (fixed iterations, for callgrind's instruction counts), so
// both measure exactly the same functions. Each ctxmgr kernel has its baseline next to it:
// the standard guard it replaces, or the raw system calls.
#pragma once

#include <ctxmgr/file_lock.hpp>
#include <ctxmgr/lock.hpp>
#include <ctxmgr/with.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <mutex>
#include <shared_mutex>
#include <system_error>

#include "core_kernels.hpp"  // escape, CTXMGR_KERNEL

namespace kernels {

// The body of every kernel: a call the compiler cannot see into, as a real critical section
// makes. (core_kernels' escape(), an asm statement with a "memory" clobber, would claim that
// the body may write any object in the frame, even one whose address never escapes, which
// no function can; it would keep a manager's flag in memory. The _barrier kernels below show
// that case.)
CTXMGR_KERNEL inline void critical_section(int& work) {
    escape(++work);
}

// ---- one mutex -----------------------------------------------------------------------------

CTXMGR_KERNEL inline void with_lock(std::mutex& m, int& work) {
    ctxmgr::with(ctxmgr::lock(m), [&] { critical_section(work); });
}

CTXMGR_KERNEL inline void scoped_lock(std::mutex& m, int& work) {
    std::scoped_lock guard(m);
    critical_section(work);
}

// The same with the asm barrier inlined as the body.
CTXMGR_KERNEL inline void with_lock_barrier(std::mutex& m, int& work) {
    ctxmgr::with(ctxmgr::lock(m), [&] { escape(++work); });
}

CTXMGR_KERNEL inline void scoped_lock_barrier(std::mutex& m, int& work) {
    std::scoped_lock guard(m);
    escape(++work);
}

// ---- two mutexes (std::lock's algorithm) -----------------------------------------------

CTXMGR_KERNEL inline void with_lock_two(std::mutex& a, std::mutex& b, int& work) {
    ctxmgr::with(ctxmgr::lock(a, b), [&] { critical_section(work); });
}

CTXMGR_KERNEL inline void scoped_lock_two(std::mutex& a, std::mutex& b, int& work) {
    std::scoped_lock guard(a, b);
    critical_section(work);
}

// ---- timed ----------------------------------------------------------------------------------

CTXMGR_KERNEL inline void with_lock_for(std::timed_mutex& m, int& work) {
    ctxmgr::with(ctxmgr::lock_for(std::chrono::seconds(1), m), [&] { critical_section(work); });
}

// What lock_for replaces: a unique_lock with a timeout, and the check a caller must write.
CTXMGR_KERNEL inline void unique_lock_for(std::timed_mutex& m, int& work) {
    std::unique_lock guard(m, std::chrono::seconds(1));
    if (!guard.owns_lock()) throw std::system_error(std::make_error_code(std::errc::timed_out));
    critical_section(work);
}

// ---- shared -------------------------------------------------------------------------------

CTXMGR_KERNEL inline void with_shared(std::shared_mutex& m, int& work) {
    ctxmgr::with(ctxmgr::shared(m), [&] { critical_section(work); });
}

CTXMGR_KERNEL inline void shared_lock(std::shared_mutex& m, int& work) {
    std::shared_lock guard(m);
    critical_section(work);
}

// ---- nested: the order checker's common case (an edge it already knows) ----------------

// Bodies as named types: bench/instructions counts inside functions whose names contain the
// kernel's, and a lambda's type would carry it into with()'s frame functions, whose entries
// would then toggle the count off.
struct inner_section {
    std::mutex& b;
    int& work;
    void operator()() const {
        ctxmgr::with(ctxmgr::lock(b), [this] { critical_section(work); });
    }
};

CTXMGR_KERNEL inline void with_lock_nested(std::mutex& a, std::mutex& b, int& work) {
    ctxmgr::with(ctxmgr::lock(a), inner_section{b, work});
}

// b while holding a, as one with of two managers (entered in order, exited in reverse).
CTXMGR_KERNEL inline void with_lock_then_lock(std::mutex& a, std::mutex& b, int& work) {
    ctxmgr::with(ctxmgr::lock(a), ctxmgr::lock(b), [&] { critical_section(work); });
}

CTXMGR_KERNEL inline void scoped_lock_nested(std::mutex& a, std::mutex& b, int& work) {
    std::scoped_lock outer(a);
    std::scoped_lock inner(b);
    critical_section(work);
}

// ---- file locks -----------------------------------------------------------------------------

CTXMGR_KERNEL inline void with_file_lock(const char* path, int& work) {
    ctxmgr::with(ctxmgr::file_lock(path), [&] { critical_section(work); });
}

// The same system calls by hand: open (creating), lock, unlock, close.
CTXMGR_KERNEL inline void raw_fcntl_lock(const char* path, int& work) {
    const int fd = ::open(path, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOCTTY | O_NONBLOCK, 0666);
    if (fd < 0) throw std::system_error(errno, std::generic_category(), "open");
    struct flock request {};
    request.l_type = F_WRLCK;
    request.l_whence = SEEK_SET;
    if (::fcntl(fd, F_OFD_SETLKW, &request) != 0) {
        const int error = errno;
        ::close(fd);
        throw std::system_error(error, std::generic_category(), "fcntl");
    }
    critical_section(work);
    request.l_type = F_UNLCK;
    ::fcntl(fd, F_OFD_SETLK, &request);
    ::close(fd);
}

}  // namespace kernels
