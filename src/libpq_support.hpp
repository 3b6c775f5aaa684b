// What the libpq-based parts of ctxmgr::postgres share (internal to src/): postgres.cpp
// defines these, distributed_lock.cpp uses them too.
#pragma once

#include <libpq-fe.h>

#include <chrono>
#include <memory>
#include <string>
#include <string_view>

namespace ctxmgr::postgres::detail {

inline constexpr std::string_view backend_name = "postgresql";

struct result_deleter {
    void operator()(PGresult* result) const noexcept { PQclear(result); }
};
using result_ptr = std::unique_ptr<PGresult, result_deleter>;

// libpq's messages end with a newline and continue on indented lines: one line instead.
std::string one_line(const char* text);

// The link is gone (or there is none).
bool lost(PGconn* conn) noexcept;

// The SQLSTATE of a failed result; empty when it has none.
std::string sqlstate_of(const PGresult* result);

// Throws the error of `result` (or of the connection when there is no result), typed by its
// SQLSTATE and by the state of the link: connection_error, constraint_violation,
// serialization_failure, else db::error. `context` prefixes the message.
[[noreturn]] void fail(PGconn* conn, const PGresult* result, std::string_view sql,
                       std::string_view context = {});

// Waits until the socket is ready for reading (or writing) or `deadline` passes (false);
// time_point::max() waits as long as it takes. A poll error reads as ready, so that libpq's
// next call reports it.
bool wait_socket(PGconn* conn, bool for_reading, std::chrono::steady_clock::time_point deadline);

}  // namespace ctxmgr::postgres::detail
