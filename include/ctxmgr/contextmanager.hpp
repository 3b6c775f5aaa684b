// ctxmgr/contextmanager.hpp: setup and teardown written as one function.
//
// Python's @contextmanager as a coroutine return type. The code before `co_yield` is the
// setup, the yielded value is the target, the code after is the teardown:
//
//   ctxmgr::contextmanager<std::string&> tag(std::string& out, std::string name) {
//       out += "<" + name + ">";
//       co_yield out;                        // the body of the with runs here
//       out += "</" + name + ">";            // skipped if the body throws...
//   }
//   ctxmgr::with(tag(html, "p"), [](std::string& s) { s += "hi"; });   // <p>hi</p>
//
// ...unless the teardown is in a try block or a guard, exactly as in Python:
//
//   ctxmgr::contextmanager<int> descriptor(const char* path) {
//       int fd = ::open(path, O_RDONLY | O_CLOEXEC);
//       ctxmgr::finally close_it([fd] { ::close(fd); });   // runs on every path
//       co_yield fd;
//   }
//
// Semantics (CPython's _GeneratorContextManager):
//   - calling the function runs nothing; enter() runs to the co_yield and returns the value
//     (T may be a value, a reference or void: `co_yield {};`);
//   - exit(e) resumes the coroutine, rethrowing e at the co_yield when e is not null;
//   - finishing normally after e suppresses e (exit returns true); rethrowing e propagates
//     it (the same object); throwing something else replaces it;
//   - a coroutine that finishes without yielding, yields a second time, or is entered twice
//     throws protocol_error; one that does not stop after e throws protocol_error with e
//     nested;
//   - destroying a manager that was entered and never exited destroys the coroutine frame,
//     running the destructors of the locals alive at the co_yield;
//   - destroying one never entered runs none of the setup, and says so: a protocol_error
//     naming the coroutine goes to the unraisable hook (Python's "coroutine ... was never
//     awaited"); a moved-from manager stays silent;
//   - the coroutine awaits nothing: co_await in it does not compile (async_contextmanager
//     is the one that awaits).
//
// Caution: like any coroutine, the frame keeps copies of by-value parameters but only the
// references of reference parameters: those must outlive the manager. A manager is one-shot;
// decorate() (contextlib.hpp) makes a fresh one per call.
//
// A thread keeps the last four frames freed, so managers made and used in a loop, nested or
// not, do not reach the global allocator after the first iteration. The slots are off under
// AddressSanitizer so that freed frames stay poisoned. Clang places the frame of a manager
// made in a with() in the caller's own stack frame: no allocation at all.
//
// Thread-compatible: a manager may be created, entered and exited on different threads, but
// not used from two at once.
#pragma once

#include <coroutine>
#include <cstddef>
#include <exception>
#include <new>
#include <source_location>
#include <type_traits>
#include <utility>

#include "detail/entry_check.hpp"
#include "errors.hpp"
#include "protocol.hpp"

