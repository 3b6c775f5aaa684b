// What the parts of src/ that make system calls on files share (internal): file.cpp,
// file_lock.cpp, net.cpp and read_appending.cpp.
#pragma once

#include <unistd.h>

#include <algorithm>
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

// read(2) once into up to `n` (> 0) new bytes at the end of `out`, which then keeps what was
// read: returns read(2)'s result, and on -1 (errno set) `out` is as it was. The new bytes are
// not written before the kernel writes them: read_appending.cpp is compiled as C++23 where the
// compiler can be, for std::string::resize_and_overwrite: file::read_all() reaches 0.92 of the
// physical floor that way, 0.85 zero-filled (docs/performance.md).
ssize_t read_appending(int fd, std::string& out, std::size_t n);

// Whether read_appending() skips the zero-fill (read_appending.cpp was compiled as C++23).
extern const bool read_appending_skips_zero_fill;

// The same, zero-filling the new bytes first: read_appending() where the standard library has
// no resize_and_overwrite. It asks for at most a pipe's worth (64 KiB) at a time, so that a
// caller asking for much more than one read(2) returns (a pipe, a socket) does not zero the
// same room again on every call.
inline ssize_t read_appending_zero_filled(int fd, std::string& out, std::size_t n) {
    constexpr std::size_t most = 64 * 1024;
    n = std::min(n, most);
    const std::size_t size = out.size();
    out.resize(size + n);
    const ssize_t result = ::read(fd, out.data() + size, n);
    const int error = errno;
    out.resize(result < 0 ? size : size + static_cast<std::size_t>(result));
    errno = error;
    return result;
}

// close(2) once: Linux releases the descriptor whatever it returns, so a retry could close a
// descriptor another thread has just been given. EINTR is not a failure (as Python, PEP 475).
inline int close_once(int fd) noexcept {
    return ::close(fd) == 0 || errno == EINTR ? 0 : errno;
}

// `text` in double quotes as a C string literal would spell it, for messages: a delimiter
// "\r\n", a path with a newline in it. Bytes from 0x80 up pass unchanged, so UTF-8 names stay
// readable; the other control bytes are escaped (\n, \r, \t, \xNN), as are `"` and `\`.
inline std::string quoted(std::string_view text) {
    std::string out;
    out.reserve(text.size() + 2);
    out += '"';
    for (const char c : text) {
        const auto byte = static_cast<unsigned char>(c);
        switch (c) {
            case '\n':
                out += "\\n";
                break;
            case '\r':
                out += "\\r";
                break;
            case '\t':
                out += "\\t";
                break;
            case '"':
                out += "\\\"";
                break;
            case '\\':
                out += "\\\\";
                break;
            default:
                if (byte < 0x20 || byte == 0x7f) {
                    constexpr char digits[] = "0123456789abcdef";
                    out += "\\x";
                    out += digits[byte >> 4];
                    out += digits[byte & 0xf];
                } else {
                    out += c;
                }
        }
    }
    out += '"';
    return out;
}

inline std::string quoted(const std::filesystem::path& path) {
    return detail::quoted(std::string_view(path.native()));
}

// Throws io_error for the errno of the call that just failed (read before anything that
// allocates could change it).
[[noreturn]] inline void throw_errno(std::string_view operation,
                                     const std::filesystem::path& path) {
    const int error = errno;
    throw io_error(operation, path.string(), error);
}

}  // namespace ctxmgr::detail
