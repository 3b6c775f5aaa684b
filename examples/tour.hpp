// Helpers shared by the tour's chapters: headings, indented output, a scratch directory.
#pragma once

#include <cstdio>
#include <filesystem>
#include <string>
#include <string_view>

namespace tour {

inline void chapter(int number, std::string_view title) {
    std::printf("\n== %d. %.*s ==\n", number, static_cast<int>(title.size()), title.data());
}

inline void say(std::string_view text) {
    std::printf("   %.*s\n", static_cast<int>(text.size()), text.data());
}

// The directory the tour writes its files into (created by main, removed at the end).
std::filesystem::path scratch();

}  // namespace tour
