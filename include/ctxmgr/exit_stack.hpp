// ctxmgr/exit_stack.hpp: a run-time number of exits, unwound like nested withs.
//
// Python's contextlib.ExitStack. Register managers and callbacks as the program discovers
// them; they unwind last-in first-out with with()'s exception rules.
//
//   ctxmgr::exit_stack stack;
//   std::vector<ctxmgr::file*> files;
//   for (const auto& path : paths)
//       files.push_back(&stack.enter_context(ctxmgr::open(path)));   // owned by the stack
//   stack.callback([&] { std::puts("all closed"); });
//   ...                                   // leaving the scope closes every file, newest first
//
// As a manager (enter() returns exit_stack&), exits see the exception that ends the block:
//   ctxmgr::with(ctxmgr::exit_stack(), [](ctxmgr::exit_stack& stack) { ... });
//
// Rules, as CPython's ExitStack.__exit__:
//   - every exit runs, even when an earlier one threw;
//   - each exit receives the pending exception (null if none), from inside its handler, so
//     std::throw_with_nested chains it; an exit that throws replaces it for the rest;
//   - an exit that suppresses (returns true) clears it for the rest;
//   - exit(e) returns true only if e was not null and ended suppressed; if an exit threw,
//     the last exception thrown propagates.
//
// Ownership: enter_context and push take lvalue managers by reference (they must outlive
// the stack's unwinding) and own rvalues, which they move to the heap so that references
// to them and to their targets stay valid when the stack moves or grows. Callbacks and exit
// functions are decayed and stored at registration; one of up to two pointers' size that
// is nothrow-movable is stored inline, and the first `inline_capacity` exits need no heap
// allocation at all.
//
// Exception safety: if registering fails (allocation, or copying the callable throws), the
// exit runs at once (a callback is called, an exit function or manager is exited with the
// registration's exception) and the exception propagates, so nothing registered is lost.
//
// The destructor unwinds what is left with no exception; what it cannot throw goes to the
// unraisable hook. Thread-compatible: one stack must not be used from two threads at once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <new>
#include <tuple>
#include <type_traits>
#include <utility>

#include "protocol.hpp"
#include "unraisable.hpp"

namespace ctxmgr {

namespace detail {

inline constexpr std::size_t exit_inline_size = 2 * sizeof(void*);
inline constexpr std::size_t exit_inline_align = alignof(void*);

// The operations of one type-erased exit. `run` returns true when the exit suppressed.
// `relocate` and `destroy` are null for trivially copyable exits (lambdas capturing
// pointers and references, function pointers): those move by copying their bytes and need
// no destruction, which saves two indirect calls per exit.
struct exit_operations {
    bool (*run)(void* storage, const std::exception_ptr& e);
    void (*relocate)(void* from, void* to) noexcept;
    void (*destroy)(void* storage) noexcept;

    void relocate_or_copy(void* from, void* to) const noexcept {
        if (relocate == nullptr) {
            std::memcpy(to, from, exit_inline_size);
        } else {
            relocate(from, to);
        }
    }
    void destroy_if_needed(void* storage) const noexcept {
        if (destroy != nullptr) destroy(storage);
    }
};

template <class W>
struct exit_operations_for {
    static bool run(void* storage, const std::exception_ptr& e) {
        return (*static_cast<W*>(storage))(e);
    }
    static void relocate(void* from, void* to) noexcept {
        W* source = static_cast<W*>(from);
        ::new (to) W(std::move(*source));
        source->~W();
    }
    static void destroy(void* storage) noexcept { static_cast<W*>(storage)->~W(); }
    static constexpr bool trivial =
        std::is_trivially_copyable_v<W> && std::is_trivially_destructible_v<W>;
    static constexpr exit_operations table{&run, trivial ? nullptr : &relocate,
                                           trivial ? nullptr : &destroy};
};

// Raw storage of one pending exit; the stack manages the lifetime of what it holds.
struct exit_entry {
    alignas(exit_inline_align) unsigned char storage[exit_inline_size];
    const exit_operations* operations;
};

template <class W>
inline constexpr bool fits_inline =
    sizeof(W) <= exit_inline_size &&
    alignof(W) <= exit_inline_align&& std::is_nothrow_move_constructible_v<W>;

// What the stack stores for each kind of registration. Each is callable with the pending
// exception and returns whether it suppressed it.
template <class F, class... Args>
struct callback_exit {
    [[no_unique_address]] F function;
    [[no_unique_address]] std::tuple<Args...> arguments;
    bool operator()(const std::exception_ptr&) {
        std::apply(function, arguments);
        return false;  // a callback never suppresses, whatever it returns
    }
};

template <class F>
struct function_exit {
    [[no_unique_address]] F function;
    bool operator()(const std::exception_ptr& e) {
        if constexpr (std::is_same_v<std::invoke_result_t<F&, const std::exception_ptr&>, bool>) {
            return std::invoke(function, e) && e;
        } else {
            std::invoke(function, e);
            return false;
        }
    }
};

template <class M>
struct manager_ref_exit {
    M* manager;
    bool operator()(const std::exception_ptr& e) { return exit_suppresses(*manager, e); }
};

template <class M>
struct owned_manager_exit {
    std::unique_ptr<M> manager;
    bool operator()(const std::exception_ptr& e) { return exit_suppresses(*manager, e); }
};

// Deletes what was built in storage from ::operator new(size, alignment).
template <class W>
struct aligned_delete {
    void operator()(W* p) const noexcept {
        p->~W();
        ::operator delete (p, std::align_val_t{alignof(W)});
    }
};

template <class W>
struct heap_exit {
    std::unique_ptr<W, aligned_delete<W>> exit;
    bool operator()(const std::exception_ptr& e) { return (*exit)(e); }
};

}  // namespace detail

class exit_stack {
  public:
    // Exits held without any heap allocation.
    static constexpr std::size_t inline_capacity = 8;

