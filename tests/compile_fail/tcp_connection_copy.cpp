// expect: (use of deleted function|call to deleted constructor)
#include <ctxmgr/net.hpp>

#include <utility>

// A connection owns its socket: moving it transfers the socket, copying it would close the
// socket twice. The same holds for a listener.
int main() {
    ctxmgr::tcp::connection a;
    ctxmgr::tcp::connection b = std::move(a);
    ctxmgr::tcp::listener l;
    ctxmgr::tcp::listener m = std::move(l);
#ifdef CTXMGR_COMPILE_FAIL
    ctxmgr::tcp::connection c = b;
#endif
}
