// expect: (use of deleted function|call to deleted constructor)
#include <ctxmgr/exit_stack.hpp>

int main() {
    ctxmgr::exit_stack a;
    ctxmgr::exit_stack b = std::move(a);
#ifdef CTXMGR_COMPILE_FAIL
    ctxmgr::exit_stack c = b;
#endif
}
