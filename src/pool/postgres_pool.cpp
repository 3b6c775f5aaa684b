// pool_traits<postgres::connection>::usable (pool.hpp): is an idle PostgreSQL session still
// there, without a round trip? Also what lease::lost() asks (distributed_lock.hpp).
//
// An idle session receives nothing unless something happened to it: the server ending it
// (pg_terminate_backend, a shutdown or restart: an ErrorResponse with 57P01, then the end of the
// stream; a crash: the end of the stream or a reset), or a NOTIFY for a LISTENing session. So
// one poll() with a zero timeout says whether to look further: nothing readable, the session
// is as it was left. The peer's end of the stream (POLLRDHUP) or an error on the socket means
// it is gone. Anything else is read by libpq (PQconsumeInput), which marks the connection bad
// when it meets the end of the stream; a NOTIFY stays queued for PQnotifies.
#include <libpq-fe.h>
#include <poll.h>

#include <cerrno>

#include "ctxmgr/pool.hpp"
#include "ctxmgr/postgres.hpp"

namespace ctxmgr {

bool pool_traits<postgres::connection>::usable(postgres::connection& connection) noexcept {
    if (!connection.is_open()) return false;
    PGconn* conn = connection.native_handle();
    // A statement still running (started through native_handle()) is no idle session.
    if (PQisBusy(conn) != 0) return false;
    // A few rounds: data may keep arriving (notifications), but a goodbye is followed by the end
    // of the stream at once.
    for (int round = 0; round < 4; ++round) {
        pollfd descriptor{PQsocket(conn), POLLIN | POLLRDHUP, 0};
        const int ready = ::poll(&descriptor, 1, 0);
        if (ready == 0) return true;
        if (ready < 0) {
            if (errno == EINTR) continue;
            return false;
        }
        if ((descriptor.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0) return false;
        if (PQconsumeInput(conn) == 0 || PQstatus(conn) != CONNECTION_OK) return false;
    }
    return PQstatus(conn) == CONNECTION_OK;
}

}  // namespace ctxmgr
