// expect: (use of deleted function|call to deleted constructor)
#include <ctxmgr/file.hpp>

#include <utility>

// A file owns its descriptor and its buffer: moving it transfers them, a copy would close the
// descriptor twice and write the buffered bytes twice.
int main() {
    ctxmgr::file a;
    ctxmgr::file b = std::move(a);
#ifdef CTXMGR_COMPILE_FAIL
    ctxmgr::file c = b;
#endif
}
