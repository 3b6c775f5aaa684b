// ctxmgr/async_net.hpp: net.hpp's TCP connections and listeners for Asio coroutines.
//
// The same guarantees as net.hpp, with co_await instead of a blocked thread: a block left
// normally closes gracefully (shut down writing, the peer reads every byte and then end of
// stream); a block left by an exception, or by a cancellation, which reaches the block as one,
// resets the connection (SO_LINGER 0) so the peer learns that the exchange failed.
//
//   co_await ctxmgr::async_with(
//       ctxmgr::tcp::async_connect(executor, "127.0.0.1", port, {.timeout = 2s}),
//       [](ctxmgr::tcp::async_connection& c) -> asio::awaitable<void> {
//           co_await c.async_send_all("ping\n");
//           std::string reply = co_await c.async_read_until("\n", 1024, 500ms);  // "pong\n"
//       });                                  // shut down, drain, close; a reset on exception
//
// async_connect() returns a manager that connects in async_enter(); async_listen() binds at
// once and returns a listener (a manager whose exit closes it without waiting), whose
// co_await async_accept() gives an async_connection, itself a manager. Members are net.hpp's
// with an async_ prefix, and do what net.hpp's do, call for call.
//
// Guarantees:
//   - Errors are net.hpp's types, words and codes: network_error naming the operation and the
//     peer (`connect 127.0.0.1:5: Connection refused`; code() the errno in
//     std::generic_category(), or errc::end_of_stream), timeout_error for a deadline,
//     closed_error after close, std::invalid_argument for bad input. A name that does not resolve
//     keeps the code of Asio's resolver (asio::error::get_netdb_category()).
//   - Deadlines are per call, std::chrono::milliseconds, none by default, as in net.hpp
//     (connect_options::timeout covers every connection attempt, not name resolution). A timed
//     call races its operations against one steady timer; an untimed one is the bare Asio
//     operation (async_send_all and async_receive_some return Asio's own awaitable, its
//     result translated in its handler: no coroutine frame of ours). A call looks at the
//     connection when it is made: co_await it in the expression that makes it, as usual.
//   - Cancellation (Asio's per-operation cancellation: a bound cancellation slot, awaitable
//     operators' `||`) stops connect, send, receive and accept: they throw network_error with
//     std::errc::operation_canceled (Asio's operation_aborted). Bytes that arrived before a receive
//     failed, timed out or was cancelled stay buffered for the next one. async_with shields the
//     exit, so a cancelled block still closes its connection, with a reset.
//   - No descriptor leaks on any path, and every one is close-on-exec and non-blocking.
//     Connections and listeners are tracked (tracking.hpp) as net.hpp's are, kind "tcp
//     connection" or "tcp listener", acquired at the line that called async_connect,
//     async_accept or async_listen. The destructor of a connection still open resets it while
//     an exception unwinds the stack, and otherwise closes it without waiting; it never throws.
//   - Thread-compatible, like Asio's sockets: one connection (or listener) is used from one
//     strand at a time, except that one send and one receive may be outstanding together.
//     Buffers passed to a send must outlive its co_await.
#pragma once

#include <asio/any_io_executor.hpp>
#include <asio/awaitable.hpp>
#include <asio/buffer.hpp>
#include <asio/error.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/experimental/deferred.hpp>
#include <asio/io_context.hpp>
#include <asio/ip/address.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/socket_base.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <optional>
#include <source_location>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <tuple>
#include <utility>
#include <vector>

#include "detail/async_io.hpp"
#include "detail/entry_check.hpp"
#include "errors.hpp"
#include "net.hpp"
#include "release.hpp"
#include "tracking.hpp"

namespace ctxmgr::tcp {

class async_listener;
class async_connector;

// A connected TCP socket for coroutines: net.hpp's connection, each blocking call replaced by
// an awaitable. Move-only; a default-constructed or moved-from connection is closed. Members that
// are not noexcept throw network_error on a failed call, timeout_error when a timeout runs out,
// closed_error on a closed connection.
class [[nodiscard]] async_connection {
  public:
    using socket_type = asio::ip::tcp::socket;
    using executor_type = socket_type::executor_type;

