// ctxmgr/net.hpp: TCP clients and servers whose sockets always close, with timeouts.
//
// A socket left open holds a descriptor and a port, and a peer left waiting never learns
// that the exchange failed. tcp::connect() and tcp::listen() return managers that close on
// every path, and say how it ended: a block that ends normally closes gracefully (the peer
// reads all the data, then end of stream); a block that throws resets the connection (the
// peer's next read fails with ECONNRESET), like Python's `with socket.create_connection()`
// plus the "lingering close" of Apache and nginx.
//
//   using namespace std::chrono_literals;
//   auto server = ctxmgr::tcp::listen("127.0.0.1", 0);   // port 0: the OS picks one
//   ...                                                   // a thread that answers "pong\n"
//   ctxmgr::with(ctxmgr::tcp::connect("127.0.0.1", server.local_port(), {.timeout = 2s}),
//                [](ctxmgr::tcp::connection& c) {
//                    c.send_all("ping\n");
//                    std::string reply = c.read_until("\n", 1024, 500ms);   // "pong\n"
//                });                                       // shut down, drain, close
//
// exit(e), the manager's half, with no pending exception is close(): shut down writing,
// read and discard what the peer still sends until it closes its side or the linger time
// (1 s by default) runs out, close. Draining matters: closing a socket with unread data
// makes the kernel send a reset, which can destroy the reply still in flight to the peer.
// A reset from the peer is reported (close throws network_error): the peer did not take
// everything that was sent; a reset that a receive or send already threw is not reported
// twice. With a pending exception exit is abort(): SO_LINGER 0 and close, which sends a
// reset at once and discards unsent data, so the peer learns that the exchange failed
// instead of mistaking a truncated message for a complete one. The destructor, for a
// connection never closed, aborts while the stack unwinds an exception and otherwise closes
// without waiting (the kernel still delivers what was sent, then end of stream); it never
// throws.
//
// Guarantees:
//   - Errors: network_error (a std::system_error: code() keeps the errno, or the
//     getaddrinfo code in resolve_category(), or errc::end_of_stream) naming the operation
//     and the peer: `connect 127.0.0.1:5: Connection refused`, `resolve "bad host!": Name or
//     service not known` (peer() is the quoted host). A timeout throws timeout_error. Misuse throws
//     closed_error (use after close) or std::invalid_argument (a negative timeout, an empty
//     delimiter, ...).
//   - No data is lost on error: bytes that arrived before a receive failed or timed out stay
//     buffered and the next receive returns them. send_all cannot say how much went out
//     before a failure (the timeout_error's message does); use send_some to count.
//   - Timeouts are std::chrono::milliseconds, none (block) by default, and bound the whole
//     call, across retries after a signal (EINTR). A timed call is a non-blocking call
//     (MSG_DONTWAIT) and poll() against a steady-clock deadline; an untimed one is the
//     plain blocking call, so it costs what the raw call costs. connect's timeout covers
//     the connection attempts, not name resolution (getaddrinfo cannot be interrupted):
//     pass a numeric address, which is never resolved, where that matters.
//   - SIGPIPE never kills the process: every send passes MSG_NOSIGNAL. The library never
//     changes signal dispositions. Every descriptor is close-on-exec.
//   - Every connection and listener is a tracked resource (tracking.hpp): kind "tcp
//     connection", description `127.0.0.1:41234 -> 127.0.0.1:5000`; kind "tcp listener",
//     description `listening on 127.0.0.1:5000`; acquired at the caller's line.
//   - Thread-compatible. One thread may send while another receives on the same connection;
//     closing, moving or destroying it needs every other use to have finished. A listener
//     may accept on several threads at once.
//
// Not here: TLS, UDP, asynchronous I/O. native_handle() is the descriptor, in blocking mode,
// for what this header does not cover (setsockopt, poll over many connections).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <optional>
#include <source_location>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>

#include "errors.hpp"
#include "tracking.hpp"

namespace ctxmgr::tcp {

// Where a socket is bound or connected: a numeric address ("127.0.0.1", "::1") and a port.
struct endpoint {
    std::string address;
    std::uint16_t port = 0;

    // "127.0.0.1:5000", "[::1]:5000"; "" for an empty endpoint.
    [[nodiscard]] std::string to_string() const;

