// ctxmgr/detail/async_io.hpp: the steps async_net.hpp's calls are made of: one Asio
// operation, raced against the call's deadline when it has one, and the conversions between
// Asio's types and net.hpp's.
#pragma once

#include <asio/any_io_executor.hpp>
#include <asio/awaitable.hpp>
#include <asio/error.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/experimental/deferred.hpp>
#include <asio/experimental/parallel_group.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstddef>
#include <optional>
#include <string_view>
#include <system_error>
#include <tuple>
#include <utility>

#include "../net.hpp"

namespace ctxmgr::tcp {

namespace detail {

// One asynchronous operation's outcome: its error and byte count, and whether the call's
// deadline passed before it completed.
struct async_step {
    std::error_code error;
    std::size_t bytes = 0;
    bool timed_out = false;
};

// initiate(token) starts one operation completing with (error_code) or (error_code, size_t).
// Without a timer it is awaited alone; with one, it races the timer in a parallel group, which
// also passes the caller's cancellation on to both. An operation that succeeded wins even if
// the timer fired first, so no byte it moved is lost to a timeout.
template <class Initiate>
asio::awaitable<async_step> run_step(Initiate initiate, asio::steady_timer* timer) {
    const auto to_step = [](const std::error_code& error, auto... bytes) {
        async_step step{error};
        ((step.bytes = bytes), ...);
        return step;
    };
    if (timer == nullptr) {
        auto result = co_await initiate(asio::experimental::as_tuple(asio::use_awaitable));
        co_return std::apply(to_step, std::move(result));
    }
    auto result =
        co_await asio::experimental::make_parallel_group(
            initiate(asio::experimental::deferred), timer->async_wait(asio::experimental::deferred))
            .async_wait(asio::experimental::wait_for_one(), asio::use_awaitable);
    constexpr std::size_t size = std::tuple_size_v<decltype(result)>;
    async_step step{std::get<1>(result)};
    if constexpr (size == 4) step.bytes = std::get<2>(result);
    const std::error_code timer_error = std::get<size - 1>(result);
    step.timed_out = step.error && std::get<0>(result)[0] == 1 && !timer_error;
    co_return step;
}

inline std::optional<asio::steady_timer> start_deadline(
    const asio::any_io_executor& executor, const std::optional<std::chrono::milliseconds>& timeout,
    std::string_view operation) {
    std::optional<asio::steady_timer> timer;
    if (timeout) {
        check_not_negative(*timeout, operation, " timeout");
        timer.emplace(executor, *timeout);
    }
    return timer;
}

// net.hpp's codes are errno values in std::generic_category(); Asio reports the same errno
// values in a category of its own ("asio.system") that compares equal to no std::errc. The
// other categories (end of stream, the resolver's) are kept.
inline std::error_code errno_code(const std::error_code& error) noexcept {
    if (error.category() == asio::error::get_system_category()) {
        return {error.value(), std::generic_category()};
    }
    return error;
}

inline endpoint to_endpoint(const asio::ip::tcp::endpoint& e) {
    return {e.address().to_string(), e.port()};
}

// A new TCP socket, close-on-exec and non-blocking (Asio's own open() sets neither), owned
// by `socket`. Returns the errno, 0 on success.
template <class Socket>
int open_socket(Socket& socket, const asio::ip::tcp& protocol) noexcept {
    const int fd =
        ::socket(protocol.family(), SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, IPPROTO_TCP);
    if (fd < 0) return errno;
    std::error_code error;
    socket.assign(protocol, fd, error);
    if (error) {
        ::close(fd);
        return error.value();
    }
    return 0;
}

}  // namespace detail

}  // namespace ctxmgr::tcp
