// Running a piece of a test in a forked child, for what must not happen in the test process
// itself (a lowered resource limit, another user id, a crash).
#pragma once

#include <sys/wait.h>
#include <unistd.h>

namespace ctxmgr::testing {

// Forks; the child runs `body` (true for success) and leaves with _exit, so that none of
// this process's exit handlers run twice. An alarm ends a child that hangs. Returns true
// when the child exited with success.
template <class Body>
bool in_child(Body body) {
    const pid_t pid = ::fork();
    if (pid < 0) return false;
    if (pid == 0) {
        ::alarm(30);
        bool ok = false;
        try {
            ok = body();
        } catch (...) {
        }
        ::_exit(ok ? 0 : 1);
    }
    int status = 0;
    ::waitpid(pid, &status, 0);
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

}  // namespace ctxmgr::testing
