// The core of ctxmgr::pool, the same for every connection type (pool.hpp's typed part makes,
// checks and destroys connections through detail::pool_connector). Its parts, each in a file
// of its own:
//   - lending and returning (lending.cpp): the hot path, the waits, the asynchronous steps;
//   - the waiter queue (waiter_queue.hpp): who waits, in which order, and how each is woken;
//   - maintenance (maintenance.cpp): the creator and housekeeper threads, and leak reports
//     through the tracker;
//   - accounting (pool_accounting.hpp): counts and histograms for metrics() and stats();
//   - operations and observation (pool.cpp): resize, suspend, evict, close; stats, status.
//
// One mutex guards everything but the parking spots. A connection returned within the coarse
// clock's tick of its borrow, with nobody waiting, is parked in the spot of the CPU its
// returner runs on, and the next borrow on that CPU takes it from there: one atomic exchange
// each way, no mutex, and no line written that a thread on another core writes too (with the
// mutex, threads on two cores taking turns hand its line and the idle stack's to each other
// at every borrow and return, and a borrower that finds it taken may sleep). A parked
// connection is idle for every purpose but counted in in_use_ until the core takes it back
// (unpark_all): whoever stops parking (a borrower about to wait, suspend, close, evict_all,
// a resize below what is open, a pool with min_idle below max_size) stores that in parking_
// and then empties every spot, and a return marks a spot and then reads parking_ again, so
// that one of the two sees the other (both sequentially consistent; see park()); nobody
// waits for anybody. The housekeeper takes them back too, to apply the idle limits. Otherwise
// lending and returning hold the mutex for a few instructions (a pop or a push on the idle stack);
// every slow thing (connecting, pinging, closing a connection, reporting) runs outside it. It is a
// futex_mutex: a borrower that finds it taken tries again a few times before sleeping. What they
// write under it sits on two cache lines of its own and each connection's entry on another: with
// threads on two cores taking turns, every line written is fetched from the other core while the
// lock is held. Borrowers that wait queue first come, first served; woken, a waiter handed a
// connection has it without taking the mutex again. A returned connection goes to idle and the
// first waiter is woken for it, but a borrower already running may take it first; a waiter that
// lost a connection so is handed the next one outright, so nobody is overtaken twice in a row.
// Handing every connection to the first waiter instead (strict FIFO) makes a lock convoy when
// threads outnumber cores: each connection sits unused until its waiter is scheduled (see pool.hpp
// for the figures). Connections live in max_size fixed slots, so an entry's address is stable and
// lending allocates nothing. Times of the hot path come from the coarse monotonic clock (a tick of
// 1 to 4 ms, a few nanoseconds to read).
//
// Lifetime: the core is freed by the pool's destructor, or, when connections are still
// borrowed after its close timeout, by the last of them to come back. A returning borrower
// touches the core only under the mutex, or, parking, while its connection still counts in
// in_use_ (its last touch is the store that parks it), so whoever frees it after seeing it
// drained (under that mutex) cannot pull it from under a return in progress.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <source_location>
#include <string>
#include <thread>
#include <vector>

#include "ctxmgr/pool.hpp"
#include "ctxmgr/tracking.hpp"

#include "ctxmgr/detail/deadline.hpp"
#include "pool/pool_accounting.hpp"
#include "pool/waiter_queue.hpp"
#include "support/threads.hpp"

namespace ctxmgr::detail {

using steady = std::chrono::steady_clock;

inline constexpr std::int64_t never = std::numeric_limits<std::int64_t>::max();
// What two cores hand each other whenever one writes what the other read; x86-64's and most
// ARM cores' line (std::hardware_destructive_interference_size varies with compiler flags,
// which GCC warns about in a type's layout).
inline constexpr std::size_t cache_line = 64;

// The message of a failure, for the pool's own messages.
[[nodiscard]] std::string what_of(const std::exception_ptr& e);

static_assert(sizeof(futex_mutex) + sizeof(std::vector<void*>) <= cache_line,
              "the pool's lock and its idle stack share a cache line");

// Lines of its own: the borrower of one connection writes its entry on lending and
// returning, and must not take the line of another borrower's entry from that one's core.
struct alignas(cache_line) pool_entry : pool_entry_base {
    // Guarded by the core's mutex, or owned by whoever has the entry: its borrower, or the
    // thread that took it from a parking spot.
    bool occupied = false;           // holds a connection, or one is being made or closed for it
    std::int64_t retire_at = never;  // coarse clock; max_lifetime
    std::int64_t idle_since = 0;
    std::uint64_t generation = 0;  // evict_all() closes the connections of earlier ones
    // Written by the entry's owner, read by status() and messages under the mutex: a lend or
    // return through a parking spot takes no mutex.
    std::atomic<bool> lent{false};
    std::atomic<std::int64_t> lent_at{0};
    std::atomic<std::source_location> where{};
    // Borrows and returns through a parking spot: the wait histogram's and the use
    // histogram's zeros that the core's counters do not see. Written by the owner alone.
    std::atomic<std::uint64_t> parked_borrows{0};
    std::atomic<std::uint64_t> parked_returns{0};
};

// One idle connection a return left where the next borrow on the same CPU takes it, with
// neither taking the pool's mutex: a spot per CPU, each on a line of its own, so that threads
// on two cores borrowing and returning at once touch no line the other writes. `entry` is
// nullptr (empty), a return's mark (the entry's address with its low bit set: the return is
// deciding whether it may park), or the entry.
struct alignas(cache_line) parking_spot {
    std::atomic<pool_entry*> entry{nullptr};
};

class pool_core {
  public:
    pool_core(std::unique_ptr<pool_connector> connector, pool_options options,
              std::source_location where);
    pool_core(const pool_core&) = delete;
    pool_core& operator=(const pool_core&) = delete;
    ~pool_core() = default;

