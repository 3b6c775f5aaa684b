// read_appending() for the parts of src/ that read files: the one translation unit compiled as
// C++23 where the compiler can be (src/CMakeLists.txt), for resize_and_overwrite. Its
// interface is C++20, and libstdc++'s std::string is one type in every standard mode.
#include "support/posix_support.hpp"

#include <algorithm>

namespace ctxmgr::detail {

#if defined(__cpp_lib_string_resize_and_overwrite)

const bool read_appending_skips_zero_fill = true;

ssize_t read_appending(int fd, std::string& out, std::size_t n) {
    ssize_t result = -1;
    const std::size_t size = out.size();
    // The second argument is not used: libstdc++ passes the capacity it grew to, which may be
    // more than size + n.
    out.resize_and_overwrite(size + n, [&](char* data, std::size_t) noexcept {
        result = ::read(fd, data + size, n);
        return size + static_cast<std::size_t>(std::max<ssize_t>(result, 0));
    });
    return result;
}

#else

const bool read_appending_skips_zero_fill = false;

ssize_t read_appending(int fd, std::string& out, std::size_t n) {
    return read_appending_zero_filled(fd, out, n);
}

#endif

}  // namespace ctxmgr::detail