    // Closed. (co_spawn and awaitable operators need a default-constructible result.)
    async_connection() noexcept = default;
    async_connection(async_connection&& other) noexcept
        : socket_(std::move(other.socket_)),
          linger_(other.linger_),
          local_(std::move(other.local_)),
          remote_(std::move(other.remote_)),
          buffer_(std::move(other.buffer_)),
          begin_(std::exchange(other.begin_, 0)),
          tracked_(std::move(other.tracked_)) {}
    // Releases this connection as the destructor does, then takes other's.
    async_connection& operator=(async_connection&& other) noexcept {
        if (this != &other) {
            discard();
            socket_ = std::move(other.socket_);
            linger_ = other.linger_;
            local_ = std::move(other.local_);
            remote_ = std::move(other.remote_);
            buffer_ = std::move(other.buffer_);
            begin_ = std::exchange(other.begin_, 0);
            tracked_ = std::move(other.tracked_);
        }
        return *this;
    }
    async_connection(const async_connection&) = delete;
    async_connection& operator=(const async_connection&) = delete;
    // Resets while an exception unwinds the stack, else closes without waiting; a failure
    // goes to the unraisable hook.
    ~async_connection() { discard(); }

    // The manager's half. async_enter() gives the connection itself (closed_error if it is
    // closed); async_exit(e) is async_close() without a pending exception (its failure
    // propagates) and abort() with one (its failure thrown with e nested).
    asio::awaitable<std::reference_wrapper<async_connection>> async_enter() {
        if (closed()) detail::throw_closed("enter connection to", remote_);
        co_return std::ref(*this);
    }
    asio::awaitable<void> async_exit(std::exception_ptr e) {
        if (!e) {
            co_await async_close();
        } else {
            release_on_exit(e, [&] { abort(); });
        }
    }

    // Sends every byte, or throws; a timeout_error says how many went out.
    asio::awaitable<void> async_send_all(
        std::span<const std::byte> data,
        std::optional<std::chrono::milliseconds> timeout = std::nullopt) {
        if (timeout || closed()) return send_all_checked(data, timeout);
        // The common case: Asio's operation, its completion translated in its handler, and no
        // coroutine frame of ours.
        return asio::async_write(
            *socket_, asio::buffer(data.data(), data.size()),
            asio::experimental::deferred([this](asio::error_code error, std::size_t) {
                return asio::experimental::deferred.values(failure_of(error, "send to"));
            }))(asio::use_awaitable);
    }
    asio::awaitable<void> async_send_all(
        std::string_view data, std::optional<std::chrono::milliseconds> timeout = std::nullopt) {
        return async_send_all(std::as_bytes(std::span(data.data(), data.size())), timeout);
    }

    // Sends what the socket takes once it takes at least one byte; returns how many.
    asio::awaitable<std::size_t> async_send_some(
        std::span<const std::byte> data,
        std::optional<std::chrono::milliseconds> timeout = std::nullopt) {
        if (closed()) detail::throw_closed("send to", remote_);
        auto timer = detail::start_deadline(get_executor(), timeout, "send");
        if (data.empty()) co_return 0;
        const auto step = co_await detail::run_step(
            [&](auto token) {
                return socket_->async_write_some(asio::buffer(data.data(), data.size()),
                                                 std::move(token));
            },
            timer ? &*timer : nullptr);
        if (step.timed_out) {
            throw timeout_error("room to send to " + remote_.to_string(), *timeout);
        }
        if (step.error)
            throw network_error("send to", remote_.to_string(), detail::errno_code(step.error));
        co_return step.bytes;
    }

    // Reads what is there, waiting for at least one byte; returns how many, 0 at end of
    // stream. An empty buffer is std::invalid_argument (its 0 would read as end of stream).
    asio::awaitable<std::size_t> async_receive_some(
        std::span<std::byte> buffer,
        std::optional<std::chrono::milliseconds> timeout = std::nullopt) {
        if (timeout || buffer.empty() || closed() || buffered() > 0) {
            return receive_some_checked(buffer, timeout);
        }
        // The common case, as in async_send_all. End of stream completes with 0 bytes.
        return socket_->async_read_some(
            asio::buffer(buffer.data(), buffer.size()),
            asio::experimental::deferred([this](asio::error_code error, std::size_t bytes) {
                return asio::experimental::deferred.values(failure_of(error, "receive from"),
                                                           error ? std::size_t{0} : bytes);
            }))(asio::use_awaitable);
    }

