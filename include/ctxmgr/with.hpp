// ctxmgr/with.hpp: Python's `with` statement.
//
// with(m1, ..., mN, body) enters the managers in order, calls body with their targets, and
// exits them in reverse order, whatever happens. Several managers behave exactly like
// nested withs:
//
//   with a, b as y:          ctxmgr::with(a, b, [](Y& y) { ... });
//       ...
//
//   1. enter() each manager in order. If enter() of manager k throws, managers 1..k-1 are
//      exited with that exception, innermost first, so an outer one may suppress it;
//      manager k is not exited.
//   2. Call body with the targets of the managers whose enter() is not void, in order, as
//      lvalues. A by-value target lives until every exit has run. A body with no
//      parameters is accepted too (the `as` is optional).
//   3. Exit in reverse order. Each exit receives the exception pending at that point: one
//      that suppresses hides it from the outer managers; one that throws replaces it for
//      them (and may chain it with std::throw_with_nested, since exit runs inside the
//      handler).
//   4. The final pending exception propagates: the original object, not a copy.
//   5. with returns the body's result R. If some manager's exit returns bool and R is not
//      void, it returns std::optional<R>, empty when an exception was suppressed.
//
// Managers passed as lvalues are used in place; rvalues live until the end of the full
// expression that calls with, which covers the call. Nothing is allocated, and neither the
// body, the managers nor the targets are copied or moved: when no manager can suppress,
// with compiles to the try/catch it replaces (see docs/performance.md). When one can, the
// body's result is moved once into the std::optional.
//
//   ctxmgr::with(ctxmgr::lock(m), [&] { ++counter; });
//   auto n = ctxmgr::with(ctxmgr::open("in.txt"), [](ctxmgr::file& f) { return f.read_all().size();
//   });
//
// Thread-safety: with itself holds no state; it is as thread-safe as the managers.
#pragma once

#include <array>
#include <cstddef>
#include <exception>
#include <functional>
#include <memory>
#include <new>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>

#include "protocol.hpp"

namespace ctxmgr {

namespace detail {

// Keeps one manager's target. A by-value target is constructed in place from enter()'s
// prvalue and destroyed after every exit has run; a reference target is a pointer.
template <class T>
class target_slot {
  public:
    target_slot() noexcept = default;
    target_slot(const target_slot&) = delete;
    target_slot& operator=(const target_slot&) = delete;
    ~target_slot() = default;

    template <class M>
    void enter(M& m) {
        ::new (static_cast<void*>(storage_)) stored(m.enter());
        engaged_ = true;
    }
    T& get() noexcept { return *std::launder(reinterpret_cast<stored*>(storage_)); }
    void reset() noexcept {
        if (engaged_) get().~stored();
    }

  private:
    using stored = std::remove_cv_t<T>;
    // Raw bytes rather than a union member: the target is built only if enter() succeeds,
    // and GCC's uninitialized-use analysis cannot follow the flag that says so.
    alignas(stored) unsigned char storage_[sizeof(stored)];
    bool engaged_ = false;
};

template <class T>
class target_slot<T&> {
  public:
    template <class M>
    void enter(M& m) {
        pointer_ = std::addressof(m.enter());
    }
    T& get() noexcept { return *pointer_; }
    void reset() noexcept {}

