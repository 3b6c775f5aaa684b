// The core of ctxmgr::pool, the same for every connection type (pool.hpp's typed part makes,
// checks and destroys connections through detail::pool_connector).
//
// One mutex guards everything. Lending and returning hold it for a few instructions (a pop
// or a push on the idle stack), so uncontended they cost two lock/unlock pairs; every slow
// thing (connecting, pinging, closing a connection, reporting) runs outside it. What they
// write under it sits on two cache lines of its own and each connection's entry on another:
// with threads on two cores taking turns, every line written is fetched from the other core
// while the lock is held. Borrowers that wait queue first come, first served, each asleep on
// a futex word of its own, woken after the mutex is unlocked; woken, a waiter handed a
// connection has it without taking the mutex again. A returned connection goes to idle and
// the first waiter is woken for it, but a borrower already running may take it first; a
// waiter that lost a connection so is handed the next one outright, so nobody is overtaken
// twice in a row. Handing every connection to the first waiter instead (strict FIFO) makes
// a lock convoy when threads outnumber cores: each connection sits unused until its waiter
// is scheduled (see pool.hpp for the figures). Two threads
// per pool: the creator, the only caller of the factory (so a borrower never waits inside a
// connect and always keeps its deadline), and the housekeeper (idle and lifetime limits,
// leak reports). Connections live in max_size fixed slots, so an entry's address is stable
// and lending allocates nothing. Times of the hot path come from the coarse monotonic clock
// (a tick of 1 to 4 ms, a few nanoseconds to read), like the leak tracker's.
//
// Lifetime: the core is freed by the pool's destructor, or, when connections are still
// borrowed after its close timeout, by the last of them to come back. A returning borrower
// touches the core only under the mutex, so whoever frees it after seeing it drained (under
// that mutex) cannot pull it from under a return in progress.
#include "ctxmgr/pool.hpp"
#include "ctxmgr/release.hpp"

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <limits>
#include <memory>
#include <mutex>
#include <ostream>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "ctxmgr/detail/source_site.hpp"
#include "support/clocks.hpp"

namespace ctxmgr::detail {

namespace {

using steady = std::chrono::steady_clock;

constexpr std::int64_t never = std::numeric_limits<std::int64_t>::max();
// An idle connection older than this is looked at (pool_traits::usable) before it is lent:
// one coarse-clock tick at least, so that a borrow right after a return pays nothing.
constexpr std::int64_t look_after_ns = 1'000'000;
// How long the housekeeper sleeps at most, so that it sees entries made since it last looked.
constexpr std::int64_t housekeeping_period_ns = 1'000'000'000;
// Waits longer than this are unbounded for all purposes (and cannot overflow a time point).
constexpr std::chrono::nanoseconds longest_wait = std::chrono::hours(24 * 365 * 10);
// Borrowers listed in a message, at most.
constexpr std::size_t listed_borrowers = 10;
// What two cores hand each other whenever one writes what the other read; x86-64's and most
// ARM cores' line (std::hardware_destructive_interference_size varies with compiler flags,
// which GCC warns about in a type's layout).
constexpr std::size_t cache_line = 64;

std::int64_t count_ns(std::chrono::milliseconds d) noexcept {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(d).count();
}

std::string what_of(const std::exception_ptr& e) {
    try {
        std::rethrow_exception(e);
    } catch (const std::exception& ex) {
        return ex.what();
    } catch (...) {
        return "an unknown exception";
    }
}

std::string quoted(const std::string& name) {
    return '"' + name + '"';
}

void check_sizes(const std::string& description, std::size_t min_idle, std::size_t max_size) {
    if (max_size == 0) throw std::invalid_argument(description + ": max_size must be at least 1");
    if (min_idle > max_size) {
        throw std::invalid_argument(description + ": min_idle (" + std::to_string(min_idle) +
                                    ") exceeds max_size (" + std::to_string(max_size) + ")");
    }
}

void check_options(const pool_options& o) {
    const std::string pool = "pool " + quoted(o.name) + ": ";
    check_sizes("pool " + quoted(o.name), o.min_idle, o.max_size);
    const std::pair<const char*, std::chrono::milliseconds> durations[] = {
        {"acquire_timeout", o.acquire_timeout},
        {"max_lifetime", o.max_lifetime},
        {"idle_timeout", o.idle_timeout},
        {"validate_after_idle", o.validate_after_idle},
        {"validation_timeout", o.validation_timeout},
        {"leak_threshold", o.leak_threshold},
        {"close_timeout", o.close_timeout},
        {"initialization_timeout", o.initialization_timeout},
    };
    for (const auto& [name, value] : durations) {
        if (value.count() < 0) {
            throw std::invalid_argument(pool + name + " is negative (" + format_duration(value) +
                                        ")");
        }
    }
}

}  // namespace

static_assert(sizeof(std::mutex) + sizeof(std::vector<void*>) <= cache_line,
              "the pool's lock and its idle stack share a cache line");

// A cache line each: the borrower of one connection writes its entry on lending and
// returning, and must not take the line of another borrower's entry from that one's core.
struct alignas(cache_line) pool_entry : pool_entry_base {
    // Guarded by the core's mutex.
    bool occupied = false;  // holds a connection, or one is being made or closed for it
    bool lent = false;
    bool leak_reported = false;
    std::int64_t retire_at = never;  // coarse clock; max_lifetime
    std::int64_t idle_since = 0;
    std::int64_t lent_at = 0;
    std::uint64_t generation = 0;  // evict_all() closes the connections of earlier ones
    std::source_location where;
    // The borrow's leak registration, written by the borrower once registered.
    std::atomic<std::uint64_t> tracked_id{0};
};

// A borrower waiting for a connection, on its own stack, queued first come, first served.
// Whoever takes it off the queue other than itself (a returner handing it a connection, the
// creator, close()) does so under the mutex and wakes it after unlocking. The waiter sleeps
// on a futex word of its own, not on a condition variable of the pool's mutex: woken, it
// finds what it was handed without taking the mutex again, and a waker never makes it wake
// to a mutex held. The wake's last touch of the waiter is the word's exchange; the futex
// call after it only names the address (a spurious wake-up of whatever waits there later is
// harmless, as every futex wait here checks its word again).
struct pool_waiter {
    pool_waiter* prev = nullptr;
    pool_waiter* next = nullptr;
    std::source_location where;
    steady::time_point started;    // when its borrower asked
    pool_entry* handed = nullptr;  // the connection handed to it
    bool dequeued = false;         // by someone else, who wakes it
    bool overtaken = false;        // woken once for a connection another borrower took
    // An asynchronous borrower's, allocated by pool_acquire_async: it has no thread asleep
    // here, and the record is freed by whoever takes it off the queue.
    pool_async_waiter* async = nullptr;
    // queued, then asleep (the waker must call the kernel), then released.
    enum : std::uint32_t { queued, asleep, released };
    std::atomic<std::uint32_t> state{queued};