    // Exactly n bytes. The stream ending first is network_error with errc::end_of_stream; on
    // it, on a timeout and on any other failure the bytes that arrived stay buffered.
    asio::awaitable<std::string> async_receive_exactly(
        std::size_t n, std::optional<std::chrono::milliseconds> timeout = std::nullopt) {
        if (closed()) detail::throw_closed("receive from", remote_);
        auto timer = detail::start_deadline(get_executor(), timeout, "receive");
        std::string result;
        std::size_t got = 0;
        if (buffered() > 0) {
            result.resize(std::min(n, buffered()));
            got = take(result.data(), result.size());
        }
        // Grow as data arrives rather than trusting n: a length prefix from the wire may be
        // huge.
        constexpr std::size_t step_size = 64 * 1024;
        while (got < n) {
            if (result.size() == got) result.resize(std::min(n, got + std::max(got, step_size)));
            const auto step = co_await receive_into(result.data() + got, result.size() - got,
                                                    timer ? &*timer : nullptr);
            if (!step.error) {
                got += step.bytes;
                continue;
            }
            keep(result.data(), got);
            const std::string progress = " (" + std::to_string(got) + " arrived)";
            if (step.timed_out) {
                throw timeout_error(
                    std::to_string(n) + " bytes from " + remote_.to_string() + progress, *timeout);
            }
            if (step.error == asio::error::eof) {
                throw network_error("receive " + std::to_string(n) + " bytes" + progress + " from",
                                    remote_.to_string(), errc::end_of_stream);
            }
            throw network_error("receive from", remote_.to_string(),
                                detail::errno_code(step.error));
        }
        result.resize(n);
        co_return result;
    }

    // The bytes up to and including the first `delimiter`, at most max_bytes of them, as
    // net.hpp's read_until: message_size past max_bytes, end_of_stream first, and on those,
    // a timeout or a cancellation nothing is consumed.
    asio::awaitable<std::string> async_read_until(
        std::string_view delimiter, std::size_t max_bytes = 64 * 1024,
        std::optional<std::chrono::milliseconds> timeout = std::nullopt) {
        if (delimiter.empty()) {
            throw std::invalid_argument(
                "ctxmgr::tcp::async_connection::async_read_until: empty delimiter");
        }
        if (max_bytes < delimiter.size()) {
            throw std::invalid_argument(
                "ctxmgr::tcp::async_connection::async_read_until: max_bytes " +
                std::to_string(max_bytes) + " is shorter than the delimiter " +
                detail::quoted(delimiter));
        }
        if (closed()) detail::throw_closed("receive from", remote_);
        auto timer = detail::start_deadline(get_executor(), timeout, "receive");
        std::size_t searched = 0;  // no match starts before this offset
        for (;;) {
            const auto data = std::string_view(buffer_).substr(begin_);
            const auto at = data.find(delimiter, searched);
            if (at != std::string_view::npos) {
                const std::size_t length = at + delimiter.size();
                if (length > max_bytes) break;
                std::string line(data.substr(0, length));
                consume(length);
                co_return line;
            }
            if (data.size() >= max_bytes) break;
            searched = data.size() >= delimiter.size() ? data.size() - delimiter.size() + 1 : 0;
            const std::size_t end = buffer_.size();
            buffer_.resize(end + read_chunk);
            const auto step =
                co_await receive_into(buffer_.data() + end, read_chunk, timer ? &*timer : nullptr);
            buffer_.resize(end + step.bytes);
            if (!step.error) continue;
            const std::string progress = " (" + std::to_string(buffered()) + " bytes arrived)";
            if (step.timed_out) {
                throw timeout_error(
                    detail::quoted(delimiter) + " from " + remote_.to_string() + progress,
                    *timeout);
            }
            if (step.error == asio::error::eof) {
                throw network_error("read_until " + detail::quoted(delimiter) + progress + " from",
                                    remote_.to_string(), errc::end_of_stream);
            }
            throw network_error("receive from", remote_.to_string(),
                                detail::errno_code(step.error));
        }
        throw network_error("read_until " + detail::quoted(delimiter) + " within " +
                                std::to_string(max_bytes) + " bytes from",
                            remote_.to_string(), std::make_error_code(std::errc::message_size));
    }

    // Sends end of stream (FIN) to the peer; receiving still works.
    void shutdown_write() {
        if (closed()) detail::throw_closed("shut down writing to", remote_);
        std::error_code error;
        socket_->shutdown(asio::socket_base::shutdown_send, error);
        if (error)
            throw network_error("shut down writing to", remote_.to_string(),
                                detail::errno_code(error));
    }

    // Graceful close, as net.hpp's close(): shut down writing, read and discard until the
    // peer closes its side or linger() runs out, close. Idempotent. Throws network_error if
    // the peer reset the connection and no earlier call reported it, or a call fails; the
    // connection is closed regardless, even if the drain is cancelled.
    asio::awaitable<void> async_close() {
        if (closed()) co_return;
        release_buffer();
        std::error_code error;
        socket_->shutdown(asio::socket_base::shutdown_send, error);
        if (!error) {
            try {
                error = co_await drain();
            } catch (...) {
                discard();
                throw;
            }
        } else if (error == asio::error::not_connected) {
            // The connection has ended already: a reset no call has reported yet is pending in
            // SO_ERROR; one a receive or send threw is not reported twice.
            int pending = 0;
            socklen_t length = sizeof pending;
            if (::getsockopt(socket_->native_handle(), SOL_SOCKET, SO_ERROR, &pending, &length) !=
                0) {
                pending = 0;
            }
            error = pending == 0 ? std::error_code()
                                 : std::error_code(pending, std::generic_category());
        }
        std::error_code close_error;
        socket_->close(close_error);
        tracked_.release();
        if (!error) error = close_error;
        if (error)
            throw network_error("close connection to", remote_.to_string(),
                                detail::errno_code(error));
    }

