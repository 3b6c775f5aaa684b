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
#include <string_view>
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

namespace {

constexpr std::size_t page_width = 100;
constexpr std::string_view indent = "   ";

void print_line(std::string_view line) {
    std::printf("%.*s\n", static_cast<int>(line.size()), line.data());
}

// One line of text, wrapped at spaces; continuation lines go four columns further in.
void say_wrapped(std::string_view text) {
    const std::size_t lead =
        text.find_first_not_of(' ') == std::string_view::npos ? 0 : text.find_first_not_of(' ');
    std::string prefix(indent);
    std::size_t width = page_width - indent.size();
    while (text.size() > width) {
        std::size_t cut = text.rfind(' ', width);
        if (cut == std::string_view::npos || cut <= lead) cut = text.find(' ', width);
        if (cut == std::string_view::npos) break;
        print_line(prefix + std::string(text.substr(0, cut)));
        text.remove_prefix(cut);
        text.remove_prefix(std::min(text.size(), text.find_first_not_of(' ')));
        prefix = std::string(indent) + std::string(lead + 4, ' ');
        width = page_width - prefix.size();
    }
    print_line(prefix + std::string(text));
}

}  // namespace

void say(std::string_view text) {
    for (;;) {
        const auto end = text.find('\n');
        say_wrapped(text.substr(0, end));
        if (end == std::string_view::npos) return;
        text.remove_prefix(end + 1);
    }
}

void show_code(std::string_view name, std::source_location where) {
    const std::string file = std::filesystem::path(where.file_name()).filename().string();
    std::ifstream in(std::filesystem::path(CTXMGR_TOUR_SOURCE_DIR) / file);
    const std::string begin = "// tour: " + std::string(name);
    std::vector<std::string> lines;
    std::size_t first = 0;
    std::size_t number = 0;
    bool inside = false;
    for (std::string line; std::getline(in, line);) {
        ++number;
        const auto text = line.substr(std::min(line.size(), line.find_first_not_of(' ')));
        if (!inside && text == begin) {
            inside = true;
            first = number + 1;
        } else if (inside && text == "// tour: end") {
            break;
        } else if (inside) {
            lines.push_back(line);
        }
    }
    while (!lines.empty() && lines.back().find_first_not_of(' ') == std::string::npos) {
        lines.pop_back();
    }
    if (lines.empty()) {
        say("(the code of \"" + std::string(name) + "\" is in examples/" + file + ')');
        return;
    }
    std::size_t common = std::string::npos;
    for (const auto& line : lines) {
        if (line.find_first_not_of(' ') != std::string::npos) {
            common = std::min(common, line.find_first_not_of(' '));
        }
    }
    const std::size_t last = first + lines.size() - 1;
    say("examples/" + file + ':' + std::to_string(first) +
        (last > first ? '-' + std::to_string(last) : std::string()) + ':');
    for (const auto& line : lines) {
        print_line(std::string(indent) + "| " + (line.size() > common ? line.substr(common) : ""));
    }
}

void say_exception(const std::exception_ptr& e) {
    const std::string text = ctxmgr::describe(e);
    constexpr std::string_view marker = "\n  nested: ";
    std::size_t start = 0;
    for (int level = 0;; ++level) {
        const auto end = text.find(marker, start);
        const std::string part = text.substr(start, end - start);
        say(level == 0 ? "caught: " + part
                       : std::string(static_cast<std::size_t>(level) * 2, ' ') +
                             "raised while handling: " + part);
        if (end == std::string::npos) return;
        start = end + marker.size();
    }
}

bool add_chapter(int order, std::string title, void (*run)()) {
    chapters().push_back({order, std::move(title), run});
    return true;
}

}  // namespace tour

namespace {

using tour::say;

// A manager that narrates the steps of the protocol it takes part in (numbered as in
// five_steps' list).
struct narrator {
    std::string name;
    bool suppress = false;