    // Wakes it, after the mutex was unlocked; the waiter may be gone when this returns.
    void release() noexcept {
        if (async != nullptr) {
            pool_async_waiter& woken = *async;
            delete this;  // NOLINT: allocated by pool_acquire_async, unreachable from the queue
            woken.wake(woken);
            return;
        }
        if (state.exchange(released, std::memory_order_acq_rel) == asleep) {
            ::syscall(SYS_futex, &state, FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr, 0);
        }
    }

    // Sleeps until release() or the deadline; true when released.
    bool wait(const detail::deadline& deadline) noexcept {
        const auto at = deadline.time_point().time_since_epoch();
        timespec until{};
        until.tv_sec = static_cast<time_t>(std::chrono::floor<std::chrono::seconds>(at).count());
        until.tv_nsec = static_cast<long>((at - std::chrono::floor<std::chrono::seconds>(at)) /
                                          std::chrono::nanoseconds(1));
        for (;;) {
            std::uint32_t now = state.load(std::memory_order_acquire);
            if (now == released) return true;
            if (deadline.expired()) return false;
            if (now == queued &&
                !state.compare_exchange_strong(now, asleep, std::memory_order_acquire)) {
                continue;  // released meanwhile
            }
            // steady_clock is CLOCK_MONOTONIC, FUTEX_WAIT_BITSET's clock.
            ::syscall(SYS_futex, &state, FUTEX_WAIT_BITSET_PRIVATE, asleep,
                      deadline.timed() ? &until : nullptr, nullptr, FUTEX_BITSET_MATCH_ANY);
        }
    }

    // Waits until release() is done with this waiter (dequeued while it timed out: the
    // release is under way).
    void wait_released() const noexcept {
        while (state.load(std::memory_order_acquire) != released) std::this_thread::yield();
    }
};

class pool_core {
  public:
    pool_core(std::unique_ptr<pool_connector> connector, pool_options options,
              std::source_location where)
        : connector_(std::move(connector)),
          options_(std::move(options)),
          quoted_name_(quoted(options_.name)),
          description_("pool " + quoted_name_),
          slots_(options_.max_size),
          lifetime_ns_(options_.max_lifetime.count() > 0 ? count_ns(options_.max_lifetime) : never),
          idle_timeout_ns_(count_ns(options_.idle_timeout)),
          validate_ns_(count_ns(options_.validate_after_idle)),
          leak_ns_(count_ns(options_.leak_threshold)),
          jitter_(std::random_device{}()),
          registration_("connection pool", quoted_name_, where) {
        max_size_ = options_.max_size;
        min_idle_ = options_.min_idle;
        idle_.reserve(max_size_);
    }

    pool_core(const pool_core&) = delete;
    pool_core& operator=(const pool_core&) = delete;
    ~pool_core() = default;

    void start() {
        creator_ = std::thread([this] { run_creator(); });
        try {
            housekeeper_ = std::thread([this] { run_housekeeper(); });
        } catch (...) {
            stop_threads();
            throw;
        }
    }

    [[nodiscard]] const std::string& description() const noexcept { return description_; }
    [[nodiscard]] const std::string& quoted_name() const noexcept { return quoted_name_; }
    [[nodiscard]] std::chrono::milliseconds close_timeout() const noexcept {
        return options_.close_timeout;
    }

    pool_entry* acquire(std::chrono::nanoseconds timeout, const std::source_location& where) {
        const std::int64_t now = coarse_now_ns();
        std::unique_lock lock(mutex_);
        if (!closing_ && !suspended_ && !idle_.empty()) [[likely]] {
            pool_entry& e = lend(now, where);
            const bool fresh = now - e.idle_since < look_after_ns &&
                               now - e.idle_since < validate_ns_ && now < e.retire_at;
            if (fresh) [[likely]] {
                // No clock read for a borrow that neither waited nor checked, and no write to
                // wait_time_'s lines: a count on the line the lock is on.
                ++unwaited_;
                return &e;
            }
            lock.unlock();
            // The borrower's time starts here: what checking `e` takes is part of it.
            const auto started = steady::now();
            const auto deadline = deadline_after(timeout, started);
            if (ready(e, now, deadline)) return obtained(e, started);
            lock.lock();
            return acquire_waiting(lock, started, deadline, where);
        }
        const auto started = steady::now();
        return acquire_waiting(lock, started, deadline_after(timeout, started), where);
    }

    // `used`: false for a connection that failed its check before the borrower had it.
    void release(pool_entry& e, bool reusable, bool used = true) noexcept {
        const std::int64_t now = coarse_now_ns();
        {
            std::unique_lock lock(mutex_);
            e.lent = false;
            --in_use_;
            if (used) {
                // Within one coarse tick, a use counts 0: counted on the line the lock is on.
                if (now == e.lent_at) [[likely]] {
                    ++instant_uses_;
                } else {
                    use_time_.record(std::chrono::nanoseconds(now - e.lent_at));
                }
            }
            if (reusable && !closing_ && now < e.retire_at && e.generation == generation_ &&
                occupied_ - discarding_ <= max_size_) [[likely]] {
                e.idle_since = now;
                if (waiters_ == nullptr || suspended_) [[likely]] {
                    idle_.push_back(&e);  // never allocates: reserved for max_size
                    return;
                }
                // The longest waiting borrower is woken to take it, but a borrower already
                // running may take it first (no context switch: far more throughput when
                // threads outnumber connections). One that lost so once is handed the next
                // connection outright: a waiter is overtaken at most once in a row.
                pool_waiter* w = waiters_;
                if (w->overtaken) {
                    hand_over(e, now);
                } else {
                    idle_.push_back(&e);
                    dequeue(*w);
                }
                lock.unlock();
                w->release();
                return;
            }
            ++destroyed_;
            ++discarding_;
        }
        connector_->destroy(e.connection);
        finish_discard(e);
    }