    // Abortive close: SO_LINGER 0, close; the peer sees a reset. Idempotent. Throws
    // network_error if a call fails; the connection is closed regardless.
    void abort() {
        if (closed()) return;
        const std::error_code error = release_socket(true);
        if (error)
            throw network_error("abort connection to", remote_.to_string(),
                                detail::errno_code(error));
    }

    // How long async_close() waits for the peer to close its side (0: do not wait).
    void set_linger(std::chrono::milliseconds linger) {
        detail::check_not_negative(linger, "linger");
        linger_ = linger;
    }
    [[nodiscard]] std::chrono::milliseconds linger() const noexcept { return linger_; }
    void set_no_delay(bool on) {
        set_option(asio::ip::tcp::no_delay(on), "set TCP_NODELAY on connection to");
    }
    void set_keep_alive(bool on) {
        set_option(asio::socket_base::keep_alive(on), "set SO_KEEPALIVE on connection to");
    }

    [[nodiscard]] bool is_open() const noexcept { return socket_ && socket_->is_open(); }
    [[nodiscard]] bool closed() const noexcept { return !is_open(); }
    // The Asio socket, for what this header does not cover; the connection still owns it.
    // Requires a connection that was connected or accepted (closed since, perhaps).
    [[nodiscard]] socket_type& socket() noexcept { return *socket_; }
    [[nodiscard]] executor_type get_executor() noexcept { return socket_->get_executor(); }
    // Both stay readable after close, for logging.
    [[nodiscard]] const endpoint& local_endpoint() const noexcept { return local_; }
    [[nodiscard]] const endpoint& remote_endpoint() const noexcept { return remote_; }
    // Bytes received and not yet returned.
    [[nodiscard]] std::size_t buffered() const noexcept { return buffer_.size() - begin_; }

  private:
    friend class async_listener;
    friend class async_connector;

    // How much a receive that fills the connection's own buffer asks for at a time.
    static constexpr std::size_t read_chunk = 16 * 1024;
    // A drain's scratch space lives in its coroutine frame, once per connection closing at
    // that moment (thousands at once on a busy server): small, since it is mostly unused.
    static constexpr std::size_t drain_chunk = 1024;

    // If registering throws, `socket` is closed as the argument is destroyed.
    async_connection(socket_type socket, endpoint local, endpoint remote,
                     std::chrono::milliseconds linger, std::source_location where)
        : socket_(std::move(socket)),
          linger_(linger),
          local_(std::move(local)),
          remote_(std::move(remote)),
          tracked_("tcp connection",
                   tracking_enabled ? detail::description_of(local_, remote_) : std::string(),
                   where) {}

    // async_send_all and async_receive_some in full: with a deadline, on a closed connection,
    // with bytes buffered or bad input.
    asio::awaitable<void> send_all_checked(std::span<const std::byte> data,
                                           std::optional<std::chrono::milliseconds> timeout) {
        if (closed()) detail::throw_closed("send to", remote_);
        auto timer = detail::start_deadline(get_executor(), timeout, "send");
        const auto step = co_await detail::run_step(
            [&](auto token) {
                return asio::async_write(*socket_, asio::buffer(data.data(), data.size()),
                                         std::move(token));
            },
            timer ? &*timer : nullptr);
        if (step.timed_out) {
            throw timeout_error("room to send to " + remote_.to_string() + " (" +
                                    std::to_string(step.bytes) + " of " +
                                    std::to_string(data.size()) + " bytes sent)",
                                *timeout);
        }
        if (step.error)
            throw network_error("send to", remote_.to_string(), detail::errno_code(step.error));
    }

    asio::awaitable<std::size_t> receive_some_checked(
        std::span<std::byte> buffer, std::optional<std::chrono::milliseconds> timeout) {
        if (buffer.empty()) {
            throw std::invalid_argument(
                "ctxmgr::tcp::async_connection::async_receive_some: empty buffer (its 0 would "
                "read as end of stream)");
        }
        if (closed()) detail::throw_closed("receive from", remote_);
        auto timer = detail::start_deadline(get_executor(), timeout, "receive");
        if (buffered() > 0) co_return take(reinterpret_cast<char*>(buffer.data()), buffer.size());
        const auto step = co_await receive_into(reinterpret_cast<char*>(buffer.data()),
                                                buffer.size(), timer ? &*timer : nullptr);
        if (step.timed_out) throw timeout_error("data from " + remote_.to_string(), *timeout);
        if (auto failure = failure_of(step.error, "receive from")) std::rethrow_exception(failure);
        co_return step.error ? 0 : step.bytes;
    }

