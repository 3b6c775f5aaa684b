// expect: (ignoring return value|nodiscard)
#include <ctxmgr/scope.hpp>

#pragma GCC diagnostic error "-Wunused-result"
#pragma GCC diagnostic error "-Wunused-value"

int main() {
    int runs = 0;
    ctxmgr::finally guard([&] { ++runs; });  // right: runs at the end of the scope
#ifdef CTXMGR_COMPILE_FAIL
    ctxmgr::finally([&] { ++runs; });  // wrong: a temporary that runs at once
#endif
}
