// The registry of live resources behind tracking.hpp.
//
// Sharded per thread so that registering never takes a lock another thread wants: each
// thread registers into its own shard, an intrusive list behind a spinlock that only a
// reader (listing), a fork, or a resource released on another thread ever contends for. The
// registry mutex is taken when a thread registers for the first time, when a thread exits,
// and when listing. Nothing here is ever freed, so `tracked` destructors of static objects
// that run after this file's statics would have been destroyed still work.
#include "ctxmgr/tracking.hpp"

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <ostream>
#include <string>
#include <thread>
#include <unordered_set>

#include "ctxmgr/unraisable.hpp"

#include "ctxmgr/detail/source_site.hpp"
#include "support/clocks.hpp"
#include "support/threads.hpp"

namespace ctxmgr {

namespace detail {
// held_longer_than for one owner's resources (every one's when owner.tag is null).
std::vector<resource_info> held_longer_than(std::chrono::nanoseconds threshold,
                                            tracking_owner owner);
}  // namespace detail

#if CTXMGR_TRACKING

namespace detail {

namespace {

// Longer kinds are cut, which keeps a node fixed-size and registering free of a second
// allocation.
constexpr std::size_t max_kind = 31;
// Ids are taken from the global counter in blocks, so registering touches no shared
// cache line except once per block.
constexpr std::uint64_t id_block = 1024;
// Recycled nodes kept per shard: enough for a thread's working set, bounded so that a
// burst of registrations does not pin its memory for ever.
constexpr std::size_t max_free_nodes = 128;

}  // namespace

struct tracking_shard;

// The links of a circular list; a shard's list head is a bare link, so unlinking needs no
// branch.
struct tracking_link {
    tracking_link* prev = this;
    tracking_link* next = this;
};

struct tracking_node : tracking_link {
    tracking_shard* shard = nullptr;  // whose list holds it: the registering thread's
    std::uint64_t id = 0;
    std::uint64_t thread = 0;
    const void* owner = nullptr;   // tracking_owner::tag
    std::int64_t acquired_ns = 0;  // CLOCK_MONOTONIC_COARSE
    std::uint32_t generation = 0;  // the process that registered it (see after_fork_in_child)
    std::uint8_t kind_size = 0;
    char kind[max_kind] = {};
    std::source_location where;
    std::string description;
};

// Cache-line aligned so that two threads registering do not share a line.
struct alignas(64) tracking_shard {
    spin_lock lock;
    tracking_link live;  // guarded by lock

    // Used only by the thread attached to the shard, so they need no lock.
    tracking_node* free_nodes = nullptr;  // singly linked through `next`
    std::size_t free_count = 0;
    std::uint64_t next_id = 0;
    std::uint64_t id_end = 0;
    std::uint64_t thread = 0;

