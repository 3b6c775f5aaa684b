// The checks every test binary runs around every test: no file descriptor opened during a
// test may still be open at its end. The listener in main.cpp runs them next to the leak
// tracker's check (ctxmgr::expect_no_leaks), so one listener covers every test.
#pragma once

#include <map>
#include <string>

namespace ctxmgr::testing {

// Open descriptors of this process and what they point to (readlink of /proc/self/fd/N).
std::map<int, std::string> open_descriptors();

// "fd 7 -> /tmp/x" lines for descriptors in `after` that are not in `before` (or that now
// point elsewhere), empty when nothing leaked.
std::string describe_new_descriptors(const std::map<int, std::string>& before,
                                     const std::map<int, std::string>& after);

}  // namespace ctxmgr::testing
