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