    [[nodiscard]] pool_stats stats() const {
        std::lock_guard lock(mutex_);
        return pool_stats{idle_.size() + in_use_,
                          idle_.size(),
                          in_use_,
                          waiting_,
                          created_,
                          destroyed_,
                          timeouts_};
    }

    [[nodiscard]] pool_metrics metrics() const {
        std::lock_guard lock(mutex_);
        return metrics_locked();
    }

    [[nodiscard]] pool_status status() const {
        pool_status s;
        {
            std::lock_guard lock(mutex_);
            s.borrowers.reserve(in_use_);
            const auto now = steady::now();
            const std::int64_t coarse_now = coarse_now_ns();
            s.metrics = metrics_locked();
            s.suspended = suspended_;
            for (const pool_waiter* w = waiters_; w != nullptr; w = w->next) {
                s.longest_wait = std::max(s.longest_wait, now - w->started);
            }
            for (const pool_entry& e : slots_) {
                if (!e.lent) continue;
                s.borrowers.push_back(pool_borrower{
                    e.where,
                    std::chrono::nanoseconds(std::max<std::int64_t>(coarse_now - e.lent_at, 0))});
            }
        }
        std::sort(s.borrowers.begin(), s.borrowers.end(),
                  [](const pool_borrower& a, const pool_borrower& b) { return a.held > b.held; });
        return s;
    }

    [[nodiscard]] const std::string& name() const noexcept { return options_.name; }

    void suspend() {
        std::lock_guard lock(mutex_);
        if (closing_) throw closed_error("suspend() on closed " + description_);
        suspended_ = true;
    }

    void resume() {
        std::vector<pool_waiter*> woken;
        {
            std::lock_guard lock(mutex_);
            if (closing_) throw closed_error("resume() on closed " + description_);
            if (!suspended_) return;
            woken.reserve(waiting_);  // may throw: before anything changed
            suspended_ = false;
            // Idle connections go to the waiters, first come first; then the creator makes
            // what the rest need. The connections are checked by their borrowers, as usual.
            const std::int64_t now = coarse_now_ns();
            while (waiters_ != nullptr && !idle_.empty()) {
                pool_entry& e = *idle_.back();
                idle_.pop_back();
                woken.push_back(&hand_over(e, now));
            }
            if (creation_wanted()) creator_wake_.notify_one();
        }
        for (pool_waiter* w : woken) w->release();
    }

    std::size_t evict_idle() {
        std::vector<pool_entry*> idle;
        std::vector<pool_entry*> fresh;
        {
            std::lock_guard lock(mutex_);
            fresh.reserve(max_size_);  // may throw: then nothing was evicted
            idle.swap(idle_);
            idle_.swap(fresh);
            destroyed_ += idle.size();
            discarding_ += idle.size();
        }
        discard(idle);
        return idle.size();
    }

    std::size_t evict_all() {
        {
            std::lock_guard lock(mutex_);
            ++generation_;
        }
        return evict_idle();
    }

    void resize(std::size_t min_idle, std::size_t max_size) {
        check_sizes(description_, min_idle, max_size);
        std::vector<pool_entry*> excess;
        {
            std::lock_guard lock(mutex_);
            if (closing_) throw closed_error("resize() on closed " + description_);
            // What may throw comes first: room for max_size idle connections and their slots.
            excess.reserve(idle_.size());
            idle_.reserve(max_size);
            while (slots_.size() < max_size) slots_.emplace_back();
            max_size_ = max_size;
            min_idle_ = min_idle;
            // Beyond the new max_size: idle connections close now (the least recently used
            // first), lent ones when they come back.
            while (!idle_.empty() && occupied_ - discarding_ > max_size_) {
                excess.push_back(idle_.front());
                idle_.erase(idle_.begin());
                ++destroyed_;
                ++discarding_;
            }
            if (creation_wanted()) creator_wake_.notify_one();
        }
        discard(excess);
    }

    // Waits until the creator has made one connection, at most `timeout`.
    void await_first_connection(std::chrono::milliseconds timeout) {
        std::unique_lock lock(mutex_);
        initializing_ = true;
        if (creation_wanted()) creator_wake_.notify_one();
        if (initialized_.wait_for(lock, timeout, [this] { return !initializing_; })) return;
        initializing_ = false;
        std::string what = description_ +
                           ": no connection could be made within "
                           "initialization_timeout (" +
                           format_duration(timeout) + ')';
        const std::exception_ptr failure = last_failure_;
        if (failure) {
            what += "; the last attempt failed: " + what_of(failure);
        } else if (creating_) {
            what += "; the first attempt has not returned yet";
        }
        lock.unlock();
        throw_chained(timeout_error(what), failure);
    }

    void close(const detail::deadline& deadline) {
        const auto self = std::this_thread::get_id();
        if (self == creator_.get_id() || self == housekeeper_.get_id()) {
            throw protocol_error(description_ +
                                 ": close() from the pool's own thread (the factory or on_leak)");
        }
        std::lock_guard close_guard(close_mutex_);
        std::vector<pool_entry*> idle;
        std::vector<pool_waiter*> woken;
        {
            std::lock_guard lock(mutex_);
            if (!closing_) {
                closing_ = true;
                suspended_ = false;
                idle.swap(idle_);
                destroyed_ += idle.size();
                discarding_ += idle.size();
                registration_.release();
            }
            while (waiters_ != nullptr) woken.push_back(&dequeue(*waiters_));
        }
        for (pool_waiter* w : woken) w->release();  // they find the pool closed
        creator_wake_.notify_all();
        housekeeper_wake_.notify_all();
        for (pool_entry* e : idle) {
            connector_->destroy(e->connection);
            finish_discard(*e);
        }
        stop_threads();
        std::unique_lock lock(mutex_);
        drained_.wait_until(lock, deadline.time_point(), [this] { return drained(); });
        if (in_use_ == 0) return;
        std::string message = description_ + ": closed with " + std::to_string(in_use_) +
                              (in_use_ == 1 ? " connection" : " connections") +
                              " still borrowed; borrowed at " + borrowers(coarse_now_ns()) +
                              "; each is closed when it comes back";
        throw leak_error(message);
    }

