// The process that tracking_test's exit-report tests start (CTXMGR_LEAKS decides what it
// reports). It prints the line of each resource it leaks to stdout, then exits normally.
//   tracking_exit_child leak    leaks one resource
//   tracking_exit_child clean   registers one and releases it
//   tracking_exit_child fork    holds one, forks; the child leaks its own and exits, then
//                               the parent releases its one and exits
#include <ctxmgr/tracking.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <source_location>

namespace {

// Static storage that is never destroyed: the resource stays registered until exit, and
// nothing is allocated for LeakSanitizer to count (only the tracker should report it).
alignas(ctxmgr::tracked) unsigned char leaked[sizeof(ctxmgr::tracked)];

void leak(const char* description, std::source_location where = std::source_location::current()) {
    ::new (static_cast<void*>(leaked)) ctxmgr::tracked("test socket", description, where);
    std::printf("%u\n", static_cast<unsigned>(where.line()));
    std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
    const char* mode = argc > 1 ? argv[1] : "";
    if (std::strcmp(mode, "leak") == 0) {
        leak("\"leaked on purpose\"");
        return 0;
    }
    if (std::strcmp(mode, "clean") == 0) {
        ctxmgr::tracked released("test socket", "\"released\"");
        released.release();
        return 0;
    }
    if (std::strcmp(mode, "fork") == 0) {
        ctxmgr::tracked parents("test socket", "\"the parent's\"");
        const pid_t child = ::fork();
        if (child < 0) return 3;
        if (child == 0) {
            leak("\"the child's\"");
            // exit, not return: the parent's resource stays live in this copy, and must not
            // be reported here.
            std::exit(0);
        }
        int status = 0;
        if (::waitpid(child, &status, 0) != child) return 4;
        parents.release();
        return WIFEXITED(status) ? WEXITSTATUS(status) : 5;
    }
    std::fprintf(stderr, "usage: tracking_exit_child leak|clean|fork\n");
    return 2;
}