namespace ctxmgr {

namespace detail {

#if defined(__SANITIZE_ADDRESS__)
inline constexpr bool frame_cache_enabled = false;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
inline constexpr bool frame_cache_enabled = false;
#else
inline constexpr bool frame_cache_enabled = true;
#endif
#else
inline constexpr bool frame_cache_enabled = true;
#endif

// Who frees a coroutine's frame. GCC 12 never elides a frame, and one that frees itself as
// the coroutine finishes saves a trip through the coroutine's state machine. Clang 16 elides
// the frame of a manager used in with(), placing it in the caller's stack frame, when it sees
// the frame destroyed on every path that returns: so there the manager destroys it, the
// exception that ends the coroutine is kept in the promise, the frame holds no pointer to the
// manager, and enter() and exit() are forced inline (CTXMGR_ELISION_INLINE, protocol.hpp).
#if defined(__clang__)
inline constexpr bool frame_frees_itself = false;
#else
inline constexpr bool frame_frees_itself = true;
#endif

// The last coroutine frames this thread freed (up to four: managers nest), kept for the next
// allocations of frames that fit, newest first. Trivially destructible and
// constant-initialized, so reading it costs no guard: a thread_local with a destructor costs a
// check on every access (26 instructions per with() for the size-class cache this replaced).
// The frames still held when the thread ends are freed by frame_slots_owner, a thread_local
// made only the first time a frame is kept.
struct frame_slots {
    static constexpr unsigned capacity = 4;
    void* frames[capacity] = {};
    std::size_t sizes[capacity] = {};
    unsigned count = 0;
    // capacity once the thread-exit cleanup is registered, 0 before and after it: a frame
    // freed while count < open is kept with one comparison.
    unsigned open = 0;
    enum : unsigned char { unregistered, registered, gone } state = unregistered;
};
inline constinit thread_local frame_slots recycled_frames{};

struct frame_slots_owner {
    frame_slots_owner() noexcept {
        recycled_frames.state = frame_slots::registered;
        recycled_frames.open = frame_slots::capacity;
    }
    frame_slots_owner(const frame_slots_owner&) = delete;
    frame_slots_owner& operator=(const frame_slots_owner&) = delete;
    ~frame_slots_owner() {
        frame_slots& slots = recycled_frames;
        slots.state = frame_slots::gone;
        slots.open = 0;
        while (slots.count > 0) ::operator delete(slots.frames[--slots.count]);
    }
};

// Below the newest frame (which nests and loops take back at once), the others are searched
// for one of exactly this size. Never a larger one: it would come back recorded at the
// smaller size, and the coroutine whose frame it was would then find none for ever (a
// manager whose frame Clang elides leaves the others fewer, and hit that at once).
[[gnu::noinline]] inline void* allocate_frame_slow(std::size_t size) {
    frame_slots& slots = recycled_frames;
    const auto take = [&](unsigned i) {
        void* frame = slots.frames[i];
        --slots.count;
        // The last one takes the hole: the order of the others matters little.
        slots.frames[i] = slots.frames[slots.count];
        slots.sizes[i] = slots.sizes[slots.count];
        return frame;
    };
    for (unsigned i = slots.count; i-- > 0;) {
        if (slots.sizes[i] == size) return take(i);
    }
    return ::operator new(size);
}

inline void* allocate_frame(std::size_t size) {
    if constexpr (frame_cache_enabled) {
        frame_slots& slots = recycled_frames;
        const unsigned newest = slots.count - 1;
        if (slots.count != 0 && slots.sizes[newest] == size) {
            slots.count = newest;
            return slots.frames[newest];
        }
        return allocate_frame_slow(size);
    }
    return ::operator new(size);
}

// Keeps `frame`; when all four are taken, the oldest goes, so frames of sizes no longer
// used cannot keep newer ones out for ever.
[[gnu::noinline]] inline void drop_oldest_frame(frame_slots& slots) noexcept {
    ::operator delete(slots.frames[0]);
    for (unsigned i = 1; i < frame_slots::capacity; ++i) {
        slots.frames[i - 1] = slots.frames[i];
        slots.sizes[i - 1] = slots.sizes[i];
    }
    --slots.count;
}

inline void keep_frame(frame_slots& slots, void* frame, std::size_t size) noexcept {
    slots.frames[slots.count] = frame;
    slots.sizes[slots.count] = size;
    ++slots.count;
}

// A frame freed with every slot taken, or before the thread-exit cleanup is registered, or
// after it ran.
[[gnu::noinline]] inline void keep_frame_slow(void* frame, std::size_t size) noexcept {
    frame_slots& slots = recycled_frames;
    if (slots.state == frame_slots::unregistered) {
        // Registers the thread-exit cleanup; out of memory for it, the frame is just freed.
        try {
            thread_local frame_slots_owner owner;
            static_cast<void>(owner);
        } catch (...) {
        }
    }
    if (slots.state != frame_slots::registered) return ::operator delete(frame);
    if (slots.count == frame_slots::capacity) drop_oldest_frame(slots);
    keep_frame(slots, frame, size);
}

inline void deallocate_frame(void* frame, std::size_t size) noexcept {
    if constexpr (frame_cache_enabled) {
        frame_slots& slots = recycled_frames;
        if (slots.count < slots.open) return keep_frame(slots, frame, size);
        return keep_frame_slow(frame, size);
    }
    ::operator delete(frame);
}

// What `co_yield {};` yields in a contextmanager<void>.
struct nothing_yielded {};

// Written by each co_yield before enter() reads it, so left uninitialized: initializing it
// costs a store in every frame's construction.
template <class T>
struct yielded {
    using pointer = std::remove_reference_t<T>*;
    pointer value;
    bool movable = false;  // yielded as an rvalue: enter() may move from it
};

// A reference target is never moved from.
template <class T>
struct yielded<T&> {
    T* value;
};

template <class T>
struct yielded<T&&> {
    T* value;
};

template <>
struct yielded<void> {};

// What escaped the body of a coroutine whose manager frees the frame (Clang's shape): an
// exception_ptr with no destructor of its own, because the manager always takes the exception
// out before it frees the frame. Only unhandled_exception() sets it, just before the final
// suspension, and a frame destroyed anywhere else finds it empty. An exception_ptr's
// destructor passes its address to the runtime, and a frame whose address escapes that way
// stays in memory even where Clang elides it: 35 instructions a with() against 6.
struct taken_exception {
    union {
        std::exception_ptr value;
    };
    taken_exception() noexcept : value() {}
    taken_exception(const taken_exception&) = delete;
    taken_exception& operator=(const taken_exception&) = delete;
    taken_exception& operator=(std::exception_ptr e) noexcept {
        value = std::move(e);
        return *this;
    }
    ~taken_exception() {}
};

}  // namespace detail

template <class T = void>
class [[nodiscard]] contextmanager {
  public:
    class promise_type;
    using handle_type = std::coroutine_handle<promise_type>;
    using value_type = T;

