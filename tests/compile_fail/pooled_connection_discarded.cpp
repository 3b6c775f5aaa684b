// expect: (ignoring return value|nodiscard)
#include <ctxmgr/pool.hpp>
#include <ctxmgr/sqlite.hpp>

#pragma GCC diagnostic error "-Wunused-result"

// pool.connection() borrows nothing until its manager is entered: a call whose manager is
// dropped does nothing, which is never what was meant. The function is not called; compiling
// it is the test.
void use(ctxmgr::pool<ctxmgr::sqlite::connection>& pool) {
    auto borrow = pool.connection();  // right: entered (by with) and exited later
#ifdef CTXMGR_COMPILE_FAIL
    pool.connection();  // wrong: borrows nothing
#endif
    static_cast<void>(borrow);
}

int main() {
}