  private:
    T* pointer_ = nullptr;
};

// An rvalue-reference target is passed on as an lvalue, like any named variable.
template <class T>
class target_slot<T&&> : public target_slot<T&> {};

template <>
class target_slot<void> {
  public:
    template <class M>
    void enter(M& m) {
        m.enter();
    }
    void reset() noexcept {}
};

template <class M>
using slot_for = target_slot<enter_result_t<M>>;

// The type the body receives for manager M's target.
template <class M>
using target_arg_t = std::remove_reference_t<enter_result_t<M>>&;

// Indices of the managers whose enter() is not void: the ones that give the body a target.
template <class... Ms>
struct target_indices {
    static constexpr std::array<bool, sizeof...(Ms)> gives = {
        !std::is_void_v<enter_result_t<Ms>>...};
    static constexpr std::size_t count =
        (std::size_t{0} + ... + (std::is_void_v<enter_result_t<Ms>> ? 0u : 1u));
    static constexpr std::array<std::size_t, count> value = [] {
        std::array<std::size_t, count> out{};
        std::size_t k = 0;
        for (std::size_t i = 0; i < gives.size(); ++i) {
            if (gives[i]) out[k++] = i;
        }
        return out;
    }();
    template <std::size_t... K>
    static auto make(std::index_sequence<K...>) -> std::index_sequence<value[K]...>;
    using sequence = decltype(make(std::make_index_sequence<count>{}));
};

template <class Body, class Sequence, class... Ms>
struct body_traits_impl;

template <class Body, std::size_t... T, class... Ms>
struct body_traits_impl<Body, std::index_sequence<T...>, Ms...> {
    using managers = std::tuple<Ms...>;
    static constexpr bool takes_targets =
        std::is_invocable_v<Body, target_arg_t<std::tuple_element_t<T, managers>>...>;
    static constexpr bool takes_nothing = std::is_invocable_v<Body>;
    static constexpr bool valid = takes_targets || takes_nothing;

    template <bool Targets, class = void>
    struct result_of {
        using type = void;
    };
    template <class Dummy>
    struct result_of<true, Dummy> {
        using type = std::conditional_t<
            takes_targets,
            std::invoke_result<Body, target_arg_t<std::tuple_element_t<T, managers>>...>,
            std::invoke_result<Body>>::type;
    };
    using result = typename result_of<valid>::type;
};

template <class Body, class... Ms>
using body_traits = body_traits_impl<Body, typename target_indices<Ms...>::sequence, Ms...>;

template <std::size_t I, class M>
constexpr bool check_manager() {
    static_assert(context_manager<M>,
                  "ctxmgr::with: every argument but the last must be a context manager: "
                  "m.enter() valid, and m.exit(std::exception_ptr) returning bool or void "
                  "(the last argument is the body)");
    return true;
}

template <class Body, class... Ms>
class with_frame {
    using indices = target_indices<Ms...>;
    using traits = body_traits<Body, Ms...>;
    static constexpr std::size_t count = sizeof...(Ms);

  public:
    using body_result = typename traits::result;
    static constexpr bool may_suppress = (can_suppress_v<Ms> || ...);
    using result = std::conditional_t<may_suppress && !std::is_void_v<body_result>,
                                      std::optional<body_result>, body_result>;

    static_assert(traits::valid,
                  "ctxmgr::with: the body must be callable with the targets of the managers "
                  "whose enter() is not void (as lvalues, in order), or with no arguments");
    static_assert(!(may_suppress && std::is_reference_v<body_result>),
                  "ctxmgr::with: the body returns a reference, but a manager's exit returns "
                  "bool and may suppress an exception, so with would have to return "
                  "std::optional of a reference; return a value or a pointer instead");

    with_frame(std::remove_reference_t<Body>& body, Ms&... managers) noexcept
        : body_(body), managers_(managers...) {}
    with_frame(const with_frame&) = delete;
    with_frame& operator=(const with_frame&) = delete;

    // By-value targets outlive every exit; the innermost goes first, as nested scopes would.
    ~with_frame() {
        [this]<std::size_t... I>(std::index_sequence<I...>) {
            (std::get<count - 1 - I>(slots_).reset(), ...);
        }
        (std::make_index_sequence<count>{});
    }

    CTXMGR_ELISION_INLINE result run() { return level<0>(); }