    contextmanager(const contextmanager&) = delete;
    contextmanager& operator=(const contextmanager&) = delete;

    contextmanager(contextmanager&& other) noexcept
        : handle_(std::exchange(other.handle_, nullptr)),
          state_(std::exchange(other.state_, state::finished)) {}

    // Destroys this one's frame first; if it was never entered, that is reported.
    contextmanager& operator=(contextmanager&& other) noexcept {
        if (this != &other) {
            drop();
            handle_ = std::exchange(other.handle_, nullptr);
            state_ = std::exchange(other.state_, state::finished);
        }
        return *this;
    }

    // Destroys the frame, running the destructors of the coroutine's live locals.
    ~contextmanager() { drop(); }

    // Runs the coroutine to its co_yield and returns the yielded value. Throws what the
    // setup throws, or protocol_error if entered twice or if the coroutine did not yield.
    CTXMGR_ELISION_INLINE T enter() {
        if (state_ != state::created) [[unlikely]]
            entered_out_of_turn(state_);
        state_ = state::entered;
        resume();
        if (finished()) [[unlikely]] {
            state_ = state::finished;
            if constexpr (detail::frame_frees_itself) {
                finished_without_yielding(thrown_);
            } else {
                std::exception_ptr thrown = take_escaped();
                finished_without_yielding(thrown);
            }
        }
        if constexpr (std::is_void_v<T>) {
            return;
        } else if constexpr (std::is_reference_v<T>) {
            return static_cast<T>(*handle_.promise().yielded_.value);
        } else {
            auto& yielded = handle_.promise().yielded_;
            if constexpr (std::is_copy_constructible_v<T>) {
                if (!yielded.movable) return *yielded.value;
            }
            return std::move(*yielded.value);
        }
    }

    // Resumes the coroutine with `e` (see the semantics above). Returns true when the
    // coroutine swallowed a non-null `e`.
    CTXMGR_ELISION_INLINE bool exit(const std::exception_ptr& e) {
        if (state_ != state::entered) [[unlikely]]
            exited_out_of_turn(state_);
        resume(e);
        state_ = state::finished;
        if (!finished()) [[unlikely]]  // suspended at a second co_yield
        {
            destroy();
            did_not_stop(e);
        }
        if constexpr (detail::frame_frees_itself) {
            if (!thrown_) return static_cast<bool>(e);
            return rethrow_escaped_unless(e);
        } else {
            if (!handle_.promise().thrown_.value) {
                std::exchange(handle_, nullptr).destroy();
                return static_cast<bool>(e);
            }
            // In line: Clang elides the frame only where it sees it freed on every path
            // that returns.
            return rethrow_unless(take_escaped(), e);
        }
    }

    class promise_type {
        using object_type = std::conditional_t<std::is_void_v<T>, detail::nothing_yielded,
                                               std::remove_reference_t<T>>;

