// Lending and returning: the pool's hot path, a borrower's wait, the steps of an asynchronous
// borrow, and the bridge functions pool.hpp's typed part calls on every borrow (defined here,
// beside what they call, so that each is one call).
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "ctxmgr/release.hpp"

#include "ctxmgr/detail/source_site.hpp"
#include "pool/pool_core.hpp"
#include "support/clocks.hpp"

namespace ctxmgr::detail {

namespace {

// An idle connection older than this is looked at (pool_traits::usable) before it is lent:
// one coarse-clock tick at least, so that a borrow right after a return pays nothing.
constexpr std::int64_t look_after_ns = 1'000'000;
// Waits longer than this are unbounded for all purposes (and cannot overflow a time point).
constexpr std::chrono::nanoseconds longest_wait = std::chrono::hours(24 * 365 * 10);
// Borrowers listed in a message, at most.
constexpr std::size_t listed_borrowers = 10;

}  // namespace

std::string what_of(const std::exception_ptr& e) {
    try {
        std::rethrow_exception(e);
    } catch (const std::exception& ex) {
        return ex.what();
    } catch (...) {
        return "an unknown exception";
    }
}

// --- parking (see pool_core.hpp) ---

namespace {

// A spot's mark while the return of `e` decides whether it may park there: e's address with
// its low bit set (entries are aligned to a cache line), so that a mark taken away and put
// back by another return is not taken for one's own.
pool_entry* parking_mark(pool_entry& e) noexcept {
    return reinterpret_cast<pool_entry*>(reinterpret_cast<std::uintptr_t>(&e) | 1U);  // NOLINT
}

bool is_mark(const pool_entry* p) noexcept {
    return (reinterpret_cast<std::uintptr_t>(p) & 1U) != 0;  // NOLINT
}

}  // namespace

[[gnu::always_inline]] inline parking_spot& pool_core::spot_here() const noexcept {
    return spots_[current_cpu_or_thread() % spot_count_];
}

// Parks `e`, returned at `now` with no use to record, in this CPU's spot: false when it may
// not (parking stopped, another generation, due for retirement, the spot taken), and then the
// return goes through the mutex. In three steps: the spot marked, parking_ read again, the
// mark replaced by the entry. Whoever stops parking stores that in parking_ before it reads
// the spot, so either this return sees it at the second step, or it sees the mark (and takes
// it away: the third step then fails) or the entry (and takes it back). Nobody waits.
[[gnu::always_inline]] inline bool pool_core::park(pool_entry& e, std::int64_t now) noexcept {
    const std::uint64_t open = parking_.load(std::memory_order_relaxed);
    if (open != e.generation << 1 || now >= e.retire_at) return false;
    std::atomic<pool_entry*>& spot = spot_here().entry;
    pool_entry* expected = nullptr;
    pool_entry* const mark = parking_mark(e);
    if (!spot.compare_exchange_strong(expected, mark, std::memory_order_seq_cst,
                                      std::memory_order_relaxed)) {
        return false;
    }
    if (parking_.load(std::memory_order_seq_cst) != open) [[unlikely]] {
        expected = mark;
        spot.compare_exchange_strong(expected, nullptr, std::memory_order_relaxed);
        return false;
    }
    const std::uint64_t returns = e.parked_returns.load(std::memory_order_relaxed);
    e.lent.store(false, std::memory_order_relaxed);
    e.idle_since = now;
    e.parked_returns.store(returns + 1, std::memory_order_relaxed);
    expected = mark;
    if (spot.compare_exchange_strong(expected, &e, std::memory_order_acq_rel,
                                     std::memory_order_relaxed)) [[likely]] {
        return true;
    }
    e.parked_returns.store(returns, std::memory_order_relaxed);  // still this return's
    return false;
}

// The connection parked in this CPU's spot, taken out when it needs no check (still counted
// in in_use_, as it was while parked). One due for a check goes to the idle stack, where the
// borrow's slow path checks it; or is closed, when close() or evict_all() came while it was
// taken out (they take back only what is still parked).
[[gnu::always_inline]] inline pool_entry* pool_core::unpark(std::int64_t now) noexcept {
    std::atomic<pool_entry*>& spot = spot_here().entry;
    pool_entry* e = spot.load(std::memory_order_relaxed);
    if (e == nullptr || is_mark(e)) return nullptr;
    if (!spot.compare_exchange_strong(e, nullptr, std::memory_order_acquire,
                                      std::memory_order_relaxed)) {
        return nullptr;
    }
    if (fresh(*e, now)) [[likely]] {
        return e;
    }
    // Its idle_since kept, for the check.
    std::unique_lock lock(mutex_);
    --in_use_;
    keep_or_discard(lock, *e, true, now);
    return nullptr;
}

// Takes every parked connection back to the idle stack, and the marks of returns still
// deciding away (under the mutex; see park()).
void pool_core::unpark_all() noexcept {
    for (std::size_t i = 0; i < spot_count_; ++i) {
        std::atomic<pool_entry*>& spot = spots_[i].entry;
        pool_entry* e = spot.load(std::memory_order_seq_cst);
        while (e != nullptr) {
            if (!spot.compare_exchange_weak(e, nullptr, std::memory_order_seq_cst)) continue;
            if (!is_mark(e)) {
                --in_use_;
                idle_.push_back(e);  // never allocates: reserved for max_size
            }
            break;
        }
    }
}

// No return parks from now until update_parking() reopens it, and none is parked (under the
// mutex): true when parking was open until now, and the parked connections are in idle_.
bool pool_core::stop_parking() noexcept {
    if ((parking_.load(std::memory_order_relaxed) & parking_stopped) != 0) return false;
    parking_.fetch_or(parking_stopped, std::memory_order_seq_cst);
    unpark_all();
    return true;
}

// Whether a return may park (under the mutex): not while anyone waits, the pool is closing or
// suspended, more are open than max_size, or (min_idle) a borrow from a spot could leave
// fewer idle than min_idle with room to make more: only a borrow through the mutex asks the
// creator for more.
bool pool_core::parking_allowed() const noexcept {
    return !closing_ && !suspended_ && waiters_.empty() && occupied_ - discarding_ <= max_size_ &&
           (min_idle_ == 0 || occupied_ >= max_size_);
}

// Parking stopped, or open again, as parking_allowed() now says (under the mutex).
void pool_core::update_parking() noexcept {
    const bool open = (parking_.load(std::memory_order_relaxed) & parking_stopped) == 0;
    if (open == parking_allowed()) [[likely]] {
        return;
    }
    if (open) {
        stop_parking();
    } else {
        parking_.store(generation_ << 1, std::memory_order_relaxed);
    }
}

// How many connections are parked, at about this moment (under the mutex).
std::size_t pool_core::parked() const noexcept {
    std::size_t n = 0;
    for (std::size_t i = 0; i < spot_count_; ++i) {
        pool_entry* e = spots_[i].entry.load(std::memory_order_relaxed);
        n += e != nullptr && !is_mark(e);
    }
    // An entry parked again on another CPU between two loads may be seen twice.
    return std::min(n, in_use_);
}

pool_entry* pool_core::acquire(std::chrono::nanoseconds timeout,
                               const std::source_location& where) {
    if (pool_entry* e = try_acquire_fresh(where)) [[likely]] {
        return e;
    }
    // None idle, or one due for its check, which lend_or_queue makes: the borrower's time
    // starts here, and what checking takes is part of it.
    const auto started = steady::now();
    std::unique_lock lock(mutex_);
    return acquire_waiting(lock, started, deadline_after(timeout, started), where);
}

void pool_core::release(pool_entry& e, bool reusable, bool used) noexcept {
    const std::int64_t now = coarse_now_ns();
    const std::int64_t lent_at = e.lent_at.load(std::memory_order_relaxed);
    // Within one coarse tick, a use counts 0 and needs no histogram: such a return may park.
    if (reusable && used && now == lent_at && park(e, now)) [[likely]] {
        return;
    }
    std::unique_lock lock(mutex_);
    e.lent.store(false, std::memory_order_relaxed);
    --in_use_;
    if (used) {
        if (now == lent_at) {
            ++instant_uses_;  // on the line the lock is on
        } else {
            accounting_.used(std::chrono::nanoseconds(now - lent_at));
        }
    }
    e.idle_since = now;
    keep_or_discard(lock, e, reusable, now);
}

// `e`, out of in_use_ and not lent (under the mutex, which this unlocks): to the idle stack,
// or to the first waiter, when `reusable` and the pool's rules let it stay (not closing, not
// due for retirement, of this generation, within max_size); otherwise closed.
void pool_core::keep_or_discard(std::unique_lock<futex_mutex>& lock, pool_entry& e, bool reusable,
                                std::int64_t now) noexcept {
    if (reusable && !closing_ && now < e.retire_at && e.generation == generation_ &&
        occupied_ - discarding_ <= max_size_) [[likely]] {
        if (waiters_.empty() || suspended_) [[likely]] {
            idle_.push_back(&e);  // never allocates: reserved for max_size
            update_parking();
            lock.unlock();
            return;
        }
        pool_waiter& w = offer(e, now);
        lock.unlock();
        w.release();
        return;
    }
    accounting_.destroyed(1);
    ++discarding_;
    lock.unlock();
    connector_->destroy(e.connection);
    finish_discard(e);
}

detail::deadline pool_core::deadline_after(std::chrono::nanoseconds timeout,
                                           steady::time_point started) const noexcept {
    if (timeout == std::chrono::nanoseconds::max()) timeout = options_.acquire_timeout;
    return detail::deadline::after(std::min(timeout, longest_wait), started);
}

// A borrow's first look, synchronous or not: an idle connection that needs no check, lent
// with no clock read and no write to the accounting's lines (a count on the line the lock is
// on), and no turn in the queue. Inlined by force into acquire(), as lend() into it: GCC
// calls a function with two callers, a few instructions more a borrow each.
[[gnu::always_inline]] inline pool_entry* pool_core::try_acquire_fresh(
    const std::source_location& where) noexcept {
    const std::int64_t now = coarse_now_ns();
    if (pool_entry* e = unpark(now)) [[likely]] {
        e->parked_borrows.store(e->parked_borrows.load(std::memory_order_relaxed) + 1,
                                std::memory_order_relaxed);
        lend(*e, now, where);
        return e;
    }
    std::lock_guard lock(mutex_);
    if (closing_ || suspended_ || idle_.empty() || !fresh(*idle_.back(), now)) [[unlikely]] {
        return nullptr;
    }
    ++unwaited_;
    return &lend(now, where);
}

// One step of an asynchronous borrow (pool_acquire_async in pool.hpp): a synchronous
// borrow up to its wait, which the borrower's coroutine does instead of sleeping here.
pool_entry* pool_core::acquire_async(pool_async_waiter& a, bool overtaken,
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

// The idle connection `e`, out of idle_, to the longest waiting borrower (under the mutex;
// waiters_ not empty): the waiter to release() after unlocking. It is woken to take it, but a
// borrower already running may take it first (no context switch: far more throughput when
// threads outnumber connections). One that lost so once is handed the next connection
// outright: a waiter is overtaken at most once in a row.
pool_waiter& pool_core::offer(pool_entry& e, std::int64_t now) noexcept {
    pool_waiter& w = waiters_.front();
    if (w.overtaken) return hand_over(e, now);
    idle_.push_back(&e);
    return waiters_.remove(w);
}

// An asynchronous borrower the core woke to look at an idle connection left without looking
// (cancelled before its wait began, or its coroutine destroyed): the connection is offered to
// the next waiter, as when it came back, so that it does not sit idle while others wait.
void pool_core::pass_wake() noexcept {
    std::unique_lock lock(mutex_);
    if (idle_.empty() || waiters_.empty() || suspended_ || closing_) return;
    pool_entry& e = *idle_.back();
    idle_.pop_back();
    pool_waiter& w = offer(e, coarse_now_ns());
    lock.unlock();
    w.release();
}

bool pool_core::withdraw(pool_async_waiter& a) noexcept {
    std::lock_guard lock(mutex_);
    if (a.queued == nullptr) return false;
    pool_waiter* record = static_cast<pool_waiter*>(a.queued);
    waiters_.remove(*record);
    delete record;  // NOLINT: allocated by acquire_async
    return true;
}

pool_entry* pool_core::take_handed(pool_async_waiter& a, const detail::deadline& deadline,
                                   steady::time_point started) noexcept {
    pool_entry* e = static_cast<pool_entry*>(std::exchange(a.handed, nullptr));
    if (e == nullptr || !ready(*e, coarse_now_ns(), deadline)) return nullptr;
    return obtained(*e, started);
}

// How long a validation ping may wait: validation_timeout, cut to what the borrower has
// left, but not below 250 ms (HikariCP's floor for its validationTimeout) unless
// validation_timeout is smaller: a borrower nearly out of time, or asking not to wait,
// must not have a healthy connection closed for want of time to hear it answer.
std::chrono::milliseconds pool_core::ping_timeout(const detail::deadline& deadline) const noexcept {
    constexpr std::chrono::milliseconds floor{250};
    const auto limit = options_.validation_timeout.count() > 0 ? options_.validation_timeout
                                                               : std::chrono::milliseconds::max();
    return std::min(limit, std::max(deadline.remaining_ms(), floor));
}

// A connection lent failed its check: destroyed. Broken while idle, it is probably not
// alone (a server restart ends every session): the housekeeper looks at the other idle
// connections now.
void pool_core::failed_check(pool_entry& e) noexcept {
    {
        std::lock_guard lock(mutex_);
        sweep_ = true;
    }
    housekeeper_wake_.notify_one();
    release(e, false, false);
}

// Lends the most recently returned idle connection (under the mutex).
[[gnu::always_inline]] inline pool_entry& pool_core::lend(
    std::int64_t now, const std::source_location& where) noexcept {
    pool_entry& e = *idle_.back();
    idle_.pop_back();
    lend(e, now, where);
    ++in_use_;
    if (idle_.size() < min_idle_ && creation_wanted()) creator_wake_.notify_one();
    return e;
}

void pool_core::lend(pool_entry& e, std::int64_t now, const std::source_location& where) noexcept {
    e.lent.store(true, std::memory_order_relaxed);
    e.ping_due = false;
    e.lent_at.store(now, std::memory_order_relaxed);
    e.where.store(where, std::memory_order_relaxed);
}

bool pool_core::fresh(const pool_entry& e, std::int64_t now) const noexcept {
    return now - e.idle_since < look_after_ns && now - e.idle_since < validate_ns_ &&
           now < e.retire_at;
}

// Checks a connection just lent (without the mutex); destroys it when it fails. A ping
// the borrower awaits is left to it (ping_due), after the look without a round trip.
bool pool_core::ready(pool_entry& e, std::int64_t now, const detail::deadline& deadline) noexcept {
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
pool_entry* pool_core::lend_or_queue(std::unique_lock<futex_mutex>& lock, pool_waiter& w,
                                     bool overtaken, const detail::deadline& deadline,
                                     steady::time_point started, const std::source_location& where,
                                     const char* call) {
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
        // None idle here: none parked either, and none parks while this borrower waits.
        if (stop_parking() && !idle_.empty()) continue;
        const auto now = steady::now();
        if (deadline.expired(now)) {
            accounting_.timed_out();
            throw_timeout(lock, started, now);
        }
        if (!overtaken && options_.max_waiting > 0 && waiters_.size() >= options_.max_waiting) {
            accounting_.refused();
            const std::string what = "a connection from " + description_ + ": " +
                                     std::to_string(waiters_.size()) +
                                     " borrowers are waiting already (max_waiting " +
                                     std::to_string(options_.max_waiting) + ')';
            lock.unlock();
            throw too_many_waiters(what);
        }
        w.where = where;
        w.started = started;
        w.overtaken = overtaken;
        waiters_.push(w, overtaken);
        if (creation_wanted()) creator_wake_.notify_one();
        return nullptr;
    }
}

pool_entry* pool_core::acquire_waiting(std::unique_lock<futex_mutex>& lock,
                                       steady::time_point started, const detail::deadline& deadline,
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
                waiters_.remove(w);  // timed out; the next round throws
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
pool_entry* pool_core::obtained(pool_entry& e, steady::time_point started) noexcept {
    const auto waited = steady::now() - started;
    std::lock_guard lock(mutex_);
    accounting_.waited(waited);
    return &e;
}

// Lends `e` to the first waiter (under the mutex); release() it after unlocking.
pool_waiter& pool_core::hand_over(pool_entry& e, std::int64_t now) noexcept {
    pool_waiter& w = waiters_.remove(waiters_.front());
    lend(e, now, w.where);
    ++in_use_;
    w.handed = &e;
    if (w.async != nullptr) w.async->handed = &e;
    return w;
}

[[noreturn]] void pool_core::throw_timeout(std::unique_lock<futex_mutex>& lock,
                                           steady::time_point started, steady::time_point now) {
    std::string what = "a connection from " + description_ + " (max_size " +
                       std::to_string(max_size_) + ": " + std::to_string(in_use_) + " in use, " +
                       std::to_string(idle_.size()) + " idle, " + std::to_string(waiters_.size()) +
                       " waiting";
    if (creating_) what += ", 1 being made";
    if (suspended_) what += ", suspended";
    what += ')';
    if (in_use_ > 0) what += "; borrowed at " + borrowers(coarse_now_ns());
    std::exception_ptr failure;
    if (last_failure_ && last_failure_at_ >= started) {
        failure = last_failure_;
        what += "; the last connection attempt failed " + format_duration(now - last_failure_at_) +
                " ago: " + what_of(failure);
    }
    lock.unlock();
    throw_chained(timeout_error(what, now - started), failure);
}

std::string pool_core::borrowers(std::int64_t now) const {
    std::vector<const pool_entry*> lent;
    for (const pool_entry& e : slots_) {
        if (e.lent.load(std::memory_order_relaxed)) lent.push_back(&e);
    }
    std::sort(lent.begin(), lent.end(), [](const pool_entry* a, const pool_entry* b) {
        return a->lent_at.load(std::memory_order_relaxed) <
               b->lent_at.load(std::memory_order_relaxed);
    });
    std::string text;
    for (std::size_t i = 0; i < lent.size() && i < listed_borrowers; ++i) {
        if (i > 0) text += ", ";
        const pool_entry& e = *lent[i];
        append_site(text, e.where.load(std::memory_order_relaxed));
        text += " (held ";
        text += format_duration(
            std::chrono::nanoseconds(now - e.lent_at.load(std::memory_order_relaxed)));
        text += ')';
    }
    if (lent.size() > listed_borrowers) {
        text += " and " + std::to_string(lent.size() - listed_borrowers) + " more";
    }
    return text;
}

void pool_core::discard(const std::vector<pool_entry*>& entries) noexcept {
    for (pool_entry* e : entries) {
        connector_->destroy(e->connection);
        finish_discard(*e);
    }
}

void pool_core::finish_discard(pool_entry& e) noexcept {
    bool free_core = false;
    {
        std::lock_guard lock(mutex_);
        e.connection = nullptr;
        e.occupied = false;
        --occupied_;
        --discarding_;
        update_parking();  // room for one more: min_idle may want it made
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

// --- the bridge: what pool.hpp calls on every borrow ---

pool_entry_base* pool_acquire(pool_core& core, std::chrono::nanoseconds timeout,
                              const std::source_location& where) {
    return core.acquire(timeout, where);
}

deadline pool_deadline(const pool_core& core, std::chrono::nanoseconds timeout,
                       std::chrono::steady_clock::time_point started) noexcept {
    return core.deadline_after(timeout, started);
}

pool_entry_base* pool_try_acquire_fresh(pool_core& core,
                                        const std::source_location& where) noexcept {
    return core.try_acquire_fresh(where);
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

void pool_pass_wake(pool_core& core) noexcept {
    core.pass_wake();
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

void pool_release(pool_core& core, pool_entry_base& entry, bool reusable) noexcept {
    core.release(static_cast<pool_entry&>(entry), reusable);
}

}  // namespace ctxmgr::detail
