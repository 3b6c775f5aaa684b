// ctxmgr/distributed_lock.hpp: a lock shared by processes on many machines, held in the
// PostgreSQL server they already share (link ctxmgr::postgres).
//
// advisory_lock(source, key, options) is a manager on a session-level pg_advisory_lock: enter()
// takes the lock on a session of its own (a new connection when `source` is a connection
// string, a connection borrowed for as long as the lock is held when it is a pool) and returns
// a lease; exit() unlocks on that very session, which no one else used in between. The server
// drops the lock when the session ends: a holder that crashes, is killed, or whose connection
// is cut (once the server notices) never leaves a stale lock behind.
//
//   ctxmgr::pool pool([] { return ctxmgr::postgres::connect(conninfo); });
//   ctxmgr::with(ctxmgr::postgres::advisory_lock(pool, "nightly-report", {.timeout = 5s}),
//                [&](ctxmgr::postgres::lease& held) {
//                    // the protected resource refuses writes fenced with an older token
//                    store.execute("UPDATE report SET body = $1, fence = $2 WHERE id = 1 "
//                                  "AND fence <= $2", body, held.fencing_token());
//                });
//
// A lock is not enough on its own (Kleppmann, "How to do distributed locking"): a holder may
// pause (GC, swap, a stopped VM) past the moment its session is ended and another process is
// granted the lock, then wake and write. So every grant comes with a fencing token, a 64-bit
// number that increases strictly with every grant of the key, across sessions, processes and
// machines, and the resource being protected remembers the highest token it has accepted and
// refuses smaller ones, as in the UPDATE above (0 rows: the lease is stale). Tokens live in
// the table
//     ctxmgr_fencing_tokens (key bigint PRIMARY KEY, token bigint NOT NULL)
// in the session's current schema (the first of its search_path), created on first use (that
// needs CREATE on the schema; create it beforehand otherwise), and incremented by
//     INSERT ... VALUES (key, 1) ON CONFLICT (key) DO UPDATE SET token = token + 1 RETURNING token
// in the transaction that takes the lock, so the increment is committed before the lease is
// handed out. Shared holders each get a token of their own. Tokens start at 1.
//
// Keys: a 64-bit integer, used as is, or a name, hashed with advisory_key (64-bit FNV-1a of
// its bytes, read as a two's-complement signed integer): stable across versions, platforms
// and languages, so other programs can compute it. Two names may, with probability 2^-64,
// share a key, and then a lock; integer keys share the space of the names' keys.
//
// Waiting: lock_options::timeout bounds the wait for the lock, through the session's
// lock_timeout (SET LOCAL, so the session's own setting is untouched; statement_timeout is
// lifted for that statement, so that only the lock timeout applies), and a timeout throws
// timeout_error naming the key. A server that does not answer at all is given two seconds
// more, then the session is closed (the server drops whatever it granted meanwhile) and
// timeout_error is thrown too. A timeout <= 0 tries once (pg_try_advisory_lock); one of
// lock_options::forever or more waits as long as it takes.
//
// Loss of the lock: while it is held, a thread of the lease's own watches the locking
// session's socket (it reads nothing: the session stays the caller's to use). When the server
// ends the session (pg_terminate_backend, a shutdown, a crash: the connection is closed from
// its side) the lease's stop_token() has stop requested at once; a network cut silently is
// found by TCP keep-alive probes sent every lock_options::keep_alive, three unanswered ones
// ending the connection (within 4 x keep_alive; the probes are set on the session's socket
// for as long as the lock is held, then the socket's own settings come back). Callbacks
// registered with std::stop_callback run on the watching thread. lost() is true once the
// lease knows the session is gone: the watcher said so, or, without a watcher, the session
// shows it without a round trip; lease.session().ping() asks the server.
//
// async_distributed_lock.hpp has the same lock for Asio coroutines (async_advisory_lock).
//
// advisory_xact_lock(connection, key, options), for work done in one transaction, takes a
// pg_advisory_xact_lock inside the connection's open transaction: the server releases it when
// the transaction ends, whatever happens, and exit() does nothing. A timeout leaves the
// transaction as it was (the lock is attempted inside a savepoint). No fencing token: work in
// the same transaction is protected by the transaction itself.
//
// Guarantees:
//   - enter() throws timeout_error (naming the key and the wait), db::error and subclasses
//     (connect or query failures: connection_error when the server cannot be reached),
//     protocol_error (entered twice; advisory_xact_lock outside a transaction). After any
//     failure no lock is held and no session is left open.
//   - unlock() (and exit()) releases on the locking session and gives the session back (closes
//     it, or returns it to the pool). It throws db::error when the server answers the unlock
//     with false (the lock was no longer held: released behind the lease's back), and
//     db::connection_error when the session was lost while the lock was held (mutual
//     exclusion may not have lasted the whole block): both are real problems, never ignored.
//     exit(e) chains them to a pending exception. The destructor unlocks what is still held
//     and reports a failure to the unraisable hook. A manager never entered locked nothing:
//     its destructor reports that, naming the line that made it, to the unraisable hook.
//   - While held, a lease is registered with the leak tracker (kind "advisory lock",
//     described by the key and the session's connection string, without the password).
//   - Thread-compatible: a manager and its lease belong to one thread at a time. The pool
//     passed as source is thread-safe and must outlive the manager.
#pragma once