    // The pool object is gone: free the core now, or leave that to the last borrower.
    static void dispose(pool_core* core) noexcept {
        release_in_destructor(
            [&] { core->close(detail::deadline::after(core->options_.close_timeout)); },
            [&] { return core->description_; }, "pool", "closing in the destructor");
        bool free_now = false;
        {
            std::lock_guard lock(core->mutex_);
            free_now = core->drained();
            if (!free_now) core->orphaned_ = true;
        }
        if (free_now) delete core;
    }

    // A borrower's deadline: `timeout` from `started` (nanoseconds::max(): acquire_timeout).
    detail::deadline deadline_after(std::chrono::nanoseconds timeout,
                                    steady::time_point started) const noexcept {
        if (timeout == std::chrono::nanoseconds::max()) timeout = options_.acquire_timeout;
        return detail::deadline::after(std::min(timeout, longest_wait), started);
    }

    // One step of an asynchronous borrow (pool_acquire_async in pool.hpp): a synchronous
    // borrow up to its wait, which the borrower's coroutine does instead of sleeping here.
    pool_entry* acquire_async(pool_async_waiter& a, bool overtaken,
                              const detail::deadline& deadline, steady::time_point started,
                              const std::source_location& where) {
        auto record = std::make_unique<pool_waiter>();  // before anything changes: may throw
        record->async = &a;
        std::unique_lock lock(mutex_);
        a.handed = nullptr;
        if (pool_entry* e = lend_or_queue(lock, *record, overtaken, deadline, started, where,
                                          "async_connection()")) {
            return e;
        }
        a.queued = record.release();  // under the mutex still: nobody has dequeued it yet
        return nullptr;
    }

    bool withdraw(pool_async_waiter& a) noexcept {
        std::lock_guard lock(mutex_);
        if (a.queued == nullptr) return false;
        pool_waiter* record = static_cast<pool_waiter*>(a.queued);
        dequeue(*record);
        delete record;  // NOLINT: allocated by acquire_async
        return true;
    }

    pool_entry* take_handed(pool_async_waiter& a, const detail::deadline& deadline,
                            steady::time_point started) noexcept {
        pool_entry* e = static_cast<pool_entry*>(std::exchange(a.handed, nullptr));
        if (e == nullptr || !ready(*e, coarse_now_ns(), deadline)) return nullptr;
        return obtained(*e, started);
    }

    // How long a validation ping may wait: validation_timeout, cut to what the borrower has
    // left, but not below 250 ms (HikariCP's floor for its validationTimeout) unless
    // validation_timeout is smaller: a borrower nearly out of time, or asking not to wait,
    // must not have a healthy connection closed for want of time to hear it answer.
    std::chrono::milliseconds ping_timeout(const detail::deadline& deadline) const noexcept {
        constexpr std::chrono::milliseconds floor{250};
        const auto limit = options_.validation_timeout.count() > 0
                               ? options_.validation_timeout
                               : std::chrono::milliseconds::max();
        return std::min(limit, std::max(deadline.remaining_ms(), floor));
    }

    // A connection lent failed its check: destroyed. Broken while idle, it is probably not
    // alone (a server restart ends every session): the housekeeper looks at the other idle
    // connections now.
    void failed_check(pool_entry& e) noexcept {
        {
            std::lock_guard lock(mutex_);
            sweep_ = true;
        }
        housekeeper_wake_.notify_one();
        release(e, false, false);
    }

  private:
    [[nodiscard]] pool_metrics metrics_locked() const noexcept {
        pool_metrics m;
        m.idle = idle_.size();
        m.used = in_use_;
        m.pending = waiting_;
        m.max = max_size_;
        m.timeouts = timeouts_;
        m.refused = refused_;
        m.created = created_;
        m.destroyed = destroyed_;
        m.wait_time = wait_time_;
        m.wait_time.buckets[0] += unwaited_;
        m.wait_time.count += unwaited_;
        m.use_time = use_time_;
        m.use_time.buckets[0] += instant_uses_;
        m.use_time.count += instant_uses_;
        m.create_time = create_time_;
        return m;
    }

    // Closes connections taken out of idle_ and counted in destroyed_ and discarding_.
    void discard(const std::vector<pool_entry*>& entries) noexcept {
        for (pool_entry* e : entries) {
            connector_->destroy(e->connection);
            finish_discard(*e);
        }
    }

    [[nodiscard]] bool drained() const noexcept { return in_use_ == 0 && discarding_ == 0; }

    // A connection is wanted from the creator: a borrower waits with none idle, or fewer than
    // min_idle are idle; and there is room. Room first: a borrow from a full pool below
    // min_idle idle asks this every time, and the answer is then on lines no borrower writes.
    [[nodiscard]] bool creation_wanted() const noexcept {
        return occupied_ < max_size_ && !closing_ && !suspended_ && !creating_ &&
               (waiting_ > idle_.size() || idle_.size() < min_idle_ ||
                (initializing_ && idle_.empty()));
    }

    // Lends the most recently returned idle connection (under the mutex).
    pool_entry& lend(std::int64_t now, const std::source_location& where) noexcept {
        pool_entry& e = *idle_.back();
        idle_.pop_back();
        lend(e, now, where);
        if (idle_.size() < min_idle_ && creation_wanted()) creator_wake_.notify_one();
        return e;
    }

    void lend(pool_entry& e, std::int64_t now, const std::source_location& where) noexcept {
        e.lent = true;
        e.ping_due = false;
        e.lent_at = now;
        e.where = where;
        e.leak_reported = false;
        e.tracked_id.store(0, std::memory_order_relaxed);
        ++in_use_;
    }

    // Checks a connection just lent (without the mutex); destroys it when it fails. A ping
    // the borrower awaits is left to it (ping_due), after the look without a round trip.
    bool ready(pool_entry& e, std::int64_t now, const detail::deadline& deadline) noexcept {
        const std::int64_t idle_for = now - e.idle_since;
        if (now >= e.retire_at) {
            release(e, false, false);
            return false;
        }
        const bool to_ping = idle_for >= validate_ns_;
        bool ok = true;
        if (to_ping && !connector_->pinged_by_borrower()) {
            ok = connector_->ping(e.connection, ping_timeout(deadline));
        } else if (to_ping || idle_for >= look_after_ns) {
            ok = connector_->usable(e.connection);
            e.ping_due = ok && to_ping;
        }
        if (ok) return true;
        failed_check(e);
        return false;
    }

