// What the synchronous and the async advisory locks share (internal to src/): the SQL they send,
// the reading of its answers, the errors they throw and the watcher of a locking session.
// distributed_lock.cpp defines these; async_distributed_lock.cpp uses them too.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "ctxmgr/distributed_lock.hpp"
#include "ctxmgr/errors.hpp"
#include "db/libpq_support.hpp"

namespace ctxmgr::postgres::detail {

// Watches a locking session's socket on a thread of its own until destroyed, and requests
// stop on `lost` when the connection ends: the server closed it (POLLRDHUP: it shut down its
// side, as pg_terminate_backend and a shutdown do; POLLHUP, POLLERR), or TCP keep-alive
// probes, set here for the watch's lifetime, went unanswered. It reads nothing, so the
// session stays usable by its owner meanwhile (an Asio reactor waiting on the same socket
// included: poll() and epoll do not take readiness from each other).
class session_watch {
  public:
    // Throws std::system_error when the thread or its wake-up descriptor cannot be made.
    session_watch(int socket, std::chrono::milliseconds keep_alive, std::stop_source lost);
    session_watch(const session_watch&) = delete;
    session_watch& operator=(const session_watch&) = delete;
    // Stops the thread and gives the socket its own keep-alive settings back.
    ~session_watch();

  private:
    // The socket options the probes change, as they were before.
    struct tcp_settings {
        int keep_alive = 0;
        int idle = 0;
        int interval = 0;
        int count = 0;
        unsigned user_timeout = 0;
    };

    void probe(std::chrono::milliseconds keep_alive) noexcept;
    void restore() noexcept;
    void watch() noexcept;

    static constexpr int probes = 3;

    int socket_;
    int wake_ = -1;
    std::stop_source lost_;
    std::optional<tcp_settings> saved_;
    std::thread thread_;
};

namespace advisory {

// How long past the lock timeout the client waits for the server's answer.
inline constexpr std::chrono::seconds answer_grace{2};
// How long an unlock may take before the session is given up (closing it releases the lock).
inline constexpr std::chrono::seconds unlock_wait{10};

inline constexpr std::string_view lock_timeout_sqlstate = "55P03";
inline constexpr std::string_view undefined_table_sqlstate = "42P01";

inline constexpr std::string_view create_table =
    "CREATE TABLE IF NOT EXISTS ctxmgr_fencing_tokens "
    "(key bigint PRIMARY KEY, token bigint NOT NULL)";

// A CREATE TABLE IF NOT EXISTS that raced with another session's and lost: the table is there.
[[nodiscard]] bool created_meanwhile(std::string_view sqlstate) noexcept;

// `"jobs" (key 42)` for a named key, `42` for an integer one.
[[nodiscard]] std::string label(const lock_key& key);
// "advisory lock "jobs" (key 42) on host=db ...": what the messages name.
[[nodiscard]] std::string context(const lock_key& key, std::string_view session);
// The leak tracker's description of a lease.
[[nodiscard]] std::string tracked_description(const lock_key& key, bool shared,
                                              std::string_view session);

// "_shared" for a shared lock's functions, else "".
[[nodiscard]] std::string suffix(bool shared);
// The statement that takes the next token of `key` (a decimal integer, or a parameter "$1").
[[nodiscard]] std::string next_token_statement(std::string_view key);
// "SET LOCAL lock_timeout = 1500" (milliseconds; 0: no limit).
[[nodiscard]] std::string lock_timeout_setting(std::chrono::milliseconds timeout);
// The transaction that waits for the lock, up to and including the lock statement, for the
// simple protocol: BEGIN ISOLATION LEVEL READ COMMITTED, lock_timeout, statement_timeout
// lifted, then pg_advisory_lock[_shared](key). The statements that follow it in the same
// transaction (the token, COMMIT) are the caller's.
[[nodiscard]] std::string lock_statements(std::int64_t key, bool shared,
                                          std::chrono::milliseconds timeout);
// The index of the lock statement in lock_statements' script.
inline constexpr std::size_t lock_statement_index = 3;

// The options of a lock's own session: it runs each of its few statements once, so preparing
// them would only add a round trip each.
inline const options own_session_options{.statement_cache_size = 0};
// The session lock's whole enter in one round trip: lock_statements, the token of `key`,
// COMMIT.
[[nodiscard]] std::string lock_script(std::int64_t key, bool shared,
                                      std::chrono::milliseconds timeout);
// The index of the first failed result of a script (results.size() when none failed: the
// server stops at the first failure, so that one comes last).
[[nodiscard]] std::size_t first_failed(const std::vector<result_ptr>& results);
// What the answer to lock_script says: every statement's result, in order, the first failed
// one last.
struct lock_script_answer {
    enum class outcome {
        granted,                // with its token
        granted_without_token,  // every statement succeeded, but no token row came
        session_gone,           // a statement failed and the session is lost: so is the lock
        failed_before_lock,     // not granted; the transaction is open and failed
        timed_out,              // lock_timeout fired: not granted; the transaction failed
        failed_at_lock,         // not granted, for another reason; the transaction failed
        token_table_missing,    // granted; the token table does not exist yet
        failed_after_lock,      // granted; the token or COMMIT failed
    };
    outcome what;
    std::int64_t token = 0;
    const PGresult* failure = nullptr;  // the failed statement's result, owned by the caller
};
[[nodiscard]] lock_script_answer read_lock_script(const std::vector<result_ptr>& results,
                                                  bool session_open);
// Whether the answer heard so far says the lock was granted (its statement succeeded): for a
// script whose answer was cut short (cancelled while the token or COMMIT ran).
[[nodiscard]] bool lock_granted(const std::vector<result_ptr>& results);
// The error of outcome::failed_after_lock: the failed statement's SQLSTATE and message.
[[nodiscard]] db::error failed_after_lock(const lock_script_answer& answer,
                                          const std::string& context, const std::string& script);

// pg_try_advisory_lock[_shared]($1).
[[nodiscard]] std::string try_lock_statement(bool shared);
// pg_advisory_unlock[_shared](key): a decimal key, or "$1".
[[nodiscard]] std::string unlock_statement(std::string_view key, bool shared);

// What enter() throws when the lock is held elsewhere: after a single try (timeout <= 0), when
// the server's lock_timeout fired, when the server did not answer in time (its session closed).
[[nodiscard]] timeout_error held_elsewhere(const std::string& context,
                                           std::chrono::nanoseconds waited);
[[nodiscard]] timeout_error lock_timed_out(const std::string& context,
                                           std::chrono::nanoseconds waited);
[[nodiscard]] timeout_error no_answer(const std::string& context, std::chrono::nanoseconds waited);

// What unlock throws: the session was lost while held (`why`: " (the client's reason)" or
// empty); the server answered the unlock with false; the server did not answer it in time.
[[nodiscard]] db::connection_error session_lost(const std::string& context, int pid,
                                                const std::string& why, const std::string& sql);
[[nodiscard]] db::error unlock_refused(const std::string& context, int pid, const std::string& sql);
[[nodiscard]] db::connection_error unlock_unanswered(const std::string& context,
                                                     const std::string& sql);
// A lock script whose answer has no token where it should (an unexpected answer).
[[nodiscard]] db::error no_token(const std::string& context, const std::string& sql);

}  // namespace advisory

}  // namespace ctxmgr::postgres::detail
