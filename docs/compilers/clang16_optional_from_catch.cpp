// Clang 16 returns a poisoned std::optional<int> from a catch block when its try block can
// only throw: the empty optional arrives with has_value() true. See docs/compilers.md.
//
//   clang++-16 -std=c++20 -O1 clang16_optional_from_catch.cpp -o repro && ./repro
//     prints "has_value=1" and exits with a nonzero status (wrong; so do -O2 and -O3)
//   clang++-16 -O0, clang++-14 -O0 to -O3, g++-12 -O0 to -O3 (all -std=c++20)
//     print "has_value=0" and exit with 0
//   clang++-16 -std=c++20 -O1 -DWORKAROUND clang16_optional_from_catch.cpp -o repro && ./repro
//     prints "has_value=0": the workaround in include/ctxmgr/with.hpp
#include <cstdio>
#include <memory>
#include <optional>

int always_throws() {
    throw 1;
}

// Returns an optional and, as the optimizer sees once it is inlined, never returns: in
// ctxmgr, with()'s body that always throws and the levels between it and the manager.
std::optional<int> body() {
    return always_throws();
}

std::optional<int> suppressed() {
    try {
        return body();
    } catch (...) {
#ifdef WORKAROUND
        std::optional<int> empty;
        asm volatile("" : : "r"(std::addressof(empty)) : "memory");
        return empty;
#else
        return {};
#endif
    }
}

int main() {
    const bool has_value = suppressed().has_value();
    std::printf("has_value=%d\n", has_value);
    return has_value;
}
