// ctxmgr/detail/entry_check.hpp: the "never entered" report of the lazy managers.
//
// A manager that acquires in enter() (lock, file_lock, transaction(), pool.connection(), a
// contextmanager, chdir, ...) does nothing until it is entered, so the RAII habit
//   auto guard = ctxmgr::lock(m);      // locks nothing
// compiles and protects nothing. Such a manager holds an entry_check: enter() marks it, and
// destroying it unmarked passes a protocol_error to the unraisable hook, as Python warns of
// a coroutine that was never awaited:
//   ctxmgr::lock made at app.cpp:42 in int main() was never entered: pass it to
//   ctxmgr::with(...) or exit_stack::enter_context(...)
// (an async manager, named so, is to be passed to ctxmgr::async_with(...) or
// async_exit_stack::enter_async_context(...), and its report says that instead).
// Rules:
//   - A manager whose enter() was called does not report, even if enter() threw; nor does a
//     moved-from one (the mark moves). Assigning over a manager never entered drops it: it
//     reports.
//   - exit_stack::push(m) registers m's exit without entering m (CPython's ExitStack.push),
//     so a lazy manager pushed and never entered still reports: nothing was acquired.
//   - A manager destroyed while an exception unwinds the stack does not report: with(a, b,
//     body) destroys b unentered when a.enter() throws, which is no misuse (a misuse, if any,
//     shows on the normal path).
//   - Reporting never throws: out of memory for the message, the std::bad_alloc is reported
//     under the manager's name (kept in static storage) instead.
//
// Cost: the mark is a bool set in enter() and tested in the destructor, both inline, so when
// the compiler sees a manager's whole lifetime (with(lock(m), body)) the test folds away.
#pragma once

#include <cstddef>
#include <exception>
#include <source_location>
#include <string>
#include <string_view>
#include <utility>

#include "../errors.hpp"
#include "../unraisable.hpp"
#include "source_site.hpp"

// On with()'s exception path GCC would call the destructor out of line, and the manager's
// address, with its flags, would escape on the normal path too (see detail/lock.hpp). The
// report itself is kept out of line, so that the managers' destructors stay small.
#if defined(__GNUC__)
#define CTXMGR_ENTRY_CHECK_INLINE [[gnu::always_inline]] inline
#define CTXMGR_ENTRY_CHECK_COLD [[gnu::cold, gnu::noinline]]
#else
#define CTXMGR_ENTRY_CHECK_INLINE inline
#define CTXMGR_ENTRY_CHECK_COLD
#endif

namespace ctxmgr::detail {

// Reports that `manager` ("ctxmgr::lock", a string with static storage) made at `where` was
// destroyed without being entered. Never throws.
CTXMGR_ENTRY_CHECK_COLD inline void report_never_entered(const char* manager,
                                                         std::source_location where) noexcept {
    std::exception_ptr report;
    try {
        std::string message = manager;
        message += " made at ";
        append_site(message, where);
        message += std::string_view(manager).find("async") != std::string_view::npos
                       ? " was never entered: pass it to ctxmgr::async_with(...) or "
                         "async_exit_stack::enter_async_context(...)"
                       : " was never entered: pass it to ctxmgr::with(...) or "
                         "exit_stack::enter_context(...)";
        report = std::make_exception_ptr(protocol_error(message));
    } catch (...) {
        report = std::current_exception();  // std::bad_alloc: still worth a report
    }
    report_unraisable(std::move(report), manager);
}

// A manager's name, given after "ctxmgr::" ("lock", "db::transaction") and kept with it, as
// a template argument of entry_check, so that the check stores no name (a lock manager stays
// three words) and the report needs no memory to name the manager.
struct manager_name {
    char text[48] = {};
    consteval manager_name(const char* name) {  // NOLINT: implicit, for entry_check<"lock">
        constexpr char prefix[] = "ctxmgr::";
        std::size_t n = 0;
        for (const char* c = prefix; *c != '\0'; ++c) text[n++] = *c;
        // A name too long for `text` fails to compile here (an out-of-bounds write).
        for (const char* c = name; *c != '\0'; ++c) text[n++] = *c;
    }
};

// What a lazy manager destroyed unentered does: report, unless an exception is unwinding the
// stack (see the top of this header). For entry_check, and for a manager whose own state
// already says whether it was entered (contextmanager).
template <manager_name Name>
CTXMGR_ENTRY_CHECK_COLD void destroyed_unentered(std::source_location where) noexcept {
    if (std::uncaught_exceptions() == 0) report_never_entered(Name.text, where);
}

// The mark a lazy manager keeps; see the top of this header. Move-only like its managers.
// Keep it [[no_unique_address]], so a manager's own flags may share its tail padding.
template <manager_name Name>
class entry_check {
  public:
    explicit entry_check(std::source_location where) noexcept : where_(where) {}
    entry_check(entry_check&& other) noexcept
        : where_(other.where_), pending_(std::exchange(other.pending_, false)) {}
    // The manager assigned over is dropped: it reports if it was never entered.
    entry_check& operator=(entry_check&& other) noexcept {
        if (this != &other) {
            drop();
            where_ = other.where_;
            pending_ = std::exchange(other.pending_, false);
        }
        return *this;
    }
    entry_check(const entry_check&) = delete;
    entry_check& operator=(const entry_check&) = delete;
    CTXMGR_ENTRY_CHECK_INLINE ~entry_check() { drop(); }

    // Called first thing in enter(): a manager whose enter() was called, even one that
    // threw, was used as a manager.
    void entered() noexcept { pending_ = false; }
    [[nodiscard]] bool pending() const noexcept { return pending_; }
    // The line that made the manager, for the manager's own messages.
    [[nodiscard]] const std::source_location& where() const noexcept { return where_; }

  private:
    // When the compiler knows pending_ is false, as it does when it sees enter() and the
    // destructor (inside with()), nothing is left of the check.
    CTXMGR_ENTRY_CHECK_INLINE void drop() noexcept {
        if (pending_) destroyed_unentered<Name>(where_);
    }

    std::source_location where_;
    bool pending_ = true;
};

}  // namespace ctxmgr::detail

#undef CTXMGR_ENTRY_CHECK_INLINE
#undef CTXMGR_ENTRY_CHECK_COLD
