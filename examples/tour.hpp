// Helpers shared by the tour's chapters: headings, indented output, a scratch directory,
// and the registry through which each examples/tour_*.cpp adds its chapters.
#pragma once

#include <exception>
#include <filesystem>
#include <optional>
#include <source_location>
#include <string>
#include <string_view>

namespace tour {

// Prints `text` indented under the chapter's heading: every line of it, each wrapped at the
// last space before 100 columns and continued four columns further in, so that a long
// message (a pool timeout naming its borrowers) reads as lines, not as one.
void say(std::string_view text);

// Shows the code a chapter is about to run: the lines of the calling file between the
// markers `// tour: <name>` and `// tour: end`, headed by the file and line numbers
// (`examples/tour.cpp:84-89`), so that each effect printed after it sits next to its cause.
void show_code(std::string_view name, std::source_location where = std::source_location::current());

// Prints an exception that came out of a block, naming which is which: the outermost (the
// one a `catch` sees) first, then each one nested in it (std::throw_with_nested: the
// exception that was pending when it was raised).
void say_exception(const std::exception_ptr& e);

// The directory the tour writes its files into (created by main, removed at the end).
std::filesystem::path scratch();

// Adds a chapter; chapters run in increasing `order` (core 10-50, tracking 60, files 70,
// locks 80, network 90, async network 95, databases 100, pool and distributed locks 110,
// databases for coroutines 115).
// Use it to initialize a namespace-scope variable:
//   const bool registered = tour::add_chapter(70, "Files", &files_chapter);
bool add_chapter(int order, std::string title, void (*run)());

// The connection string CTXMGR_POSTGRES names, announced (its password hidden) for a chapter
// that runs on PostgreSQL when it is set; empty when it is not. In tour_db.cpp.
std::string postgres_from_environment();

// A PostgreSQL cluster of the tour's own (scripts/postgres-cluster, on the server that
// scripts/setup installs), stopped and removed by the destructor. In tour_db.cpp: only in a
// tour built with PostgreSQL.
class throwaway_cluster {
  public:
    // Started with `max_connections` slots; nothing when no server can be started here.
    static std::optional<throwaway_cluster> start(int max_connections);

    throwaway_cluster(throwaway_cluster&& other) noexcept;
    throwaway_cluster& operator=(throwaway_cluster&&) = delete;
    ~throwaway_cluster();

    [[nodiscard]] const std::string& conninfo() const noexcept { return conninfo_; }

  private:
    throwaway_cluster(std::string script, std::filesystem::path dir, std::string conninfo);

    std::string script_;
    std::filesystem::path dir_;
    std::string conninfo_;
};

}  // namespace tour
