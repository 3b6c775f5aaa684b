// The code the core benchmarks measure, shared by core_bench.cpp (Google Benchmark, wall
// time) and core_instructions.cpp (fixed iterations, for callgrind's instruction counts), so
// both measure exactly the same functions. Each ctxmgr kernel has its baseline next to it:
// the hand-written code it replaces.
#pragma once

#include <ctxmgr/ctxmgr.hpp>

#include <coroutine>
#include <cstddef>
#include <exception>
#include <utility>

#if defined(CTXMGR_BENCH_ABSL)
#include <absl/cleanup/cleanup.h>
#endif
#if defined(CTXMGR_BENCH_GSL)
#include <gsl/gsl>
#endif

#define CTXMGR_KERNEL __attribute__((noinline))

namespace kernels {

// Keeps the compiler from folding away a value or the writes to memory.
template <class T>
inline void escape(T&& value) {
    asm volatile("" : : "r,m"(value) : "memory");
}

// The simplest manager: counts enters and exits.
struct counter {
    int entered = 0;
    int exited = 0;
    void enter() noexcept { ++entered; }
    void exit(std::exception_ptr e) noexcept {
        if (!e) ++exited;
    }
};

// ---- with versus try/catch ---------------------------------------------------------------

CTXMGR_KERNEL inline void with_trivial(counter& m, int& work) {
    ctxmgr::with(m, [&] { escape(++work); });
}

CTXMGR_KERNEL inline void handwritten_trivial(counter& m, int& work) {
    m.enter();
    try {
        escape(++work);
    } catch (...) {
        m.exit(std::current_exception());
        throw;
    }
    m.exit(std::exception_ptr());
}

CTXMGR_KERNEL inline void with_two(counter& a, counter& b, int& work) {
    ctxmgr::with(a, b, [&] { escape(++work); });
}

CTXMGR_KERNEL inline void handwritten_two(counter& a, counter& b, int& work) {
    a.enter();
    try {
        b.enter();
        try {
            escape(++work);
        } catch (...) {
            b.exit(std::current_exception());
            throw;
        }
        b.exit(std::exception_ptr());
    } catch (...) {
        a.exit(std::current_exception());
        throw;
    }
    a.exit(std::exception_ptr());
}

// ---- exit_stack versus hand-written guards ----------------------------------------------

struct bump_guard {
    int* target;
    ~bump_guard() { escape(++*target); }
};

template <int N>
CTXMGR_KERNEL void exit_stack_callbacks(int& work) {
    ctxmgr::exit_stack stack;
    for (int i = 0; i < N; ++i) {
        stack.callback([p = &work] { escape(++*p); });
    }
}

template <int N>
CTXMGR_KERNEL void handwritten_guards(int& work) {
    // N guards known at compile time: what a programmer writes without a stack.
    [&]<int... I>(std::integer_sequence<int, I...>) {
        bump_guard guards[static_cast<std::size_t>(N)] = {((void)I, bump_guard{&work})...};
        escape(guards);
    }
    (std::make_integer_sequence<int, N>{});
}

// ---- contextmanager versus a class manager ------------------------------------------------

inline ctxmgr::contextmanager<int&> counted(int& work) {
    ++work;
    co_yield work;
    ++work;
}

struct counted_class {
    int& work;
    int& enter() noexcept { return ++work; }
    void exit(std::exception_ptr) noexcept { ++work; }
};

CTXMGR_KERNEL inline void with_contextmanager(int& work) {
    ctxmgr::with(counted(work), [](int& w) { escape(w); });
}

CTXMGR_KERNEL inline void with_class_manager(int& work) {
    ctxmgr::with(counted_class{work}, [](int& w) { escape(w); });
}

// The floor for a coroutine manager: the least a coroutine with contextmanager's semantics
// does by hand (the exception thrown in at the co_yield, suppression when the coroutine
// finishes, replacement when it throws something else, the original object rethrown), with
// a one-slot, trivially destructible frame recycler and none of contextmanager's checks
// (entered twice, yielded twice, never entered).
namespace floor_coroutine {

struct frame_slot {
    void* frame = nullptr;
    std::size_t size = 0;
};
inline constinit thread_local frame_slot slot{};

struct manager {
    struct promise_type;
    using handle = std::coroutine_handle<promise_type>;

