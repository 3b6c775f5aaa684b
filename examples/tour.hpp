// Helpers shared by the tour's chapters: headings, indented output, a scratch directory,
// and the registry through which each examples/tour_*.cpp adds its chapters.
#pragma once

#include <cstdio>
#include <filesystem>
#include <string>
#include <string_view>

namespace tour {

inline void say(std::string_view text) {
    std::printf("   %.*s\n", static_cast<int>(text.size()), text.data());
}

// The directory the tour writes its files into (created by main, removed at the end).
std::filesystem::path scratch();

// Adds a chapter; chapters run in increasing `order` (core 10-50, tracking 60, files 70,
// locks 80, network 90, async network 95, databases 100, pool and distributed locks 110).
// Use it to initialize a namespace-scope variable:
//   const bool registered = tour::add_chapter(70, "Files", &files_chapter);
bool add_chapter(int order, std::string title, void (*run)());

// The connection string CTXMGR_POSTGRES names, announced (its password hidden) for a chapter
// that runs on PostgreSQL when it is set; empty when it is not. In tour_db.cpp.
std::string postgres_from_environment();

}  // namespace tour
