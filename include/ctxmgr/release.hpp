// ctxmgr/release.hpp: how every resource releases, written once.
//
// A resource releases in one of three ways, and each resource calls these instead of writing
// its own catch blocks:
//   - exit(e) with an exception pending: a release that fails throws its failure with `e`
//     nested (Python's __context__), the failure's dynamic type kept (rethrow_chained);
//     with nothing pending the failure propagates as it is;
//   - close(): throws what the release throws (the resource calls its release directly);
//   - the destructor: noexcept; a failure goes to the unraisable hook with the resource's
//     description, and running out of memory while describing it still reports it, with a
//     fixed text, instead of terminating.
//
//   void file_lock::exit(const std::exception_ptr& e) {
//       ctxmgr::release_on_exit(e, [&] { release(); });
//   }
//   file_lock::~file_lock() {
//       ctxmgr::release_in_destructor([&] { release(); },
//                                     [&] { return "file lock " + description(); },
//                                     "file lock", "release in destructor");
//   }
//
// A release of several steps that goes on past a failed one collects the failures in a
// failure_chain: each is thrown with the previous one nested, so the outermost exception is
// the last failure and the pending exception is at the bottom.
//
// Thread-compatible: the functions hold no state; failure_chain is a local of one release.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <exception>
#include <string>
#include <string_view>
#include <utility>

#include "errors.hpp"
#include "unraisable.hpp"

namespace ctxmgr {

// Runs `release` for exit(pending): with `pending` null whatever it throws propagates; with
// an exception pending, a failure is rethrown with `pending` nested in it (rethrow_chained).
template <class Release>
void release_on_exit(const std::exception_ptr& pending, Release&& release) {
    if (!pending) {
        std::forward<Release>(release)();
        return;
    }
    try {
        std::forward<Release>(release)();
    } catch (...) {
        rethrow_chained(std::current_exception(), pending);
    }
}

// Reports the exception being handled to the unraisable hook as "<object>: <operation>",
// where `describe()` returns the object's description (a std::string or anything one can be
// made of). If describing it throws (std::bad_alloc), the report says "<fallback>:
// <operation>" instead, from the two views alone. Call it from inside a catch block.
template <class Describe>
void report_release_failure(Describe&& describe, std::string_view fallback,
                            std::string_view operation) noexcept {
    const std::exception_ptr failure = std::current_exception();
    try {
        std::string where(std::forward<Describe>(describe)());
        where += ": ";
        where += operation;
        report_unraisable(failure, where);
    } catch (...) {
        // Nothing left to allocate with: the hook still hears of the failure, named from the
        // two views in a buffer on the stack.
        char where[160];
        const int length =
            std::snprintf(where, sizeof where, "%.*s: %.*s", static_cast<int>(fallback.size()),
                          fallback.data(), static_cast<int>(operation.size()), operation.data());
        const auto size = length < 0 ? std::size_t{0}
                                     : std::min(static_cast<std::size_t>(length), sizeof where - 1);
        report_unraisable(failure, std::string_view(where, size));
    }
}

// Runs `release` for a destructor: never throws; a failure is reported as
// report_release_failure does.
template <class Release, class Describe>
void release_in_destructor(Release&& release, Describe&& describe, std::string_view fallback,
                           std::string_view operation) noexcept {
    try {
        std::forward<Release>(release)();
    } catch (...) {
        report_release_failure(std::forward<Describe>(describe), fallback, operation);
    }
}

// The failures of a release that goes on past a failed step, chained in Python's __context__
// order: each added failure is thrown with the previous one (at first the pending exception)
// nested in it. Callers finish releasing before they build the exceptions they add.
class failure_chain {
  public:
    explicit failure_chain(const std::exception_ptr& pending)
        : pending_(pending), chain_(pending) {}

    // Adds `failure` (an exception object made for the purpose) on top of the chain.
    template <class Failure>
    void add(Failure&& failure) {
        try {
            throw_chained(std::forward<Failure>(failure), chain_);
        } catch (...) {
            chain_ = std::current_exception();
        }
    }

    // Adds the exception being handled (any type; see rethrow_chained). Call it from inside a
    // catch block.
    void add_current() {
        const std::exception_ptr failure = std::current_exception();
        try {
            rethrow_chained(failure, chain_);
        } catch (...) {
            chain_ = std::current_exception();
        }
    }

    [[nodiscard]] bool failed() const noexcept { return chain_ != pending_; }

    // Throws the last failure, the others nested in it, if anything failed.
    void throw_if_failed() const {
        if (failed()) std::rethrow_exception(chain_);
    }

    // For a chain known to hold a failure.
    [[noreturn]] void rethrow() const { std::rethrow_exception(chain_); }

  private:
    std::exception_ptr pending_;
    std::exception_ptr chain_;
};

}  // namespace ctxmgr
