// What the libpq-based parts of ctxmgr::postgres share (internal to src/): postgres.cpp
// defines these, distributed_lock.cpp uses them too.
#pragma once

#include <libpq-fe.h>

#include "ctxmgr/detail/deadline.hpp"
#include "ctxmgr/postgres.hpp"

#include <chrono>
#include <exception>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace ctxmgr::postgres::detail {

using ctxmgr::detail::deadline;

inline constexpr std::string_view backend_name = "postgresql";

struct result_deleter {
    void operator()(PGresult* result) const noexcept { PQclear(result); }
};
using result_ptr = std::unique_ptr<PGresult, result_deleter>;

// Every statement's result of a script, in order (async_run_script's answer).
struct script_results {
    std::vector<result_ptr> results;
};
struct session_deleter {
    void operator()(PGconn* conn) const noexcept { PQfinish(conn); }
};
using session_ptr = std::unique_ptr<PGconn, session_deleter>;

// libpq's messages end with a newline and continue on further lines ("DETAIL:", "HINT:", a
// tab-indented "Is the server running...?"). Without the final newline, and each continuation
// line indented by two spaces, so that a log shows where the message ends.
std::string indent_lines(const char* text);

// The link is gone (or there is none).
bool lost(PGconn* conn) noexcept;

// Where the session's transaction stands, as libpq reports it; unknown without a session.
db::transaction_state transaction_state_of(PGconn* conn) noexcept;

// The SQLSTATE of a failed result; empty when it has none.
std::string sqlstate_of(const PGresult* result);

// Throws the error of `result` (or of the connection when there is no result), typed by its
// SQLSTATE and by the state of the link: connection_error, constraint_violation,
// serialization_failure, else db::error. `context` prefixes the message.
[[noreturn]] void fail(PGconn* conn, const PGresult* result, std::string_view sql,
                       std::string_view context = {});

// BEGIN with the isolation level and READ ONLY that `options` ask for.
std::string begin_statement(const db::transaction_options& options);

// What db::transaction sends to end a transaction, whose loss leaves the outcome unknown.
inline constexpr std::string_view commit_statement = "COMMIT";

// Throws commit_outcome_unknown for a COMMIT sent on a working link that `failure` (a
// connection_error, or the timeout_error of a COMMIT whose session was abandoned) ended
// without its answer; `failure` is nested when it is not a connection_error itself.
[[noreturn]] void throw_commit_outcome_unknown(const std::exception_ptr& failure,
                                               std::string_view connection);

// The connection string `conninfo` as PQconnectStartParams takes it, with what `opts` adds
// (application_name, fallback_application_name "ctxmgr", client_encoding UTF8, the server's
// statement_timeout). Throws db::error naming `description` for a string libpq rejects.
struct connect_parameters {
    connect_parameters(std::string_view conninfo, const options& opts,
                       const std::string& description);
    connect_parameters(const connect_parameters&) = delete;
    connect_parameters& operator=(const connect_parameters&) = delete;

    std::vector<std::pair<std::string, std::string>> settings;
    std::vector<const char*> keywords;  // into settings, ending with nullptr
    std::vector<const char*> values;
};

// Connects within opts.connect_timeout, blocking the calling thread (PQconnectPoll and
// poll(2)); notices are dropped. Throws db::connection_error naming `description` when the
// server cannot be reached, refuses, or does not answer in time.
session_ptr connect_session(const connect_parameters& parameters, const options& opts,
                            const std::string& description);

// An idle session is still there, as far as can be told without a round trip (the server has
// not ended it, the link has not broken): one poll(2) with a zero timeout, and libpq's read of
// what arrived.
bool session_alive(PGconn* conn) noexcept;

// The connection_error of rollback_any (`operation`) on a session found lost.
[[noreturn]] void throw_lost_before_rollback(PGconn* conn, std::string_view operation,
                                             const std::string& description);

// Sends a cancel request for what runs on `conn` (PQcancel) from a thread of its own, left to
// end by itself (libpq 15's PQcancel cannot be bounded); done(sent) runs on that thread.
// False when no request could be started.
bool cancel_in_background(PGconn* conn, std::function<void(bool sent)> done);

// Waits until the socket is ready for reading (or writing) or `deadline` passes (false); an
// untimed deadline waits as long as it takes. A poll error reads as ready, so that libpq's
// next call reports it.
bool wait_socket(PGconn* conn, bool for_reading, const deadline& deadline);

// Hands each result of the query sent on `conn` (PQsendQuery) to `on_result` as a result_ptr
// until libpq has no more (true), or until `deadline` passes first (false: the query is still
// running on the server). A broken link ends it with libpq's failure result.
template <class OnResult>
bool collect_results(PGconn* conn, const deadline& deadline, OnResult&& on_result) {
    for (;;) {
        while (PQisBusy(conn) == 0) {
            PGresult* result = PQgetResult(conn);
            if (result == nullptr) return true;
            on_result(result_ptr(result));
        }
        if (!wait_socket(conn, true, deadline)) return false;
        // A broken link: PQgetResult hands out the failure next.
        static_cast<void>(PQconsumeInput(conn));
    }
}

}  // namespace ctxmgr::postgres::detail