    exit_stack() noexcept : data_(inline_entries()), size_(0), capacity_(inline_capacity) {}

    exit_stack(const exit_stack&) = delete;
    exit_stack& operator=(const exit_stack&) = delete;

    // Takes over other's pending exits; other is left empty.
    exit_stack(exit_stack&& other) noexcept : exit_stack() { take(other); }

    // Unwinds this stack's pending exits first, as the destructor would (errors to the
    // unraisable hook), then takes over other's.
    exit_stack& operator=(exit_stack&& other) noexcept {
        if (this != &other) {
            unwind_reporting("exit_stack move assignment");
            release_storage();
            take(other);
        }
        return *this;
    }

    ~exit_stack() {
        unwind_reporting("exit_stack destructor");
        release_storage();
    }

    // The manager protocol: enter() returns the stack itself.
    exit_stack& enter() noexcept { return *this; }

    // Unwinds every pending exit with `e` (see the rules above). Returns true only if `e`
    // was not null and ended suppressed; throws the last exception an exit threw.
    bool exit(std::exception_ptr e) { return unwind(std::move(e)); }

    // Unwinds now, with no exception. Throws the last exception an exit threw.
    void close() { static_cast<void>(unwind(nullptr)); }

    // Enters `m` and returns its target. An lvalue is referenced (it must outlive the
    // stack's unwinding); an rvalue is moved to the heap and owned. If enter() throws,
    // nothing is registered and the exception propagates.
    template <class M>
    decltype(auto) enter_context(M&& m) {
        using manager_type = std::remove_reference_t<M>;
        static_assert(context_manager<manager_type>,
                      "exit_stack::enter_context: the argument is not a context manager "
                      "(needs enter() and exit(std::exception_ptr) returning bool or void)");
        using target = enter_result_t<manager_type>;
        if constexpr (std::is_lvalue_reference_v<M>) {
            return enter_and_register<target>(m, detail::manager_ref_exit<manager_type>{&m});
        } else {
            auto owned = std::make_unique<manager_type>(std::move(m));
            manager_type& manager = *owned;
            return enter_and_register<target>(
                manager, detail::owned_manager_exit<manager_type>{std::move(owned)});
        }
    }

    // Registers f(args...) to run on unwind (f and args decayed and stored now, called as
    // lvalues). A callback never suppresses, even if it returns true.
    template <class F, class... Args>
    void callback(F&& f, Args&&... args) {
        static_assert(std::is_invocable_v<std::decay_t<F>&, std::decay_t<Args>&...>,
                      "exit_stack::callback: f(args...) is not callable with the decayed "
                      "arguments as lvalues");
        using stored = detail::callback_exit<std::decay_t<F>, std::decay_t<Args>...>;
        // Move the arguments in only when nothing after the move can fail; otherwise copy, so
        // the originals are intact for the fallback below.
        constexpr bool move_in =
            std::is_nothrow_constructible_v<std::decay_t<F>, F&&> &&
            (std::is_nothrow_constructible_v<std::decay_t<Args>, Args&&> && ...);
        try {
            reserve_one();
            emplace<stored>([&] {
                if constexpr (move_in) {
                    return stored{std::forward<F>(f),
                                  std::tuple<std::decay_t<Args>...>(std::forward<Args>(args)...)};
                } else {
                    return stored{std::as_const(f),
                                  std::tuple<std::decay_t<Args>...>(std::as_const(args)...)};
                }
            });
        } catch (...) {
            std::invoke(f, args...);  // the cleanup could not be stored: run it now
            throw;
        }
    }

