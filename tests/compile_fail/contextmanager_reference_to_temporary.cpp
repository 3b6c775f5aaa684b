// expect: no matching (member )?function for call to .*yield_value
#include <ctxmgr/contextmanager.hpp>

int kept = 0;

ctxmgr::contextmanager<int&> fine() {
    co_yield kept;
}

#ifdef CTXMGR_COMPILE_FAIL
ctxmgr::contextmanager<int&> dangling() {
    co_yield 42;
}
#endif

int main() {
}
