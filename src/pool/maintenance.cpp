// Maintenance, on threads of the pool's own: the creator, the only caller of the factory (so
// a borrower never waits inside a connect and always keeps its deadline); the housekeeper
// (idle and lifetime limits, min_idle, idle connections a server ended); and leak reports,
// made by the tracker's watch_held_too_long over the pool's borrows, each registered as the
// core's (pool_loan::hold), so that the tracker's record of a borrow is the one reported.
#include <algorithm>
#include <cstdio>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "ctxmgr/release.hpp"
#include "ctxmgr/unraisable.hpp"

#include "pool/pool_core.hpp"
#include "support/clocks.hpp"

namespace ctxmgr::detail {

namespace {

// How long the housekeeper sleeps at most, so that it sees entries made since it last looked.
constexpr std::int64_t housekeeping_period_ns = 1'000'000'000;

// The core whose on_leak runs on this thread, if any: close() from there would wait for itself.
thread_local const pool_core* reporting_leak_of = nullptr;

}  // namespace

void pool_core::start() {
    creator_ = std::thread([this] { run_creator(); });
    try {
        housekeeper_ = std::thread([this] { run_housekeeper(); });
        if (options_.leak_threshold.count() > 0) {
            leak_watch_.emplace(tracking_owner{this}, options_.leak_threshold,
                                [this](const resource_info& borrow) { report_leak(borrow); });
            leak_watch_->enter();
        }
    } catch (...) {
        stop_threads();
        throw;
    }
}

void pool_core::await_first_connection(std::chrono::milliseconds timeout) {
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

pool_entry& pool_core::free_slot() noexcept {
    // There is one: occupied_ < max_size_ <= slots_.size().
    for (std::size_t i = 0;; ++i) {
        if (!slots_[i].occupied) return slots_[i];
    }
}

// The creator: the only caller of the factory.
void pool_core::run_creator() noexcept {
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
            update_parking();  // room for one more: min_idle may stop parking again
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
        accounting_.created(took);
        if (initializing_) {
            initializing_ = false;
            initialized_.notify_all();
        }
        if (waiters_.empty() || suspended_) {
            idle_.push_back(&slot);
            continue;
        }
        pool_waiter& w = hand_over(slot, now);
        lock.unlock();
        w.release();
        lock.lock();
    }
}

// The housekeeper: idle and lifetime limits, min_idle, broken idle connections.
void pool_core::run_housekeeper() noexcept {
    std::unique_lock lock(mutex_);
    while (!closing_) {
        // Entries hold coarse times, up to a tick behind: compare with the precise clock,
        // so that a wait never ends before what it waited for is due.
        const std::int64_t now = precise_now_ns();
        std::int64_t next = now + housekeeping_period_ns;
        std::vector<pool_entry*> retired;
        try {
            // Oldest first; beyond min_idle only for idle_timeout. Each is also looked at
            // (pool_traits::usable, no round trip: a poll() for PostgreSQL), so that
            // sessions the server ended are replaced before anyone asks for them.
            sweep_ = false;
            unpark_all();  // the limits apply to parked connections too
            std::size_t open = idle_.size() + in_use_;
            for (auto it = idle_.begin(); it != idle_.end();) {
                pool_entry& e = **it;
                const bool expired = now >= e.retire_at;
                const bool idle_out = idle_timeout_ns_ > 0 &&
                                      now - e.idle_since >= idle_timeout_ns_ && open > min_idle_;
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
            // Out of memory for the list: what was collected is handled; try again later.
        }
        accounting_.destroyed(retired.size());
        discarding_ += retired.size();
        if (creation_wanted()) creator_wake_.notify_one();
        if (!retired.empty()) {
            lock.unlock();
            discard(retired);
            lock.lock();
            continue;  // look again: time has passed
        }
        housekeeper_wake_.wait_until(lock, to_steady(next), [this] { return closing_ || sweep_; });
    }
}

// A borrow held longer than leak_threshold, as the tracker records it (with its thread).
void pool_core::report_leak(const resource_info& borrow) noexcept {
    const pool_core* const outer = std::exchange(reporting_leak_of, this);
    try {
        if (options_.on_leak) {
            options_.on_leak(borrow);
        } else {
            const std::string line = "ctxmgr: " + description_ +
                                     ": a connection has been borrowed longer than "
                                     "leak_threshold (" +
                                     format_duration(options_.leak_threshold) +
                                     "): " + ctxmgr::describe(borrow) + '\n';
            std::fputs(line.c_str(), stderr);
        }
    } catch (...) {
        report_current_unraisable(description_ + ": on_leak");
    }
    reporting_leak_of = outer;
}

bool pool_core::on_own_thread() const noexcept {
    const auto self = std::this_thread::get_id();
    return self == creator_.get_id() || self == housekeeper_.get_id() || reporting_leak_of == this;
}

void pool_core::stop_threads() noexcept {
    // First, so that no report runs once close() returns.
    if (leak_watch_) leak_watch_->exit(nullptr);
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

}  // namespace ctxmgr::detail
