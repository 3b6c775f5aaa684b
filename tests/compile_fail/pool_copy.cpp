// expect: (use of deleted function|call to deleted constructor)
#include <ctxmgr/pool.hpp>
#include <ctxmgr/sqlite.hpp>

#include <utility>

// A pool owns its connections and its threads: it moves, a copy would close them twice. The
// function is not called; compiling it is the test.
void use() {
    ctxmgr::pool a([] { return ctxmgr::sqlite::connect(":memory:"); });
    ctxmgr::pool b = std::move(a);
#ifdef CTXMGR_COMPILE_FAIL
    ctxmgr::pool c = b;
#endif
}

int main() {
}