#include <chrono>
#include <concepts>
#include <cstdint>
#include <exception>
#include <limits>
#include <memory>
#include <optional>
#include <source_location>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <string_view>
#include <type_traits>

#include "detail/entry_check.hpp"
#include "pool.hpp"
#include "postgres.hpp"
#include "tracking.hpp"

namespace ctxmgr::postgres {

// The key a name locks: 64-bit FNV-1a of its bytes (offset basis 0xcbf29ce484222325, prime
// 0x100000001b3), read as a two's-complement signed integer, the type PostgreSQL's bigint
// keys have.
[[nodiscard]] constexpr std::int64_t advisory_key(std::string_view name) noexcept {
    std::uint64_t hash = 0xcbf29ce484222325ULL;
    for (const char c : name) {
        hash ^= static_cast<unsigned char>(c);
        hash *= 0x100000001b3ULL;
    }
    return static_cast<std::int64_t>(hash);
}

// An advisory lock's key: an integer, or a name (hashed with advisory_key). Implicit from
// both, so advisory_lock(pool, 42) and advisory_lock(pool, "jobs") read naturally.
class lock_key {
  public:
    // Throws std::out_of_range for an unsigned value above INT64_MAX.
    template <std::integral I>
    requires(!std::same_as<I, bool> && !std::same_as<I, char>) lock_key(I value)  // NOLINT
        : value_(static_cast<std::int64_t>(value)) {
        if constexpr (std::is_unsigned_v<I> && sizeof(I) >= sizeof(std::int64_t)) {
            if (value > static_cast<I>(std::numeric_limits<std::int64_t>::max())) {
                throw std::out_of_range("advisory lock key " + std::to_string(value) +
                                        " does not fit PostgreSQL's bigint");
            }
        }
    }
    lock_key(std::string_view name) : value_(advisory_key(name)), name_(name) {}  // NOLINT
    lock_key(const char* name) : lock_key(std::string_view(name)) {}              // NOLINT
    lock_key(const std::string& name) : lock_key(std::string_view(name)) {}       // NOLINT

    [[nodiscard]] std::int64_t value() const noexcept { return value_; }
    // The name it was made from; empty for an integer key.
    [[nodiscard]] const std::string& name() const noexcept { return name_; }
    // `advisory lock "jobs" (key -4239..)`, `advisory lock 42`: for messages.
    [[nodiscard]] std::string describe() const;

  private:
    std::int64_t value_;
    std::string name_;
};

struct lock_options {
    // Waits at least this long count as waiting for ever.
    static constexpr std::chrono::milliseconds forever{std::numeric_limits<int>::max()};

