// The pool's core made and given its orders: options checked, construction, the operations
// (suspend, resume, evict, resize, close) and observation (stats, metrics, status), and the
// rest of the bridge pool.hpp calls (see pool_core.hpp for the parts and lending.cpp for the
// hot path).
#include <algorithm>
#include <memory>
#include <mutex>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "ctxmgr/release.hpp"

#include "pool/pool_core.hpp"
#include "support/clocks.hpp"

namespace ctxmgr::detail {

namespace {

std::int64_t count_ns(std::chrono::milliseconds d) noexcept {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(d).count();
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

pool_core::pool_core(std::unique_ptr<pool_connector> connector, pool_options options,
                     std::source_location where)
    : connector_(std::move(connector)),
      options_(std::move(options)),
      quoted_name_(quoted(options_.name)),
      description_("pool " + quoted_name_),
      slots_(options_.max_size),
      lifetime_ns_(options_.max_lifetime.count() > 0 ? count_ns(options_.max_lifetime) : never),
      idle_timeout_ns_(count_ns(options_.idle_timeout)),
      validate_ns_(count_ns(options_.validate_after_idle)),
      jitter_(std::random_device{}()),
      spot_count_(std::clamp<std::size_t>(std::thread::hardware_concurrency(), 1,
                                          std::max<std::size_t>(options_.max_size, 1))),
      spots_(std::make_unique<parking_spot[]>(spot_count_)),
      registration_("connection pool", quoted_name_, where) {
    max_size_ = options_.max_size;
    min_idle_ = options_.min_idle;
    idle_.reserve(max_size_);
}

pool_stats pool_core::stats() const {
    std::lock_guard lock(mutex_);
    const std::size_t parked_now = parked();
    return pool_stats{idle_.size() + in_use_, idle_.size() + parked_now, in_use_ - parked_now,
                      waiters_.size(),        accounting_.created(),     accounting_.destroyed(),
                      accounting_.timeouts()};
}

pool_metrics pool_core::metrics() const {
    std::lock_guard lock(mutex_);
    return metrics_locked();
}

pool_status pool_core::status() const {
    pool_status s;
    {
        std::lock_guard lock(mutex_);
        s.borrowers.reserve(in_use_);
        const auto now = steady::now();
        const std::int64_t coarse_now = coarse_now_ns();
        s.metrics = metrics_locked();
        s.suspended = suspended_;
        waiters_.for_each([&](const pool_waiter& w) {
            s.longest_wait = std::max(s.longest_wait, now - w.started);
        });
        for (const pool_entry& e : slots_) {
            if (!e.lent.load(std::memory_order_relaxed)) continue;
            const std::int64_t held = coarse_now - e.lent_at.load(std::memory_order_relaxed);
            s.borrowers.push_back(
                pool_borrower{e.where.load(std::memory_order_relaxed),
                              std::chrono::nanoseconds(std::max<std::int64_t>(held, 0))});
        }
    }
    std::sort(s.borrowers.begin(), s.borrowers.end(),
              [](const pool_borrower& a, const pool_borrower& b) { return a.held > b.held; });
    return s;
}

void pool_core::suspend() {
    std::lock_guard lock(mutex_);
    if (closing_) throw closed_error("suspend() on closed " + description_);
    suspended_ = true;
    stop_parking();
}

void pool_core::resume() {
    std::vector<pool_waiter*> woken;
    {
        std::lock_guard lock(mutex_);
        if (closing_) throw closed_error("resume() on closed " + description_);
        if (!suspended_) return;
        woken.reserve(waiters_.size());  // may throw: before anything changed
        suspended_ = false;
        // Idle connections go to the waiters, first come first; then the creator makes
        // what the rest need. The connections are checked by their borrowers, as usual.
        const std::int64_t now = coarse_now_ns();
        while (!waiters_.empty() && !idle_.empty()) {
            pool_entry& e = *idle_.back();
            idle_.pop_back();
            woken.push_back(&hand_over(e, now));
        }
        if (creation_wanted()) creator_wake_.notify_one();
    }
    for (pool_waiter* w : woken) w->release();
}

std::size_t pool_core::evict_idle() {
    std::vector<pool_entry*> idle;
    std::vector<pool_entry*> fresh;
    {
        std::lock_guard lock(mutex_);
        fresh.reserve(max_size_);  // may throw: then nothing was evicted
        unpark_all();
        idle.swap(idle_);
        idle_.swap(fresh);
        accounting_.destroyed(idle.size());
        discarding_ += idle.size();
    }
    discard(idle);
    return idle.size();
}

std::size_t pool_core::evict_all() {
    {
        std::lock_guard lock(mutex_);
        ++generation_;
        // Entries of the generation before park no more; those parked are evicted below.
        parking_.store(generation_ << 1 | parking_stopped, std::memory_order_seq_cst);
    }
    return evict_idle();
}

void pool_core::resize(std::size_t min_idle, std::size_t max_size) {
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
        update_parking();
        // Beyond the new max_size: idle connections close now (the least recently used
        // first), lent ones when they come back.
        while (!idle_.empty() && occupied_ - discarding_ > max_size_) {
            excess.push_back(idle_.front());
            idle_.erase(idle_.begin());
            accounting_.destroyed(1);
            ++discarding_;
        }
        if (creation_wanted()) creator_wake_.notify_one();
    }
    discard(excess);
}

void pool_core::close(const detail::deadline& deadline) {
    if (on_own_thread()) {
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
            stop_parking();
            idle.swap(idle_);
            accounting_.destroyed(idle.size());
            discarding_ += idle.size();
            registration_.release();
        }
        while (!waiters_.empty()) woken.push_back(&waiters_.remove(waiters_.front()));
    }
    for (pool_waiter* w : woken) w->release();  // they find the pool closed
    creator_wake_.notify_all();
    housekeeper_wake_.notify_all();
    discard(idle);
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

void pool_core::dispose(pool_core* core) noexcept {
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

pool_metrics pool_core::metrics_locked() const noexcept {
    pool_metrics now;
    const std::size_t parked_now = parked();
    now.idle = idle_.size() + parked_now;
    now.used = in_use_ - parked_now;
    now.pending = waiters_.size();
    now.max = max_size_;
    std::uint64_t unwaited = unwaited_;
    std::uint64_t instant_uses = instant_uses_;
    for (const pool_entry& e : slots_) {
        unwaited += e.parked_borrows.load(std::memory_order_relaxed);
        instant_uses += e.parked_returns.load(std::memory_order_relaxed);
    }
    return accounting_.metrics(now, unwaited, instant_uses);
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