    struct promise_type {
        // Set before they are read, so not initialized; value apart from resume_with, as in
        // contextmanager (see there).
        manager* owner;
        int* value;
        const std::exception_ptr* resume_with;

        manager get_return_object() noexcept { return manager{handle::from_promise(*this)}; }
        std::suspend_always initial_suspend() noexcept { return {}; }
        std::suspend_never final_suspend() noexcept { return {}; }
        void return_void() noexcept {}
        void unhandled_exception() noexcept { owner->thrown = std::current_exception(); }
        ~promise_type() { owner->frame = nullptr; }

        struct yield_awaiter {
            promise_type& promise;
            bool await_ready() const noexcept { return false; }
            void await_suspend(handle) const noexcept {}
            void await_resume() const {
                if (*promise.resume_with) std::rethrow_exception(*promise.resume_with);
            }
        };
        yield_awaiter yield_value(int& v) noexcept {
            value = &v;
            return {*this};
        }

        static void* operator new(std::size_t size) {
            frame_slot& s = slot;
            if (s.frame != nullptr && s.size == size) return std::exchange(s.frame, nullptr);
            return ::operator new(size);
        }
        static void operator delete(void* frame, std::size_t size) noexcept {
            frame_slot& s = slot;
            if (s.frame == nullptr) {
                s = {frame, size};
                return;
            }
            ::operator delete(frame);
        }
    };

    explicit manager(handle h) noexcept : frame(h) {}
    manager(manager&& other) noexcept : frame(std::exchange(other.frame, nullptr)) {}
    ~manager() {
        if (frame) {
            frame.promise().owner = this;
            frame.destroy();
        }
    }

    int& enter() {
        frame.promise().owner = this;  // only exit() resumes it from the co_yield
        frame.resume();
        return *frame.promise().value;
    }
    bool exit(const std::exception_ptr& e) {
        frame.promise().owner = this;
        frame.promise().resume_with = &e;
        frame.resume();
        if (!thrown) return static_cast<bool>(e);
        if (thrown == e) return false;
        std::rethrow_exception(thrown);
    }

    handle frame;
    std::exception_ptr thrown;
};

inline manager counted(int& work) {
    ++work;
    co_yield work;
    ++work;
}

}  // namespace floor_coroutine

CTXMGR_KERNEL inline void handwritten_coroutine(int& work) {
    floor_coroutine::manager m = floor_coroutine::counted(work);
    int& w = m.enter();
    try {
        escape(w);
    } catch (...) {
        if (!m.exit(std::current_exception())) throw;
        return;
    }
    m.exit(nullptr);
}

// ---- scope guards versus their peers -----------------------------------------------------

CTXMGR_KERNEL inline void guard_finally(int& work) {
    ctxmgr::finally g([&] { escape(++work); });
}

CTXMGR_KERNEL inline void guard_scope_fail(int& work) {
    ctxmgr::scope_fail g([&] { escape(++work); });
    escape(work);
}

CTXMGR_KERNEL inline void guard_handwritten(int& work) {
    bump_guard g{&work};
}

// What scope_fail replaces: a guard that compares the exceptions in flight.
struct bump_on_failure {
    int* target;
    int exceptions = std::uncaught_exceptions();
    ~bump_on_failure() {
        if (std::uncaught_exceptions() > exceptions) escape(++*target);
    }
};

CTXMGR_KERNEL inline void guard_handwritten_fail(int& work) {
    bump_on_failure g{&work};
    escape(work);
}

#if defined(CTXMGR_BENCH_ABSL)
CTXMGR_KERNEL inline void guard_absl_cleanup(int& work) {
    absl::Cleanup g = [&] { escape(++work); };
}
#endif

#if defined(CTXMGR_BENCH_GSL)
CTXMGR_KERNEL inline void guard_gsl_finally(int& work) {
    auto g = gsl::finally([&] { escape(++work); });
}
#endif

}  // namespace kernels