    // Guarded by the registry mutex.
    bool attached = false;
    tracking_shard* next_shard = nullptr;
};

namespace {

struct tracking_registry {
    std::mutex mutex;
    tracking_shard* shards = nullptr;  // every shard ever made; never freed
    std::size_t shard_count = 0;
    bool process_hooks_installed = false;
};

tracking_registry& registry() {
    static auto* const state = new tracking_registry;  // immortal, see the file comment
    return *state;
}

// Constant-initialized and trivially destructible: usable at any point of start-up or exit.
constinit std::atomic<std::uint64_t> next_id_block{1};
constinit thread_local tracking_shard* current_shard = nullptr;

void link_last(tracking_link& head, tracking_node* node) noexcept {
    node->prev = head.prev;
    node->next = &head;
    head.prev->next = node;
    head.prev = node;
}

void unlink(tracking_node* node) noexcept {
    node->prev->next = node->next;
    node->next->prev = node->prev;
}

template <class Visit>
void for_each_shard(tracking_registry& r, Visit&& visit) {
    for (tracking_shard* s = r.shards; s != nullptr; s = s->next_shard) visit(*s);
}

// pthread_atfork handlers. A fork copies only the forking thread; if another thread held
// a shard lock or the registry mutex at that moment, the child would wait on it for ever.
// So the parent takes them all before forking and both sides release them after.
void before_fork() noexcept {
    auto& r = registry();
    r.mutex.lock();
    for_each_shard(r, [](tracking_shard& s) { s.lock.lock(); });
}

void after_fork_in_parent() noexcept {
    auto& r = registry();
    for_each_shard(r, [](tracking_shard& s) { s.lock.unlock(); });
    r.mutex.unlock();
}

// The child keeps its parent's nodes (its copies of the parent's objects still unregister
// them) but lists only its own: a new generation. The parent's other threads do not exist
// here, so their shards are free for the child's threads.
void after_fork_in_child() noexcept {
    auto& r = registry();
    for_each_shard(r, [](tracking_shard& s) {
        s.attached = &s == current_shard;
        s.lock.unlock();
    });
    r.mutex.unlock();
}

void report_at_exit() noexcept;

void install_process_hooks(tracking_registry& r) noexcept {
    if (r.process_hooks_installed) return;
    r.process_hooks_installed = true;
    // Failing either leaves tracking working without the exit report or the fork safety;
    // neither is worth refusing to register a resource for.
    static_cast<void>(std::atexit(&report_at_exit));
    static_cast<void>(::pthread_atfork(&before_fork, &after_fork_in_parent, &after_fork_in_child));
    // A child's resources are a new generation: the shared fork count, whose handler this
    // installs.
    static_cast<void>(fork_generation());
}

void detach_thread() noexcept {
    tracking_shard* shard = std::exchange(current_shard, nullptr);
    if (shard == nullptr) return;
    // Its nodes stay in its list (their owners unregister them from wherever they are) and
    // its free nodes go to the next thread that takes the shard.
    std::lock_guard lock(registry().mutex);
    shard->attached = false;
}

struct thread_exit {
    thread_exit() = default;
    thread_exit(const thread_exit&) = delete;
    thread_exit& operator=(const thread_exit&) = delete;
    ~thread_exit() { detach_thread(); }
};

tracking_shard* attach_thread() {
    // Declared first: its destructor, which frees the shard for another thread, is
    // registered before the thread holds one.
    static thread_local thread_exit on_thread_exit;
    auto& r = registry();
    std::lock_guard lock(r.mutex);
    install_process_hooks(r);
    tracking_shard* shard = nullptr;
    for_each_shard(r, [&](tracking_shard& s) {
        if (shard == nullptr && !s.attached) shard = &s;
    });
    if (shard == nullptr) {
        shard = new tracking_shard;
        shard->next_shard = r.shards;
        r.shards = shard;
        ++r.shard_count;
    }
    shard->attached = true;
    shard->thread = thread_number();
    current_shard = shard;
    return shard;
}

resource_info info_of(const tracking_node& node) {
    resource_info info;
    info.id = node.id;
    info.kind.assign(node.kind, node.kind_size);
    info.description = node.description;
    info.where = node.where;
    info.thread = node.thread;
    info.acquired_at = to_steady(node.acquired_ns);
    return info;
}

// Calls visit(node) for every live node this process registered, under the locks.
template <class Visit>
void for_each_live(Visit&& visit) {
    auto& r = registry();
    const auto generation = forks_seen.load(std::memory_order_relaxed);
    std::lock_guard registry_lock(r.mutex);
    for_each_shard(r, [&](tracking_shard& s) {
        std::lock_guard shard_lock(s.lock);
        for (const tracking_link* l = s.live.next; l != &s.live; l = l->next) {
            const auto& node = static_cast<const tracking_node&>(*l);
            if (node.generation == generation) visit(node);
        }
    });
}

// The live resources for which keep(node) holds, oldest first.
template <class Keep>
std::vector<resource_info> collect(Keep&& keep) {
    std::vector<resource_info> found;
    for_each_live([&](const tracking_node& node) {
        if (keep(node)) found.push_back(info_of(node));
    });
    // Equal time stamps (the clock's resolution) are ordered by id.
    std::sort(found.begin(), found.end(), [](const resource_info& a, const resource_info& b) {
        return a.acquired_at != b.acquired_at ? a.acquired_at < b.acquired_at : a.id < b.id;
    });
    return found;
}

std::set<std::uint64_t> live_ids() {
    std::set<std::uint64_t> ids;
    for_each_live([&](const tracking_node& node) { ids.insert(node.id); });
    return ids;
}

enum class exit_mode { warn, ignore, abort };

exit_mode exit_mode_from_environment() noexcept {
    const char* value = std::getenv("CTXMGR_LEAKS");
    if (value == nullptr || *value == '\0') return exit_mode::warn;
    const std::string_view setting = value;
    if (setting == "warn") return exit_mode::warn;
    if (setting == "ignore") return exit_mode::ignore;
    if (setting == "abort") return exit_mode::abort;
    std::fprintf(stderr,
                 "ctxmgr: CTXMGR_LEAKS=\"%s\" is not one of warn, ignore, abort; using warn\n",
                 value);
    return exit_mode::warn;
}

// Python's ResourceWarning at interpreter exit, for the resources still live at exit().
// stdio rather than iostreams: std::cerr may already be unusable this late.
void report_at_exit() noexcept {
    const exit_mode mode = exit_mode_from_environment();
    if (mode == exit_mode::ignore) return;
    try {
        const auto live = live_resources();
        for (const auto& resource : live) {
            std::fprintf(stderr, "ctxmgr: still live at exit: %s\n", describe(resource).c_str());
        }
        if (mode == exit_mode::abort && !live.empty()) {
            std::fprintf(stderr, "ctxmgr: CTXMGR_LEAKS=abort: aborting\n");
            std::fflush(stderr);
            std::abort();
        }
    } catch (...) {
        std::fprintf(stderr, "ctxmgr: could not list the resources still live at exit\n");
    }
}

}  // namespace

std::size_t tracking_shards() noexcept {
    auto& r = registry();
    std::lock_guard lock(r.mutex);
    return r.shard_count;
}

}  // namespace detail

using detail::current_shard;
using detail::tracking_node;

tracked::tracked(detail::tracking_owner owner, std::string_view kind, std::string description,
                 std::source_location where) {
    detail::tracking_shard* shard = current_shard;
    if (shard == nullptr) shard = detail::attach_thread();
    tracking_node* node = shard->free_nodes;
    if (node != nullptr) {
        shard->free_nodes = static_cast<tracking_node*>(node->next);
        --shard->free_count;
    } else {
        node = new tracking_node;  // the only step that can throw: nothing is registered yet
    }
    if (shard->next_id == shard->id_end) {
        shard->next_id =
            detail::next_id_block.fetch_add(detail::id_block, std::memory_order_relaxed);
        shard->id_end = shard->next_id + detail::id_block;
    }
    node->shard = shard;
    node->id = shard->next_id++;
    node->thread = shard->thread;
    node->owner = owner.tag;
    // The precise clock, not the coarse one: a coarse reading lags by a tick and, on a loaded
    // virtual machine whose ticks come late, by several (7.3 ms against a 4 ms tick, measured
    // by bench/coarse_clock_lag), so no margin added to it makes acquired_at an upper bound.
    node->acquired_ns = detail::precise_now_ns();
    node->generation = detail::forks_seen.load(std::memory_order_relaxed);
    const std::size_t kind_size = std::min(kind.size(), detail::max_kind);
    std::memcpy(node->kind, kind.data(), kind_size);
    node->kind_size = static_cast<std::uint8_t>(kind_size);
    node->where = where;
    node->description = std::move(description);
    {
        std::lock_guard lock(shard->lock);
        detail::link_last(shard->live, node);
    }
    node_ = node;
}

void tracked::unregister(tracking_node* node) noexcept {
    detail::tracking_shard* shard = node->shard;
    {
        std::lock_guard lock(shard->lock);
        detail::unlink(node);
    }
    // Only the thread attached to a shard touches its free list; a resource released on
    // another thread gives its node back to the heap.
    if (shard == current_shard && shard->free_count < detail::max_free_nodes) {
        node->next = shard->free_nodes;
        shard->free_nodes = node;
        ++shard->free_count;
    } else {
        delete node;
    }
}

std::uint64_t tracked::id() const noexcept {
    return node_ != nullptr ? node_->id : 0;
}

void tracked::describe(std::string description) {
    if (node_ == nullptr) return;
    // Readers copy the description under the shard lock; the old one is freed outside it.
    std::lock_guard lock(node_->shard->lock);
    node_->description.swap(description);
}

std::vector<resource_info> live_resources() {
    return detail::collect([](const tracking_node&) { return true; });
}

std::vector<resource_info> held_longer_than(std::chrono::nanoseconds threshold) {
    return detail::held_longer_than(threshold, detail::tracking_owner{});
}

std::vector<resource_info> detail::held_longer_than(std::chrono::nanoseconds threshold,
                                                    tracking_owner owner) {
    const std::int64_t cutoff = precise_now_ns() - threshold.count();
    return collect([&](const tracking_node& node) {
        return node.acquired_ns < cutoff && (owner.tag == nullptr || node.owner == owner.tag);
    });
}

#else  // CTXMGR_TRACKING

std::size_t detail::tracking_shards() noexcept {
    return 0;
}

std::vector<resource_info> live_resources() {
    return {};
}

std::vector<resource_info> held_longer_than(std::chrono::nanoseconds) {
    return {};
}

std::vector<resource_info> detail::held_longer_than(std::chrono::nanoseconds, tracking_owner) {
    return {};
}

#endif  // CTXMGR_TRACKING

void report_live(std::ostream& out) {
    for (const auto& resource : live_resources()) out << describe(resource) << '\n';
}

std::string describe(const resource_info& resource) {
    std::string line = resource.kind;
    if (!resource.description.empty()) {
        line += ' ';
        line += resource.description;
    }
    line += " acquired at ";
    detail::append_site(line, resource.where);
    line += ", held ";
    line += format_duration(resource.age());
    line += ", thread ";
    line += std::to_string(resource.thread);
    return line;
}

// --- watch_held_too_long ---------------------------------------------------------------

struct watch_held_too_long::state {
    detail::tracking_owner owner;
    std::chrono::nanoseconds threshold;
    callback_type callback;
    std::mutex mutex;
    std::condition_variable wake;
    bool stop = false;     // guarded by mutex
    bool entered = false;  // used by the owner only
    std::thread watchdog;

