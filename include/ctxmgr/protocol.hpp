// ctxmgr/protocol.hpp: what a context manager is.
//
// Python's protocol, `__enter__` / `__exit__`, in C++. A type M is a context manager when
//   - m.enter() is valid: it acquires, and its result (possibly void) is the target, the
//     `as` value of Python's `with m as target`;
//   - m.exit(std::exception_ptr e) is valid and returns bool or void: it releases. `e` is
//     the exception that ended the block, or null. Returning true suppresses `e`; false or
//     void lets it propagate. exit is called from inside the handler of `e`, so
//     std::throw_with_nested in exit chains `e` to the new exception (the analogue of
//     Python's __context__).
//
//   struct timer {
//       std::chrono::steady_clock::time_point start;
//       void enter() { start = std::chrono::steady_clock::now(); }
//       void exit(std::exception_ptr) { report(std::chrono::steady_clock::now() - start); }
//   };
//   static_assert(ctxmgr::context_manager<timer>);
//
// holds<E>(e) asks what an exception_ptr holds without the caller writing a try block.
//
// Guarantees: this header declares concepts and traits only; holds() never throws.
#pragma once

#include <concepts>
#include <exception>
#include <type_traits>
#include <utility>

#include "errors.hpp"

#if __has_include(<cxxabi.h>)
#include <cxxabi.h>
#endif

