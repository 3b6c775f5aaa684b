// expect: ctxmgr::closing: the object has no close\(\) member
#include <ctxmgr/contextlib.hpp>

struct closable {
    void close() {}
};
struct not_closable {};

int main() {
    closable c;
    ctxmgr::with(ctxmgr::closing(c), [](closable&) {});
#ifdef CTXMGR_COMPILE_FAIL
    not_closable n;
    ctxmgr::with(ctxmgr::closing(n), [](not_closable&) {});
#endif
}