    // What a send or receive that completed with `error` throws (null: none; end of stream is
    // none, a receive's 0).
    std::exception_ptr failure_of(const asio::error_code& error, const char* operation) const {
        if (!error || error == asio::error::eof) return nullptr;
        return std::make_exception_ptr(
            network_error(operation, remote_.to_string(), detail::errno_code(error)));
    }

    asio::awaitable<detail::async_step> receive_into(char* data, std::size_t size,
                                                     asio::steady_timer* timer) {
        if (timer == nullptr) {
            // The untimed path is the bare operation: no coroutine frame of run_step's.
            auto [error, bytes] = co_await socket_->async_read_some(
                asio::buffer(data, size), asio::experimental::as_tuple(asio::use_awaitable));
            co_return detail::async_step{error, bytes, false};
        }
        co_return co_await detail::run_step(
            [&](auto token) {
                return socket_->async_read_some(asio::buffer(data, size), std::move(token));
            },
            timer);
    }

    // Reads and discards after shutdown until end of stream or linger() runs out. Returns
    // the receive's error (connection_reset: the peer did not take everything); running out
    // of time is not one.
    asio::awaitable<std::error_code> drain() {
        if (linger_.count() == 0) co_return std::error_code();
        asio::steady_timer timer(get_executor(), linger_);
        char scratch[drain_chunk];
        for (;;) {
            const auto step = co_await detail::run_step(
                [&](auto token) {
                    return socket_->async_read_some(asio::buffer(scratch), std::move(token));
                },
                &timer);
            if (step.timed_out || step.error == asio::error::eof) co_return std::error_code();
            if (step.error) co_return step.error;
        }
    }

    std::size_t take(char* out, std::size_t size) noexcept {
        const std::size_t n = std::min(size, buffered());
        std::memcpy(out, buffer_.data() + begin_, n);
        consume(n);
        return n;
    }
    void consume(std::size_t n) noexcept {
        begin_ += n;
        if (begin_ == buffer_.size()) {
            buffer_.clear();
            begin_ = 0;
        }
    }
    // Puts bytes a failed receive took back in front of what is buffered (which is empty
    // then: the buffered bytes were taken first).
    void keep(const char* data, std::size_t size) {
        buffer_.erase(0, begin_);
        begin_ = 0;
        buffer_.insert(0, data, size);
    }
    void release_buffer() noexcept {
        buffer_ = std::string();
        begin_ = 0;
    }

    template <class Option>
    void set_option(const Option& option, std::string_view operation) {
        if (closed()) detail::throw_closed(operation, remote_);
        std::error_code error;
        socket_->set_option(option, error);
        if (error) throw network_error(operation, remote_.to_string(), detail::errno_code(error));
    }

    // Closes without waiting; abortive: SO_LINGER 0 first. The socket is closed and the
    // registration released in every case; returns the first failure.
    std::error_code release_socket(bool abortive) noexcept {
        release_buffer();
        std::error_code error;
        if (abortive) socket_->set_option(asio::socket_base::linger(true, 0), error);
        std::error_code close_error;
        socket_->close(close_error);
        tracked_.release();
        return error ? error : close_error;
    }

    void discard() noexcept {
        if (closed()) return;
        // Unwinding means the exchange failed: tell the peer with a reset.
        const bool abortive = std::uncaught_exceptions() > 0;
        const std::error_code error = release_socket(abortive);
        if (!error) return;
        release_in_destructor(
            [&] {
                throw network_error(abortive ? "abort connection to" : "close connection to",
                                    remote_.to_string(), detail::errno_code(error));
            },
            [&] { return "tcp connection " + detail::description_of(local_, remote_); },
            "tcp connection", abortive ? "abort in destructor" : "close in destructor");
    }

