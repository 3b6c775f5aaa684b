// expect: every argument but the last must be a context manager
#include <ctxmgr/with.hpp>

struct no_exit {
    void enter() {}
};
struct manager {
    void enter() {}
    void exit(std::exception_ptr) {}
};

int main() {
    ctxmgr::with(manager{}, [] {});
#ifdef CTXMGR_COMPILE_FAIL
    ctxmgr::with(no_exit{}, [] {});
#endif
}
