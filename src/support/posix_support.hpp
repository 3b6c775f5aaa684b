// What the parts of src/ that make system calls on files share (internal): file.cpp,
// file_lock.cpp and net.cpp.
#pragma once

#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <string>
#include <string_view>

#include "ctxmgr/errors.hpp"

namespace ctxmgr::detail {

// Calls a system call again while it fails with EINTR. Never used for close(2).
template <class Call>
auto retry(Call call) {
    for (;;) {
        const auto result = call();
        if (result != -1 || errno != EINTR) return result;
    }
}

// close(2) once: Linux releases the descriptor whatever it returns, so a retry could close a
// descriptor another thread has just been given. EINTR is not a failure (as Python, PEP 475).
inline int close_once(int fd) noexcept {
    return ::close(fd) == 0 || errno == EINTR ? 0 : errno;
}

// "\"/tmp/x\"", as messages show a path.
inline std::string quoted(const std::filesystem::path& path) {
    return '"' + path.string() + '"';
}

// Throws io_error for the errno of the call that just failed (read before anything that
// allocates could change it).
[[noreturn]] inline void throw_errno(std::string_view operation,
                                     const std::filesystem::path& path) {
    const int error = errno;
    throw io_error(operation, path.string(), error);
}

}  // namespace ctxmgr::detail
