// ctxmgr/detail/lock.hpp: the internals of lock.hpp and file_lock's part in the lock-order
// checker: the mutex concepts, the checker's hooks (empty inline functions when it is compiled
// out), the deadline arithmetic, and the deadlock-free timed multi-lock. Include lock.hpp.
#pragma once

#include <array>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <source_location>
#include <string_view>
#include <thread>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <utility>

#include "deadline.hpp"
#include "entry_check.hpp"

#ifndef CTXMGR_LOCK_ORDER_CHECK
#define CTXMGR_LOCK_ORDER_CHECK 0
#endif

// The managers' destructors run on the exception path of a with(), where GCC would otherwise
// call them out of line: the manager's address would escape, and its `held` flag would live
// in memory on the normal path too (4 instructions, 5%, more than std::scoped_lock).
#if defined(__GNUC__)
#define CTXMGR_LOCK_INLINE [[gnu::always_inline]] inline
#else
#define CTXMGR_LOCK_INLINE inline
#endif

// GCC 12's ThreadSanitizer does not intercept pthread_mutex_clocklock, which libstdc++ uses
// for a steady-clock timed wait on std::timed_mutex and std::recursive_timed_mutex: it would
// miss the lock (and the synchronization), then report the unlock as one of an unlocked mutex.
// try_lock_until below tells it about the lock instead.
#if defined(__SANITIZE_THREAD__) && !defined(__clang__) && __GNUC__ <= 12
#include <sanitizer/tsan_interface.h>
#define CTXMGR_TSAN_CLOCKLOCK 1
#else
#define CTXMGR_TSAN_CLOCKLOCK 0
#endif

