// expect: (use of deleted function|call to deleted member function)
#include <ctxmgr/file.hpp>

#include <string>

// lines() of a temporary file would iterate a file closed before the loop starts: C++20
// destroys the temporary at the end of the range-for's initializer.
int main() {
    auto f = ctxmgr::temporary_file();
    for (const std::string& line : f.lines()) static_cast<void>(line);
#ifdef CTXMGR_COMPILE_FAIL
    for (const std::string& line : ctxmgr::temporary_file().lines()) static_cast<void>(line);
#endif
}
