// expect: (use of deleted function|call to deleted constructor)
#include <ctxmgr/file_lock.hpp>

#include <utility>

// A file lock owns its open file description: moving it moves the lock, a copy would
// release it twice.
int main() {
    ctxmgr::file_lock a("/tmp/compile_fail.lock");
    ctxmgr::file_lock b = std::move(a);
#ifdef CTXMGR_COMPILE_FAIL
    ctxmgr::file_lock c = b;
#endif
}