    // Registers an exit without entering anything:
    //   push(exit_fn)  exit_fn(std::exception_ptr) returning bool (may suppress) or void;
    //   push(m)        a context manager's exit (an lvalue is referenced, an rvalue owned).
    template <class F>
    void push(F&& exit_fn_or_manager) {
        using type = std::remove_cvref_t<F>;
        if constexpr (context_manager<std::remove_reference_t<F>>) {
            push_manager(std::forward<F>(exit_fn_or_manager));
        } else {
            static_assert(std::is_invocable_v<type&, const std::exception_ptr&>,
                          "exit_stack::push: the argument must be a context manager or a "
                          "callable taking std::exception_ptr");
            using result = std::invoke_result_t<type&, const std::exception_ptr&>;
            static_assert(std::is_same_v<result, bool> || std::is_void_v<result>,
                          "exit_stack::push: an exit function returns bool or void");
            using stored = detail::function_exit<type>;
            constexpr bool move_in = std::is_nothrow_constructible_v<type, F&&>;
            try {
                reserve_one();
                emplace<stored>([&] {
                    if constexpr (move_in) {
                        return stored{std::forward<F>(exit_fn_or_manager)};
                    } else {
                        return stored{std::as_const(exit_fn_or_manager)};
                    }
                });
            } catch (...) {
                std::invoke(exit_fn_or_manager, std::current_exception());
                throw;
            }
        }
    }

    // Moves every pending exit into a new stack and leaves this one empty (Python's
    // pop_all): what was registered so far now unwinds with the returned stack.
    [[nodiscard]] exit_stack pop_all() noexcept {
        exit_stack popped;
        popped.take(*this);
        return popped;
    }

    [[nodiscard]] std::size_t size() const noexcept { return size_; }
    [[nodiscard]] bool empty() const noexcept { return size_ == 0; }

  private:
    // One entry popped off the stack while it runs, so that exits may register more exits
    // (which may reallocate the stack's storage) without moving the one running.
    class popped_entry {
      public:
        explicit popped_entry(detail::exit_entry& source) noexcept
            : operations_(source.operations) {
            operations_->relocate_or_copy(source.storage, entry_.storage);
        }
        popped_entry(const popped_entry&) = delete;
        popped_entry& operator=(const popped_entry&) = delete;
        ~popped_entry() { operations_->destroy_if_needed(entry_.storage); }
        bool run(const std::exception_ptr& e) { return operations_->run(entry_.storage, e); }

      private:
        detail::exit_entry entry_;
        const detail::exit_operations* operations_;
    };

    template <class M>
    void push_manager(M&& m) {
        using manager_type = std::remove_reference_t<M>;
        if constexpr (std::is_lvalue_reference_v<M>) {
            try {
                reserve_one();
            } catch (...) {
                detail::exit_suppresses(m, std::current_exception());
                throw;
            }
            emplace<detail::manager_ref_exit<manager_type>>(
                [&] { return detail::manager_ref_exit<manager_type>{&m}; });
        } else {
            std::unique_ptr<manager_type> owned;
            try {
                owned = std::make_unique<manager_type>(std::move(m));
                reserve_one();
            } catch (...) {
                detail::exit_suppresses(owned ? *owned : m, std::current_exception());
                throw;
            }
            emplace<detail::owned_manager_exit<manager_type>>(
                [&] { return detail::owned_manager_exit<manager_type>{std::move(owned)}; });
        }
    }