    friend bool operator==(const endpoint&, const endpoint&) = default;
};

// The library's own error conditions in network_error::code().
enum class errc {
    // The peer closed its side before the message was complete (receive_exactly,
    // read_until): what arrived stays buffered.
    end_of_stream = 1,
};

// The category of errc ("ctxmgr.tcp").
[[nodiscard]] const std::error_category& stream_category() noexcept;

// The category of getaddrinfo's EAI_* codes ("getaddrinfo"; messages from gai_strerror).
// A resolution failure's code() is in it, except EAI_SYSTEM, which keeps the errno.
[[nodiscard]] const std::error_category& resolve_category() noexcept;

[[nodiscard]] inline std::error_code make_error_code(errc e) noexcept {
    return {static_cast<int>(e), stream_category()};
}

// What connect() does beyond connecting.
struct connect_options {
    // Bounds the connection attempts (all addresses together); none: the OS's own limit.
    std::optional<std::chrono::milliseconds> timeout = std::nullopt;
    // TCP_NODELAY: send small writes at once instead of waiting to coalesce them (Nagle).
    // On by default, as Go and asyncio do: request/response exchanges need it.
    bool no_delay = true;
    // SO_KEEPALIVE: probe an idle connection so a vanished peer is eventually noticed.
    bool keep_alive = false;
    // How long close() waits for the peer to close its side; see connection::set_linger.
    std::chrono::milliseconds linger{1000};
};

class listener;

// A connected TCP socket. Move-only; a default-constructed or moved-from connection is
// closed. Members not marked noexcept throw network_error on a failed call, timeout_error
// when a timeout runs out, closed_error on a closed connection.
class [[nodiscard]] connection {
  public:
    connection() noexcept;
    connection(connection&& other) noexcept;
    // Releases this connection as the destructor does (failures go to the unraisable hook,
    // so it cannot throw), then takes other's. Use close() first to see a failure.
    connection& operator=(connection&& other) noexcept;
    connection(const connection&) = delete;
    connection& operator=(const connection&) = delete;
    // Aborts while an exception unwinds the stack, else closes without waiting; a failure
    // goes to the unraisable hook.
    ~connection();

    // The manager's half. enter() throws closed_error on a closed connection. exit(e):
    // close() without a pending exception (its failure propagates), abort() with one (its
    // failure is thrown with e nested, see throw_chained). The connection is closed after
    // exit in every case.
    connection& enter();
    void exit(const std::exception_ptr& e);

    // Sends every byte, or throws. A timeout_error says how many bytes went out.
    void send_all(std::string_view data,
                  std::optional<std::chrono::milliseconds> timeout = std::nullopt);
    void send_all(std::span<const std::byte> data,
                  std::optional<std::chrono::milliseconds> timeout = std::nullopt);
    // Sends what the socket takes now, waiting (up to timeout) until it takes at least one
    // byte; returns how many it took (0 only for empty data).
    [[nodiscard]] std::size_t send_some(
        std::span<const std::byte> data,
        std::optional<std::chrono::milliseconds> timeout = std::nullopt);

    // Reads what is there, waiting (up to timeout) for at least one byte; returns the number
    // of bytes read, 0 at end of stream. An empty buffer is std::invalid_argument (its 0
    // would read as end of stream).
    [[nodiscard]] std::size_t receive_some(
        std::span<std::byte> buffer,
        std::optional<std::chrono::milliseconds> timeout = std::nullopt);
    // Exactly n bytes. If the stream ends first: network_error with errc::end_of_stream.
    // On that error and on a timeout, the bytes that arrived stay buffered for the next
    // receive.
    std::string receive_exactly(std::size_t n,
                                std::optional<std::chrono::milliseconds> timeout = std::nullopt);
    // The bytes up to and including the first `delimiter`, at most max_bytes of them
    // (delimiter included). No delimiter within max_bytes: network_error with
    // std::errc::message_size; end of stream first: errc::end_of_stream. On those errors and
    // on a timeout nothing is consumed: the bytes stay buffered. Bytes read past the
    // delimiter stay buffered too. An empty delimiter, or max_bytes shorter than it, is
    // std::invalid_argument.
    std::string read_until(std::string_view delimiter, std::size_t max_bytes = 64 * 1024,
                           std::optional<std::chrono::milliseconds> timeout = std::nullopt);

    // Sends end of stream (FIN) to the peer; receiving still works. Idempotent.
    void shutdown_write();

    // Graceful close (see the top of this header): shut down writing, drain until the peer
    // closes or linger() runs out, close. Idempotent. Throws network_error if the peer reset
    // the connection and no earlier call reported it, or a call fails; the connection is
    // closed regardless.
    void close();
    // Abortive close: SO_LINGER 0, close; the peer sees a reset. Idempotent. Throws
    // network_error if a call fails; the connection is closed regardless.
    void abort();

    // How long close() waits for the peer to close its side (default 1 s; 0: do not wait).
    // After it, close() closes anyway, which resets the connection if the peer still sends.
    void set_linger(std::chrono::milliseconds linger);
    [[nodiscard]] std::chrono::milliseconds linger() const noexcept { return linger_; }
    // TCP_NODELAY and SO_KEEPALIVE, as in connect_options.
    void set_no_delay(bool on);
    void set_keep_alive(bool on);

    [[nodiscard]] bool is_open() const noexcept { return fd_ >= 0; }
    [[nodiscard]] bool closed() const noexcept { return fd_ < 0; }
    // The descriptor (blocking mode), -1 when closed. The connection still owns it.
    [[nodiscard]] int native_handle() const noexcept { return fd_; }
    // Both stay readable after close, for logging; empty for a default-constructed one.
    [[nodiscard]] const endpoint& local_endpoint() const noexcept { return local_; }
    [[nodiscard]] const endpoint& remote_endpoint() const noexcept { return remote_; }
    // Bytes received and not yet returned (read past a delimiter, or kept after an error).
    [[nodiscard]] std::size_t buffered() const noexcept;

