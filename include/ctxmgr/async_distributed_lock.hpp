// ctxmgr/async_distributed_lock.hpp: the distributed lock of distributed_lock.hpp for Asio
// coroutines (link ctxmgr::async_postgres).
//
// postgres::async_advisory_lock(executor, conninfo, key, options) is an async manager on a
// session-level pg_advisory_lock: its async_enter connects (a session of its own, as
// async_connect does), waits for the lock without blocking the thread and returns an
// async_lease; its async_exit unlocks on that very session and closes it. Keys, fencing tokens
// (the same table, one sequence per key shared with the synchronous lock), lock_options and
// the loss watcher are advisory_lock's: read the top of distributed_lock.hpp.
// async_advisory_lock(session, key, options) locks on an async_connection already open
// instead, outside a transaction, for as long as the lock is held (advisory_lock's pool
// lends its session the same way); the exit leaves that session open.
//
//   co_await ctxmgr::async_with(
//       ctxmgr::postgres::async_advisory_lock(executor, conninfo, "nightly-report", options),
//       [&](ctxmgr::postgres::async_lease& held) -> asio::awaitable<void> {
//           co_await held.session().async_execute(
//               "UPDATE report SET fence = $1 WHERE id = 1 AND fence <= $1", held.fencing_token());
//       });
//
// Guarantees:
//   - async_enter throws timeout_error naming the key (options.timeout passed with the lock
//     held elsewhere; timeout <= 0 tries once; a server silent past the timeout and the
//     synchronous lock's grace), db::error and subclasses (connect or query failures),
//     protocol_error (entered twice; a borrowed session inside a transaction). Cancelled while it
//     waits (awaitable_operators' `||`, a cancellation slot), the lock statement is cancelled on
//     the server and async_enter throws asio::system_error(operation_aborted). After any failure no
//     lock is held and no session of its own is left open: the session is closed, and the server
//     drops what it granted with it; a borrowed session is rolled back and unlocked, and stays open
//     (closed only when it does not answer).
//   - async_unlock() (and async_exit) releases on the locking session and closes it (not a
//     borrowed one, unless the unlock goes unanswered), bounded
//     as the synchronous unlock is; it throws db::error when the server answers the unlock with
//     false, and db::connection_error when the session was lost while the lock was held.
//     async_exit(e) chains them to e. async_with shields the exit from cancellation. The destructor
//     of a manager still holding (its coroutine destroyed unfinished) cannot wait for an
//     unlock: it closes the session, borrowed or not, which releases the lock on the server.
//   - Loss: while held, lease.stop_token() has stop requested once the session is known to be
//     gone (the server closed it: at once; a silent network cut: within 4 x keep_alive), by the
//     synchronous lease's watcher thread; std::stop_callbacks run on that thread, so one that
//     touches the coroutine's objects posts to its executor.
//   - Leak tracking: kind "advisory lock", as for the synchronous lease.
//   - Thread-compatible: a manager, its lease and its session on one thread at a time, their
//     executor's; the executor's io_context must outlive them.
#pragma once

#include <asio/any_io_executor.hpp>
#include <asio/awaitable.hpp>

#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <source_location>
#include <stop_token>
#include <string>

#include "async_postgres.hpp"
#include "async_protocol.hpp"
#include "detail/entry_check.hpp"
#include "distributed_lock.hpp"
#include "tracking.hpp"

namespace ctxmgr::postgres {

class async_advisory_lock;

// A granted lock, as async_advisory_lock::async_enter() returns it. Lives inside its manager.
class async_lease {
  public:
    async_lease(const async_lease&) = delete;
    async_lease& operator=(const async_lease&) = delete;
    ~async_lease();

    [[nodiscard]] const lock_key& key() const noexcept { return key_; }
    [[nodiscard]] bool shared() const noexcept { return shared_; }
    // Strictly greater than every token of this key granted before, by either lock.
    [[nodiscard]] std::int64_t fencing_token() const noexcept { return token_; }
    // The server process of the locking session.
    [[nodiscard]] int backend_pid() const noexcept { return pid_; }
    // True once the session holding the lock is known to be gone (no round trip). Stays true.
    [[nodiscard]] bool lost() noexcept;
    // Stop is requested once the session holding the lock is known to be gone.
    [[nodiscard]] std::stop_token stop_token() const noexcept { return lost_signal_.get_token(); }
    // The locking session, for work that must run on it. Unlocking it by hand makes the unlock
    // fail; closing it loses the lock.
    [[nodiscard]] async_connection& session() noexcept { return *session_; }

  private:
    friend class async_advisory_lock;
    async_lease(lock_key key, bool shared);

    lock_key key_;
    bool shared_;
    bool lost_ = false;
    std::int64_t token_ = 0;
    int pid_ = 0;
    std::optional<async_connection> owned_;  // made by async_enter, not borrowed
    async_connection* session_ = nullptr;
    std::stop_source lost_signal_;
    // Declared after the session it watches: destroyed, and its thread joined, first.
    std::unique_ptr<detail::session_watch> watch_;
    [[no_unique_address]] tracked tracked_;
};

// The manager; see the top of this header. Move-only (the lease lives on the heap and does not
// move). May be entered again after its exit.
class [[nodiscard]] async_advisory_lock {
  public:
    async_advisory_lock(asio::any_io_executor executor, std::string conninfo, lock_key key,
                        lock_options options = {},
                        std::source_location where = std::source_location::current());
    // Locks on `session` (open, outside a transaction), which must outlive the manager.
    async_advisory_lock(async_connection& session, lock_key key, lock_options options = {},
                        std::source_location where = std::source_location::current());
    async_advisory_lock(async_advisory_lock&&) noexcept;
    async_advisory_lock& operator=(async_advisory_lock&&) = delete;
    async_advisory_lock(const async_advisory_lock&) = delete;
    async_advisory_lock& operator=(const async_advisory_lock&) = delete;
    // Closes the session of a lease still held (the server releases the lock); never fails.
    ~async_advisory_lock();

    asio::awaitable<std::reference_wrapper<async_lease>> async_enter();
    // Unlocks now and closes the session; idempotent. See the top for what it throws.
    asio::awaitable<void> async_unlock();
    asio::awaitable<void> async_exit(std::exception_ptr e);

    // The lease while held, else nullptr.
    [[nodiscard]] async_lease* held() const noexcept { return lease_.get(); }
    // True when no lease is held (before async_enter, after the exit).
    [[nodiscard]] bool closed() const noexcept { return !lease_; }

  private:
    asio::any_io_executor executor_;
    std::string conninfo_;
    async_connection* borrowed_ = nullptr;
    lock_key key_;
    lock_options options_;
    [[no_unique_address]] ctxmgr::detail::entry_check<"postgres::async_advisory_lock"> check_;
    std::unique_ptr<async_lease> lease_;
};

static_assert(native_async_context_manager<async_advisory_lock>);

}  // namespace ctxmgr::postgres