    [[nodiscard]] const std::string& name() const noexcept { return options_.name; }
    [[nodiscard]] const std::string& description() const noexcept { return description_; }
    [[nodiscard]] const std::string& quoted_name() const noexcept { return quoted_name_; }
    [[nodiscard]] std::chrono::milliseconds close_timeout() const noexcept {
        return options_.close_timeout;
    }

    // --- lending and returning (lending.cpp) ---
    pool_entry* acquire(std::chrono::nanoseconds timeout, const std::source_location& where);
    // `used`: false for a connection that failed its check before the borrower had it.
    void release(pool_entry& e, bool reusable, bool used = true) noexcept;
    // A borrower's deadline: `timeout` from `started` (nanoseconds::max(): acquire_timeout).
    [[nodiscard]] detail::deadline deadline_after(std::chrono::nanoseconds timeout,
                                                  steady::time_point started) const noexcept;
    // The steps of an asynchronous borrow (pool_acquire_async and the rest in pool.hpp).
    pool_entry* try_acquire_fresh(const std::source_location& where) noexcept;
    pool_entry* acquire_async(pool_async_waiter& a, bool overtaken,
                              const detail::deadline& deadline, steady::time_point started,
                              const std::source_location& where);
    bool withdraw(pool_async_waiter& a) noexcept;
    void pass_wake() noexcept;
    pool_waiter& offer(pool_entry& e, std::int64_t now) noexcept;
    pool_entry* take_handed(pool_async_waiter& a, const detail::deadline& deadline,
                            steady::time_point started) noexcept;
    [[nodiscard]] std::chrono::milliseconds ping_timeout(
        const detail::deadline& deadline) const noexcept;
    void failed_check(pool_entry& e) noexcept;

    // --- maintenance (maintenance.cpp) ---
    // Starts the creator, the housekeeper and the leak watch.
    void start();
    // Waits until the creator has made one connection, at most `timeout`.
    void await_first_connection(std::chrono::milliseconds timeout);

    // --- operations and observation (pool.cpp) ---
    [[nodiscard]] pool_stats stats() const;
    [[nodiscard]] pool_metrics metrics() const;
    [[nodiscard]] pool_status status() const;
    void suspend();
    void resume();
    std::size_t evict_idle();
    std::size_t evict_all();
    void resize(std::size_t min_idle, std::size_t max_size);
    void close(const detail::deadline& deadline);
    // The pool object is gone: free the core now, or leave that to the last borrower.
    static void dispose(pool_core* core) noexcept;

  private:
    // Parking (see above). park() and unpark() take no mutex; the rest run under it.
    bool park(pool_entry& e, std::int64_t now) noexcept;
    pool_entry* unpark(std::int64_t now) noexcept;
    [[nodiscard]] parking_spot& spot_here() const noexcept;
    void unpark_all() noexcept;
    bool stop_parking() noexcept;
    [[nodiscard]] bool parking_allowed() const noexcept;
    void update_parking() noexcept;
    [[nodiscard]] std::size_t parked() const noexcept;

    // Lending (under the mutex): the most recently returned idle connection, or `e`.
    pool_entry& lend(std::int64_t now, const std::source_location& where) noexcept;
    void lend(pool_entry& e, std::int64_t now, const std::source_location& where) noexcept;
    // Whether `e` may be lent at `now` with no check at all (ready() would do nothing).
    bool fresh(const pool_entry& e, std::int64_t now) const noexcept;
    bool ready(pool_entry& e, std::int64_t now, const detail::deadline& deadline) noexcept;
    pool_entry* lend_or_queue(std::unique_lock<futex_mutex>& lock, pool_waiter& w, bool overtaken,
                              const detail::deadline& deadline, steady::time_point started,
                              const std::source_location& where, const char* call);
    pool_entry* acquire_waiting(std::unique_lock<futex_mutex>& lock, steady::time_point started,
                                const detail::deadline& deadline,
                                const std::source_location& where);
    pool_entry* obtained(pool_entry& e, steady::time_point started) noexcept;
    void keep_or_discard(std::unique_lock<futex_mutex>& lock, pool_entry& e, bool reusable,
                         std::int64_t now) noexcept;
    pool_waiter& hand_over(pool_entry& e, std::int64_t now) noexcept;
    [[noreturn]] void throw_timeout(std::unique_lock<futex_mutex>& lock, steady::time_point started,
                                    steady::time_point now);
    // "app.cpp:42 in void f() (held 1.2 s), ..." for the lent connections, oldest first.
    [[nodiscard]] std::string borrowers(std::int64_t now) const;

