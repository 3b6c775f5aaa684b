// Tour chapter 70: files. A buffered write that cannot reach the disk is reported, not lost;
// a forgotten file is still flushed; atomic writes replace a file whole or not at all;
// temporary files and directories go away on their own.
#include <ctxmgr/ctxmgr.hpp>

#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <string_view>

#include "tour.hpp"

namespace {

using tour::say;

// The first line of a file, for showing it.
std::string first_line(const std::filesystem::path& path) {
    std::string line = ctxmgr::open(path).readline();
    if (line.ends_with('\n')) line.pop_back();
    return line;
}

void never_silently_lost() {
    say("with open(\"/dev/full\", \"w\"): the flush at the end of the with fails, and says so:");
    tour::show_code("dev full");
    try {
        // tour: dev full
        ctxmgr::with(ctxmgr::open("/dev/full", "w"),
                     [](ctxmgr::file& f) { f.write("an important record\n"); });
        // tour: end
    } catch (const ctxmgr::io_error& e) {
        say(std::string("  caught ctxmgr::io_error: ") + e.what() + " (errno " +
            std::to_string(e.code().value()) + ')');
    }
    say("the same write through std::ofstream: its destructor swallows the failure:");
    {
        std::ofstream out("/dev/full");
        out << "an important record\n";
    }
    say("  (nothing was reported: the record is gone)");

    say("");
    say("a file nobody closed is flushed by its destructor, and a failure there reaches the");
    say("unraisable hook with the path, as Python's sys.unraisablehook would:");
    auto previous = ctxmgr::set_unraisable_hook([](std::exception_ptr e, std::string_view where) {
        say("  unraisable in " + std::string(where) + ": " + ctxmgr::describe(e));
    });
    const auto forgotten_path = tour::scratch() / "forgotten.txt";
    {
        auto forgotten = ctxmgr::open(forgotten_path, "w");
        forgotten.write("written all the same\n");
    }
    {
        auto doomed = ctxmgr::open("/dev/full", "w");
        doomed.write("x");
    }
    ctxmgr::set_unraisable_hook(std::move(previous));
    say("  forgotten.txt: " + first_line(forgotten_path));
}

void atomic_writes() {
    const auto config = tour::scratch() / "config.ini";
    ctxmgr::with(ctxmgr::atomic_write(config), [](ctxmgr::file& f) { f.write("version = 1\n"); });
    say("config.ini: " + first_line(config));
    try {
        ctxmgr::with(ctxmgr::atomic_write(config), [](ctxmgr::file& f) {
            f.write("version = 2\n");
            throw std::runtime_error("the new settings failed validation");
        });
    } catch (const std::exception& e) {
        say(std::string("caught: ") + e.what());
    }
    say("config.ini: " + first_line(config) + "  (untouched; the temporary is gone)");
    ctxmgr::with(ctxmgr::atomic_write(config), [](ctxmgr::file& f) { f.write("version = 3\n"); });
    say("config.ini: " + first_line(config) +
        "  (committed: fsync the data, rename over the file, fsync the directory)");
}

void temporaries() {
    std::filesystem::path directory_seen, file_seen;
    ctxmgr::with(ctxmgr::temporary_directory("tour-"), ctxmgr::temporary_file("tour-"),
                 [&](const std::filesystem::path& directory, ctxmgr::file& scratch) {
                     directory_seen = directory;
                     file_seen = scratch.path();
                     std::filesystem::create_directories(directory / "a" / "b");
                     ctxmgr::with(ctxmgr::open(directory / "a" / "b" / "notes.txt", "w"),
                                  [](ctxmgr::file& f) { f.write("a tree to clean up\n"); });
                     scratch.write("one\ntwo\nthree\n");
                     scratch.seek(0);
                     std::string lines;
                     for (const std::string& line : scratch.lines())
                         lines += line.substr(0, line.size() - 1) + ' ';
                     say("read back from the temporary file: " + lines);
                 });
    say(std::string("temporary directory removed with its tree: ") +
        (std::filesystem::exists(directory_seen) ? "no" : "yes"));
    say(std::string("temporary file removed: ") +
        (std::filesystem::exists(file_seen) ? "no" : "yes"));
}

void files_chapter() {
    never_silently_lost();
    say("");
    say("atomic_write: the new contents whole, or the old ones untouched:");
    atomic_writes();
    say("");
    say("temporary_directory and temporary_file are removed on the way out:");
    temporaries();
}

const bool registered =
    tour::add_chapter(70, "Files: never silently lost, atomic writes, temporaries", &files_chapter);

}  // namespace
