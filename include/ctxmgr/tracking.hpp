// ctxmgr/tracking.hpp: every live resource, where it was acquired, and for how long.
//
// Python warns with ResourceWarning when a file is dropped unclosed and tracemalloc says
// where it was opened; HikariCP reports a connection held too long with the stack that took
// it. ctxmgr does both for every resource it manages, and for user types that hold a
// `tracked` member:
//
//   class socket_handle {
//       int fd_;
//       [[no_unique_address]] ctxmgr::tracked tracked_;   // registered while this is live
//   public:
//       socket_handle(int fd, std::source_location where = std::source_location::current())
//           : fd_(fd), tracked_("socket", "fd " + std::to_string(fd), where) {}
//   };
//
//   ctxmgr::report_live(std::cerr);
//   // file "/tmp/x" acquired at app.cpp:42 in int main(), held 1.2 s, thread 1
//
//   ctxmgr::with(ctxmgr::expect_no_leaks(), [] { run_request(); });   // throws leak_error
//
// Every acquiring function of the library takes `std::source_location where =
// std::source_location::current()` last, so the registry names the user's line. A factory
// in between (std::make_unique, emplace) is the caller of the default argument and names
// its own line: construct with `new`, or pass `where` on.
//
// At process exit, resources still live are reported as CTXMGR_LEAKS says: `warn` (the
// default: one line each to stderr), `ignore`, or `abort` (print, then abort); any other
// value is named in a one-line warning and taken as `warn` (an empty one as unset). The report is
// an atexit handler installed by the first registration, so it runs after the destructors of static
// objects constructed later (function-local statics first used after it) and before those of static
// objects constructed earlier. Only resources registered by this process count, there and in every
// listing: a forked child does not report its parent's.
//
// Guarantees: registering may allocate (it may throw std::bad_alloc, and then registers
// nothing); unregistering, moving and release() never throw. Thread-safe: resources may be
// registered, moved to another thread and unregistered there while other threads list
// them. Registration takes one uncontended per-thread lock, so threads do not slow each
// other down (about 20 ns a register+unregister pair, see docs/performance.md).
// acquired_at is read from steady_clock at registration, so it is never earlier than a
// steady_clock::now() read before the acquiring call and never later than one read after it.
//
// Compiled out with the CMake option CTXMGR_TRACKING=OFF: `tracked` is then an empty type
// (a member declared [[no_unique_address]] takes no space), no registry code runs,
// live_resources() is empty, expect_no_leaks() checks nothing and watch_held_too_long starts
// no thread.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <iosfwd>
#include <memory>
#include <set>
#include <source_location>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "detail/entry_check.hpp"
#include "errors.hpp"

#ifndef CTXMGR_TRACKING
#define CTXMGR_TRACKING 1
#endif

namespace ctxmgr {

// A snapshot of one live resource.
struct resource_info {
    std::uint64_t id = 0;        // unique in the process, never reused
    std::string kind;            // "file", "tcp connection", "sqlite connection", ...
    std::string description;     // the path, the endpoints, the redacted conninfo
    std::source_location where;  // the user's line that acquired it
    std::uint64_t thread = 0;    // ctxmgr's number for the acquiring thread, from 1
    std::chrono::steady_clock::time_point acquired_at;

    // How long it has been held.
    [[nodiscard]] std::chrono::steady_clock::duration age() const noexcept {
        return std::chrono::steady_clock::now() - acquired_at;
    }
};

namespace detail {
struct tracking_node;

// Whose registration it is, for a watch_held_too_long that looks at one owner's alone (a
// pool's borrows). Null: nobody's in particular.
struct tracking_owner {
    const void* tag = nullptr;
};
}  // namespace detail

#if CTXMGR_TRACKING

// A registration in the registry of live resources, held as a member by a resource.
// Constructing it registers; destroying it or release() unregisters; moving transfers the
// registration. Kinds longer than 31 characters are cut.
class tracked {
  public:
    // Registers nothing.
    tracked() noexcept = default;

    tracked(std::string_view kind, std::string description,
            std::source_location where = std::source_location::current())
        : tracked(detail::tracking_owner{}, kind, std::move(description), where) {}

    // Registered as `owner`'s, for the watch_held_too_long of that owner.
    tracked(detail::tracking_owner owner, std::string_view kind, std::string description,
            std::source_location where);

    tracked(tracked&& other) noexcept : node_(std::exchange(other.node_, nullptr)) {}
    tracked& operator=(tracked&& other) noexcept {
        if (this != &other) {
            release();
            node_ = std::exchange(other.node_, nullptr);
        }
        return *this;
    }
    tracked(const tracked&) = delete;
    tracked& operator=(const tracked&) = delete;

    ~tracked() { release(); }

    // Unregisters now (the resource was released). Idempotent.
    void release() noexcept {
        if (node_ != nullptr) unregister(std::exchange(node_, nullptr));
    }

    // True while registered.
    [[nodiscard]] bool registered() const noexcept { return node_ != nullptr; }