      public:
        contextmanager get_return_object() noexcept {
            return contextmanager(handle_type::from_promise(*this));
        }
        std::suspend_always initial_suspend() noexcept { return {}; }
        // Suspends at the end only where the manager frees the frame (frame_frees_itself).
        auto final_suspend() noexcept {
            return std::conditional_t<detail::frame_frees_itself, std::suspend_never,
                                      std::suspend_always>{};
        }
        void return_void() noexcept {}
        void unhandled_exception() noexcept {
            if constexpr (detail::frame_frees_itself) {
                owner_->thrown_ = std::current_exception();
            } else {
                thrown_ = std::current_exception();
            }
        }

        // A coroutine's call has no default arguments to carry the caller's line, so the
        // never-entered report names the coroutine: its last line (GCC) or first (Clang).
        explicit promise_type(std::source_location where = std::source_location::current()) noexcept
            : where_(where) {}
        promise_type(const promise_type&) = delete;
        promise_type& operator=(const promise_type&) = delete;
        // A frame that frees itself tells the manager it is gone, whichever way it went.
        // owner_ is set before every resumption and before destroy(), and nothing in the
        // ramp after the promise is made can throw (get_return_object and initial_suspend
        // are noexcept), so the frame never dies without one.
        ~promise_type() {
            if constexpr (detail::frame_frees_itself) owner_->handle_ = nullptr;
        }

        // Rethrows, at the co_yield, the exception exit() was given.
        struct yield_awaiter {
            promise_type& promise;
            bool await_ready() const noexcept { return false; }
            void await_suspend(handle_type) const noexcept {}
            void await_resume() const {
                // Only exit() resumes a coroutine suspended at its co_yield, and it sets
                // resume_with_ first.
                if (*promise.resume_with_) std::rethrow_exception(*promise.resume_with_);
            }
        };

        // Nothing is awaited: enter() returns at the co_yield alone, and an await would
        // stop the coroutine elsewhere, with no target yielded (async_contextmanager awaits).
        template <class U>
        void await_transform(U&&) = delete;

        yield_awaiter yield_value(detail::nothing_yielded) noexcept requires std::is_void_v<T> {
            return {*this};
        }

        // A reference target refers to the yielded object itself: U must convert to T
        // without a temporary (same type, derived, or adding const), and a non-const lvalue
        // reference needs an lvalue.
        template <class U>
        requires(std::is_reference_v<T>&&
                     std::is_convertible_v<std::remove_reference_t<U>*, object_type*> &&
                 (std::is_lvalue_reference_v<U> || !std::is_lvalue_reference_v<T> ||
                  std::is_const_v<object_type>)) yield_awaiter yield_value(U&& value)
        noexcept {
            yielded_.value = std::addressof(value);
            return {*this};
        }

        // An lvalue is copied into the target, so a move-only T must be yielded as an rvalue.
        yield_awaiter yield_value(const object_type& value) noexcept
            requires(!std::is_void_v<T> && !std::is_reference_v<T> &&
                     std::is_copy_constructible_v<T>) {
            yielded_.value = const_cast<object_type*>(std::addressof(value));
            yielded_.movable = false;
            return {*this};
        }

        yield_awaiter yield_value(object_type&& value) noexcept
            requires(!std::is_void_v<T> && !std::is_reference_v<T>) {
            // The temporary lives until the end of the co_yield full-expression, which
            // spans the suspension, so enter() can move from it.
            yielded_.value = std::addressof(value);
            yielded_.movable = true;
            return {*this};
        }

        static void* operator new(std::size_t size) { return detail::allocate_frame(size); }
        static void operator delete(void* frame, std::size_t size) noexcept {
            detail::deallocate_frame(frame, size);
        }

      private:
        friend class contextmanager;
        // The order keeps apart the fields written together (where_ and owner_ as the
        // manager is made and entered, resume_with_ and owner_ on exit): side by side, GCC 12
        // builds the pair in a vector register to store it in one instruction, which costs
        // five more.
        std::source_location where_;
        // What exit() throws in at the co_yield: its argument, alive while the coroutine
        // runs. Only exit() resumes the coroutine from its co_yield, and sets it first.
        const std::exception_ptr* resume_with_;
        detail::yielded<T> yielded_;
        // The manager that resumes or destroys a frame that frees itself, set before each:
        // the manager may have been moved since the last time.
        contextmanager* owner_ = nullptr;
        // What escaped the coroutine body, where the manager frees the frame.
        [[no_unique_address]] std::conditional_t<detail::frame_frees_itself,
                                                 detail::nothing_yielded, detail::taken_exception>
            thrown_;
    };