    // Often enough that a resource is reported soon after it crosses the threshold, rarely
    // enough that a long threshold costs nothing.
    [[nodiscard]] std::chrono::nanoseconds interval() const {
        return std::clamp<std::chrono::nanoseconds>(threshold / 4, std::chrono::milliseconds(1),
                                                    std::chrono::milliseconds(100));
    }

    // Calls back once for each resource newly past the threshold. `reported` keeps the ids
    // already reported that are still live (ids are never reused, so nothing is skipped).
    void check(std::unordered_set<std::uint64_t>& reported) {
        std::unordered_set<std::uint64_t> still_over;
        for (const auto& resource : detail::held_longer_than(threshold, owner)) {
            still_over.insert(resource.id);
            if (reported.contains(resource.id)) continue;
            try {
                callback(resource);
            } catch (...) {
                report_current_unraisable("the watch_held_too_long callback for " +
                                          describe(resource));
            }
        }
        reported.swap(still_over);
    }

    void run() noexcept {
        std::unordered_set<std::uint64_t> reported;
        std::unique_lock lock(mutex);
        while (!stop) {
            lock.unlock();
            try {
                check(reported);
            } catch (...) {
                report_current_unraisable("the watch_held_too_long watchdog");
            }
            lock.lock();
            wake.wait_for(lock, interval(), [this] { return stop; });
        }
    }