    // The registration's id (resource_info::id), 0 when not registered.
    [[nodiscard]] std::uint64_t id() const noexcept;

    // Replaces the description, e.g. once a connection knows its endpoints.
    void describe(std::string description);

  private:
    static void unregister(detail::tracking_node* node) noexcept;
    detail::tracking_node* node_ = nullptr;
};

static_assert(sizeof(tracked) == sizeof(void*), "a registration is one pointer");

#else

// Tracking is compiled out (CTXMGR_TRACKING=OFF): an empty type that does nothing.
class tracked {
  public:
    tracked() noexcept = default;
    tracked(std::string_view, std::string,
            std::source_location = std::source_location::current()) noexcept {}
    tracked(detail::tracking_owner, std::string_view, std::string, std::source_location) noexcept {}
    tracked(tracked&&) noexcept = default;
    tracked& operator=(tracked&&) noexcept = default;
    tracked(const tracked&) = delete;
    tracked& operator=(const tracked&) = delete;
    void release() noexcept {}
    [[nodiscard]] bool registered() const noexcept { return false; }
    [[nodiscard]] std::uint64_t id() const noexcept { return 0; }
    void describe(std::string) noexcept {}
};

static_assert(std::is_empty_v<tracked>, "compiled out, a registration takes no space");

#endif

// True when this build tracks resources (CTXMGR_TRACKING=ON).
inline constexpr bool tracking_enabled = CTXMGR_TRACKING != 0;

namespace detail {
// How many per-thread shards the registry has made (0 when compiled out): a thread that
// exits leaves its shard to the next thread that registers, so this stays at the most
// threads ever registered at once. For tests.
[[nodiscard]] std::size_t tracking_shards() noexcept;
}  // namespace detail

// Every live resource, oldest first: by acquired_at, and at equal time stamps by id, which
// is the order of registration on each thread. Empty when tracking is compiled out.
[[nodiscard]] std::vector<resource_info> live_resources();

// The live resources held for longer than `threshold`, oldest first.
[[nodiscard]] std::vector<resource_info> held_longer_than(std::chrono::nanoseconds threshold);

// Writes one line per live resource:
//   file "/tmp/x" acquired at app.cpp:42 in int main(), held 1.2 s, thread 3
void report_live(std::ostream& out);

// The line report_live writes for one resource, without the newline.
[[nodiscard]] std::string describe(const resource_info& resource);

// Runs a watchdog thread from enter() to exit() that calls callback(resource) once for each
// resource that becomes older than `threshold` (HikariCP's leakDetectionThreshold, for every
// kind of resource). The callback runs on the watchdog thread; an exception from it goes to
// the unraisable hook. It checks every threshold/4, between 1 ms and 100 ms; the first check
// is at enter(), so resources already past the threshold are reported then. exit() wakes
// the watchdog (it does not wait out an interval) and waits for a running callback.
class [[nodiscard]] watch_held_too_long {
  public:
    using callback_type = std::function<void(const resource_info&)>;

    watch_held_too_long(std::chrono::nanoseconds threshold, callback_type callback,
                        std::source_location where = std::source_location::current());
    // Watches only the resources registered as `owner`'s (a pool watches its borrows so).
    watch_held_too_long(detail::tracking_owner owner, std::chrono::nanoseconds threshold,
                        callback_type callback,
                        std::source_location where = std::source_location::current());
    watch_held_too_long(watch_held_too_long&&) noexcept;
    // Stops this one's watchdog first; if this one was never entered, that is reported.
    watch_held_too_long& operator=(watch_held_too_long&&) noexcept;
    // Stops the watchdog if it still runs; one never entered reports that it watched nothing.
    ~watch_held_too_long();

    // Starts the watchdog. Throws protocol_error if it already runs, std::system_error if
    // the thread cannot start.
    void enter();
    // Stops the watchdog and waits for it.
    void exit(const std::exception_ptr&) noexcept;

  private:
    struct state;
    std::unique_ptr<state> state_;
    [[no_unique_address]] detail::entry_check<"watch_held_too_long"> check_;
};

// For tests: resources registered between enter() and exit() that are still live at exit()
// are leaks. With no pending exception, exit throws leak_error listing them (kind,
// description, source line); with one, they go to the unraisable hook and the pending
// exception propagates.
class [[nodiscard]] expect_no_leaks {
  public:
    // Made and never entered, it checks nothing; its destructor reports that (with `where`)
    // to the unraisable hook.
    explicit expect_no_leaks(std::source_location where = std::source_location::current()) noexcept
        : check_(where) {}

    void enter();
    void exit(const std::exception_ptr& e);

    // The leaks so far: resources registered since enter() and still live.
    [[nodiscard]] std::vector<resource_info> leaks() const;

  private:
    std::set<std::uint64_t> before_;
    bool entered_ = false;
    [[no_unique_address]] detail::entry_check<"expect_no_leaks"> check_;
};

}  // namespace ctxmgr
