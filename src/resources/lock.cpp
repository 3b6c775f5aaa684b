// The out-of-line parts of lock.hpp: the lock-order handler, the error messages of the lock
// managers, and (with CTXMGR_LOCK_ORDER_CHECK=1) the lock-order checker.
//
// The checker keeps one global graph of "A held while B taken" edges, each with the two
// acquisition sites that first made it, and for every thread the list of locks it holds. A
// new edge is checked for a path back from its target to its source (a depth-first search)
// before the thread blocks; a path means a cycle, reported once, when the edge that closes
// it first appears. Each thread also remembers the edges it has already seen, so a thread
// repeating a known pattern takes no global lock; a generation counter, bumped when
// forget_lock_order removes edges, invalidates those caches.
#include "ctxmgr/lock.hpp"

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "ctxmgr/detail/source_site.hpp"
#include "support/threads.hpp"

namespace ctxmgr {

namespace {

struct handler_state {
    std::mutex mutex;
    std::shared_ptr<const lock_order_handler> handler;  // null: the default
};

// Never destroyed, so locks taken by destructors of static objects can still report.
handler_state& handler() {
    static auto* const state = new handler_state;
    return *state;
}

}  // namespace

void default_lock_order_handler(std::string_view report) noexcept {
    std::string text = "ctxmgr: ";
    try {
        text += report;
        text += '\n';
        std::fwrite(text.data(), 1, text.size(), stderr);
    } catch (...) {
        std::fputs("ctxmgr: lock-order problem (out of memory while formatting the report)\n",
                   stderr);
    }
    std::fflush(stderr);
    std::abort();
}

lock_order_handler set_lock_order_handler(lock_order_handler fn) {
    auto next = fn ? std::make_shared<const lock_order_handler>(std::move(fn)) : nullptr;
    auto& state = handler();
    std::shared_ptr<const lock_order_handler> previous;
    {
        std::lock_guard guard(state.mutex);
        previous = std::exchange(state.handler, std::move(next));
    }
    if (!previous) return lock_order_handler(&default_lock_order_handler);
    return *previous;
}

namespace detail {

namespace {

// "std::timed_mutex at 0x7ffd5a40", or `file lock "/var/lock/app.lock"`.
std::string name_of(const lock_ref& lock) {
    if (lock.type == nullptr) return *static_cast<const std::string*>(lock.key);
    char address[32];
    std::snprintf(address, sizeof address, "%p", lock.key);
    return type_name_of(*lock.type) + " at " + address;
}

// "lock_test.cpp:42 in void f()"
std::string site_of(const std::source_location& where) {
    std::string site;
    detail::append_site(site, where);
    return site;
}

}  // namespace

void throw_lock_timeout(const char* manager, const lock_ref* locks, std::size_t count,
                        std::size_t busy, std::chrono::nanoseconds waited,
                        std::source_location where) {
    std::string what;
    if (count == 1) {
        what = name_of(locks[0]);
        if (locks[0].shared) what += ", shared";
    } else {
        what = std::to_string(count) + " locks: ";
        for (std::size_t i = 0; i < count; ++i) {
            if (i > 0) what += ", ";
            what += name_of(locks[i]);
            if (i == busy) what += " (busy)";
        }
    }
    what += " (";
    what += manager;
    what += " at ";
    what += site_of(where);
    what += ')';
    throw timeout_error(what, waited);
}

void throw_lock_misuse(const char* manager, std::string_view problem, const lock_ref* locks,
                       std::size_t count, std::source_location where) {
    std::string what = "ctxmgr::";
    what += manager;
    what += " at ";
    what += site_of(where);
    what += ": ";
    what += problem;
    what += " (";
    for (std::size_t i = 0; i < count; ++i) {
        if (i > 0) what += ", ";
        what += name_of(locks[i]);
    }
    what += ')';
    throw protocol_error(what);
}

#if CTXMGR_LOCK_ORDER_CHECK

namespace {

// One lock held by a thread, and where it took it.
struct held_lock {
    lock_ref lock;
    std::source_location where;
};

// A held list's lock is almost never contended (only a release on another thread takes
// it), and a std::mutex would add 40% to the checker's cost per acquisition.
// The locks one thread holds, in the order it took them. Its own thread adds and removes;
// another thread removes when a lock is released there (a file_lock moved between threads).
struct held_list {
    spin_lock mutex;
    std::vector<held_lock> locks;
    std::uint64_t thread = 0;
    bool orphaned = false;  // its thread has exited with locks still held
};

// "held while taken": from the lock held to the lock taken, with the sites that first did it.
struct order_edge {
    const void* to;
    std::source_location held_at;
    std::source_location taken_at;
    std::uint64_t thread;
};

struct lock_node {
    lock_ref lock;
    std::vector<order_edge> out;
};

struct checker_state {
    std::mutex mutex;  // guards everything below; taken before any held_list's mutex
    std::unordered_map<const void*, lock_node> graph;
    std::vector<std::shared_ptr<held_list>> threads;
    std::set<std::string, std::less<>> file_keys;  // interned file-lock names; never erased
    std::atomic<std::uint64_t> generation{1};
};

checker_state& checker();

// A fork while another thread holds the checker's mutex would leave it locked for ever in
// the child: hold it across fork(), as glibc does for malloc.
void prepare_fork() noexcept {
    checker().mutex.lock();
}
void after_fork() noexcept {
    checker().mutex.unlock();
}

// Never destroyed: locks are taken and released during static destruction too.
checker_state& checker() {
    static checker_state* const state = [] {
        auto* s = new checker_state;
        ::pthread_atfork(&prepare_fork, &after_fork, &after_fork);
        return s;
    }();
    return *state;
}

struct edge_hash {
    std::size_t operator()(const std::pair<const void*, const void*>& e) const noexcept {
        const auto a = reinterpret_cast<std::uintptr_t>(e.first);
        const auto b = reinterpret_cast<std::uintptr_t>(e.second);
        return std::hash<std::uintptr_t>()(a * 0x9E3779B97F4A7C15ull ^ b);
    }
};

// One thread's view: its held list and the edges it knows the graph has.
struct thread_state {
    std::shared_ptr<held_list> held;
    std::unordered_set<std::pair<const void*, const void*>, edge_hash> known;
    std::uint64_t generation = 0;
    std::vector<std::pair<held_lock, lock_ref>> new_edges;  // scratch for order_before
};

// Trivially destructible, so it stays usable during static destruction, after the reaper
// below has run: a thread that takes a lock then gets a fresh state, never freed.
constinit thread_local thread_state* current_thread = nullptr;

// Frees the thread's state at thread exit; a held list with locks still in it stays
// registered (orphaned) until they are released, from wherever that happens.
struct thread_reaper {
    ~thread_reaper() {
        thread_state* state = std::exchange(current_thread, nullptr);
        if (state == nullptr) return;
        auto& c = checker();
        {
            std::lock_guard guard(c.mutex);
            std::lock_guard list_guard(state->held->mutex);
            if (state->held->locks.empty()) {
                std::erase(c.threads, state->held);
            } else {
                state->held->orphaned = true;
            }
        }
        delete state;
    }
};
thread_local thread_reaper reaper;

thread_state& this_thread() {
    if (current_thread != nullptr) return *current_thread;
    auto state = std::make_unique<thread_state>();
    state->held = std::make_shared<held_list>();
    auto& c = checker();
    {
        std::lock_guard guard(c.mutex);
        state->held->thread = thread_number();
        c.threads.push_back(state->held);
    }
    current_thread = state.release();
    static_cast<void>(&reaper);  // odr-use: constructs this thread's reaper
    return *current_thread;
}

bool conflicts(const held_lock& held, const lock_ref& taken) {
    switch (taken.again) {
        case reentry::allowed:
            return false;
        case reentry::deadlocks:
            return true;
        case reentry::shared_only:
            return !(held.lock.shared && taken.shared);
    }
    return false;
}

std::string describe_edge(const char* when, std::uint64_t thread, const lock_ref& taken,
                          const std::source_location& taken_at, const lock_ref& held,
                          const std::source_location& held_at, bool now) {
    std::string line = "\n  ";
    line += when;
    line += "thread ";
    line += std::to_string(thread);
    line += now ? " takes " : " took ";
    line += name_of(taken);
    line += " at ";
    line += site_of(taken_at);
    line += " while holding ";
    line += name_of(held);
    line += ", taken at ";
    line += site_of(held_at);
    return line;
}

// A path from `from` to `to` in the graph (the edges along it), empty if none. Caller holds
// the checker's mutex.
std::vector<std::pair<const void*, const order_edge*>> find_path(const checker_state& c,
                                                                 const void* from, const void* to) {
    std::vector<std::pair<const void*, const order_edge*>> path;  // (source, edge) per step
    std::unordered_set<const void*> visited{from};
    // Iterative depth-first search: an explicit stack of (node, next edge index).
    std::vector<std::pair<const void*, std::size_t>> stack{{from, 0}};
    while (!stack.empty()) {
        auto& [node, next] = stack.back();
        const auto found = c.graph.find(node);
        if (found == c.graph.end() || next >= found->second.out.size()) {
            stack.pop_back();
            if (!path.empty()) path.pop_back();
            continue;
        }
        const order_edge& edge = found->second.out[next++];
        if (edge.to == to) {
            path.emplace_back(node, &edge);
            return path;
        }
        if (!visited.insert(edge.to).second) continue;
        path.emplace_back(node, &edge);
        stack.emplace_back(edge.to, 0);
    }
    return {};
}

void report(const std::string& text) {
    std::shared_ptr<const lock_order_handler> installed;
    {
        auto& state = handler();
        std::lock_guard guard(state.mutex);
        installed = state.handler;
    }
    if (installed) {
        (*installed)(text);
    } else {
        default_lock_order_handler(text);
    }
}

}  // namespace

void order_before(const lock_ref* locks, std::size_t count, std::source_location where) {
    thread_state& self = this_thread();
    auto& c = checker();
    if (const auto generation = c.generation.load(std::memory_order_acquire);
        self.generation != generation) {
        // forget_lock_order removed edges this thread may remember: check them all again.
        self.known.clear();
        self.generation = generation;
    }
    std::vector<std::string> reports;
    self.new_edges.clear();
    {
        std::lock_guard guard(self.held->mutex);
        auto& held = self.held->locks;
        held.reserve(held.size() + count);  // so that order_acquired cannot fail
        for (std::size_t i = 0; i < count; ++i) {
            const lock_ref& taken = locks[i];
            const auto again = std::find_if(held.begin(), held.end(), [&](const held_lock& h) {
                return h.lock.key == taken.key;
            });
            if (again != held.end()) {
                // Already held: no new order, but a non-recursive lock cannot be taken twice.
                if (conflicts(*again, taken)) {
                    reports.push_back(
                        "recursive locking of a non-recursive lock (a self-deadlock):\n  thread " +
                        std::to_string(self.held->thread) + " takes " + name_of(taken) + " at " +
                        site_of(where) + "\n  which it already holds, taken at " +
                        site_of(again->where) + ", and it is not recursive");
                }
                continue;
            }
            for (const held_lock& h : held) {
                if (self.known.count({h.lock.key, taken.key}) == 0) {
                    self.new_edges.emplace_back(h, taken);
                }
            }
        }
    }

    if (!self.new_edges.empty()) {
        std::lock_guard guard(c.mutex);
        for (const auto& [held, taken] : self.new_edges) {
            auto& from = c.graph.try_emplace(held.lock.key, lock_node{held.lock, {}}).first->second;
            c.graph.try_emplace(taken.key, lock_node{taken, {}});
            const bool exists = std::any_of(from.out.begin(), from.out.end(),
                                            [&](const order_edge& e) { return e.to == taken.key; });
            if (!exists) {
                const auto cycle = find_path(c, taken.key, held.lock.key);
                if (!cycle.empty()) {
                    std::string text = "lock-order inversion (possible deadlock):" +
                                       describe_edge("now:     ", self.held->thread, taken, where,
                                                     held.lock, held.where, true);
                    for (const auto& [source, edge] : cycle) {
                        text += describe_edge("earlier: ", edge->thread, c.graph.at(edge->to).lock,
                                              edge->taken_at, c.graph.at(source).lock,
                                              edge->held_at, false);
                    }
                    reports.push_back(std::move(text));
                }
                from.out.push_back({taken.key, held.where, where, self.held->thread});
            }
            self.known.insert({held.lock.key, taken.key});
        }
    }
    self.new_edges.clear();
    for (const auto& text : reports) report(text);
}

void order_acquired(const lock_ref* locks, std::size_t count, std::source_location where) noexcept {
    thread_state* self = current_thread;  // order_before made it, on this thread
    if (self == nullptr) return;
    std::lock_guard guard(self->held->mutex);
    for (std::size_t i = 0; i < count; ++i) self->held->locks.push_back({locks[i], where});
}

namespace {

// Removes the newest hold of `key` from `list`; false if it has none. Caller holds its mutex.
bool remove_hold(held_list& list, const void* key) noexcept {
    auto& held = list.locks;
    for (auto it = held.rbegin(); it != held.rend(); ++it) {
        if (it->lock.key == key) {
            held.erase(std::next(it).base());
            return true;
        }
    }
    return false;
}

}  // namespace

void order_released(const lock_ref* locks, std::size_t count) noexcept {
    for (std::size_t i = count; i-- > 0;) {
        const void* key = locks[i].key;
        if (current_thread != nullptr) {
            std::lock_guard guard(current_thread->held->mutex);
            if (remove_hold(*current_thread->held, key)) continue;
        }
        // Taken on another thread (a file_lock moved here), or this thread's state was
        // reaped: find the hold wherever it is.
        auto& c = checker();
        std::lock_guard guard(c.mutex);
        for (auto it = c.threads.begin(); it != c.threads.end(); ++it) {
            auto list = *it;
            std::lock_guard list_guard(list->mutex);
            if (!remove_hold(*list, key)) continue;
            if (list->orphaned && list->locks.empty()) c.threads.erase(it);
            break;
        }
    }
}

void order_forget(const void* key) noexcept {
    auto& c = checker();
    std::lock_guard guard(c.mutex);
    c.graph.erase(key);
    for (auto& [_, node] : c.graph) {
        std::erase_if(node.out, [&](const order_edge& e) { return e.to == key; });
    }
    c.generation.fetch_add(1, std::memory_order_acq_rel);
}

const void* lock_order_file_key(std::string_view name) {
    auto& c = checker();
    std::lock_guard guard(c.mutex);
    auto found = c.file_keys.find(name);
    if (found == c.file_keys.end()) found = c.file_keys.emplace(name).first;
    return static_cast<const void*>(&*found);
}

#endif  // CTXMGR_LOCK_ORDER_CHECK

}  // namespace detail

}  // namespace ctxmgr
