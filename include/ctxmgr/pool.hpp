// ctxmgr/pool.hpp: a pool of database connections, borrowed for a block and given back.
//
// Connecting costs a server process and a few round trips; a pool keeps connections open and
// lends them out. pool<Connection> works with any db::connection (ctxmgr::sqlite and
// ctxmgr::postgres both), made by a factory the pool calls on a thread of its own, and with
// postgres::async_connection, borrowed by coroutines only (pool.async_connection(), in
// async_pool.hpp). Borrowing
// is a manager, so the connection always comes back, whatever the block does:
//
//   ctxmgr::pool pool([] { return ctxmgr::postgres::connect("host=db dbname=app"); },
//                     {.name = "app", .max_size = 8, .acquire_timeout = std::chrono::seconds(2)});
//   ctxmgr::with(pool.connection(), [](ctxmgr::postgres::connection& db) {
//       db.execute("UPDATE t SET n = n + 1");
//   });   // back in the pool: a transaction left open rolled back, a broken connection replaced
//
// Lending (enter): the most recently returned idle connection, checked first when it has
// waited: idle longer than validate_after_idle, it is pinged (a round trip, waiting at most
// validation_timeout and no longer than the borrower has left, though at least 250 ms unless
// validation_timeout is smaller: a connection whose server stopped answering is closed, not
// waited on, when the connection type has ping(timeout), as postgres::connection has); idle
// for longer than a millisecond, pool_traits<Connection>::usable looks at it without a round
// trip (for PostgreSQL: is the socket closed or readable, as after a server restart or
// pg_terminate_backend). A connection that fails is destroyed and the next one tried. With
// none idle, a new one is asked of the factory (up to max_size), and the borrower waits for
// whichever comes first, a new or a returned connection, at most acquire_timeout; it is never
// inside a connect itself, so a server that refuses (SQLSTATE 53300) or never answers (a
// stopped postmaster) cannot hold it past its deadline. Then it
// throws timeout_error naming the pool, its size, the source lines of the current borrowers
// (where a leak would be) and the last connection failure (also nested in it). A connection
// that arrives after its waiter gave up stays in the pool. Waiters are served first come,
// first served, except that a borrower arriving just as a connection comes back may take it
// before the waiter woken for it; a waiter overtaken so is handed the next connection
// outright, so none is overtaken twice in a row and none starves. Chosen over strict FIFO
// hand-off (every returned connection handed to the first waiter) by measurement on 2 cores,
// a pool of 4 SQLite connections: bare borrow and return from 32 threads took 8.7 us a borrow
// with strict hand-off against 0.27 us (a lock convoy: each connection sits unused until the
// thread it was handed to is scheduled, while running threads wait), from 8 threads 0.61 us
// against 0.43 us; SELECT 1 on PostgreSQL from 8 threads through a pool of 4 made 1.97
// against 2.02 context switches a query, no difference in throughput beyond the noise.
//
// Parking: a connection given back within the coarse clock's tick of its borrow (1 to 4 ms),
// with nobody waiting, is parked where the next borrow on the same CPU takes it, neither
// taking the pool's lock, so that threads on several cores borrowing at once do not contend
// (from 32 threads on 2 cores, a pool of 4: 37 ns a borrow, against 148 ns for a bare mutex
// and condition variable pool). A parked connection is idle for every other purpose (stats,
// metrics, limits) and is taken back before any borrower waits, before suspend(), close(),
// evict_all() or a shrinking resize() act, so the rules above hold unchanged. A pool with
// min_idle set does not park until it has max_size connections (a borrow that takes a
// parked connection does not ask for a replacement).
//
// Giving back (exit): rollback_any() ends whatever transaction is open or failed, as the back
// end reports it (and makes transaction managers still entered on it inert); a connection
// that is lost or closed, or whose rollback fails, is destroyed and its place freed for a new
// one. A rollback failure other than a lost connection is thrown by exit (chained to a pending
// exception); a lost connection is not an error of the return. Commit inside the block
// (conn.transaction()): work left uncommitted is rolled back, as HikariCP does.
//
// Maintenance, on a thread of the pool: connections idle longer than idle_timeout are closed
// down to min_idle, connections older than max_lifetime (less up to 2.5%, so that they do not
// all go at once) are closed when idle and not lent again, and min_idle connections are kept
// open. Every idle connection is looked at (pool_traits::usable) once a second, and at once
// when a borrower found one broken: after a server restart, the sessions it ended are
// replaced without a request failing. Each borrow is registered with the leak tracker (kind
// "pooled connection", described by the pool's quoted name), so report_live() and
// expect_no_leaks() see borrows too; a borrow held longer than leak_threshold is reported once,
// with the borrower's source line and thread, to on_leak (HikariCP's leak detection) by the
// tracker's watch_held_too_long over the pool's own borrows. Built with CTXMGR_TRACKING=OFF,
// there is nothing to watch and leak_threshold reports nothing.
//
// Observing and operating (each documented where it is declared): metrics(), status() and
// write_prometheus() (OpenTelemetry's names); suspend()/resume(), evict_idle()/evict_all(),
// resize(); pool_options::max_waiting and initialization_timeout.
//
// Guarantees:
//   - Thread-safe: a pool is shared by any number of threads. A pooled_connection manager and
//     the connection it lends are thread-compatible (one thread at a time; it may be returned
//     on another thread). The factory runs on the pool's thread, one call at a time.
//   - enter() throws timeout_error, too_many_waiters (max_waiting), closed_error (the pool
//     is closed), protocol_error (entered twice); after a failure nothing is borrowed. exit() and
//     the manager's destructor always give the connection back; the destructor sends a failure to
//     the unraisable hook.
//   - close(deadline) stops lending (waiters get closed_error), closes idle connections, waits
//     for a connection attempt in progress (the factory's own connect timeout bounds it) and
//     for borrowed connections until the deadline, then throws leak_error naming those never
//     returned. A connection returned after that is closed; the pool's bookkeeping lives on
//     until then, so returning late is safe. The destructor closes with close_timeout and
//     reports to the unraisable hook instead of throwing. The pool must outlive enter().
//   - Not fork-safe: a child process must not use its parent's pool (its threads are not
//     there); make pools after fork().
//   - Cost: borrow and return, uncontended, about 60 ns with the leak registration (see
//     docs/performance.md); a pool name longer than 13 characters adds an allocation.
#pragma once