  private:
    enum class state : unsigned char { created, entered, finished };

    // The failures, out of line so that enter() and exit() stay small enough to inline into
    // with() on both compilers.
    [[noreturn, gnu::cold, gnu::noinline]] static void misused(const char* what) {
        throw protocol_error(what);
    }

    // The failures take what they report, not the manager: one that escapes to a call keeps
    // Clang from eliding the frame it owns.
    [[noreturn, gnu::cold, gnu::noinline]] static void entered_out_of_turn(state now) {
        misused(now == state::entered ? "contextmanager: entered twice"
                                      : "contextmanager: entered after it finished");
    }

    [[noreturn, gnu::cold, gnu::noinline]] static void exited_out_of_turn(state now) {
        misused(now == state::created ? "contextmanager: exit without enter"
                                      : "contextmanager: exited twice");
    }

    [[noreturn, gnu::cold, gnu::noinline]] static void finished_without_yielding(
        std::exception_ptr& escaped) {
        if (std::exception_ptr thrown = std::exchange(escaped, nullptr))
            std::rethrow_exception(std::move(thrown));
        throw protocol_error("contextmanager: the coroutine did not yield");
    }

    [[noreturn, gnu::cold, gnu::noinline]] static void did_not_stop(const std::exception_ptr& e) {
        if (!e)
            throw protocol_error("contextmanager: the coroutine did not stop (it yielded twice)");
        // e nested in this error, as Python sets __context__ on its "generator didn't stop
        // after throw()": explicitly, since exit(e) may be called outside e's handler.
        throw_chained(protocol_error("contextmanager: the coroutine did not stop after the "
                                     "exception was thrown in"),
                      e);
    }

    // What escaped the body of the finished coroutine, whose frame is then gone.
    std::exception_ptr take_escaped() noexcept {
        if constexpr (detail::frame_frees_itself) {
            return std::exchange(thrown_, nullptr);
        } else {
            std::exception_ptr thrown = std::exchange(handle_.promise().thrown_.value, nullptr);
            std::exchange(handle_, nullptr).destroy();
            return thrown;
        }
    }

    [[gnu::noinline]] bool rethrow_escaped_unless(const std::exception_ptr& e) {
        return rethrow_unless(take_escaped(), e);
    }

    // The coroutine let e through, or rethrew it: not suppressed, and with() rethrows the
    // original object. Compared by identity, so a different exception of the same type is
    // never mistaken for e (CPython's `exc is value` check).
    [[gnu::noinline]] static bool rethrow_unless(std::exception_ptr thrown,
                                                 const std::exception_ptr& e) {
        if (thrown == e) return false;
        std::rethrow_exception(std::move(thrown));
    }

    // Whether the coroutine ran to its end: its frame is then gone, or suspended at its
    // final point for the manager to free.
    bool finished() const noexcept {
        if constexpr (detail::frame_frees_itself) {
            return !handle_;
        } else {
            return handle_.done();
        }
    }

    explicit contextmanager(handle_type handle) noexcept : handle_(handle) {}

    // Runs the coroutine to its co_yield (enter) or on from it, with `e` thrown in there
    // (exit).
    void resume() {
        if constexpr (detail::frame_frees_itself) handle_.promise().owner_ = this;
        handle_.resume();  // never throws: the body's exceptions land in thrown_
    }

    void resume(const std::exception_ptr& e) {
        handle_.promise().resume_with_ = &e;
        resume();
    }

    // Destroys the frame of a manager being dropped; one never entered says so first. Its
    // state is known inside with(), where the test disappears.
    void drop() noexcept {
        if (!handle_) return;  // finished, or moved from
        if (state_ == state::created) {
            detail::destroyed_unentered<"contextmanager">(handle_.promise().where_);
        }
        destroy();
    }

    void destroy() noexcept {
        if (handle_) {
            if constexpr (detail::frame_frees_itself) {
                handle_.promise().owner_ = this;
                handle_.destroy();  // the promise's destructor clears handle_
            } else {
                std::exchange(handle_, nullptr).destroy();
            }
        }
    }

    handle_type handle_;
    std::exception_ptr thrown_;  // what escaped the coroutine body, if its frame frees itself
    state state_ = state::created;
};

}  // namespace ctxmgr