namespace ctxmgr {

namespace detail {

template <class M>
concept basic_lockable = requires(M& m) {
    m.lock();
    m.unlock();
};
template <class M>
concept lockable = basic_lockable<M> && requires(M& m) {
    { m.try_lock() } -> std::convertible_to<bool>;
};
template <class M>
concept timed_lockable = lockable<M> &&
    requires(M& m, const std::chrono::steady_clock::time_point& t) {
    { m.try_lock_until(t) } -> std::convertible_to<bool>;
};
template <class M>
concept shared_lockable = requires(M& m) {
    m.lock_shared();
    m.unlock_shared();
};
template <class M>
concept shared_timed_lockable = shared_lockable<M> &&
    requires(M& m, const std::chrono::steady_clock::time_point& t) {
    { m.try_lock_shared_until(t) } -> std::convertible_to<bool>;
};

// What taking a lock again does on a thread that already holds it.
enum class reentry : unsigned char {
    allowed,      // recursive mutexes, and user types, about which nothing is known
    deadlocks,    // the standard non-recursive mutexes (deadlock or undefined behaviour)
    shared_only,  // a file lock: two shared holds coexist, anything else blocks for ever
};

template <class M>
inline constexpr reentry reentry_of =
    std::is_same_v<M, std::mutex> || std::is_same_v<M, std::timed_mutex> ||
            std::is_same_v<M, std::shared_mutex> || std::is_same_v<M, std::shared_timed_mutex>
        ? reentry::deadlocks
        : reentry::allowed;

// A lock as the checker and the error messages see it. `type` is the mutex's type; for a
// file lock it is null and `key` points to the lock's name, a std::string interned by the
// checker (lock_order_file_key).
struct lock_ref {
    const void* key;
    const std::type_info* type;
    reentry again;
    bool shared;
};

template <class M>
lock_ref ref_of(M& m, bool shared) noexcept {
    return {static_cast<const void*>(std::addressof(m)), &typeid(M), reentry_of<M>, shared};
}

template <class... Ms>
std::array<lock_ref, sizeof...(Ms)> refs_of(const std::tuple<Ms&...>& mutexes,
                                            bool shared) noexcept {
    return std::apply(
        [&](Ms&... ms) { return std::array<lock_ref, sizeof...(Ms)>{ref_of(ms, shared)...}; },
        mutexes);
}

// Out of line (src/resources/lock.cpp), so the managers' inline code stays small.
[[noreturn]] void throw_lock_timeout(const char* manager, const lock_ref* locks, std::size_t count,
                                     std::size_t busy, std::chrono::nanoseconds waited,
                                     std::source_location where);
[[noreturn]] void throw_lock_misuse(const char* manager, std::string_view problem,
                                    const lock_ref* locks, std::size_t count,
                                    std::source_location where);

#if CTXMGR_LOCK_ORDER_CHECK
// The checker (src/resources/lock.cpp). order_before records the edges from every lock the thread
// holds to `locks` and reports new cycles; it may throw (std::bad_alloc, or the handler's
// exception). order_acquired marks them held (it cannot fail: order_before reserved room);
// order_released forgets one hold of each, looking on other threads when the releasing
// thread does not hold it.
void order_before(const lock_ref* locks, std::size_t count, std::source_location where);
void order_acquired(const lock_ref* locks, std::size_t count, std::source_location where) noexcept;
void order_released(const lock_ref* locks, std::size_t count) noexcept;
void order_forget(const void* key) noexcept;
// The key of the file lock named `name` (`file lock "/canonical/path"`): the address of
// an interned copy, the same for the same name, never freed.
const void* lock_order_file_key(std::string_view name);
#endif

// The checker's hooks for one manager: empty inline functions when it is compiled out.
template <class... Ms>
struct order_hooks {
    static void before([[maybe_unused]] bool shared, [[maybe_unused]] std::source_location where,
                       [[maybe_unused]] Ms&... ms) {
#if CTXMGR_LOCK_ORDER_CHECK
        const lock_ref refs[] = {ref_of(ms, shared)...};
        order_before(refs, sizeof...(Ms), where);
#endif
    }
    static void acquired([[maybe_unused]] bool shared, [[maybe_unused]] std::source_location where,
                         [[maybe_unused]] Ms&... ms) noexcept {
#if CTXMGR_LOCK_ORDER_CHECK
        const lock_ref refs[] = {ref_of(ms, shared)...};
        order_acquired(refs, sizeof...(Ms), where);
#endif
    }
    static void released([[maybe_unused]] bool shared, [[maybe_unused]] Ms&... ms) noexcept {
#if CTXMGR_LOCK_ORDER_CHECK
        const lock_ref refs[] = {ref_of(ms, shared)...};
        order_released(refs, sizeof...(Ms));
#endif
    }
};

// protocol_error when the same mutex is passed twice: std::lock would deadlock on it.
template <class... Ms>
void check_distinct(const char* manager, std::source_location where, Ms&... ms) {
    if constexpr (sizeof...(Ms) > 1) {
        const void* addresses[] = {static_cast<const void*>(std::addressof(ms))...};
        for (std::size_t i = 1; i < sizeof...(Ms); ++i) {
            for (std::size_t j = 0; j < i; ++j) {
                if (addresses[i] == addresses[j]) {
                    const lock_ref refs[] = {ref_of(ms, false)...};
                    throw_lock_misuse(manager, "the same mutex is passed twice", &refs[i], 1,
                                      where);
                }
            }
        }
    }
}

// Unlocks in reverse order.
template <bool Shared, class... Ms>
void unlock_all(std::tuple<Ms&...>& mutexes) noexcept {
    [&]<std::size_t... I>(std::index_sequence<I...>) {
        constexpr std::size_t last = sizeof...(Ms) - 1;
        if constexpr (Shared) {
            (std::get<last - I>(mutexes).unlock_shared(), ...);
        } else {
            (std::get<last - I>(mutexes).unlock(), ...);
        }
    }
    (std::index_sequence_for<Ms...>{});
}

// Calls f(std::get<i>(t)) for a run-time index i.
template <class Tuple, class F>
void visit_at(Tuple& t, std::size_t i, F&& f) {
    [&]<std::size_t... I>(std::index_sequence<I...>) {
        static_cast<void>(((I == i ? (f(std::get<I>(t)), true) : false) || ...));
    }
    (std::make_index_sequence<std::tuple_size_v<Tuple>>{});
}

// m.try_lock_until(deadline), made visible to ThreadSanitizer where it needs help (above).
template <class M>
bool try_lock_until(M& m, const deadline& limit) {
    const auto until = limit.time_point();
#if CTXMGR_TSAN_CLOCKLOCK
    if constexpr (std::is_same_v<M, std::timed_mutex> ||
                  std::is_same_v<M, std::recursive_timed_mutex>) {
        void* const handle = m.native_handle();
        __tsan_mutex_pre_lock(handle, __tsan_mutex_try_lock);
        const bool locked = m.try_lock_until(until);
        __tsan_mutex_post_lock(
            handle, __tsan_mutex_try_lock | (locked ? 0u : __tsan_mutex_try_lock_failed), 0);
        return locked;
    }
#endif
    return m.try_lock_until(until);
}

// Locks every mutex by `deadline`, without deadlock: lock one with the time left, try the
// others; if one is busy, unlock, and start again from the busy one (std::lock's algorithm,
// bounded by the deadline). Returns the number of mutexes on success, else the index of the
// one still busy, with nothing locked.
template <bool Shared, class... Ms>
std::size_t lock_all_until(std::tuple<Ms&...>& mutexes, const deadline& limit) {
    constexpr std::size_t count = sizeof...(Ms);
    if constexpr (count == 1) {
        auto& m = std::get<0>(mutexes);
        if constexpr (Shared) {
            return m.try_lock_shared_until(limit.time_point()) ? 1 : 0;
        } else {
            return try_lock_until(m, limit) ? 1 : 0;
        }
    } else {
        std::size_t first = 0;
        for (;;) {
            bool locked = false;
            visit_at(mutexes, first, [&](auto& m) { locked = try_lock_until(m, limit); });
            if (!locked) return first;
            std::size_t taken = 1;  // mutexes first, first + 1, ... (mod count) are locked
            auto unlock_taken = [&]() noexcept {
                while (taken > 0) {
                    --taken;
                    visit_at(mutexes, (first + taken) % count, [](auto& m) { m.unlock(); });
                }
            };
            try {
                while (taken < count) {
                    visit_at(mutexes, (first + taken) % count,
                             [&](auto& m) { locked = m.try_lock(); });
                    if (!locked) break;
                    ++taken;
                }
            } catch (...) {
                unlock_taken();
                throw;
            }
            if (taken == count) return count;
            const std::size_t busy = (first + taken) % count;
            unlock_taken();
            if (limit.expired()) return busy;
            first = busy;
            std::this_thread::yield();
        }
    }
}

// Which manager: its name in messages, and whether it locks shared.
enum class manager_kind : unsigned char {
    lock,
    lock_for,
    lock_until,
    shared,
    shared_for,
    shared_until
};

constexpr const char* name_of(manager_kind kind) noexcept {
    constexpr const char* names[] = {"lock",   "lock_for",   "lock_until",
                                     "shared", "shared_for", "shared_until"};
    return names[static_cast<unsigned char>(kind)];
}

// What every mutex manager is: the mutexes, the call site, whether it holds them or was never
// entered (detail/entry_check.hpp's rules); enter() is the managers' own, exit() and the
// destructor are this class's.
template <manager_kind Kind, class... Ms>
class lock_base {
    static_assert(sizeof...(Ms) >= 1, "ctxmgr::lock and the other managers: give a mutex");
    static constexpr bool shared = Kind >= manager_kind::shared;
    static constexpr const char* manager = name_of(Kind);