    // A borrow before its wait (under the mutex): lends an idle connection, checked, and
    // returns it; throws closed_error, timeout_error (`deadline` passed), too_many_waiters; or
    // queues `w` (first when `overtaken`) and returns nullptr with the mutex still held.
    pool_entry* lend_or_queue(std::unique_lock<std::mutex>& lock, pool_waiter& w, bool overtaken,
                              const detail::deadline& deadline, steady::time_point started,
                              const std::source_location& where, const char* call) {
        for (;;) {
            if (closing_) throw closed_error(std::string(call) + " on closed " + description_);
            if (!idle_.empty() && !suspended_) {
                const std::int64_t now = coarse_now_ns();
                pool_entry& e = lend(now, where);
                lock.unlock();
                if (ready(e, now, deadline)) return obtained(e, started);
                lock.lock();
                continue;
            }
            const auto now = steady::now();
            if (deadline.expired(now)) {
                ++timeouts_;
                throw_timeout(lock, started, now);
            }
            if (!overtaken && options_.max_waiting > 0 && waiting_ >= options_.max_waiting) {
                ++refused_;
                const std::string what = "a connection from " + description_ + ": " +
                                         std::to_string(waiting_) +
                                         " borrowers are waiting already (max_waiting " +
                                         std::to_string(options_.max_waiting) + ')';
                lock.unlock();
                throw too_many_waiters(what);
            }
            w.where = where;
            w.started = started;
            w.overtaken = overtaken;
            enqueue(w, overtaken);
            if (creation_wanted()) creator_wake_.notify_one();
            return nullptr;
        }
    }

    pool_entry* acquire_waiting(std::unique_lock<std::mutex>& lock, steady::time_point started,
                                const detail::deadline& deadline,
                                const std::source_location& where) {
        bool overtaken = false;
        for (;;) {
            pool_waiter w;
            if (pool_entry* e =
                    lend_or_queue(lock, w, overtaken, deadline, started, where, "connection()")) {
                return e;
            }
            lock.unlock();
            if (!w.wait(deadline)) {
                lock.lock();
                if (!w.dequeued) {
                    dequeue(w);  // timed out; the next round throws
                    continue;
                }
                lock.unlock();
                w.wait_released();
            }
            if (w.handed != nullptr && ready(*w.handed, coarse_now_ns(), deadline)) {
                return obtained(*w.handed, started);
            }
            lock.lock();
            // Woken for an idle connection: gone already if another borrower took it. Then
            // back to the front of the queue, to be handed the next one.
            overtaken = w.handed == nullptr && idle_.empty();
        }
    }

    // Records the wait of a borrower that began at `started` and has `e` now (not under the
    // mutex; the slow paths only).
    pool_entry* obtained(pool_entry& e, steady::time_point started) noexcept {
        const auto waited = steady::now() - started;
        std::lock_guard lock(mutex_);
        wait_time_.record(waited);
        return &e;
    }

    // Queues `w` last, or first (under the mutex).
    void enqueue(pool_waiter& w, bool first) noexcept {
        if (first) {
            w.prev = nullptr;
            w.next = waiters_;
            (waiters_ != nullptr ? waiters_->prev : waiters_tail_) = &w;
            waiters_ = &w;
        } else {
            w.prev = waiters_tail_;
            w.next = nullptr;
            (waiters_tail_ != nullptr ? waiters_tail_->next : waiters_) = &w;
            waiters_tail_ = &w;
        }
        ++waiting_;
    }

    // Takes `w` off the queue (under the mutex).
    pool_waiter& dequeue(pool_waiter& w) noexcept {
        (w.prev != nullptr ? w.prev->next : waiters_) = w.next;
        (w.next != nullptr ? w.next->prev : waiters_tail_) = w.prev;
        w.prev = w.next = nullptr;
        w.dequeued = true;
        if (w.async != nullptr) w.async->queued = nullptr;
        --waiting_;
        return w;
    }

    // Lends `e` to the first waiter (under the mutex); release() it after unlocking.
    pool_waiter& hand_over(pool_entry& e, std::int64_t now) noexcept {
        pool_waiter& w = dequeue(*waiters_);
        lend(e, now, w.where);
        w.handed = &e;
        if (w.async != nullptr) w.async->handed = &e;
        return w;
    }

    [[noreturn]] void throw_timeout(std::unique_lock<std::mutex>& lock, steady::time_point started,
                                    steady::time_point now) {
        std::string what = "a connection from " + description_ + " (max_size " +
                           std::to_string(max_size_) + ": " + std::to_string(in_use_) +
                           " in use, " + std::to_string(idle_.size()) + " idle, " +
                           std::to_string(waiting_) + " waiting";
        if (creating_) what += ", 1 being made";
        if (suspended_) what += ", suspended";
        what += ')';
        if (in_use_ > 0) what += "; borrowed at " + borrowers(coarse_now_ns());
        std::exception_ptr failure;
        if (last_failure_ && last_failure_at_ >= started) {
            failure = last_failure_;
            what += "; the last connection attempt failed " +
                    format_duration(now - last_failure_at_) + " ago: " + what_of(failure);
        }
        lock.unlock();
        throw_chained(timeout_error(what, now - started), failure);
    }

    // "app.cpp:42 in void f() (held 1.2 s), ..." for the lent connections, oldest first.
    std::string borrowers(std::int64_t now) const {
        std::vector<const pool_entry*> lent;
        for (const pool_entry& e : slots_) {
            if (e.lent) lent.push_back(&e);
        }
        std::sort(lent.begin(), lent.end(),
                  [](const pool_entry* a, const pool_entry* b) { return a->lent_at < b->lent_at; });
        std::string text;
        for (std::size_t i = 0; i < lent.size() && i < listed_borrowers; ++i) {
            if (i > 0) text += ", ";
            const pool_entry& e = *lent[i];
            append_site(text, e.where);
            text += " (held ";
            text += format_duration(std::chrono::nanoseconds(now - e.lent_at));
            text += ')';
        }
        if (lent.size() > listed_borrowers) {
            text += " and " + std::to_string(lent.size() - listed_borrowers) + " more";
        }
        return text;
    }