    std::optional<socket_type> socket_;  // empty in a default-constructed connection
    std::chrono::milliseconds linger_ = connect_options{}.linger;
    endpoint local_;
    endpoint remote_;
    std::string buffer_;     // received bytes not yet returned are buffer_[begin_, size())
    std::size_t begin_ = 0;  // the first of them
    [[no_unique_address]] tracked tracked_;
};

// The manager async_connect() returns: async_enter() resolves the host, connects (within
// options.timeout for every address together) and gives the connection; async_exit(e) is
// the connection's. Destroyed without being entered, it says so (a protocol_error to the
// unraisable hook), as a coroutine never awaited would.
class [[nodiscard]] async_connector {
  public:
    async_connector(asio::any_io_executor executor, std::string_view host, std::uint16_t port,
                    const connect_options& options, std::source_location where)
        : executor_(std::move(executor)),
          host_(host),
          port_(port),
          options_(options),
          check_(where) {}
    async_connector(async_connector&&) noexcept = default;
    async_connector& operator=(async_connector&&) = delete;
    async_connector(const async_connector&) = delete;
    async_connector& operator=(const async_connector&) = delete;
    ~async_connector() = default;

    // Throws network_error for a failed resolution (naming the host) or when every address
    // fails (the last address's error, the earlier ones nested in it), timeout_error,
    // std::invalid_argument for an empty host or a negative duration, protocol_error when
    // entered twice.
    asio::awaitable<std::reference_wrapper<async_connection>> async_enter() {
        check_.entered();
        if (connection_) throw protocol_error("ctxmgr::tcp::async_connect: entered twice");
        if (host_.empty())
            throw std::invalid_argument("ctxmgr::tcp::async_connect: empty host name");
        detail::check_not_negative(options_.linger, "linger");
        auto timer = detail::start_deadline(executor_, options_.timeout, "connect");
        const auto addresses = co_await resolve();
        failure_chain failures{std::exception_ptr()};
        for (std::size_t i = 0; i < addresses.size(); ++i) {
            const auto& address = addresses[i];
            auto remote = detail::to_endpoint(address);
            const auto peer = [&] {
                std::string text = remote.to_string();
                if (!numeric_) text += " (" + host_ + ')';
                return text;
            };
            if (i > 0 && timer && timer->expiry() <= asio::steady_timer::clock_type::now()) {
                failures.add(timeout_error("connect to " + peer(), *options_.timeout));
                failures.rethrow();
            }
            async_connection::socket_type socket(executor_);
            std::error_code error;
            if (const int failure = detail::open_socket(socket, address.protocol()); failure != 0) {
                error = std::error_code(failure, std::generic_category());
            } else {
                if (options_.no_delay) socket.set_option(asio::ip::tcp::no_delay(true), error);
                if (!error && options_.keep_alive) {
                    socket.set_option(asio::socket_base::keep_alive(true), error);
                }
            }
            if (!error) {
                const auto step = co_await detail::run_step(
                    [&](auto token) { return socket.async_connect(address, std::move(token)); },
                    timer ? &*timer : nullptr);
                if (step.timed_out) {
                    failures.add(timeout_error("connect to " + peer(), *options_.timeout));
                    failures.rethrow();
                }
                error = step.error;
            }
            if (error == asio::error::operation_aborted) {
                failures.add(network_error("connect", peer(), detail::errno_code(error)));
                failures.rethrow();
            }
            if (error) {
                failures.add(network_error("connect", peer(), detail::errno_code(error)));
                if (i + 1 == addresses.size()) failures.rethrow();
                continue;
            }
            const auto local = socket.local_endpoint(error);
            if (error)
                throw network_error("getsockname on connection to", peer(),
                                    detail::errno_code(error));
            connection_.emplace(async_connection(std::move(socket), detail::to_endpoint(local),
                                                 std::move(remote), options_.linger,
                                                 check_.where()));
            co_return std::ref(*connection_);
        }
        // resolve() returns at least one address, so the loop returns or throws.
        throw network_error("connect", host_,
                            std::make_error_code(std::errc::address_not_available));
    }

    asio::awaitable<void> async_exit(std::exception_ptr e) {
        if (connection_) co_await connection_->async_exit(std::move(e));
    }

  private:
    asio::awaitable<std::vector<asio::ip::tcp::endpoint>> resolve() {
        std::error_code error;
        const auto numeric = asio::ip::make_address(host_, error);
        numeric_ = !error;
        if (numeric_) co_return std::vector<asio::ip::tcp::endpoint>{{numeric, port_}};
        asio::ip::tcp::resolver resolver(executor_);
        auto [failure, results] = co_await resolver.async_resolve(
            host_, std::to_string(port_), asio::ip::resolver_base::numeric_service,
            asio::experimental::as_tuple(asio::use_awaitable));
        if (failure) throw network_error("resolve", '"' + host_ + '"', detail::errno_code(failure));
        std::vector<asio::ip::tcp::endpoint> addresses;
        for (const auto& entry : results) addresses.push_back(entry.endpoint());
        if (addresses.empty()) {
            throw network_error("resolve", '"' + host_ + '"', asio::error::host_not_found);
        }
        co_return addresses;
    }