  public:
    lock_base(const lock_base&) = delete;
    lock_base& operator=(const lock_base&) = delete;
    lock_base& operator=(lock_base&&) = delete;

    // Unlocks, in reverse order, what enter() locked; does nothing otherwise.
    void exit(const std::exception_ptr&) noexcept {
        if (phase_ == phase::held) release();
    }

  protected:
    lock_base(std::source_location where, Ms&... ms) noexcept : mutexes_(ms...), where_(where) {}
    lock_base(lock_base&& other) noexcept
        : mutexes_(other.mutexes_),
          where_(other.where_),
          phase_(std::exchange(other.phase_, phase::idle)) {}
    CTXMGR_LOCK_INLINE ~lock_base() {
        // One test on the path with() takes: the phase is idle after exit.
        if (phase_ != phase::idle) {
            if (phase_ == phase::held) {
                release();
            } else {
                destroyed_unentered<manager_name(manager)>(where_);
            }
        }
    }

    // lock() (std::lock for several) or lock_shared(), waiting as long as it takes.
    void enter_blocking() {
        prepare();
        std::apply(
            [](Ms&... ms) {
                if constexpr (shared) {
                    (ms.lock_shared(), ...);
                } else if constexpr (sizeof...(Ms) == 1) {
                    (ms.lock(), ...);
                } else {
                    std::lock(ms...);
                }
            },
            mutexes_);
        acquired();
    }

    // The same by `deadline`, else timeout_error (which says how long since `start`).
    void enter_until(std::chrono::steady_clock::time_point start, const deadline& limit) {
        prepare();
        const std::size_t result = lock_all_until<shared>(mutexes_, limit);
        if (result != sizeof...(Ms)) {
            const auto refs = refs_of(mutexes_, shared);
            throw_lock_timeout(manager, refs.data(), refs.size(), result,
                               std::chrono::steady_clock::now() - start, where_);
        }
        acquired();
    }

    // The same within `timeout` from now.
    void enter_within(std::chrono::steady_clock::duration timeout) {
        const auto start = std::chrono::steady_clock::now();
        enter_until(start, deadline::after(timeout, start));
    }

  private:
    void prepare() {
        if (phase_ == phase::held) misuse("entered again before exit");
        phase_ = phase::idle;
        std::apply(
            [&](Ms&... ms) {
                check_distinct(manager, where_, ms...);
                order_hooks<Ms...>::before(shared, where_, ms...);
            },
            mutexes_);
    }
    void acquired() noexcept {
        phase_ = phase::held;
        std::apply([&](Ms&... ms) { order_hooks<Ms...>::acquired(shared, where_, ms...); },
                   mutexes_);
    }
    [[noreturn]] void misuse(std::string_view problem) const {
        const auto refs = refs_of(mutexes_, shared);
        throw_lock_misuse(manager, problem, refs.data(), refs.size(), where_);
    }
    void release() noexcept {
        phase_ = phase::idle;
        unlock_all<shared>(mutexes_);
        std::apply([&](Ms&... ms) { order_hooks<Ms...>::released(shared, ms...); }, mutexes_);
    }

    std::tuple<Ms&...> mutexes_;
    std::source_location where_;
    // The manager's own state says whether it was ever entered, so it needs no entry_check:
    // one byte, tested once in the destructor, even where the compiler cannot see it.
    enum class phase : unsigned char { idle, held, unentered } phase_ = phase::unentered;
};

}  // namespace detail

}  // namespace ctxmgr