    // A connection has been closed by whoever decided to discard it: free its slot.
    void finish_discard(pool_entry& e) noexcept {
        bool free_core = false;
        {
            std::lock_guard lock(mutex_);
            e.connection = nullptr;
            e.occupied = false;
            --occupied_;
            --discarding_;
            if (closing_) {
                if (drained()) {
                    drained_.notify_all();
                    free_core = orphaned_;
                }
            } else if (creation_wanted()) {
                creator_wake_.notify_one();
            }
        }
        if (free_core) delete this;
    }

    pool_entry& free_slot() noexcept {
        // There is one: occupied_ < max_size_ <= slots_.size().
        for (std::size_t i = 0;; ++i) {
            if (!slots_[i].occupied) return slots_[i];
        }
    }

    // The creator: the only caller of the factory.
    void run_creator() noexcept {
        std::unique_lock lock(mutex_);
        std::chrono::milliseconds backoff{0};
        for (;;) {
            creator_wake_.wait(lock, [this] { return closing_ || creation_wanted(); });
            if (closing_) return;
            pool_entry& slot = free_slot();
            slot.occupied = true;
            ++occupied_;
            creating_ = true;
            lock.unlock();
            void* made = nullptr;
            std::exception_ptr failure;
            const auto began = steady::now();
            try {
                made = connector_->create();
                if (!connector_->usable(made)) {
                    connector_->destroy(std::exchange(made, nullptr));
                    throw protocol_error(description_ +
                                         ": the factory returned a connection that is not open");
                }
            } catch (...) {
                failure = std::current_exception();
            }
            const auto took = steady::now() - began;
            const std::int64_t now = coarse_now_ns();
            std::int64_t retire_at = never;
            if (lifetime_ns_ != never) {
                // Up to 2.5% early, so that connections made together do not all go together.
                std::uniform_int_distribution<std::int64_t> early(0, lifetime_ns_ / 40);
                retire_at = now + lifetime_ns_ - early(jitter_);
            }
            lock.lock();
            creating_ = false;
            if (failure) {
                slot.occupied = false;
                --occupied_;
                last_failure_ = failure;
                last_failure_at_ = steady::now();
                // Retry, but do not hammer a server that refuses.
                backoff = std::clamp(backoff * 2, std::chrono::milliseconds(10),
                                     std::chrono::milliseconds(500));
                creator_wake_.wait_for(lock, backoff, [this] { return closing_; });
                continue;
            }
            backoff = std::chrono::milliseconds(0);
            if (closing_) {
                lock.unlock();
                connector_->destroy(made);
                lock.lock();
                slot.occupied = false;
                --occupied_;
                if (drained()) drained_.notify_all();
                return;
            }
            slot.connection = made;
            slot.retire_at = retire_at;
            slot.idle_since = now;
            // A connection begun before evict_all() is kept: discarding it would starve the
            // borrowers when evict_all() comes more often than a connect takes.
            slot.generation = generation_;
            ++created_;
            create_time_.record(took);
            if (initializing_) {
                initializing_ = false;
                initialized_.notify_all();
            }
            if (waiters_ == nullptr || suspended_) {
                idle_.push_back(&slot);
                continue;
            }
            pool_waiter& w = hand_over(slot, now);
            lock.unlock();
            w.release();
            lock.lock();
        }
    }

    // The housekeeper: leak reports, idle and lifetime limits, min_idle.
    void run_housekeeper() noexcept {
        std::unique_lock lock(mutex_);
        while (!closing_) {
            // Entries hold coarse times, up to a tick behind: compare with the precise clock,
            // so that a wait never ends before what it waited for is due.
            const std::int64_t now = precise_now_ns();
            // A borrow that begins after this look is due leak_threshold after it at the
            // earliest: looking again by then misses none.
            std::int64_t next = now + (leak_ns_ > 0 ? std::min(leak_ns_, housekeeping_period_ns)
                                                    : housekeeping_period_ns);
            std::vector<std::pair<std::uint64_t, resource_info>> leaks;
            std::vector<pool_entry*> retired;
            try {
                if (leak_ns_ > 0) {
                    for (pool_entry& e : slots_) {
                        if (!e.lent || e.leak_reported) continue;
                        const std::int64_t due = e.lent_at + leak_ns_;
                        if (due > now) {
                            next = std::min(next, due);
                            continue;
                        }
                        e.leak_reported = true;
                        resource_info info;
                        info.id = e.tracked_id.load(std::memory_order_relaxed);
                        info.kind = "pooled connection";
                        info.description = quoted_name_;
                        info.where = e.where;
                        info.acquired_at = to_steady(e.lent_at);
                        leaks.emplace_back(info.id, std::move(info));
                    }
                }
                // Oldest first; beyond min_idle only for idle_timeout. Each is also looked at
                // (pool_traits::usable, no round trip: a poll() for PostgreSQL), so that
                // sessions the server ended are replaced before anyone asks for them.
                sweep_ = false;
                std::size_t open = idle_.size() + in_use_;
                for (auto it = idle_.begin(); it != idle_.end();) {
                    pool_entry& e = **it;
                    const bool expired = now >= e.retire_at;
                    const bool idle_out = idle_timeout_ns_ > 0 &&
                                          now - e.idle_since >= idle_timeout_ns_ &&
                                          open > min_idle_;
                    if (expired || idle_out || !connector_->usable(e.connection)) {
                        retired.push_back(&e);
                        it = idle_.erase(it);
                        --open;
                        continue;
                    }
                    next = std::min(next, e.retire_at);
                    if (idle_timeout_ns_ > 0 && open > min_idle_) {
                        next = std::min(next, e.idle_since + idle_timeout_ns_);
                    }
                    ++it;
                }
            } catch (...) {
                // Out of memory for the lists: what was collected is handled; try again later.
            }
            destroyed_ += retired.size();
            discarding_ += retired.size();
            if (creation_wanted()) creator_wake_.notify_one();
            if (!leaks.empty() || !retired.empty()) {
                lock.unlock();
                report_leaks(leaks);
                for (pool_entry* e : retired) {
                    connector_->destroy(e->connection);
                    finish_discard(*e);
                }
                lock.lock();
                continue;  // look again: time has passed
            }
            housekeeper_wake_.wait_until(lock, to_steady(next),
                                         [this] { return closing_ || sweep_; });
        }
    }

