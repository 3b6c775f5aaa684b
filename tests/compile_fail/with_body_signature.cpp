// expect: the body must be callable with the targets of the managers
#include <ctxmgr/with.hpp>

#include <string>

struct gives_int {
    int enter() { return 1; }
    void exit(std::exception_ptr) {}
};

int main() {
    ctxmgr::with(gives_int{}, [](int&) {});
#ifdef CTXMGR_COMPILE_FAIL
    ctxmgr::with(gives_int{}, [](std::string&) {});
#endif
}
