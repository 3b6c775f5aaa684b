// expect: (use of deleted function|call to deleted constructor)
#include <ctxmgr/tracking.hpp>

#include <utility>

// A registration is unique: moving it transfers it, copying it would register it twice.
int main() {
    ctxmgr::tracked a;
    ctxmgr::tracked b = std::move(a);
#ifdef CTXMGR_COMPILE_FAIL
    ctxmgr::tracked c = b;
#endif
}