#include <array>
#include <bit>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <iosfwd>
#include <memory>
#include <source_location>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "db.hpp"
#include "detail/deadline.hpp"
#include "detail/entry_check.hpp"
#include "errors.hpp"
#include "release.hpp"
#include "tracking.hpp"
#include "unraisable.hpp"

namespace ctxmgr {

// A duration of 0 disables what it limits, except validate_after_idle, where 0 pings every
// connection before lending it. Negative durations and max_size 0 are refused with
// std::invalid_argument naming the option.
struct pool_options {
    // In messages and leak reports.
    std::string name = "pool";
    // Connections open at most: idle, lent, or being made.
    std::size_t max_size = 10;
    // Idle connections kept open (made in the background), at most max_size.
    std::size_t min_idle = 0;
    // How long connection() waits for a connection before throwing timeout_error.
    std::chrono::milliseconds acquire_timeout{30'000};
    // A connection older than this is closed when idle, not lent again.
    std::chrono::milliseconds max_lifetime{30 * 60'000};
    // An idle connection beyond min_idle is closed after this long.
    std::chrono::milliseconds idle_timeout{10 * 60'000};
    // A connection idle longer than this is pinged before it is lent (HikariCP: 500 ms).
    std::chrono::milliseconds validate_after_idle{500};
    // How long that ping may wait for the answer (HikariCP's validationTimeout: 5 s); also
    // cut to the borrower's time left, down to 250 ms. 0: no limit but the borrower's.
    std::chrono::milliseconds validation_timeout{5'000};
    // A borrow held longer than this is reported to on_leak, once (checked every quarter of
    // it, between 1 and 100 ms, as watch_held_too_long checks).
    std::chrono::milliseconds leak_threshold{0};
    // Receives the borrow as the leak tracker records it (kind "pooled connection", its source
    // line and thread, when it began), on the pool's watch thread; what it throws goes to the
    // unraisable hook. close() from here throws protocol_error. Empty: one line to stderr.
    std::function<void(const resource_info&)> on_leak{};
    // How long the destructor and exit() wait for borrowed connections.
    std::chrono::milliseconds close_timeout{5'000};
    // Borrowers waiting at once, at most; one more fails at once with too_many_waiters
    // instead of queueing (shedding load that would only time out). 0: no limit.
    std::size_t max_waiting = 0;
    // When positive, the constructor waits this long for one connection and, when none
    // could be made, throws timeout_error naming the pool with the last connection failure
    // nested (HikariCP's initializationFailTimeout): a database that cannot be reached at all
    // fails the start, not the first request. The constructor may also wait for an attempt
    // in progress to end (the factory's own connect timeout bounds it). 0: start at once.
    std::chrono::milliseconds initialization_timeout{0};
};

// A snapshot. size == idle + in_use, and created - destroyed == size.
struct pool_stats {
    std::size_t size = 0;     // open connections
    std::size_t idle = 0;     // ready to lend
    std::size_t in_use = 0;   // lent (or being checked before lending)
    std::size_t waiting = 0;  // borrowers waiting for a connection
    std::uint64_t created = 0;
    std::uint64_t destroyed = 0;
    std::uint64_t timeouts = 0;  // waits that ended in timeout_error

    friend bool operator==(const pool_stats&, const pool_stats&) = default;
};

// A distribution of durations in fixed buckets, log-scale: bucket i counts the durations in
// (upper_bound(i - 1), upper_bound(i)], from 2^17 ns (131 us) doubling up to 2^35 ns (34 s),
// the last bucket everything longer. Fixed, so that recording is a shift and an increment
// and pools' histograms can be added up. Thread-compatible: the pool records under its lock
// and metrics() hands out copies.
struct pool_histogram {
    static constexpr std::size_t bucket_count = 20;
    static constexpr int first_bound_log2 = 17;

    // The largest duration bucket i holds; nanoseconds::max() for the last.
    [[nodiscard]] static constexpr std::chrono::nanoseconds upper_bound(std::size_t i) noexcept {
        return i + 1 < bucket_count
                   ? std::chrono::nanoseconds(std::int64_t{1} << (first_bound_log2 + i))
                   : std::chrono::nanoseconds::max();
    }
    // The bucket a duration falls in.
    [[nodiscard]] static constexpr std::size_t bucket_of(std::chrono::nanoseconds d) noexcept {
        if (d.count() <= 0) return 0;
        const auto above = static_cast<std::uint64_t>(d.count() - 1) >> first_bound_log2;
        const std::size_t i = static_cast<std::size_t>(std::bit_width(above));
        return i < bucket_count ? i : bucket_count - 1;
    }

    void record(std::chrono::nanoseconds d) noexcept {
        ++buckets[bucket_of(d)];
        ++count;
        sum += d;
    }

    std::array<std::uint64_t, bucket_count> buckets{};  // not cumulative
    std::uint64_t count = 0;
    std::chrono::nanoseconds sum{0};

    friend bool operator==(const pool_histogram&, const pool_histogram&) = default;
};

// What pool::metrics() returns: a snapshot taken under the pool's lock, so the counts agree
// with each other (idle + used == created - destroyed). Times come from the clock the pool
// reads anyway: use_time from the coarse monotonic clock (its tick, 1 to 4 ms, is the
// resolution: a borrow shorter than a tick may count as 0), wait_time and create_time from
// steady_clock. A borrow served from an idle connection without waiting or checking counts
// a wait of 0; a wait that ends in timeout_error or an error counts in timeouts or not at all,
// never in wait_time.
struct pool_metrics {
    std::size_t idle = 0;     // ready to lend
    std::size_t used = 0;     // lent (or being checked before lending)
    std::size_t pending = 0;  // borrowers waiting for a connection
    std::size_t max = 0;      // max_size
    std::uint64_t timeouts = 0;
    std::uint64_t refused = 0;  // borrowers turned away by max_waiting (too_many_waiters)
    std::uint64_t created = 0;
    std::uint64_t destroyed = 0;
    pool_histogram wait_time;    // from connection().enter() until it returns a connection
    pool_histogram use_time;     // from lending until the connection is back
    pool_histogram create_time;  // the factory's successful calls
};

// How the pool checks an idle connection without a round trip before lending it (when it has
// been idle for more than a millisecond): the connection's `bool alive() noexcept` when it has
// one (postgres::connection looks at its socket, so that a session the server ended while it
// sat in the pool, by a restart, pg_terminate_backend or a crash, is never lent), is_open()
// otherwise. Specialize it for a connection type that can tell more and cannot be changed.
template <class Connection>
struct pool_traits {
    static bool usable(Connection& connection) noexcept {
        if constexpr (requires {
                          { connection.alive() }
                          noexcept->std::same_as<bool>;
                      }) {
            return connection.alive();
        } else {
            return connection.is_open();
        }
    }
};

// What a pool asks of the connections it keeps: a db::connection (borrowed with
// connection() or async_connection()), or a connection whose statements are awaited
// (postgres::async_connection: borrowed with async_connection() only, rolled back and checked
// with async_rollback_any() and async_ping(timeout)).
template <class C>
concept pool_connection =
    std::move_constructible<C> && !std::copy_constructible<C> && requires(C & c, const C& cc) {
    { cc.is_open() }
    noexcept->std::same_as<bool>;
    { cc.transaction_state() }
    noexcept->std::same_as<db::transaction_state>;
    { cc.description() }
    noexcept->std::same_as<const std::string&>;
}
&&(db::connection<C> || requires(C & c, std::chrono::milliseconds timeout) {
    c.async_rollback_any();
    c.async_ping(timeout);
});

namespace detail {
// A pool connection whose statements, rollback and ping are awaited (postgres::async_connection):
// lent by async_connection() only, pinged by its borrower, rolled back by its async_exit.
template <class C>
concept awaited_connection = pool_connection<C> && !db::connection<C>;
}  // namespace detail

// A borrower holding a connection, as pool::status() lists it.
struct pool_borrower {
    std::source_location where;     // where connection() was called
    std::chrono::nanoseconds held;  // since it was lent (coarse clock: up to a tick short)
};

// What pool::status() returns, for an operator's page: one snapshot under the pool's lock.
struct pool_status {
    pool_metrics metrics;
    // How long the borrower waiting longest has waited so far (pgbouncer's maxwait); 0 when
    // nobody waits.
    std::chrono::nanoseconds longest_wait{0};
    std::vector<pool_borrower> borrowers;  // those holding a connection, longest held first
    bool suspended = false;                // see pool::suspend()
};

namespace detail {

// What the type-erased core (src/pool/pool.cpp) asks of a connection type.
class pool_connector {
  public:
    pool_connector() = default;
    pool_connector(const pool_connector&) = delete;
    pool_connector& operator=(const pool_connector&) = delete;
    virtual ~pool_connector() = default;

    // A new connection from the factory; throws what the factory throws.
    [[nodiscard]] virtual void* create() = 0;
    virtual void destroy(void* connection) noexcept = 0;
    // A round trip, waiting at most `timeout` when the connection type can bound it.
    [[nodiscard]] virtual bool ping(void* connection,
                                    std::chrono::milliseconds timeout) noexcept = 0;
    [[nodiscard]] virtual bool usable(void* connection) noexcept = 0;
    // The connection type's ping is awaited (async_ping): the core does not ping, it marks the
    // entry ping_due for the asynchronous borrower to ping.
    [[nodiscard]] virtual bool pinged_by_borrower() const noexcept = 0;
};

// One connection's place in the pool; the rest of it is the core's.
struct pool_entry_base {
    void* connection = nullptr;
    // Lent without its ping (pool_connector::pinged_by_borrower): the borrower pings it.
    bool ping_due = false;
};

class pool_core;

[[nodiscard]] pool_core* pool_open(std::unique_ptr<pool_connector> connector, pool_options options,
                                   std::source_location where);
// Closes and frees the core, or leaves it to the last borrower still out.
void pool_dispose(pool_core* core) noexcept;
[[nodiscard]] pool_entry_base* pool_acquire(pool_core& core, std::chrono::nanoseconds timeout,
                                            const std::source_location& where);
void pool_release(pool_core& core, pool_entry_base& entry, bool reusable) noexcept;

// Borrowing without blocking a thread (async_pool.hpp drives it from a coroutine). An
// asynchronous borrower waits in the same queue as the synchronous ones, first come first
// served. The core calls wake(*this) once, from any thread and after unlocking, when it
// takes the waiter off the queue (a connection handed to it, one come back to look at, the
// pool closing, resumed), and touches nothing of it once that call has begun.
struct pool_async_waiter {
    void (*wake)(pool_async_waiter&) noexcept = nullptr;
    // Guarded by the pool's lock.
    void* queued = nullptr;             // the core's record of it, while it is in the queue
    pool_entry_base* handed = nullptr;  // lent to it outright when taken off the queue
};
// The deadline of a borrow asked at `started` (nanoseconds::max(): acquire_timeout).
[[nodiscard]] deadline pool_deadline(const pool_core& core, std::chrono::nanoseconds timeout,
                                     std::chrono::steady_clock::time_point started) noexcept;
// Lends the idle connection a synchronous borrow would take at once, when it needs no check
// (nothing due: look, validation, retirement) and the pool is neither closing nor
// suspended; otherwise nullptr, with nothing changed. Then pool_acquire_async.
[[nodiscard]] pool_entry_base* pool_try_acquire_fresh(pool_core& core,
                                                      const std::source_location& where) noexcept;
// Lends a connection (checked as connection() checks it), or queues `waiter` (first when
// `overtaken`: its last wake found the connection taken) and returns nullptr: then wait for its
// wake, or withdraw it. Throws what connection() throws (the timeout_error once `limit` has
// passed).
[[nodiscard]] pool_entry_base* pool_acquire_async(pool_core& core, pool_async_waiter& waiter,
                                                  bool overtaken, const deadline& limit,
                                                  std::chrono::steady_clock::time_point started,
                                                  const std::source_location& where);
// Takes `waiter` off the queue when it is still there (its wait ended otherwise: true, and
// wake is not called); false when the core took it off (wake is called, or was).
[[nodiscard]] bool pool_withdraw(pool_core& core, pool_async_waiter& waiter) noexcept;
// After the wake, or a withdraw that found the core quicker: the connection handed to
// `waiter`, checked (nullptr: none, or it failed its check and was destroyed).
[[nodiscard]] pool_entry_base* pool_take_handed(pool_core& core, pool_async_waiter& waiter,
                                                const deadline& limit,
                                                std::chrono::steady_clock::time_point started);
// After a wake that handed nothing (look at the idle connections), when the borrower leaves
// without looking: the next waiter is woken instead.
void pool_pass_wake(pool_core& core) noexcept;
// Gives back a connection lent to a borrower who left before using it (cancelled); one not
// `reusable` is destroyed.
void pool_return_unused(pool_core& core, pool_entry_base& entry, bool reusable = true) noexcept;
// The ping of an entry lent ping_due failed: destroys the connection, and has the pool look
// at its other idle connections now (as when the core's own check fails).
void pool_failed_ping(pool_core& core, pool_entry_base& entry) noexcept;
// How long the borrower's ping of an entry lent ping_due may wait (validation_timeout, cut
// to what `limit` leaves, as the core's own ping).
[[nodiscard]] std::chrono::milliseconds pool_ping_timeout(const pool_core& core,
                                                          const deadline& limit) noexcept;
[[nodiscard]] pool_stats pool_statistics(const pool_core& core);
[[nodiscard]] pool_metrics pool_metrics_of(const pool_core& core);
[[nodiscard]] pool_status pool_status_of(const pool_core& core);
void pool_suspend(pool_core& core);
void pool_resume(pool_core& core);
std::size_t pool_evict_idle(pool_core& core);
std::size_t pool_evict_all(pool_core& core);
void pool_resize(pool_core& core, std::size_t min_idle, std::size_t max_size);
[[nodiscard]] const std::string& pool_name(const pool_core& core) noexcept;
// One pool's metrics for write_prometheus.
struct named_pool_metrics {
    const std::string* name;
    pool_metrics metrics;
};
void write_prometheus(std::ostream& out, const named_pool_metrics* pools, std::size_t count);
void pool_close(pool_core& core, const deadline& limit);
// `pool "name"`, for messages.
[[nodiscard]] const std::string& pool_description(const pool_core& core) noexcept;
// `"name"`, a borrow's description in the leak tracker.
[[nodiscard]] const std::string& pool_quoted_name(const pool_core& core) noexcept;
[[nodiscard]] std::chrono::milliseconds pool_close_timeout(const pool_core& core) noexcept;

template <class Connection>
class typed_pool_connector final : public pool_connector {
  public:
    explicit typed_pool_connector(std::function<Connection()> factory)
        : factory_(std::move(factory)) {}

    void* create() override { return new Connection(factory_()); }
    void destroy(void* connection) noexcept override {
        // A close that fails (SQLite with statements of the user's still open) is reported by
        // the connection's destructor.
        delete static_cast<Connection*>(connection);
    }
    bool ping(void* connection, std::chrono::milliseconds timeout) noexcept override {
        Connection& c = *static_cast<Connection*>(connection);
        if constexpr (awaited_connection<Connection>) {
            return usable(connection);  // not called: the borrower pings
        } else if constexpr (requires {
                                 { c.ping(timeout) }
                                 noexcept->std::same_as<bool>;
                             }) {
            return c.ping(timeout);
        } else {
            return c.ping();
        }
    }
    bool usable(void* connection) noexcept override {
        return pool_traits<Connection>::usable(*static_cast<Connection*>(connection));
    }
    bool pinged_by_borrower() const noexcept override { return awaited_connection<Connection>; }

  private:
    std::function<Connection()> factory_;
};

// A connection lent by the pool to one borrower: its leak registration, and its return
// (rollback, then lent again or destroyed). What pool.connection() and pool.async_connection()
// share. Move-only; gives back in its destructor what was never given back.
template <pool_connection Connection>
class pool_loan {
  public:
    explicit pool_loan(pool_core& core) noexcept : core_(&core) {}
    pool_loan(pool_loan&& other) noexcept
        : core_(other.core_),
          entry_(std::exchange(other.entry_, nullptr)),
          tracked_(std::move(other.tracked_)) {}
    pool_loan& operator=(pool_loan&&) = delete;
    pool_loan(const pool_loan&) = delete;
    pool_loan& operator=(const pool_loan&) = delete;
    ~pool_loan() {
        if (entry_ == nullptr) return;
        release_in_destructor([&] { give_back(nullptr); }, [&] { return pool_description(*core_); },
                              "pool", "returning a connection in the destructor");
    }

    [[nodiscard]] pool_core& core() const noexcept { return *core_; }
    [[nodiscard]] bool held() const noexcept { return entry_ != nullptr; }
    [[nodiscard]] Connection* get() const noexcept {
        return entry_ != nullptr ? static_cast<Connection*>(entry_->connection) : nullptr;
    }

    // Holds `entry`, just lent to the borrower at `where`, and registers it with the leak
    // tracker; when that throws, the connection goes back first.
    Connection& hold(pool_entry_base* entry, const std::source_location& where) {
        entry_ = entry;
        if constexpr (tracking_enabled) {
            try {
                // Registered as the core's: its leak watch looks at its own borrows.
                tracked_ = tracked(tracking_owner{core_}, "pooled connection",
                                   pool_quoted_name(*core_), where);
            } catch (...) {
                give_back(nullptr);
                throw;
            }
        }
        return *static_cast<Connection*>(entry->connection);
    }

    // Rolls back what is open; destroys the connection when lost, closed, or when the
    // rollback fails, and throws that failure (chained to `e`). Requires held(). A connection
    // whose rollback is awaited is not rolled back here: destroyed unless no transaction is
    // open (its async_exit rolls back first).
    void give_back(const std::exception_ptr& e) {
        Connection& c = *get();
        bool reusable = c.is_open();
        std::exception_ptr failure;
        if constexpr (!awaited_connection<Connection>) {
            if (reusable) {
                // Also when no transaction is open: transaction managers still entered on this
                // connection must not touch it once another borrower has it.
                try {
                    c.rollback_any();
                    reusable = c.is_open();
                } catch (...) {
                    reusable = false;
                    failure = rollback_failure(std::current_exception());
                }
            }
        } else {
            reusable = reusable && c.transaction_state() == db::transaction_state::idle;
        }
        finish(reusable, failure, e);
    }

    // Gives the connection back, destroyed unless `reusable`, and throws `failure` (the
    // rollback's) chained to `e`. Requires held().
    void finish(bool reusable, const std::exception_ptr& failure, const std::exception_ptr& e) {
        pool_entry_base& entry = *std::exchange(entry_, nullptr);
        tracked_.release();
        pool_release(*core_, entry, reusable);
        if (failure) rethrow_chained(failure, e);
    }

    // What a rollback that threw `thrown` is to the borrower: nothing when the connection was
    // lost (the server discards the transaction with it), the failure otherwise.
    static std::exception_ptr rollback_failure(const std::exception_ptr& thrown) noexcept {
        try {
            std::rethrow_exception(thrown);
        } catch (const db::connection_error&) {
            return nullptr;
        } catch (...) {
            return thrown;
        }
    }

  private:
    pool_core* core_;
    pool_entry_base* entry_ = nullptr;
    [[no_unique_address]] tracked tracked_;
};

}  // namespace detail

template <pool_connection Connection>
class pool;
template <pool_connection Connection>
class async_pooled_connection;

// The manager pool.connection() returns. enter() borrows a connection and returns it; exit()
// gives it back (see the top of this header). It may be entered again after exit. Move-only;
// the pool must outlive enter(). One never entered borrowed nothing: its destructor reports
// that, naming the line that made it, to the unraisable hook (a protocol_error).
template <pool_connection Connection>
class [[nodiscard]] pooled_connection {
  public:
    pooled_connection(pooled_connection&& other) noexcept = default;
    pooled_connection& operator=(pooled_connection&&) = delete;
    pooled_connection(const pooled_connection&) = delete;
    pooled_connection& operator=(const pooled_connection&) = delete;
    // Gives back a connection entered and never exited.
    ~pooled_connection() = default;

    // Waits for a connection (see the top of this header). Throws timeout_error,
    // closed_error, protocol_error when already entered.
    Connection& enter() {
        check_.entered();
        if (loan_.held()) {
            throw protocol_error(detail::pool_description(loan_.core()) +
                                 ": pooled connection entered twice");
        }
        return loan_.hold(detail::pool_acquire(loan_.core(), timeout_, check_.where()),
                          check_.where());
    }

    // Gives the connection back: rolls back what is open; destroys it when lost, closed, or
    // when the rollback fails, and throws that failure (chained to `e`). Throws
    // protocol_error when not entered.
    void exit(const std::exception_ptr& e) {
        if (!loan_.held()) {
            throw protocol_error("pooled connection exited without being entered");
        }
        loan_.give_back(e);
    }

    // The resources' common query: true when no connection is borrowed (before enter(),
    // after exit).
    [[nodiscard]] bool closed() const noexcept { return !loan_.held(); }
    // The borrowed connection; nullptr when not entered.
    [[nodiscard]] Connection* get() const noexcept { return loan_.get(); }

  private:
    friend class pool<Connection>;

    pooled_connection(detail::pool_core& core, std::chrono::nanoseconds timeout,
                      std::source_location where) noexcept
        : loan_(core), timeout_(timeout), check_(where) {}

    detail::pool_loan<Connection> loan_;
    std::chrono::nanoseconds timeout_;
    [[no_unique_address]] detail::entry_check<"pooled_connection"> check_;
};

// A pool of connections made by `factory` (see the top of this header). Also a manager:
// enter() returns the pool, exit() closes it with close_timeout (a leak_error chained to a
// pending exception). Move-constructible; the moved-from pool may only be destroyed.
template <pool_connection Connection>
class pool {
  public:
    using connection_type = Connection;
    using factory_type = std::function<Connection()>;

    // Starts the pool's threads; makes min_idle connections in the background. Throws
    // std::invalid_argument for bad options, std::system_error when a thread cannot start,
    // timeout_error when initialization_timeout passes without a connection.
    template <class Factory>
    requires std::is_invocable_r_v<Connection, Factory&>
    explicit pool(Factory factory, pool_options options = {},
                  std::source_location where = std::source_location::current())
        : core_(detail::pool_open(std::make_unique<detail::typed_pool_connector<Connection>>(
                                      factory_type(std::move(factory))),
                                  std::move(options), where)) {}

    pool(pool&& other) noexcept : core_(std::exchange(other.core_, nullptr)) {}
    pool& operator=(pool&&) = delete;
    pool(const pool&) = delete;
    pool& operator=(const pool&) = delete;

    // Closes with close_timeout; borrowed connections not back by then are reported to the
    // unraisable hook (and closed when they come back).
    ~pool() {
        if (core_ != nullptr) detail::pool_dispose(core_);
    }

    // A manager lending a connection for a block; its enter() waits at most acquire_timeout,
    // or `timeout` (<= 0: no wait, only an idle connection will do).
    // Not for a connection whose statements are awaited: borrow that with async_connection().
    [[nodiscard]] pooled_connection<Connection> connection(
        std::source_location where =
            std::source_location::current()) noexcept requires db::connection<Connection> {
        return connection(std::chrono::nanoseconds::max(), where);
    }
    [[nodiscard]] pooled_connection<Connection> connection(
        std::chrono::nanoseconds timeout,
        std::source_location where =
            std::source_location::current()) noexcept requires db::connection<Connection> {
        return pooled_connection<Connection>(*core_, timeout, where);
    }

    // The same, for a coroutine (include <ctxmgr/async_pool.hpp>, link ctxmgr::async): an
    // async manager whose async_enter() waits without blocking its thread.
    [[nodiscard]] async_pooled_connection<Connection> async_connection(
        std::source_location where = std::source_location::current()) noexcept {
        return async_connection(std::chrono::nanoseconds::max(), where);
    }
    [[nodiscard]] async_pooled_connection<Connection> async_connection(
        std::chrono::nanoseconds timeout,
        std::source_location where = std::source_location::current()) noexcept {
        return async_pooled_connection<Connection>(*core_, timeout, where);
    }

    [[nodiscard]] pool_stats stats() const { return detail::pool_statistics(*core_); }

    // Counts and histograms (pool_metrics), consistent with each other. Thread-safe; takes
    // the pool's lock for a copy of about 600 bytes. Recording them costs the borrow a few
    // instructions (docs/performance.md), so they are always on.
    [[nodiscard]] pool_metrics metrics() const { return detail::pool_metrics_of(*core_); }

    // metrics(), the longest current wait and the borrowers holding connections, from one
    // snapshot. Thread-safe; allocates the list (throws std::bad_alloc) and walks the
    // max_size slots under the pool's lock, so it is meant for a page, not a hot loop.
    [[nodiscard]] pool_status status() const { return detail::pool_status_of(*core_); }

    // Operating a running pool. Each is thread-safe and returns without waiting for a
    // borrower; each throws closed_error once the pool is closed.

    // Stops lending: borrowers wait (and time out) as if every connection were lent, and no
    // connection is made; connections lent stay lent and come back as usual. For a failover
    // or a maintenance window (pgbouncer's PAUSE, HikariCP's suspendPool). Idempotent.
    void suspend() { detail::pool_suspend(*core_); }
    // Lends again: idle connections go to the waiters, first come first, and the creator
    // makes what the others need. Idempotent.
    void resume() { detail::pool_resume(*core_); }

    // Closes the idle connections now (min_idle ones are made again in the background);
    // returns how many. Lent connections are not touched.
    std::size_t evict_idle() { return detail::pool_evict_idle(*core_); }
    // evict_idle(), and every connection lent now is closed when it comes back instead of
    // being lent again (after a failover or a password change: HikariCP's
    // softEvictConnections). A connection being made meanwhile is kept: the factory's next
    // calls see what changed. Returns how many idle ones were closed.
    std::size_t evict_all() { return detail::pool_evict_all(*core_); }

    // New sizes, as pool_options' (std::invalid_argument when max_size is 0 or below
    // min_idle; then nothing changes). Growing makes room at once (waiters are served as the
    // creator makes connections); shrinking closes idle connections beyond max_size now, the
    // least recently used first, and lent ones beyond it when they come back. Throws
    // std::bad_alloc with nothing changed.
    void resize(std::size_t min_idle, std::size_t max_size) {
        detail::pool_resize(*core_, min_idle, max_size);
    }

    // See the top of this header. Idempotent; throws leak_error when connections are still
    // borrowed at `deadline`.
    void close(std::chrono::steady_clock::time_point deadline) {
        detail::pool_close(*core_, detail::deadline::at(deadline));
    }
    void close(std::chrono::nanoseconds timeout) {
        detail::pool_close(*core_, detail::deadline::after(timeout));
    }
    void close() { close(detail::pool_close_timeout(*core_)); }

    pool& enter() noexcept { return *this; }
    void exit(const std::exception_ptr& e) {
        release_on_exit(e, [&] { close(); });
    }

    // `pool "name"`, as messages show it.
    [[nodiscard]] const std::string& description() const noexcept {
        return detail::pool_description(*core_);
    }
    // pool_options::name.
    [[nodiscard]] const std::string& name() const noexcept { return detail::pool_name(*core_); }

  private:
    detail::pool_core* core_;
};

// Writes the pools' metrics in Prometheus's text exposition format (version 0.0.4) with the
// OpenTelemetry database-client names, each series labelled pool_name="<name>" (escaped as the
// format asks: backslash, double quote, newline):
//   db_client_connection_count{state="idle"|"used"}   gauge
//   db_client_connection_max, db_client_connection_pending_requests   gauges
//   db_client_connection_timeouts_total   counter
//   db_client_connection_{wait,use,create}_time_seconds   histograms (_bucket{le}, _sum, _count)
// One HELP and one TYPE line per family, whatever the number of pools; pools with the same
// name make duplicate series, which a scraper refuses: name them apart. Each pool's numbers
// come from one metrics() snapshot. Thread-safe as metrics() is; throws what `out` throws.
template <class... Pools>
void write_prometheus(std::ostream& out, const Pools&... pools) {
    const std::array<detail::named_pool_metrics, sizeof...(Pools)> all = {
        detail::named_pool_metrics{&pools.name(), pools.metrics()}...};
    detail::write_prometheus(out, all.data(), all.size());
}

template <class Factory>
pool(Factory) -> pool<std::remove_cvref_t<std::invoke_result_t<Factory&>>>;
template <class Factory>
pool(Factory, pool_options) -> pool<std::remove_cvref_t<std::invoke_result_t<Factory&>>>;
template <class Factory>
pool(Factory, pool_options, std::source_location)
    -> pool<std::remove_cvref_t<std::invoke_result_t<Factory&>>>;

}  // namespace ctxmgr
