// Runs the whole programs of the documentation's pages: each in an empty temporary
// directory, which is removed afterwards. Exits non-zero if any returned non-zero or threw.
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <string>

#include "pages.hpp"
#include "prelude.hpp"

namespace docs_examples {
int run_program(const char* page, int line, int (*program)()) {
    namespace fs = std::filesystem;
    const std::string where = std::string(page) + ":" + std::to_string(line);
    std::string pattern = (fs::temp_directory_path() / "ctxmgr-docs-example-XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) {
        std::cerr << where << ": cannot make a temporary directory\n";
        return 1;
    }
    const fs::path previous = fs::current_path();
    int status = 1;
    try {
        fs::current_path(pattern);
        status = program();
        if (status != 0) std::cerr << where << ": the program returned " << status << '\n';
    } catch (...) {
        std::cerr << where << ": the program threw " << ctxmgr::describe(std::current_exception())
                  << '\n';
    }
    fs::current_path(previous);
    std::error_code ignored;
    fs::remove_all(pattern, ignored);
    if (status == 0) std::cout << where << ": ok\n";
    return status == 0 ? 0 : 1;
}
}  // namespace docs_examples

int main() {
    const int failures = docs_examples::run_all_pages();
    std::cout << (failures == 0 ? "every documentation program ran"
                                : std::to_string(failures) + " documentation program(s) failed")
              << '\n';
    return failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
