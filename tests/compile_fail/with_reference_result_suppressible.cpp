// expect: the body returns a reference, but a manager's exit returns bool
#include <ctxmgr/contextlib.hpp>

int value = 0;

int main() {
    ctxmgr::with(ctxmgr::nullcontext(), [&]() -> int& { return value; });  // fine: cannot suppress
#ifdef CTXMGR_COMPILE_FAIL
    ctxmgr::with(ctxmgr::suppress<int>(), [&]() -> int& { return value; });
#endif
}