    void halt() noexcept {
        if (!watchdog.joinable()) return;
        {
            std::lock_guard lock(mutex);
            stop = true;
        }
        wake.notify_one();
        try {
            watchdog.join();
        } catch (...) {
            report_current_unraisable("watch_held_too_long: stopping the watchdog");
        }
    }
};

watch_held_too_long::watch_held_too_long(std::chrono::nanoseconds threshold, callback_type callback,
                                         std::source_location where)
    : watch_held_too_long(detail::tracking_owner{}, threshold, std::move(callback), where) {
}

watch_held_too_long::watch_held_too_long(detail::tracking_owner owner,
                                         std::chrono::nanoseconds threshold, callback_type callback,
                                         std::source_location where)
    : state_(std::make_unique<state>()), check_(where) {
    state_->owner = owner;
    state_->threshold = threshold;
    state_->callback = std::move(callback);
}

watch_held_too_long::watch_held_too_long(watch_held_too_long&&) noexcept = default;

watch_held_too_long& watch_held_too_long::operator=(watch_held_too_long&& other) noexcept {
    if (this != &other) {
        if (state_) state_->halt();
        state_ = std::move(other.state_);
        check_ = std::move(other.check_);
    }
    return *this;
}

watch_held_too_long::~watch_held_too_long() {
    if (state_) state_->halt();
}

void watch_held_too_long::enter() {
    check_.entered();
    if (!state_) throw protocol_error("watch_held_too_long::enter: the manager was moved from");
    if (state_->entered) throw protocol_error("watch_held_too_long::enter: already entered");
    if (!state_->callback) throw protocol_error("watch_held_too_long::enter: no callback");
#if CTXMGR_TRACKING
    state_->stop = false;
    state_->watchdog = std::thread([s = state_.get()] { s->run(); });
#endif
    state_->entered = true;
}

void watch_held_too_long::exit(const std::exception_ptr&) noexcept {
    if (!state_) return;
    state_->halt();
    state_->entered = false;
}

// --- expect_no_leaks -------------------------------------------------------------------

namespace {

std::string leak_message(const std::vector<resource_info>& leaks) {
    std::string text = std::to_string(leaks.size());
    text += leaks.size() == 1 ? " resource" : " resources";
    text += " acquired inside expect_no_leaks still live at its end:";
    for (const auto& resource : leaks) {
        text += "\n  ";
        text += describe(resource);
    }
    return text;
}

}  // namespace

void expect_no_leaks::enter() {
    check_.entered();
    if (entered_) throw protocol_error("expect_no_leaks::enter: already entered");
#if CTXMGR_TRACKING
    before_ = detail::live_ids();
#endif
    entered_ = true;
}

std::vector<resource_info> expect_no_leaks::leaks() const {
#if CTXMGR_TRACKING
    if (entered_) {
        return detail::collect(
            [this](const tracking_node& node) { return !before_.contains(node.id); });
    }
#endif
    return {};
}

void expect_no_leaks::exit(const std::exception_ptr& e) {
    if (!entered_) throw protocol_error("expect_no_leaks::exit: not entered");
    const auto found = leaks();
    entered_ = false;
    before_.clear();
    if (found.empty()) return;
    leak_error error(leak_message(found));
    if (!e) throw error;
    // The block's own exception matters more; the leaks are probably its consequence.
    report_unraisable(std::make_exception_ptr(error), "expect_no_leaks, leaving by an exception");
}

}  // namespace ctxmgr
