// expect: deleted (member )?function.*await_transform
#include <ctxmgr/contextmanager.hpp>

#include <coroutine>

int kept = 0;

ctxmgr::contextmanager<int&> fine() {
    co_yield kept;
}

#ifdef CTXMGR_COMPILE_FAIL
ctxmgr::contextmanager<int&> awaits() {
    co_await std::suspend_always{};
    co_yield kept;
}
#endif

int main() {
}
