// expect: (use of deleted function|call to deleted constructor)
#include <ctxmgr/distributed_lock.hpp>

#include <utility>

// An advisory lock manager owns the session that holds the lock: it moves, a copy would unlock
// twice. The function is not called; compiling it is the test.
void use() {
    ctxmgr::postgres::advisory_lock a("host=127.0.0.1", "jobs");
    ctxmgr::postgres::advisory_lock b = std::move(a);
#ifdef CTXMGR_COMPILE_FAIL
    ctxmgr::postgres::advisory_lock c = b;
#endif
}

int main() {
}
