// The tour: ctxmgr's walk-through, run for real, a chapter per capability, on embedded
// defaults (temporary files, SQLite, loopback). Build and run it with scripts/tour.
#include <ctxmgr/ctxmgr.hpp>

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "tour.hpp"

namespace tour {

namespace {

std::filesystem::path scratch_directory;

struct chapter_entry {
    int order;
    std::string title;
    void (*run)();
};

// A function-local static, so chapters registered from other files' static initializers
// find it constructed.
std::vector<chapter_entry>& chapters() {
    static std::vector<chapter_entry> all;
    return all;
}

}  // namespace

std::filesystem::path scratch() {
    return scratch_directory;
}

bool add_chapter(int order, std::string title, void (*run)()) {
    chapters().push_back({order, std::move(title), run});
    return true;
}

}  // namespace tour

namespace {

using tour::say;

// A manager that narrates each step of the protocol.
struct narrator {
    std::string name;
    bool suppress = false;

    std::string enter() {
        say("enter " + name + "  -> target \"" + name + "\"");
        return name;
    }
    bool exit(std::exception_ptr e) {
        say("exit " + name + (e ? "  (sees: " + ctxmgr::describe(e) + ")" : "  (no exception)") +
            (e && suppress ? "  -> suppresses it" : ""));
        return suppress;
    }
};

void five_steps() {
    say("ctxmgr::with(a, b, body) is Python's `with a as x, b as y: body`:");
    narrator a{"a"}, b{"b"};
    const auto result = ctxmgr::with(a, b, [](std::string& x, std::string& y) {
        say("body runs with targets " + x + " and " + y);
        return x + y;
    });
    say("returned " + (result ? "\"" + *result + "\"" : std::string("nothing")) +
        " (std::optional, because these exits may suppress)");

    say("");
    say("if enter() of the second manager throws, only the first is exited:");
    struct refuses {
        void enter() { throw std::runtime_error("b refused to enter"); }
        void exit(std::exception_ptr) { say("never printed"); }
    };
    try {
        ctxmgr::with(a, refuses{}, [] { say("never printed"); });
    } catch (const std::exception& e) {
        say(std::string("caught: ") + e.what());
    }
}

void try_finally_versus_with() {
    const auto path = tour::scratch() / "hello.txt";
    say("by hand: acquire, then try/catch/rethrow, then release on both paths:");
    {
        std::fstream f(path, std::ios::out);
        try {
            f << "Hello, world!\n";
        } catch (...) {
            f.close();
            throw;
        }
        f.close();
        say("closed hello.txt by hand");
    }
    say("with ctxmgr: the release is written once, by the manager, and cannot be forgotten:");
    ctxmgr::with(ctxmgr::open(path, "a"), [](ctxmgr::file& f) { f.write("Hello again!\n"); });
    ctxmgr::with(ctxmgr::open(path), [](ctxmgr::file& f) {
        for (const std::string& line : f.lines())
            say("hello.txt: " + line.substr(0, line.size() - 1));
    });
    say("and a finally guard for the code that is not a manager:");
    {
        int* buffer = new int[16];
        ctxmgr::finally release([&] {
            delete[] buffer;
            say("buffer released by the guard");
        });
        buffer[0] = 42;
    }
}

void two_managers() {
    const auto input = tour::scratch() / "input.txt";
    const auto output = tour::scratch() / "output.txt";
    ctxmgr::with(ctxmgr::open(input, "w"),
                 [](ctxmgr::file& f) { f.write("context managers\nrelease what they acquire\n"); });
    ctxmgr::with(ctxmgr::open(input), ctxmgr::open(output, "w"),
                 [](ctxmgr::file& in, ctxmgr::file& out) {
                     std::string text = in.read_all();
                     std::transform(text.begin(), text.end(), text.begin(),
                                    [](unsigned char c) { return std::toupper(c); });
                     out.write(text);
                 });
    say("both closed, output.txt first (exits run in reverse)");
    ctxmgr::with(ctxmgr::open(output), [](ctxmgr::file& f) {
        for (const std::string& line : f.lines())
            say("output.txt: " + line.substr(0, line.size() - 1));
    });
}

void when_the_body_throws() {
    const auto path = tour::scratch() / "partial.txt";
    try {
        ctxmgr::with(ctxmgr::open(path, "w"), [](ctxmgr::file& f) {
            f.write("half a record");
            throw std::runtime_error("the body failed halfway");
        });
    } catch (const std::exception& e) {
        say(std::string("the file was flushed and closed before the exception reached us: ") +
            e.what());
        say("partial.txt holds \"" + ctxmgr::open(path).read_all() + '"');
    }

    say("an exit that returns true suppresses the exception, and with returns nothing:");
    narrator swallow{"swallow", true};
    const auto r = ctxmgr::with(swallow, []() -> int { throw std::runtime_error("ignored"); });
    say(std::string("result has a value: ") + (r ? "yes" : "no"));

    say("ctxmgr::suppress<E...>() is the ready-made one:");
    ctxmgr::with(ctxmgr::suppress<std::out_of_range>(), [] {
        std::string s;
        static_cast<void>(s.at(3));
    });
    say("out_of_range suppressed");

    say("a release that fails while an exception is pending keeps both (nested):");
    struct failing_close {
        void enter() {}
        void exit(std::exception_ptr) {
            std::throw_with_nested(std::runtime_error("close failed"));
        }
    };
    try {
        ctxmgr::with(failing_close{}, [] { throw std::runtime_error("body failed"); });
    } catch (...) {
        say(ctxmgr::describe(std::current_exception()));
    }
}

void exit_stack_and_coroutines() {
    ctxmgr::with(ctxmgr::exit_stack(), [](ctxmgr::exit_stack& stack) {
        for (int i = 1; i <= 3; ++i) {
            stack.callback([i] { say("release resource " + std::to_string(i)); });
            say("acquired resource " + std::to_string(i));
        }
    });
    auto tag = [](std::string name) -> ctxmgr::contextmanager<void> {
        say("<" + name + ">");
        co_yield {};
        say("</" + name + ">");
    };
    ctxmgr::with(tag("p"), [] { say("  contextmanager: setup, co_yield, teardown"); });
}

const bool registered =
    tour::add_chapter(10, "The five steps of with, traced", &five_steps) &&
    tour::add_chapter(20, "try ... finally versus with", &try_finally_versus_with) &&
    tour::add_chapter(30, "Two managers in one with: input.txt -> output.txt", &two_managers) &&
    tour::add_chapter(40, "When the body throws", &when_the_body_throws) &&
    tour::add_chapter(50,
                      "A run-time number of managers, and setup/teardown "
                      "as one function",
                      &exit_stack_and_coroutines);

}  // namespace

int main() {
    char pattern[] = "/tmp/ctxmgr-tour-XXXXXX";
    if (::mkdtemp(pattern) == nullptr) {
        std::perror("mkdtemp");
        return 1;
    }
    tour::scratch_directory = pattern;
    ctxmgr::finally remove_scratch([] { std::filesystem::remove_all(tour::scratch()); });

    std::printf("ctxmgr: Python's context managers for C++ (scratch files in %s)\n", pattern);
    auto& all = tour::chapters();
    std::stable_sort(all.begin(), all.end(),
                     [](const auto& a, const auto& b) { return a.order < b.order; });
    int number = 0;
    for (const auto& entry : all) {
        std::printf("\n== %d. %s ==\n", ++number, entry.title.c_str());
        entry.run();
    }
    std::printf("\nEnd of the tour.\n");
    return 0;
}