  private:
    friend connection connect(std::string_view, std::uint16_t, const connect_options&,
                              std::source_location);
    friend class listener;

    connection(int fd, endpoint local, endpoint remote, std::chrono::milliseconds linger,
               std::source_location where);

    // Received bytes not yet returned; made the first time a receive must keep some, so
    // connecting and the untimed send/receive path allocate nothing for it.
    struct receive_buffer;

    // Releases the socket without waiting and without throwing (destructor, move assignment).
    void discard() noexcept;

    int fd_ = -1;
    std::chrono::milliseconds linger_ = connect_options{}.linger;
    endpoint local_;
    endpoint remote_;
    std::unique_ptr<receive_buffer> buffer_;
    [[no_unique_address]] tracked tracked_;
};

// Resolves `host` (getaddrinfo; a numeric address is not resolved) and connects to its
// addresses in order until one accepts, within options.timeout for all of them together.
// Throws network_error for a failed resolution (naming the host) or when every address
// fails (the last address's error, the earlier ones nested in it), timeout_error when the
// timeout runs out, std::invalid_argument for an empty host or a negative duration.
[[nodiscard]] connection connect(std::string_view host, std::uint16_t port,
                                 const connect_options& options = {},
                                 std::source_location where = std::source_location::current());

// A listening TCP socket (SO_REUSEADDR). Move-only; a default-constructed or moved-from
// listener is closed. Closing it resets the connections still waiting to be accepted.
class [[nodiscard]] listener {
  public:
    listener() noexcept = default;
    listener(listener&& other) noexcept;
    // Closes this listener as the destructor does (a failure goes to the unraisable hook),
    // then takes other's.
    listener& operator=(listener&& other) noexcept;
    listener(const listener&) = delete;
    listener& operator=(const listener&) = delete;
    ~listener();

    // enter() throws closed_error on a closed listener; exit(e) is close(), whose failure is
    // thrown with e nested when e is not null.
    listener& enter();
    void exit(const std::exception_ptr& e);

    // The next connection, waiting up to timeout (none: for ever). It gets TCP_NODELAY and
    // a linger of 1 s, as connect() does by default; change them on the connection. The
    // connection is tracked as acquired at the caller's line.
    [[nodiscard]] connection accept(std::optional<std::chrono::milliseconds> timeout = std::nullopt,
                                    std::source_location where = std::source_location::current());

    // Idempotent; throws network_error if close fails (the listener is closed regardless).
    void close();

    [[nodiscard]] bool is_open() const noexcept { return fd_ >= 0; }
    [[nodiscard]] bool closed() const noexcept { return fd_ < 0; }
    [[nodiscard]] int native_handle() const noexcept { return fd_; }
    // The bound address and port (the one the OS picked for port 0); kept after close.
    [[nodiscard]] const endpoint& local_endpoint() const noexcept { return local_; }
    [[nodiscard]] std::uint16_t local_port() const noexcept { return local_.port; }

  private:
    friend listener listen(std::string_view, std::uint16_t, int, std::source_location);

    listener(int fd, endpoint local, std::source_location where);
    // Closes; a failure goes to the unraisable hook, `context` saying where.
    void discard(const char* context) noexcept;

    int fd_ = -1;
    endpoint local_;
    [[no_unique_address]] tracked tracked_;
};

// Binds to `address` (a numeric address or a name, resolved with getaddrinfo; the first
// address that binds wins; "" is every interface) and listens with room for `backlog`
// connections not yet accepted (the OS caps it at net.core.somaxconn). Port 0 picks a free
// port: see local_port(). Throws network_error (`bind 127.0.0.1:80: Permission denied`),
// std::invalid_argument for a negative backlog.
[[nodiscard]] listener listen(std::string_view address, std::uint16_t port, int backlog = 128,
                              std::source_location where = std::source_location::current());

// The wording both halves share, so that async_net.hpp's errors and tracked descriptions read
// exactly as these do.
namespace detail {
// closed_error: "send to 127.0.0.1:5000: the connection is closed".
[[noreturn]] void throw_closed(std::string_view operation, const endpoint& peer);
// std::invalid_argument for a negative duration: "ctxmgr::tcp: send timeout is negative (-5 ms)".
void check_not_negative(std::chrono::milliseconds duration, std::string_view what,
                        std::string_view suffix = {});
// "127.0.0.1:41234 -> 127.0.0.1:5000", a connection's tracked description.
[[nodiscard]] std::string description_of(const endpoint& local, const endpoint& remote);
// `text` in double quotes, escaped as a C string literal: "\r\n".
[[nodiscard]] std::string quoted(std::string_view text);
// Whether accept4's errno is one to retry at once: a signal, or a connection that failed
// before it was accepted.
[[nodiscard]] bool accept_may_retry(int error) noexcept;
}  // namespace detail

}  // namespace ctxmgr::tcp

template <>
struct std::is_error_code_enum<ctxmgr::tcp::errc> : std::true_type {};