    asio::any_io_executor executor_;
    std::string host_;
    std::uint16_t port_;
    connect_options options_;
    bool numeric_ = false;
    std::optional<async_connection> connection_;
    [[no_unique_address]] ctxmgr::detail::entry_check<"tcp::async_connect"> check_;
};

// A manager that connects to `host` (a numeric address, or a name resolved by Asio's
// resolver) in async_enter(), trying its addresses in order. The connection is tracked as
// acquired at the caller's line.
[[nodiscard]] inline async_connector async_connect(
    asio::any_io_executor executor, std::string_view host, std::uint16_t port,
    const connect_options& options = {},
    std::source_location where = std::source_location::current()) {
    return async_connector(std::move(executor), host, port, options, where);
}
[[nodiscard]] inline async_connector async_connect(
    asio::io_context& context, std::string_view host, std::uint16_t port,
    const connect_options& options = {},
    std::source_location where = std::source_location::current()) {
    return async_connector(context.get_executor(), host, port, options, where);
}

// A listening TCP socket for coroutines (SO_REUSEADDR). Move-only. A manager with a
// synchronous exit: closing a listener never waits. Closing it resets the connections still
// waiting to be accepted.
class [[nodiscard]] async_listener {
  public:
    using acceptor_type = asio::ip::tcp::acceptor;

    async_listener(async_listener&& other) noexcept
        : acceptor_(std::move(other.acceptor_)),
          local_(std::move(other.local_)),
          tracked_(std::move(other.tracked_)) {}
    async_listener& operator=(async_listener&& other) noexcept {
        if (this != &other) {
            discard("close in move assignment");
            acceptor_ = std::move(other.acceptor_);
            local_ = std::move(other.local_);
            tracked_ = std::move(other.tracked_);
        }
        return *this;
    }
    async_listener(const async_listener&) = delete;
    async_listener& operator=(const async_listener&) = delete;
    ~async_listener() { discard("close in destructor"); }

    // enter() throws closed_error on a closed listener; exit(e) is close(), whose failure is
    // thrown with e nested when e is not null.
    async_listener& enter() {
        if (closed()) {
            throw closed_error("enter listener on " + local_.to_string() +
                               ": the listener is closed");
        }
        return *this;
    }
    void exit(const std::exception_ptr& e) {
        release_on_exit(e, [&] { close(); });
    }

    // The next connection, waiting up to timeout. It gets TCP_NODELAY and a linger of 1 s,
    // as async_connect() does by default, and is tracked as acquired at the caller's line.
    asio::awaitable<async_connection> async_accept(
        std::optional<std::chrono::milliseconds> timeout = std::nullopt,
        std::source_location where = std::source_location::current()) {
        if (closed()) {
            throw closed_error("accept on " + local_.to_string() + ": the listener is closed");
        }
        auto timer = detail::start_deadline(acceptor_.get_executor(), timeout, "accept");
        sockaddr_storage storage{};
        socklen_t length = 0;
        int fd = -1;
        for (;;) {
            length = sizeof storage;
            fd = ::accept4(acceptor_.native_handle(), reinterpret_cast<sockaddr*>(&storage),
                           &length, SOCK_CLOEXEC | SOCK_NONBLOCK);
            if (fd >= 0) break;
            const int error = errno;
            if (detail::accept_may_retry(error)) continue;
            if (error != EAGAIN && error != EWOULDBLOCK) {
                throw network_error("accept on", local_.to_string(), error);
            }
            const auto step = co_await detail::run_step(
                [&](auto token) {
                    return acceptor_.async_wait(asio::socket_base::wait_read, std::move(token));
                },
                timer ? &*timer : nullptr);
            if (step.timed_out) {
                throw timeout_error("a connection on " + local_.to_string(), *timeout);
            }
            if (step.error)
                throw network_error("accept on", local_.to_string(),
                                    detail::errno_code(step.error));
        }
        async_connection::socket_type socket(acceptor_.get_executor());
        asio::ip::tcp::endpoint remote;
        std::memcpy(remote.data(), &storage, std::min<std::size_t>(length, remote.capacity()));
        std::error_code error;
        socket.assign(remote.protocol(), fd, error);
        if (error) {
            ::close(fd);
            throw network_error("accept on", local_.to_string(), detail::errno_code(error));
        }
        const auto peer = detail::to_endpoint(remote);
        socket.set_option(asio::ip::tcp::no_delay(true), error);
        if (error)
            throw network_error("set TCP_NODELAY on connection from", peer.to_string(),
                                detail::errno_code(error));
        const auto local = socket.local_endpoint(error);
        if (error)
            throw network_error("getsockname on connection from", peer.to_string(),
                                detail::errno_code(error));
        co_return async_connection(std::move(socket), detail::to_endpoint(local), peer,
                                   connect_options{}.linger, where);
    }