    // Enters first and registers the exit after, as CPython's ExitStack does: enter() may
    // register exits on this very stack (they then unwind after this manager's exit), so no
    // slot can be reserved across it. If registering fails (no memory for a slot), the
    // manager is exited at once with that failure, which then propagates: nothing entered is
    // left without its exit.
    template <class Target, class M, class W>
    Target enter_and_register(M& manager, W&& exit) {
        using stored = std::remove_cvref_t<W>;
        const auto register_exit = [&] {
            try {
                reserve_one();
            } catch (...) {
                detail::exit_suppresses(manager, std::current_exception());
                throw;
            }
            emplace<stored>([&] { return stored(std::move(exit)); });
        };
        if constexpr (std::is_void_v<Target>) {
            manager.enter();
            register_exit();
        } else if constexpr (std::is_reference_v<Target>) {
            Target target = manager.enter();
            register_exit();
            return static_cast<Target>(target);
        } else {
            Target target = manager.enter();
            register_exit();
            return target;
        }
    }

    // Stores the W that make() returns in the reserved slot: inline when it fits, else on
    // the heap. make() runs only once the storage exists, so a failed allocation leaves the
    // arguments it would consume untouched. Requires reserve_one() first.
    template <class W, class Make>
    void emplace(Make&& make) {
        detail::exit_entry& entry = data_[size_];
        if constexpr (detail::fits_inline<W>) {
            ::new (static_cast<void*>(entry.storage)) W(make());
            entry.operations = &detail::exit_operations_for<W>::table;
        } else {
            using boxed = detail::heap_exit<W>;
            void* raw = ::operator new (sizeof(W), std::align_val_t{alignof(W)});
            W* built;
            try {
                built = ::new (raw) W(make());
            } catch (...) {
                ::operator delete (raw, std::align_val_t{alignof(W)});
                throw;
            }
            ::new (static_cast<void*>(entry.storage))
                boxed{std::unique_ptr<W, detail::aligned_delete<W>>(built)};
            entry.operations = &detail::exit_operations_for<boxed>::table;
        }
        ++size_;
    }

    void reserve_one() {
        if (size_ < capacity_) return;
        const std::size_t capacity = capacity_ * 2;
        auto* entries =
            static_cast<detail::exit_entry*>(::operator new(capacity * sizeof(detail::exit_entry)));
        relocate_entries(data_, entries, size_);
        release_storage();
        data_ = entries;
        capacity_ = capacity;
    }

    static void relocate_entries(detail::exit_entry* from, detail::exit_entry* to,
                                 std::size_t count) noexcept {
        for (std::size_t i = 0; i < count; ++i) {
            from[i].operations->relocate_or_copy(from[i].storage, to[i].storage);
            to[i].operations = from[i].operations;
        }
    }

    void release_storage() noexcept {
        if (data_ != inline_entries()) ::operator delete(data_);
        data_ = inline_entries();
        capacity_ = inline_capacity;
    }

    // Requires this stack to be empty with inline storage.
    void take(exit_stack& other) noexcept {
        if (other.data_ == other.inline_entries()) {
            relocate_entries(other.data_, data_, other.size_);
        } else {
            data_ = std::exchange(other.data_, other.inline_entries());
            capacity_ = std::exchange(other.capacity_, inline_capacity);
        }
        size_ = std::exchange(other.size_, 0);
    }

    bool unwind(std::exception_ptr e) {
        // Exits run outside whatever handler the caller is in: one that receives no
        // exception sees none (std::throw_with_nested chains nothing), and one that receives
        // an exception sees that one alone, from a handler exit_in_handler opens for it.
        const detail::no_handled_exception outside;
        const bool received = static_cast<bool>(e);
        bool suppressed = false;
        bool pending_raise = false;
        std::exception_ptr pending = std::move(e);
        while (size_ > 0) {
            --size_;
            popped_entry entry(data_[size_]);
            try {
                // Nothing pending is the common case: call directly, no handler to set up.
                const bool suppresses =
                    pending
                        ? detail::exit_in_handler(
                              [&](const std::exception_ptr& p) { return entry.run(p); }, pending)
                        : entry.run(pending);
                if (suppresses && pending) {
                    suppressed = true;
                    pending_raise = false;
                    pending = nullptr;
                }
            } catch (...) {
                pending = std::current_exception();
                pending_raise = true;
            }
        }
        if (pending_raise) std::rethrow_exception(pending);
        return received && suppressed;
    }

    void unwind_reporting(const char* where) noexcept {
        if (size_ == 0) return;
        try {
            static_cast<void>(unwind(nullptr));
        } catch (...) {
            report_current_unraisable(where);
        }
    }

    detail::exit_entry* inline_entries() noexcept { return inline_; }

    detail::exit_entry* data_;
    std::size_t size_;
    std::size_t capacity_;
    detail::exit_entry inline_[inline_capacity];
};

}  // namespace ctxmgr