    void report_leaks(std::vector<std::pair<std::uint64_t, resource_info>>& leaks) noexcept {
        if (leaks.empty()) return;
        try {
            // The tracker's own record, when tracking is on: it knows the borrowing thread.
            for (auto& resource : live_resources()) {
                for (auto& [id, info] : leaks) {
                    if (id != 0 && resource.id == id) info = resource;
                }
            }
        } catch (...) {
            // Out of memory: report what the pool knows.
        }
        for (const auto& [id, info] : leaks) {
            try {
                if (options_.on_leak) {
                    options_.on_leak(info);
                } else {
                    const std::string line = "ctxmgr: " + description_ +
                                             ": a connection has been borrowed longer than "
                                             "leak_threshold (" +
                                             format_duration(options_.leak_threshold) +
                                             "): " + ctxmgr::describe(info) + '\n';
                    std::fputs(line.c_str(), stderr);
                }
            } catch (...) {
                report_current_unraisable(description_ + ": on_leak");
            }
        }
    }

    void stop_threads() noexcept {
        {
            std::lock_guard lock(mutex_);
            closing_ = true;
        }
        creator_wake_.notify_all();
        housekeeper_wake_.notify_all();
        for (std::thread* t : {&creator_, &housekeeper_}) {
            if (!t->joinable()) continue;
            try {
                t->join();
            } catch (...) {
                report_current_unraisable(description_ + ": stopping its threads");
            }
        }
    }

    const std::unique_ptr<pool_connector> connector_;
    const pool_options options_;
    const std::string quoted_name_;
    const std::string description_;
    // max_size_ of them at least; resize() adds more (a deque keeps their addresses).
    std::deque<pool_entry> slots_;
    const std::int64_t lifetime_ns_;
    const std::int64_t idle_timeout_ns_;
    const std::int64_t validate_ns_;
    const std::int64_t leak_ns_;
    std::minstd_rand jitter_;  // the creator's

    // What every borrow and return writes, on two lines of its own: when threads on two
    // cores take turns, each line written is a transfer from the other core, made while the
    // lock is held (and the longer the lock is held, the likelier a borrower finds it taken
    // and sleeps). The histograms' zeros are counted here and added when read.
    alignas(cache_line) mutable std::mutex mutex_;
    std::vector<pool_entry*> idle_;  // most recently returned last
    alignas(cache_line) std::size_t in_use_ = 0;
    pool_waiter* waiters_ = nullptr;  // first come first
    std::uint64_t unwaited_ = 0;      // borrows served at once: wait_time_'s zeros
    std::uint64_t instant_uses_ = 0;  // returns within the tick of their borrow: use_time_'s
    bool closing_ = false;
    bool suspended_ = false;  // suspend(): nothing lent, nothing made

    // Read by every borrow and return, written seldom.
    alignas(cache_line) std::size_t max_size_ = 0;  // pool_options::max_size, until resize()
    std::size_t min_idle_ = 0;
    std::size_t occupied_ = 0;      // slots holding a connection, or one being made or closed
    std::size_t discarding_ = 0;    // connections being closed, no longer counted in size
    std::uint64_t generation_ = 0;  // evict_all() calls

    alignas(cache_line) std::condition_variable creator_wake_;
    std::condition_variable housekeeper_wake_;
    std::condition_variable drained_;
    std::condition_variable initialized_;  // the first connection, for initialization_timeout
    pool_waiter* waiters_tail_ = nullptr;
    std::size_t waiting_ = 0;
    bool creating_ = false;
    bool sweep_ = false;         // a borrower found a broken connection: look at the idle ones now
    bool initializing_ = false;  // initialization_timeout: one connection wanted at once
    bool orphaned_ = false;      // the pool is gone; the last borrower to return frees the core
    std::uint64_t created_ = 0;
    std::uint64_t destroyed_ = 0;
    std::uint64_t timeouts_ = 0;
    std::uint64_t refused_ = 0;  // too_many_waiters
    pool_histogram wait_time_;
    pool_histogram use_time_;
    pool_histogram create_time_;
    std::exception_ptr last_failure_;
    steady::time_point last_failure_at_;
    tracked registration_;