    // How long enter() waits for the lock; <= 0 tries once; forever (or more) has no limit.
    std::chrono::milliseconds timeout{30'000};
    // pg_advisory_lock_shared: any number of shared holders, no exclusive one.
    bool shared = false;
    // The interval of the TCP keep-alive probes that find a silently cut session while the
    // lock is held (whole seconds, at least one); 0: no watching thread, no probes, and
    // lease.stop_token() fires only when lost() finds the session gone.
    std::chrono::milliseconds keep_alive{5'000};
};

class advisory_lock;

namespace detail {
class session_watch;
}

// A granted lock, as advisory_lock::enter() returns it. Lives inside its manager.
class lease {
  public:
    lease(const lease&) = delete;
    lease& operator=(const lease&) = delete;
    ~lease();

    [[nodiscard]] const lock_key& key() const noexcept { return key_; }
    [[nodiscard]] bool shared() const noexcept { return shared_; }
    // Strictly greater than every token of this key granted before (see the top).
    [[nodiscard]] std::int64_t fencing_token() const noexcept { return token_; }
    // The server process of the locking session (pg_locks.pid, pg_stat_activity.pid).
    [[nodiscard]] int backend_pid() const noexcept { return pid_; }
    // True once the session holding the lock is gone (without a round trip; see the top).
    // Stays true.
    [[nodiscard]] bool lost() noexcept;
    // Stop is requested once the session holding the lock is known to be gone (see the top):
    // pass it to the work done under the lock, or register a std::stop_callback.
    [[nodiscard]] std::stop_token stop_token() const noexcept { return lost_signal_.get_token(); }
    // The locking session, for work that must run on it. Unlocking it by hand makes unlock()
    // fail; closing it loses the lock.
    [[nodiscard]] connection& session() noexcept { return *session_; }

  private:
    friend class advisory_lock;
    lease(lock_key key, bool shared);

    lock_key key_;
    bool shared_;
    bool lost_ = false;
    std::int64_t token_ = 0;
    int pid_ = 0;
    std::optional<connection> owned_;                        // source: a conninfo
    std::optional<pooled_connection<connection>> borrowed_;  // source: a pool
    connection* session_ = nullptr;
    std::stop_source lost_signal_;
    // Declared after the session it watches: destroyed, and its thread joined, first.
    std::unique_ptr<detail::session_watch> watch_;
    [[no_unique_address]] tracked tracked_;
};

// The manager; see the top of this header. Move-only (the lease does not move with it: it
// lives on the heap). May be entered again after exit.
class [[nodiscard]] advisory_lock {
  public:
    advisory_lock(pool<connection>& source, lock_key key, lock_options options = {},
                  std::source_location where = std::source_location::current());
    advisory_lock(std::string_view conninfo, lock_key key, lock_options options = {},
                  std::source_location where = std::source_location::current());
    advisory_lock(advisory_lock&&) noexcept;
    advisory_lock& operator=(advisory_lock&&) = delete;
    advisory_lock(const advisory_lock&) = delete;
    advisory_lock& operator=(const advisory_lock&) = delete;
    // Unlocks what is still held; a failure goes to the unraisable hook.
    ~advisory_lock();

    lease& enter();
    // Unlocks now and gives the session back; idempotent. See the top for what it throws.
    void unlock();
    void exit(const std::exception_ptr& e);

    // The lease while held, else nullptr.
    [[nodiscard]] lease* held() const noexcept { return lease_.get(); }
    // The resources' common query: true when no lease is held (before enter(), after exit).
    [[nodiscard]] bool closed() const noexcept { return !lease_; }

  private:
    pool<connection>* pool_ = nullptr;
    std::string conninfo_;
    lock_key key_;
    lock_options options_;
    [[no_unique_address]] ctxmgr::detail::entry_check<"postgres::advisory_lock"> check_;
    std::unique_ptr<lease> lease_;
};

// The transaction-scoped lock (see the top). enter() returns the connection; exit() does
// nothing: the transaction's end releases the lock.
class [[nodiscard]] advisory_xact_lock {
  public:
    advisory_xact_lock(connection& c, lock_key key, lock_options options = {},
                       std::source_location where = std::source_location::current()) noexcept
        : connection_(&c), key_(std::move(key)), options_(options), check_(where) {}

    connection& enter();
    void exit(const std::exception_ptr&) noexcept {}

  private:
    connection* connection_;
    lock_key key_;
    lock_options options_;
    [[no_unique_address]] ctxmgr::detail::entry_check<"postgres::advisory_xact_lock"> check_;
};

}  // namespace ctxmgr::postgres
