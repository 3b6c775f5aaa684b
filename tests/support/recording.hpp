// Test managers that record what happens to them, shared by the core tests.
#pragma once

#include <ctxmgr/unraisable.hpp>

#include <exception>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace ctxmgr::testing {

// An error whose identity tests can check.
struct test_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};
struct other_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// The events of a test, in order: "enter a", "exit a", "exit a: boom" (the pending
// exception's what()), "body", ...
struct trace {
    std::vector<std::string> events;
    std::vector<std::exception_ptr> seen;  // what each exit received, in exit order

    void add(std::string event) { events.push_back(std::move(event)); }
};

inline std::string what_of(const std::exception_ptr& e) {
    if (!e) return "";
    try {
        std::rethrow_exception(e);
    } catch (const std::exception& ex) {
        return ex.what();
    } catch (...) {
        return "?";
    }
}

// Runs f and returns what it threw, or null.
template <class F>
std::exception_ptr exception_from(F&& f) {
    try {
        std::forward<F>(f)();
    } catch (...) {
        return std::current_exception();
    }
    return nullptr;
}

// Throws a test_error and keeps a pointer to that very object in `thrown`, so a test can
// check that what arrives elsewhere is the original and not a copy.
[[noreturn]] inline void throw_recorded(std::exception_ptr& thrown, const char* what = "boom") {
    thrown = std::make_exception_ptr(test_error(what));
    std::rethrow_exception(thrown);
}

// Whether `part` occurs in `text` (messages are checked for what they name).
inline bool contains(std::string_view text, std::string_view part) {
    return text.find(part) != std::string_view::npos;
}

// Collects what reaches the unraisable hook ("where: what") while it lives.
class unraisable_capture {
  public:
    unraisable_capture()
        : previous_(
              ctxmgr::set_unraisable_hook([this](std::exception_ptr e, std::string_view where) {
                  reports.push_back(std::string(where) + ": " + what_of(e));
              })) {}
    unraisable_capture(const unraisable_capture&) = delete;
    unraisable_capture& operator=(const unraisable_capture&) = delete;
    ~unraisable_capture() { ctxmgr::set_unraisable_hook(std::move(previous_)); }

    std::vector<std::string> reports;

  private:
    ctxmgr::unraisable_hook previous_;
};

// Collects what reaches the unraisable hook from any thread (a library thread's, too) as
// "where: describe(e)", with the nested exceptions, while it lives.
class unraisable_log {
  public:
    unraisable_log()
        : previous_(
              ctxmgr::set_unraisable_hook([this](std::exception_ptr e, std::string_view where) {
                  std::lock_guard lock(mutex_);
                  reports_.push_back(std::string(where) + ": " + ctxmgr::describe(e));
              })) {}
    unraisable_log(const unraisable_log&) = delete;
    unraisable_log& operator=(const unraisable_log&) = delete;
    ~unraisable_log() { ctxmgr::set_unraisable_hook(std::move(previous_)); }

    std::vector<std::string> reports() const {
        std::lock_guard lock(mutex_);
        return reports_;
    }

  private:
    mutable std::mutex mutex_;
    std::vector<std::string> reports_;
    ctxmgr::unraisable_hook previous_;
};

// Whether `report`, an unraisable_log line, is the one report of a lazy manager destroyed
// without being entered: a protocol_error naming ctxmgr::<manager>, the line of `file` that
// made it, and how to use it instead (async_with for an async manager).
inline bool reports_never_entered(std::string_view report, std::string_view manager,
                                  std::string_view file, unsigned line) {
    const std::string name = "ctxmgr::" + std::string(manager);
    const bool async = contains(manager, "async");
    return report.starts_with(name + ": ctxmgr::protocol_error: " + name + " made at ") &&
           contains(report, std::string(file) + ':' + std::to_string(line) + ' ') &&
           contains(report, async ? "was never entered: pass it to ctxmgr::async_with(...) or "
                                    "async_exit_stack::enter_async_context(...)"
                                  : "was never entered: pass it to ctxmgr::with(...) or "
                                    "exit_stack::enter_context(...)");
}

// What a recorder does on exit.
enum class on_exit { pass, suppress, throw_error, throw_nested };

// A manager that records enter and exit, and can be told to throw on enter, or to suppress,
// throw or throw with the pending exception nested on exit. Its enter() returns its name.
template <bool Suppressing>
struct basic_recorder {
    trace& log;
    std::string name;
    bool throw_on_enter = false;
    on_exit action = on_exit::pass;

    std::string enter() {
        log.add("enter " + name);
        if (throw_on_enter) throw test_error("enter " + name + " failed");
        return name;
    }

    auto exit(std::exception_ptr e) {
        log.seen.push_back(e);
        log.add(e ? "exit " + name + ": " + what_of(e) : "exit " + name);
        if (action == on_exit::throw_error) throw other_error("exit " + name + " failed");
        if (action == on_exit::throw_nested) {
            std::throw_with_nested(other_error("exit " + name + " failed"));
        }
        if constexpr (Suppressing) {
            return action == on_exit::suppress;
        }
    }
};

// exit returns void: it can never suppress.
using recorder = basic_recorder<false>;
// exit returns bool.
using suppressing_recorder = basic_recorder<true>;

}  // namespace ctxmgr::testing