  private:
    template <std::size_t I>
    CTXMGR_ELISION_INLINE result level() {
        if constexpr (I == count) {
            return call_body(typename indices::sequence{});
        } else {
            auto& manager = std::get<I>(managers_);
            using manager_type = std::remove_reference_t<decltype(manager)>;
            std::get<I>(slots_).enter(manager);
            if constexpr (std::is_void_v<result>) {
                try {
                    level<I + 1>();
                } catch (...) {
                    if (exit_suppresses(manager, std::current_exception())) return;
                    throw;
                }
                exit_normally(manager);
            } else {
                // Set only on the exception path, so for a manager that cannot suppress the
                // compiler sees it is always false where it is read.
                bool suppressed = false;
                result value = [&]() -> result {
                    try {
                        return level<I + 1>();
                    } catch (...) {
                        if constexpr (can_suppress_v<manager_type>) {
                            if (exit_suppresses(manager, std::current_exception())) {
                                suppressed = true;
                                return empty_result();
                            }
                        } else {
                            manager.exit(std::current_exception());
                        }
                        throw;
                    }
                }();
                if (!suppressed) exit_normally(manager);
                if constexpr (std::is_reference_v<result>) {
                    return static_cast<result>(value);
                } else {
                    return value;
                }
            }
        }
    }

    // An empty optional that Clang 16 cannot poison. At -O1 and above, when the body can
    // only throw, it returned `return {};` here with has_value() true: the never-written
    // payload counts as poison, and so does the whole register the optional is returned in,
    // has_value() included. Letting the object escape to an empty asm makes its bytes
    // opaque. See docs/compilers.md.
    static result empty_result() noexcept {
        result empty;
#if defined(__clang__)
        asm volatile("" : : "r"(std::addressof(empty)) : "memory");
#endif
        return empty;
    }

    template <std::size_t... T>
    CTXMGR_ELISION_INLINE result call_body(std::index_sequence<T...>) {
        auto invoke = [&]() -> body_result {
            if constexpr (traits::takes_targets) {
                return std::invoke(std::forward<Body>(body_), std::get<T>(slots_).get()...);
            } else {
                return std::invoke(std::forward<Body>(body_));
            }
        };
        if constexpr (std::is_void_v<body_result> || std::is_same_v<result, body_result>) {
            return invoke();
        } else {
            // std::optional cannot be built from a call's prvalue before C++23, so a
            // suppressible with moves the body's result once.
            return result(std::in_place, invoke());
        }
    }

    std::remove_reference_t<Body>& body_;
    std::tuple<Ms&...> managers_;
    std::tuple<slot_for<Ms>...> slots_;
};

// The frame for with(args...): the last argument is the body (its value category kept, so
// an rvalue body is invoked as an rvalue), the others are managers used as lvalues.
template <class... Args>
struct frame_for {
    using arguments = std::tuple<Args...>;
    template <std::size_t... I>
    static auto make(std::index_sequence<I...>)
        -> with_frame<std::tuple_element_t<sizeof...(I), arguments>,
                      std::remove_reference_t<std::tuple_element_t<I, arguments>>...>*;
    using type =
        std::remove_pointer_t<decltype(make(std::make_index_sequence<sizeof...(Args) - 1>{}))>;
};

template <class... Args, std::size_t... I>
constexpr bool check_managers(std::index_sequence<I...>) {
    return (check_manager<I, std::tuple_element_t<I, std::tuple<Args...>>>() && ...);
}

}  // namespace detail

// What with(args...) returns: the body's result, or std::optional of it when a manager
// may suppress.
template <class... Args>
using with_result_t = typename detail::frame_for<Args...>::type::result;

// with(m1, ..., mN, body): see the top of this header. Throws whatever the managers and the
// body throw, by the rules above; adds no exception of its own.
template <class... Args>
CTXMGR_ELISION_INLINE decltype(auto) with(Args&&... args) {
    static_assert(sizeof...(Args) >= 1, "ctxmgr::with: the last argument must be the body");
    static_assert(detail::check_managers<Args...>(std::make_index_sequence<sizeof...(Args) - 1>{}));
    using frame = typename detail::frame_for<Args...>::type;
    auto arguments = std::forward_as_tuple(args...);
    return [&]<std::size_t... I>(std::index_sequence<I...>) CTXMGR_ELISION_INLINE_LAMBDA->
        typename frame::result {
        frame f(std::get<sizeof...(I)>(arguments), std::get<I>(arguments)...);
        return f.run();
    }
    (std::make_index_sequence<sizeof...(Args) - 1>{});
}

}  // namespace ctxmgr
