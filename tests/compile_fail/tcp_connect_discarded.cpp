// expect: (ignoring return value|nodiscard)
#include <ctxmgr/net.hpp>

#pragma GCC diagnostic error "-Wunused-result"

// A connection that is never used is closed at once: discarding connect()'s result is a bug.
// The function is not called; compiling it is the test.
void use(std::uint16_t port) {
    auto c = ctxmgr::tcp::connect("127.0.0.1", port);  // right: kept, closed by its owner
#ifdef CTXMGR_COMPILE_FAIL
    ctxmgr::tcp::connect("127.0.0.1", port);  // wrong: connects, then closes at once
#endif
}

int main() {
}