namespace ctxmgr {

namespace detail {
template <class R>
concept exit_result = std::same_as<R, bool> || std::same_as<R, void>;
}  // namespace detail

// M is a context manager: enter() is valid, exit(std::exception_ptr) returns bool or void.
// Checked on an lvalue of M, which is how with() and exit_stack use managers.
template <class M>
concept context_manager = requires(std::remove_reference_t<M>& m, std::exception_ptr e) {
    m.enter();
    { m.exit(e) } -> detail::exit_result;
};

// The target: what enter() returns (possibly void or a reference).
template <context_manager M>
using enter_result_t = decltype(std::declval<std::remove_reference_t<M>&>().enter());

// True when M's exit returns bool, so it can suppress the exception it sees.
template <context_manager M>
inline constexpr bool can_suppress_v =
    std::same_as<decltype(std::declval<std::remove_reference_t<M>&>().exit(
                     std::declval<std::exception_ptr>())),
                 bool>;

// True when `e` holds an E or a class derived from E; false for a null pointer.
template <class E>
[[nodiscard]] bool holds(const std::exception_ptr& e) noexcept {
    if (!e) return false;
    try {
        std::rethrow_exception(e);
    } catch (const E&) {
        return true;
    } catch (...) {
        return false;
    }
}

namespace detail {

// Calls m.exit(e) and says whether it suppressed: a void exit never does, and neither does
// a bool exit for a null `e` (there was nothing to suppress).
template <class M>
bool exit_suppresses(M& m, const std::exception_ptr& e) {
    if constexpr (can_suppress_v<M>) {
        return m.exit(e) && e;
    } else {
        m.exit(e);
        return false;
    }
}

// Whether M's exit is one function taking its argument by reference (an overload set or a
// template counts as not).
template <class F>
struct exit_parameter {
    using type = void;
};
template <class R, class C, class P>
struct exit_parameter<R (C::*)(P)> {
    using type = P;
};
template <class R, class C, class P>
struct exit_parameter<R (C::*)(P) noexcept> {
    using type = P;
};
template <class R, class C, class P>
struct exit_parameter<R (C::*)(P) const> {
    using type = P;
};
template <class R, class C, class P>
struct exit_parameter<R (C::*)(P) const noexcept> {
    using type = P;
};

template <class M>
constexpr bool exit_takes_reference() {
    if constexpr (requires { &M::exit; }) {
        return std::is_reference_v<typename exit_parameter<decltype(&M::exit)>::type>;
    } else {
        return false;
    }
}

// Forced inline on Clang along the path with() takes through a manager (its levels, this
// exit_normally, contextmanager's enter() and exit()): Clang elides a contextmanager's
// coroutine frame only where it sees the frame destroyed on every path, which a call on that
// path hides, and it kept with()'s levels out of line where the body is a lambda of an
// inline function or a template (their linkage denies them the bonus of a function called
// once). GCC inlines the path unforced; forced, it gives up inlining elsewhere (a timed
// lock's with(), 143 instructions to 174).
#if defined(__clang__)
#define CTXMGR_ELISION_INLINE [[gnu::always_inline]]
#define CTXMGR_ELISION_INLINE_LAMBDA __attribute__((always_inline))
#else
#define CTXMGR_ELISION_INLINE
#define CTXMGR_ELISION_INLINE_LAMBDA
#endif

// Calls m.exit(nullptr) after a block that ended normally.
//
// An exit taking its argument by reference gets a const null object, and the compiler is
// told that it stays null (no exit may change a const object): a temporary's destructor would
// test it again after every call that exit makes (an unlock, a close), the compiler being
// unable to prove the call leaves it alone. Three instructions, 4% of a with(lock(m)), which
// must cost what std::scoped_lock does. An exit taking it by value gets the prvalue, which
// initializes its parameter directly.
//
// Declared inline: a function template is not, and GCC 12 then holds it to its limit for
// functions not declared inline and calls it out of line for a coroutine manager (4
// instructions a with). Forced on Clang (CTXMGR_ELISION_INLINE).
template <class M>
CTXMGR_ELISION_INLINE inline void exit_normally(M& m) {
    if constexpr (exit_takes_reference<M>()) {
        const std::exception_ptr none;
        if constexpr (can_suppress_v<M>) {
            static_cast<void>(m.exit(none));
        } else {
            m.exit(none);
        }
#if defined(__GNUC__)
        if (none) __builtin_unreachable();
#endif
    } else if constexpr (can_suppress_v<M>) {
        static_cast<void>(m.exit(std::exception_ptr()));
    } else {
        m.exit(std::exception_ptr());
    }
}

// Calls exit(e) from inside a handler of `e`, as with() does, so that std::throw_with_nested
// and std::current_exception() inside exit see `e`. Used where no handler is active, such as
// when an exit_stack passes on the exception that an earlier exit threw.
template <class Exit>
bool exit_in_handler(Exit&& exit, const std::exception_ptr& e) {
    if (!e) return std::forward<Exit>(exit)(e);
    try {
        std::rethrow_exception(e);
    } catch (...) {
        return std::forward<Exit>(exit)(e);
    }
}

#if __has_include(<cxxabi.h>)
// While one of these lives, no exception is being handled on this thread, even inside a
// catch block: std::current_exception() is null and std::throw_with_nested nests nothing.
// An exit called with no exception must not chain one that is no longer pending (an
// exception an earlier exit suppressed, or the one a caller handles around exit_stack::close),
// which is what CPython's ExitStack fixes up in __context__. C++ has no portable way to leave
// a handler early, so this hides the Itanium C++ ABI's list of caught exceptions (libstdc++
// and libc++abi alike: its first member) and puts it back on destruction, however the scope
// ends: an exception thrown inside is caught outside with the list restored.
//
// The list's address is per thread and fixed, so it is asked of the runtime once per thread
// and kept in a trivially destructible thread_local: asking each time costs a call through
// the dynamic TLS model (about 30 instructions per exit_stack unwind).
inline constinit thread_local void** caught_exceptions = nullptr;

class no_handled_exception {
  public:
    no_handled_exception() noexcept : caught_(caught_list()), saved_(*caught_) {
        *caught_ = nullptr;
    }
    no_handled_exception(const no_handled_exception&) = delete;
    no_handled_exception& operator=(const no_handled_exception&) = delete;
    ~no_handled_exception() { *caught_ = saved_; }

  private:
    static void** caught_list() noexcept {
        void** list = caught_exceptions;
        if (list == nullptr) [[unlikely]] {
            list = caught_exceptions = reinterpret_cast<void**>(abi::__cxa_get_globals());
        }
        return list;
    }

    void** caught_;
    void* saved_;
};
#else
#error "ctxmgr needs the Itanium C++ ABI's <cxxabi.h> (GCC's or Clang's runtime)"
#endif

}  // namespace detail

}  // namespace ctxmgr