    // Idempotent; throws network_error if close fails (the listener is closed regardless).
    void close() {
        if (closed()) return;
        std::error_code error;
        acceptor_.close(error);
        tracked_.release();
        if (error)
            throw network_error("close listener on", local_.to_string(), detail::errno_code(error));
    }

    [[nodiscard]] bool is_open() const noexcept { return acceptor_.is_open(); }
    [[nodiscard]] bool closed() const noexcept { return !acceptor_.is_open(); }
    [[nodiscard]] acceptor_type& acceptor() noexcept { return acceptor_; }
    [[nodiscard]] acceptor_type::executor_type get_executor() noexcept {
        return acceptor_.get_executor();
    }
    // The bound address and port (the one the OS picked for port 0); kept after close.
    [[nodiscard]] const endpoint& local_endpoint() const noexcept { return local_; }
    [[nodiscard]] std::uint16_t local_port() const noexcept { return local_.port; }

  private:
    friend async_listener async_listen(asio::any_io_executor, std::string_view, std::uint16_t, int,
                                       std::source_location);

    async_listener(acceptor_type acceptor, endpoint local, std::source_location where)
        : acceptor_(std::move(acceptor)),
          local_(std::move(local)),
          tracked_("tcp listener", "listening on " + local_.to_string(), where) {}

    void discard(const char* context) noexcept {
        if (closed()) return;
        release_in_destructor([&] { close(); },
                              [&] { return "tcp listener listening on " + local_.to_string(); },
                              "tcp listener", context);
    }

    acceptor_type acceptor_;
    endpoint local_;
    [[no_unique_address]] tracked tracked_;
};

// Binds to `address` (numeric, or a name resolved at once; "" is every interface; the first
// address that binds wins) and listens with room for `backlog` connections not yet accepted.
// Port 0 picks a free port: see local_port(). Throws network_error (`bind 127.0.0.1:80:
// Permission denied`), std::invalid_argument for a negative backlog.
[[nodiscard]] inline async_listener async_listen(
    asio::any_io_executor executor, std::string_view address, std::uint16_t port, int backlog = 128,
    std::source_location where = std::source_location::current()) {
    if (backlog < 0) {
        throw std::invalid_argument("ctxmgr::tcp::async_listen: negative backlog " +
                                    std::to_string(backlog));
    }
    const std::string name(address);
    std::vector<asio::ip::tcp::endpoint> candidates;
    std::error_code error;
    const auto numeric = asio::ip::make_address(name, error);
    if (!error) {
        candidates.emplace_back(numeric, port);
    } else {
        asio::ip::tcp::resolver resolver(executor);
        const auto results = resolver.resolve(
            name, std::to_string(port),
            asio::ip::resolver_base::passive | asio::ip::resolver_base::numeric_service, error);
        if (error) throw network_error("resolve", '"' + name + '"', detail::errno_code(error));
        for (const auto& entry : results) candidates.push_back(entry.endpoint());
    }
    failure_chain failures{std::exception_ptr()};
    for (const auto& candidate : candidates) {
        async_listener::acceptor_type acceptor(executor);
        const char* operation = "socket for";
        if (const int failure = detail::open_socket(acceptor, candidate.protocol()); failure != 0) {
            error = std::error_code(failure, std::generic_category());
        } else {
            error.clear();
            acceptor.set_option(asio::socket_base::reuse_address(true), error);
            if (error) {
                operation = "set SO_REUSEADDR on";
            } else if (acceptor.bind(candidate, error); error) {
                operation = "bind";
            } else if (acceptor.listen(backlog, error); error) {
                operation = "listen on";
            }
        }
        asio::ip::tcp::endpoint local;
        if (!error) {
            local = acceptor.local_endpoint(error);
            if (error) operation = "getsockname on listener";
        }
        if (!error) return async_listener(std::move(acceptor), detail::to_endpoint(local), where);
        failures.add(network_error(operation, detail::to_endpoint(candidate).to_string(),
                                   detail::errno_code(error)));
    }
    if (failures.failed()) failures.rethrow();
    throw network_error("listen on", name, std::make_error_code(std::errc::address_not_available));
}
[[nodiscard]] inline async_listener async_listen(
    asio::io_context& context, std::string_view address, std::uint16_t port, int backlog = 128,
    std::source_location where = std::source_location::current()) {
    return async_listen(context.get_executor(), address, port, backlog, where);
}

}  // namespace ctxmgr::tcp
