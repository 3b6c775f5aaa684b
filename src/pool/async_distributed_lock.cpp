// ctxmgr::postgres::async_advisory_lock and async_lease (async_distributed_lock.hpp).
//
// The synchronous lock's rules and text (advisory_lock_support.hpp), over the async
// connection's statements: the lock script (BEGIN, lock_timeout, the lock, the token, COMMIT)
// in one round trip, read as the synchronous lock reads it. On a session of its own every
// failure path is one step: close the session, which releases whatever it was granted; a
// borrowed session is rolled back and unlocked instead (give_back).
#include "ctxmgr/async_distributed_lock.hpp"

#include <libpq-fe.h>

#include <asio/experimental/awaitable_operators.hpp>
#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>

#include <chrono>
#include <string>
#include <utility>
#include <variant>

#include "pool/advisory_lock_support.hpp"

namespace ctxmgr::postgres {

namespace {

using namespace detail::advisory;
using namespace asio::experimental::awaitable_operators;
using steady = std::chrono::steady_clock;

// What `operation` threw, or null. awaitable_operators' `||` waits for an operand that
// succeeds: a failure raced against a timer would be seen only when the timer expires.
asio::awaitable<std::exception_ptr> settled(asio::awaitable<void> operation) {
    try {
        co_await std::move(operation);
    } catch (...) {
        co_return std::current_exception();
    }
    co_return nullptr;
}

asio::awaitable<void> unlock_on(async_connection& session, const std::string& sql, bool& answer) {
    answer = co_await session.async_query_value<bool>(sql);
}

// The next token of `key` outside a transaction; creates the table when it is missing.
asio::awaitable<std::int64_t> next_token(async_connection& session, std::int64_t key) {
    try {
        co_return co_await session.async_query_value<std::int64_t>(next_token_statement("$1"), key);
    } catch (const db::error& e) {
        if (e.sqlstate() != undefined_table_sqlstate) throw;
    }
    try {
        co_await session.async_execute_script(create_table);
    } catch (const db::error& e) {
        if (!created_meanwhile(e.sqlstate())) throw;
    }
    co_return co_await session.async_query_value<std::int64_t>(next_token_statement("$1"), key);
}

// Takes the lock and its token on `session`, or throws; `granted` tells the caller, who
// cleans up then, whether the lock was granted before the failure.
asio::awaitable<std::int64_t> take(async_connection& session, const lock_key& key,
                                   const lock_options& options, const std::string& context,
                                   steady::time_point started, bool& granted) {
    if (options.timeout.count() <= 0) {
        if (!co_await session.async_query_value<bool>(try_lock_statement(options.shared),
                                                      key.value())) {
            throw held_elsewhere(context, steady::now() - started);
        }
        granted = true;
        co_return co_await next_token(session, key.value());
    }
    using outcome = lock_script_answer::outcome;
    const std::string script = lock_script(key.value(), options.shared, options.timeout);
    detail::script_results ran;
    std::exception_ptr interrupted;
    try {
        if (options.timeout >= lock_options::forever) {
            co_await detail::async_run_script(session, script, ran);
        } else {
            // The server's lock_timeout answers first; this bounds a server that does not.
            asio::steady_timer limit(co_await asio::this_coro::executor);
            limit.expires_at(started + options.timeout + answer_grace);
            const auto first = co_await (settled(detail::async_run_script(session, script, ran)) ||
                                         limit.async_wait(asio::use_awaitable));
            if (first.index() == 1) {
                // Closed, borrowed or not: the lock may have been granted as the wait ended.
                session.close();
                throw no_answer(context, steady::now() - started);
            }
            if (const std::exception_ptr failure = std::get<0>(first)) {
                std::rethrow_exception(failure);
            }
        }
    } catch (...) {
        interrupted = std::current_exception();
    }
    if (interrupted) {
        // Cancelled once the lock statement had answered (while the token or COMMIT ran): held.
        granted = lock_granted(ran.results);
        std::rethrow_exception(interrupted);
    }
    // The caller cleans up after a throw: rolls back what is open, unlocks what was granted.
    const lock_script_answer answer = read_lock_script(ran.results, session.is_open());
    switch (answer.what) {
        case outcome::granted:
            granted = true;
            co_return answer.token;
        case outcome::granted_without_token:
            granted = true;
            throw no_token(context, script);
        case outcome::session_gone:
        case outcome::failed_before_lock:
        case outcome::failed_at_lock:
            detail::fail(session.native_handle(), answer.failure, script, context);
        case outcome::timed_out:
            throw lock_timed_out(context, steady::now() - started);
        case outcome::token_table_missing:
            break;
        case outcome::failed_after_lock:
            granted = true;
            throw failed_after_lock(answer, context, script);
    }
    // Held (a session lock outlives the rollback of the transaction that took it): the table
    // is made and the token taken outside the script.
    granted = true;
    co_await session.async_execute_script("ROLLBACK");
    co_return co_await next_token(session, key.value());
}

// After a failed enter on a borrowed session: its transaction rolled back and the lock, if
// granted, unlocked, so that the session is as it was lent; closed when that fails (which
// releases the lock). Never throws; awaited with throw_if_cancelled off, so that it runs to
// its end in a cancelled coroutine too.
asio::awaitable<void> give_back(async_connection& session, const lock_key& key, bool shared,
                                bool granted) {
    try {
        if (session.is_open() && session.transaction_state() != db::transaction_state::idle) {
            co_await session.async_execute_script("ROLLBACK");
        }
        // The co_await is not part of this condition: GCC 12's code for a co_await inside a
        // && crashes (SIGILL).
        if (granted && session.is_open()) {
            const bool unlocked = co_await session.async_query_value<bool>(
                unlock_statement("$1", shared), key.value());
            if (!unlocked) session.close();
        }
    } catch (...) {
        session.close();
    }
}

}  // namespace

// --- async_lease ---------------------------------------------------------------------------

async_lease::async_lease(lock_key key, bool shared) : key_(std::move(key)), shared_(shared) {
}

async_lease::~async_lease() = default;

bool async_lease::lost() noexcept {
    if (!lost_) {
        lost_ = lost_signal_.stop_requested() || !session_ || !session_->is_open();
        if (lost_) lost_signal_.request_stop();
    }
    return lost_;
}

// --- async_advisory_lock -------------------------------------------------------------------

async_advisory_lock::async_advisory_lock(asio::any_io_executor executor, std::string conninfo,
                                         lock_key key, lock_options options,
                                         std::source_location where)
    : executor_(std::move(executor)),
      conninfo_(std::move(conninfo)),
      key_(std::move(key)),
      options_(options),
      check_(where) {
}

async_advisory_lock::async_advisory_lock(async_connection& session, lock_key key,
                                         lock_options options, std::source_location where)
    : borrowed_(&session), key_(std::move(key)), options_(options), check_(where) {
}

async_advisory_lock::async_advisory_lock(async_advisory_lock&&) noexcept = default;

async_advisory_lock::~async_advisory_lock() {
    if (!lease_) return;
    lease_->watch_.reset();  // before the socket it watches is closed
    lease_->session_->close();
}

asio::awaitable<std::reference_wrapper<async_lease>> async_advisory_lock::async_enter() {
    check_.entered();
    if (lease_) throw protocol_error(key_.describe() + ": entered twice");
    const auto started = steady::now();
    std::unique_ptr<async_lease> held(new async_lease(key_, options_.shared));
    if (borrowed_ != nullptr) {
        if (borrowed_->transaction_state() != db::transaction_state::idle) {
            throw protocol_error(detail::advisory::context(key_, borrowed_->description()) +
                                 ": a borrowed session must be outside a transaction (the "
                                 "lock's own transaction would end the caller's)");
        }
        held->session_ = borrowed_;
    } else {
        async_connector connector =
            async_connect(executor_, conninfo_, own_session_options, check_.where());
        async_connection& opened = co_await connector.async_enter();
        held->session_ = &held->owned_.emplace(std::move(opened));
    }
    async_connection& session = *held->session_;
    const std::string context = detail::advisory::context(key_, session.description());
    std::exception_ptr failure;
    bool granted = false;
    try {
        held->token_ = co_await take(session, key_, options_, context, started, granted);
        held->pid_ = session.backend_pid();
        if constexpr (tracking_enabled) {
            held->tracked_ = tracked(
                "advisory lock", tracked_description(key_, options_.shared, session.description()),
                check_.where());
        }
        if (options_.keep_alive.count() > 0) {
            held->watch_ = std::make_unique<detail::session_watch>(
                PQsocket(session.native_handle()), options_.keep_alive, held->lost_signal_);
        }
    } catch (...) {
        failure = std::current_exception();
    }
    if (failure) {
        if (held->owned_) {
            session.close();  // the server drops the lock, if granted, with the session
        } else {
            // Asio throws at every co_await of a cancelled coroutine unless told not to.
            const bool throwing = co_await asio::this_coro::throw_if_cancelled();
            co_await asio::this_coro::throw_if_cancelled(false);
            co_await give_back(session, key_, options_.shared, granted);
            co_await asio::this_coro::throw_if_cancelled(throwing);
        }
        std::rethrow_exception(failure);
    }
    lease_ = std::move(held);
    co_return std::ref(*lease_);
}

asio::awaitable<void> async_advisory_lock::async_unlock() {
    if (!lease_) co_return;
    const std::unique_ptr<async_lease> held = std::move(lease_);
    held->watch_.reset();  // before anything closes the socket it watches
    held->tracked_.release();
    async_connection& session = *held->session_;
    const std::string context = detail::advisory::context(key_, session.description());
    const std::string sql = unlock_statement(std::to_string(key_.value()), held->shared_);
    std::exception_ptr failure;
    try {
        if (held->lost()) throw session_lost(context, held->pid_, "", sql);
        asio::steady_timer limit(co_await asio::this_coro::executor);
        limit.expires_after(unlock_wait);
        bool unlocked = false;
        const auto first = co_await (settled(unlock_on(session, sql, unlocked)) ||
                                     limit.async_wait(asio::use_awaitable));
        if (first.index() == 1) {
            session.close();  // borrowed too: closing is what releases the lock now
            throw unlock_unanswered(context, sql);
        }
        try {
            if (const std::exception_ptr lost = std::get<0>(first)) std::rethrow_exception(lost);
        } catch (const db::connection_error& e) {
            throw session_lost(context, held->pid_, " (" + e.message() + ')', sql);
        }
        if (!unlocked) throw unlock_refused(context, held->pid_, sql);
    } catch (...) {
        failure = std::current_exception();
    }
    if (held->owned_) session.close();
    if (failure) std::rethrow_exception(failure);
}

asio::awaitable<void> async_advisory_lock::async_exit(std::exception_ptr e) {
    std::exception_ptr failure;
    try {
        co_await async_unlock();
    } catch (...) {
        failure = std::current_exception();
    }
    if (failure) rethrow_chained(failure, e);
}

}  // namespace ctxmgr::postgres
