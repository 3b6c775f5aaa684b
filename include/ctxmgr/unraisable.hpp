// ctxmgr/unraisable.hpp: where errors go that cannot be thrown.
//
// A destructor must not throw, yet closing a file in one can fail. Python sends such errors
// to sys.unraisablehook instead of losing them; ctxmgr does the same. Every destructor,
// scope guard and exit_stack of the library that swallows an exception passes it here with
// a description of where it happened (`file "/tmp/x": close in destructor`).
//
// Guarantees: report_unraisable() never throws. A hook that throws is reported through the
// default hook instead. Thread-safe: the hook may be replaced while other threads report;
// a report uses the hook that was installed when it started. The hook runs on the thread
// that reports, with no lock held, so it may itself report or replace the hook.
//
//   auto previous = ctxmgr::set_unraisable_hook(
//       [&](std::exception_ptr e, std::string_view where) { log(where, ctxmgr::describe(e)); });
//   ...
//   ctxmgr::set_unraisable_hook(std::move(previous));   // put the old one back
//
// The default hook writes one line to std::cerr:
//   ctxmgr: exception ignored in <where>: <type>: <what>
// followed by one line per nested exception.
#pragma once

#include <exception>
#include <functional>
#include <iostream>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>

#include "errors.hpp"

namespace ctxmgr {

// Any callable taking (std::exception_ptr, std::string_view where), capturing lambdas
// included.
using unraisable_hook = std::function<void(std::exception_ptr, std::string_view)>;

// Writes "ctxmgr: exception ignored in <where>: <description>" to std::cerr.
inline void default_unraisable_hook(std::exception_ptr e, std::string_view where) noexcept {
    try {
        std::string line = "ctxmgr: exception ignored in ";
        line += where;
        line += ": ";
        line += describe(e);
        line += '\n';
        std::cerr << line << std::flush;
    } catch (...) {
        // Out of memory while describing: nothing better left to do than stay quiet.
    }
}

namespace detail {

struct unraisable_state {
    std::mutex mutex;
    std::shared_ptr<const unraisable_hook> hook;
};

// Never destroyed, so destructors of static objects can still report after this header's
// statics would have been torn down.
inline unraisable_state& unraisable() noexcept {
    static auto* const state = new unraisable_state;
    return *state;
}

}  // namespace detail

// Installs `hook` and returns the previous one, which can be installed again. An empty
// hook restores the default. Throws std::bad_alloc only.
inline unraisable_hook set_unraisable_hook(unraisable_hook hook) {
    auto next = hook ? std::make_shared<const unraisable_hook>(std::move(hook)) : nullptr;
    auto& state = detail::unraisable();
    std::shared_ptr<const unraisable_hook> previous;
    {
        std::lock_guard lock(state.mutex);
        previous = std::exchange(state.hook, std::move(next));
    }
    if (!previous) return unraisable_hook(&default_unraisable_hook);
    return *previous;
}

// Passes an exception that cannot be thrown to the installed hook. Never throws.
inline void report_unraisable(std::exception_ptr e, std::string_view where) noexcept {
    auto& state = detail::unraisable();
    std::shared_ptr<const unraisable_hook> hook;
    {
        std::lock_guard lock(state.mutex);
        hook = state.hook;
    }
    if (!hook) {
        default_unraisable_hook(std::move(e), where);
        return;
    }
    try {
        (*hook)(e, where);
    } catch (...) {
        default_unraisable_hook(std::current_exception(), "the unraisable hook");
        default_unraisable_hook(std::move(e), where);
    }
}

// Reports the exception being handled; call it from inside a catch block.
inline void report_current_unraisable(std::string_view where) noexcept {
    report_unraisable(std::current_exception(), where);
}

}  // namespace ctxmgr
