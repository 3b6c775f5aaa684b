// expect: ctxmgr::lock_for needs timed mutexes
#include <ctxmgr/lock.hpp>

#include <chrono>
#include <mutex>

// A timeout needs try_lock_until: std::mutex has none, std::timed_mutex does.
int main() {
    std::timed_mutex timed;
    auto right = ctxmgr::lock_for(std::chrono::seconds(1), timed);
    static_cast<void>(right);
#ifdef CTXMGR_COMPILE_FAIL
    std::mutex plain;
    auto wrong = ctxmgr::lock_for(std::chrono::seconds(1), plain);
    static_cast<void>(wrong);
#endif
}
