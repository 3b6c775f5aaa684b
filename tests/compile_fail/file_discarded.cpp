// expect: ignoring return value
#include <ctxmgr/file.hpp>

// open() returns the open file; dropping it opens and closes at once and is almost always a
// bug (the with or the variable was forgotten).
int main() {
    auto kept = ctxmgr::temporary_file();
#ifdef CTXMGR_COMPILE_FAIL
    ctxmgr::temporary_file();
#endif
}