    std::string enter() {
        say("step 1: enter " + name + " -> its target \"" + name + "\"");
        return name;
    }
    bool exit(std::exception_ptr e) {
        say("step 3: exit " + name + (e ? " sees " + ctxmgr::describe(e) : " sees no exception"));
        if (e && suppress)
            say("step 4: " + name + "'s exit returns true: the exception is suppressed");
        return suppress;
    }
};

void five_steps() {
    say("Python runs `with a as x, b as y: body` in five steps; ctxmgr::with(a, b, body) runs");
    say("the same five:");
    say("  1. enter each manager in order; what enter() returns is the target (`as x`); if one");
    say("     fails, the ones already entered are exited with that exception");
    say("  2. run the body with the targets");
    say("  3. exit the managers in reverse order, each seeing the exception pending then");
    say("  4. an exit may suppress that exception (return true: outer managers see none) or");
    say("     replace it (throw; std::throw_with_nested keeps the first inside the second)");
    say("  5. rethrow what is still pending, the very object the body threw; else return the");
    say("     body's result (a std::optional when an exit can suppress)");
    say("");
    tour::show_code("five steps");
    // tour: five steps
    narrator a{"a"}, b{"b"};
    const auto result = ctxmgr::with(a, b, [](std::string& x, std::string& y) {
        say("step 2: the body runs with the targets " + x + " and " + y);
        return x + y;
    });
    // tour: end
    say("step 5: with returned " + (result ? "\"" + *result + "\"" : std::string("nothing")) +
        " (std::optional: these exits may suppress)");

    say("");
    say("when the body throws, b suppresses and a, outside it, sees nothing:");
    tour::show_code("suppressed");
    // tour: suppressed
    narrator inner{"b", true}, outer{"a"};
    const auto none = ctxmgr::with(outer, inner, [](std::string&, std::string&) -> int {
        throw std::runtime_error("the body failed");
    });
    // tour: end
    say(std::string("step 5: with returned ") + (none ? "a value" : "std::nullopt"));

    say("");
    say("when nothing suppresses, the caller catches the object the body threw, not a copy:");
    std::exception_ptr in_body;
    try {
        ctxmgr::with(a, [&](std::string&) {
            try {
                throw std::runtime_error("the body failed");
            } catch (...) {
                in_body = std::current_exception();
                throw;
            }
        });
    } catch (...) {
        say(std::string("step 5: the caller caught ") + (std::current_exception() == in_body
                                                             ? "the very object the body threw"
                                                             : "another object"));
    }

    say("");
    say("if enter() of the second manager throws, only the first is exited (step 1):");
    struct refuses {
        void enter() { throw std::runtime_error("b refused to enter"); }
        void exit(std::exception_ptr) { say("never printed"); }
    };
    try {
        ctxmgr::with(a, refuses{}, [] { say("never printed"); });
    } catch (...) {
        tour::say_exception(std::current_exception());
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
    tour::show_code("append");
    // tour: append
    ctxmgr::with(ctxmgr::open(path, "a"), [](ctxmgr::file& f) { f.write("Hello again!\n"); });
    // tour: end
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
    tour::show_code("two managers");
    // tour: two managers
    ctxmgr::with(ctxmgr::open(input), ctxmgr::open(output, "w"),
                 [](ctxmgr::file& in, ctxmgr::file& out) {
                     std::string text = in.read_all();
                     std::transform(text.begin(), text.end(), text.begin(),
                                    [](unsigned char c) { return std::toupper(c); });
                     out.write(text);
                 });
    // tour: end
    say("both closed, output.txt first (exits run in reverse)");
    ctxmgr::with(ctxmgr::open(output), [](ctxmgr::file& f) {
        for (const std::string& line : f.lines())
            say("output.txt: " + line.substr(0, line.size() - 1));
    });
}

void when_the_body_throws() {
    const auto path = tour::scratch() / "partial.txt";
    tour::show_code("halfway");
    try {
        // tour: halfway
        ctxmgr::with(ctxmgr::open(path, "w"), [](ctxmgr::file& f) {
            f.write("half a record");
            throw std::runtime_error("the body failed halfway");
        });
        // tour: end
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
    tour::show_code("exit_stack");
    // tour: exit_stack
    ctxmgr::with(ctxmgr::exit_stack(), [](ctxmgr::exit_stack& stack) {
        for (int i = 1; i <= 3; ++i) {
            stack.callback([i] { say("release resource " + std::to_string(i)); });
            say("acquired resource " + std::to_string(i));
        }
    });
    // tour: end
    tour::show_code("tag");
    // tour: tag
    auto tag = [](std::string name) -> ctxmgr::contextmanager<void> {
        say("<" + name + ">");
        co_yield {};
        say("</" + name + ">");
    };
    ctxmgr::with(tag("p"), [] { say("  contextmanager: setup, co_yield, teardown"); });
    // tour: end
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