    std::mutex close_mutex_;  // one close() at a time
    std::thread creator_;
    std::thread housekeeper_;
};

namespace {

// Nanoseconds as exact decimal seconds ("0.000131072", "2", "-0.5"), so that a value parsed
// back is the one recorded.
void append_seconds(std::string& out, std::int64_t ns) {
    if (ns < 0) {
        out += '-';
        ns = -ns;  // a sum of durations is never near the minimum
    }
    out += std::to_string(ns / 1'000'000'000);
    std::int64_t fraction = ns % 1'000'000'000;
    if (fraction == 0) return;
    int digits = 9;
    while (fraction % 10 == 0) {
        fraction /= 10;
        --digits;
    }
    const std::string text = std::to_string(fraction);
    out += '.';
    out.append(static_cast<std::size_t>(digits) - text.size(), '0');
    out += text;
}

// `pool_name="..."` with the label value escaped as the text format asks.
std::string pool_label(const std::string& name) {
    std::string label = "pool_name=\"";
    for (const char c : name) {
        if (c == '\\') {
            label += "\\\\";
        } else if (c == '"') {
            label += "\\\"";
        } else if (c == '\n') {
            label += "\\n";
        } else {
            label += c;
        }
    }
    label += '"';
    return label;
}

void append_family(std::string& out, const char* name, const char* type, const char* help) {
    out += "# HELP ";
    out += name;
    out += ' ';
    out += help;
    out += "\n# TYPE ";
    out += name;
    out += ' ';
    out += type;
    out += '\n';
}

void append_sample(std::string& out, const char* name, const std::string& labels,
                   const std::string& value) {
    out += name;
    out += '{';
    out += labels;
    out += "} ";
    out += value;
    out += '\n';
}

}  // namespace

void write_prometheus(std::ostream& out, const named_pool_metrics* pools, std::size_t count) {
    std::vector<std::string> labels;
    labels.reserve(count);
    for (std::size_t i = 0; i < count; ++i) labels.push_back(pool_label(*pools[i].name));
    std::string text;
    const auto gauge = [&](const char* name, const char* type, const char* help, auto value_of) {
        append_family(text, name, type, help);
        for (std::size_t i = 0; i < count; ++i) {
            append_sample(text, name, labels[i], std::to_string(value_of(pools[i].metrics)));
        }
    };
    append_family(text, "db_client_connection_count", "gauge",
                  "The number of connections that are currently in the state described by the "
                  "state label.");
    for (std::size_t i = 0; i < count; ++i) {
        append_sample(text, "db_client_connection_count", labels[i] + ",state=\"idle\"",
                      std::to_string(pools[i].metrics.idle));
        append_sample(text, "db_client_connection_count", labels[i] + ",state=\"used\"",
                      std::to_string(pools[i].metrics.used));
    }
    gauge("db_client_connection_max", "gauge", "The maximum number of open connections allowed.",
          [](const pool_metrics& m) { return m.max; });
    gauge("db_client_connection_pending_requests", "gauge",
          "The number of current pending requests for an open connection.",
          [](const pool_metrics& m) { return m.pending; });
    gauge("db_client_connection_timeouts_total", "counter",
          "The number of connection timeouts that have occurred trying to obtain a connection "
          "from the pool.",
          [](const pool_metrics& m) { return m.timeouts; });
    const auto histogram = [&](const char* family, const char* help,
                               pool_histogram pool_metrics::*member) {
        const std::string base = family;
        const std::string bucket = base + "_bucket";
        const std::string sum = base + "_sum";
        const std::string total = base + "_count";
        append_family(text, family, "histogram", help);
        for (std::size_t i = 0; i < count; ++i) {
            const pool_histogram& h = pools[i].metrics.*member;
            std::uint64_t cumulative = 0;
            for (std::size_t b = 0; b < pool_histogram::bucket_count; ++b) {
                cumulative += h.buckets[b];
                std::string le = labels[i] + ",le=\"";
                if (b + 1 < pool_histogram::bucket_count) {
                    append_seconds(le, pool_histogram::upper_bound(b).count());
                } else {
                    le += "+Inf";
                }
                le += '"';
                append_sample(text, bucket.c_str(), le, std::to_string(cumulative));
            }
            std::string seconds;
            append_seconds(seconds, h.sum.count());
            append_sample(text, sum.c_str(), labels[i], seconds);
            append_sample(text, total.c_str(), labels[i], std::to_string(h.count));
        }
    };
    histogram("db_client_connection_wait_time_seconds",
              "The time it took to obtain an open connection from the pool.",
              &pool_metrics::wait_time);
    histogram("db_client_connection_use_time_seconds",
              "The time between borrowing a connection and returning it to the pool.",
              &pool_metrics::use_time);
    histogram("db_client_connection_create_time_seconds",
              "The time it took to create a new connection.", &pool_metrics::create_time);
    out << text;
}

pool_core* pool_open(std::unique_ptr<pool_connector> connector, pool_options options,
                     std::source_location where) {
    check_options(options);
    const auto initialization_timeout = options.initialization_timeout;
    auto core = std::make_unique<pool_core>(std::move(connector), std::move(options), where);
    core->start();
    if (initialization_timeout.count() > 0) {
        try {
            core->await_first_connection(initialization_timeout);
        } catch (...) {
            pool_core::dispose(core.release());
            throw;
        }
    }
    return core.release();
}

void pool_dispose(pool_core* core) noexcept {
    pool_core::dispose(core);
}

pool_entry_base* pool_acquire(pool_core& core, std::chrono::nanoseconds timeout,
                              const std::source_location& where) {
    return core.acquire(timeout, where);
}

deadline pool_deadline(const pool_core& core, std::chrono::nanoseconds timeout,
                       std::chrono::steady_clock::time_point started) noexcept {
    return core.deadline_after(timeout, started);
}

pool_entry_base* pool_acquire_async(pool_core& core, pool_async_waiter& waiter, bool overtaken,
                                    const deadline& limit,
                                    std::chrono::steady_clock::time_point started,
                                    const std::source_location& where) {
    return core.acquire_async(waiter, overtaken, limit, started, where);
}

bool pool_withdraw(pool_core& core, pool_async_waiter& waiter) noexcept {
    return core.withdraw(waiter);
}

pool_entry_base* pool_take_handed(pool_core& core, pool_async_waiter& waiter, const deadline& limit,
                                  std::chrono::steady_clock::time_point started) {
    return core.take_handed(waiter, limit, started);
}

void pool_return_unused(pool_core& core, pool_entry_base& entry, bool reusable) noexcept {
    core.release(static_cast<pool_entry&>(entry), reusable, false);
}

void pool_failed_ping(pool_core& core, pool_entry_base& entry) noexcept {
    core.failed_check(static_cast<pool_entry&>(entry));
}

std::chrono::milliseconds pool_ping_timeout(const pool_core& core, const deadline& limit) noexcept {
    return core.ping_timeout(limit);
}

void pool_registered(pool_entry_base& entry, std::uint64_t id) noexcept {
    static_cast<pool_entry&>(entry).tracked_id.store(id, std::memory_order_relaxed);
}

void pool_release(pool_core& core, pool_entry_base& entry, bool reusable) noexcept {
    core.release(static_cast<pool_entry&>(entry), reusable);
}

pool_stats pool_statistics(const pool_core& core) {
    return core.stats();
}

void pool_close(pool_core& core, const deadline& limit) {
    core.close(limit);
}

pool_metrics pool_metrics_of(const pool_core& core) {
    return core.metrics();
}

pool_status pool_status_of(const pool_core& core) {
    return core.status();
}

void pool_suspend(pool_core& core) {
    core.suspend();
}

void pool_resume(pool_core& core) {
    core.resume();
}

std::size_t pool_evict_idle(pool_core& core) {
    return core.evict_idle();
}

std::size_t pool_evict_all(pool_core& core) {
    return core.evict_all();
}

void pool_resize(pool_core& core, std::size_t min_idle, std::size_t max_size) {
    core.resize(min_idle, max_size);
}

const std::string& pool_name(const pool_core& core) noexcept {
    return core.name();
}

const std::string& pool_description(const pool_core& core) noexcept {
    return core.description();
}

const std::string& pool_quoted_name(const pool_core& core) noexcept {
    return core.quoted_name();
}

std::chrono::milliseconds pool_close_timeout(const pool_core& core) noexcept {
    return core.close_timeout();
}

}  // namespace ctxmgr::detail
