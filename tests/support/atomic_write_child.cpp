// The process file_test runs under strace (and docs/performance.md's `strace -c` command):
// one ctxmgr::atomic_write of <bytes> bytes to <target>.
//   atomic_write_child <target> <bytes>
// Prints "ok" and exits 0, or prints "io_error <errno> <what>" and exits 3.
#include <ctxmgr/file.hpp>
#include <ctxmgr/with.hpp>

#include <cstdio>
#include <cstdlib>
#include <string>

int main(int argc, char** argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: %s <target> <bytes>\n", argv[0]);
        return 2;
    }
    const std::string contents(std::strtoul(argv[2], nullptr, 10), 'n');
    try {
        ctxmgr::with(ctxmgr::atomic_write(argv[1]), [&](ctxmgr::file& f) { f.write(contents); });
    } catch (const ctxmgr::io_error& e) {
        std::printf("io_error %d %s\n", e.code().value(), e.what());
        return 3;
    }
    std::puts("ok");
    return 0;
}