    // Closing connections: those taken out of idle_ and counted in destroyed and discarding_.
    void discard(const std::vector<pool_entry*>& entries) noexcept;
    // A connection has been closed by whoever decided to discard it: free its slot.
    void finish_discard(pool_entry& e) noexcept;
    [[nodiscard]] bool drained() const noexcept { return in_use_ == 0 && discarding_ == 0; }

    // A connection is wanted from the creator: a borrower waits with none idle, or fewer than
    // min_idle are idle; and there is room. Room first: a borrow from a full pool below
    // min_idle idle asks this every time, and the answer is then on lines no borrower writes.
    // Nothing is parked while there is room and min_idle is set (parking_allowed()), so idle_
    // holds every idle connection that counts here.
    [[nodiscard]] bool creation_wanted() const noexcept {
        return occupied_ < max_size_ && !closing_ && !suspended_ && !creating_ &&
               (waiters_.size() > idle_.size() || idle_.size() < min_idle_ ||
                (initializing_ && idle_.empty()));
    }
    [[nodiscard]] pool_metrics metrics_locked() const noexcept;

    // Maintenance.
    pool_entry& free_slot() noexcept;
    void run_creator() noexcept;
    void run_housekeeper() noexcept;
    void report_leak(const resource_info& borrow) noexcept;
    // On the creator, the housekeeper, or in on_leak: where close() would wait for itself.
    [[nodiscard]] bool on_own_thread() const noexcept;
    void stop_threads() noexcept;

    const std::unique_ptr<pool_connector> connector_;
    const pool_options options_;
    const std::string quoted_name_;
    const std::string description_;
    // max_size_ of them at least; resize() adds more (a deque keeps their addresses).
    std::deque<pool_entry> slots_;
    const std::int64_t lifetime_ns_;
    const std::int64_t idle_timeout_ns_;
    const std::int64_t validate_ns_;
    std::minstd_rand jitter_;  // the creator's

    // What every borrow and return writes, on two lines of its own: when threads on two
    // cores take turns, each line written is a transfer from the other core, made while the
    // lock is held (and the longer the lock is held, the likelier a borrower finds it taken
    // and sleeps). The histograms' zeros are counted here (see pool_accounting.hpp).
    alignas(cache_line) mutable futex_mutex mutex_;
    std::vector<pool_entry*> idle_;  // most recently returned last
    alignas(cache_line) std::size_t in_use_ = 0;
    waiter_queue waiters_;
    std::uint64_t unwaited_ = 0;      // borrows served at once: the wait histogram's zeros
    std::uint64_t instant_uses_ = 0;  // returns within the tick of their borrow: the use one's
    bool closing_ = false;
    bool suspended_ = false;  // suspend(): nothing lent, nothing made

    // Read by every borrow and return, written seldom.
    alignas(cache_line) std::size_t max_size_ = 0;  // pool_options::max_size, until resize()
    std::size_t min_idle_ = 0;
    std::size_t occupied_ = 0;      // slots holding a connection, or one being made or closed
    std::size_t discarding_ = 0;    // connections being closed, no longer counted in size
    std::uint64_t generation_ = 0;  // evict_all() calls
    // generation_ << 1, with bit 0 set while no return may park: a return parks only an
    // entry of this generation, and only when it reads the same word again once in the spot.
    std::atomic<std::uint64_t> parking_{0};
    static constexpr std::uint64_t parking_stopped = 1;

    // One per CPU, or per connection when there are fewer (max_size when the pool was made):
    // current_cpu_or_thread() modulo their number. Never resized.
    const std::size_t spot_count_;
    const std::unique_ptr<parking_spot[]> spots_;

    alignas(cache_line) pool_accounting accounting_;
    std::condition_variable_any creator_wake_;
    std::condition_variable_any housekeeper_wake_;
    std::condition_variable_any drained_;
    std::condition_variable_any initialized_;  // the first connection, for initialization_timeout
    bool creating_ = false;
    bool sweep_ = false;         // a borrower found a broken connection: look at the idle ones now
    bool initializing_ = false;  // initialization_timeout: one connection wanted at once
    bool orphaned_ = false;      // the pool is gone; the last borrower to return frees the core
    std::exception_ptr last_failure_;  // the creator's last attempt, when it failed
    steady::time_point last_failure_at_;
    tracked registration_;

    std::mutex close_mutex_;  // one close() at a time
    std::thread creator_;
    std::thread housekeeper_;
    // Borrows held longer than leak_threshold, found by the tracker among the pool's own
    // registrations (each borrow's, owned by this core); set when leak_threshold is.
    std::optional<watch_held_too_long> leak_watch_;
};

}  // namespace ctxmgr::detail
