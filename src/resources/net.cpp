// TCP connections and listeners behind net.hpp.
//
// Descriptors stay in blocking mode, so an untimed send or receive is the one system call a
// hand-written program makes. A timed call passes MSG_DONTWAIT and waits in poll() against a
// steady-clock deadline, retrying after EINTR with the time that is left. Only a timed
// connect needs the descriptor non-blocking (there is no MSG_DONTWAIT for connect): it is
// created with SOCK_NONBLOCK and switched back once connected. Listening sockets are
// non-blocking for good, so that accept() on several threads never blocks a thread that
// lost the race for a connection poll() announced.
#include "ctxmgr/net.hpp"
#include "ctxmgr/release.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <utility>
#include <vector>

#include "ctxmgr/detail/deadline.hpp"
#include "ctxmgr/scope.hpp"
#include "ctxmgr/unraisable.hpp"
#include "support/posix_support.hpp"

namespace ctxmgr::tcp {

namespace {

using ctxmgr::detail::quoted;
using std::chrono::milliseconds;
using std::chrono::steady_clock;

constexpr std::string_view connection_kind = "tcp connection";
constexpr std::string_view listener_kind = "tcp listener";
// How much a receive that fills the buffer (read_until, a drain) asks for at a time.
constexpr std::size_t read_chunk = 16 * 1024;

class stream_category_type final : public std::error_category {
  public:
    const char* name() const noexcept override { return "ctxmgr.tcp"; }
    std::string message(int value) const override {
        switch (static_cast<errc>(value)) {
            case errc::end_of_stream:
                return "end of stream: the peer closed the connection";
        }
        return "unknown ctxmgr.tcp error " + std::to_string(value);
    }
};

class resolve_category_type final : public std::error_category {
  public:
    const char* name() const noexcept override { return "getaddrinfo"; }
    std::string message(int value) const override { return ::gai_strerror(value); }
};

}  // namespace

// ---- time limits -------------------------------------------------------------------------

// `what` and `suffix` are joined only for the message: the check runs on every timed call.
void detail::check_not_negative(milliseconds duration, std::string_view what,
                                std::string_view suffix) {
    if (duration.count() < 0) {
        throw std::invalid_argument("ctxmgr::tcp: " + std::string(what) + std::string(suffix) +
                                    " is negative (" + format_duration(duration) + ')');
    }
}

namespace {

using detail::check_not_negative;
using deadline = ctxmgr::detail::deadline;

// The deadline of a timed call (none for an untimed one), once its timeout is checked.
deadline deadline_of(const std::optional<milliseconds>& timeout, std::string_view operation) {
    if (timeout) check_not_negative(*timeout, operation, " timeout");
    return deadline::after(timeout);
}

// Waits until `fd` is ready for `events` (or has an error or hang-up, which the next call
// reports) or the deadline passes. EINTR is retried with the time left. Returns 0 when
// ready, ETIMEDOUT when the deadline passed (poll itself never fails with it), else poll's
// errno. The callers build their messages only on failure: formatting an endpoint costs more
// user time than the poll.
int wait_for(int fd, short events, const deadline& limit) noexcept {
    for (;;) {
        pollfd entry{fd, events, 0};
        const int n = ::poll(&entry, 1, limit.poll_timeout());
        if (n > 0) return 0;
        if (n == 0) {
            // poll's timeout is rounded up to whole milliseconds; the clock has the last word.
            if (limit.expired() || !limit.timed()) return ETIMEDOUT;
            continue;
        }
        if (errno != EINTR) return errno;
    }
}

// ---- addresses ---------------------------------------------------------------------------

struct socket_address {
    sockaddr_storage storage{};
    socklen_t length = 0;

    [[nodiscard]] const sockaddr* get() const noexcept {
        return reinterpret_cast<const sockaddr*>(&storage);
    }
    [[nodiscard]] int family() const noexcept { return storage.ss_family; }
};

// Writes the decimal digits of `value` at `out`; returns the end. Endpoints are formatted
// by hand on every connect and accept (the tracked description): std::to_string and
// inet_ntop's sprintf cost more user time than the rest of connect() together.
char* write_decimal(char* out, unsigned value) noexcept {
    char digits[10];
    int n = 0;
    do {
        digits[n++] = static_cast<char>('0' + value % 10);
        value /= 10;
    } while (value != 0);
    while (n > 0) *out++ = digits[--n];
    return out;
}

// The longest endpoint text: "[" address (an IPv6 one with a scope id) "]:" port.
constexpr std::size_t endpoint_text_size = INET6_ADDRSTRLEN + 12 + 8;

// Writes "127.0.0.1:5000" or "[::1]:5000" at `out` (endpoint_text_size bytes); returns the end.
char* write_endpoint(char* out, const endpoint& e) noexcept {
    if (e.address.empty()) return out;
    const std::size_t size = std::min(e.address.size(), endpoint_text_size - 8);
    const bool v6 = e.address.find(':') != std::string::npos;
    if (v6) *out++ = '[';
    std::memcpy(out, e.address.data(), size);
    out += size;
    if (v6) *out++ = ']';
    *out++ = ':';
    return write_decimal(out, e.port);
}

endpoint to_endpoint(const sockaddr_storage& storage) {
    endpoint result;
    if (storage.ss_family == AF_INET) {
        // By hand: inet_ntop formats IPv4 with sprintf, about 1700 instructions a call.
        const auto& v4 = reinterpret_cast<const sockaddr_in&>(storage);
        const auto* octets = reinterpret_cast<const unsigned char*>(&v4.sin_addr);
        char text[16];
        char* end = text;
        for (int i = 0; i < 4; ++i) {
            if (i > 0) *end++ = '.';
            end = write_decimal(end, octets[i]);
        }
        result.address.assign(text, end);
        result.port = ntohs(v4.sin_port);
    } else if (storage.ss_family == AF_INET6) {
        char text[INET6_ADDRSTRLEN] = {};
        const auto& v6 = reinterpret_cast<const sockaddr_in6&>(storage);
        ::inet_ntop(AF_INET6, &v6.sin6_addr, text, sizeof text);
        result.address = text;
        if (v6.sin6_scope_id != 0) result.address += '%' + std::to_string(v6.sin6_scope_id);
        result.port = ntohs(v6.sin6_port);
    }
    return result;
}

// The local endpoint of `fd`, or the errno of getsockname.
std::optional<endpoint> local_endpoint_of(int fd, int& error) {
    sockaddr_storage storage{};
    socklen_t length = sizeof storage;
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&storage), &length) != 0) {
        error = errno;
        return std::nullopt;
    }
    return to_endpoint(storage);
}

// A numeric IPv4 or IPv6 address, parsed without getaddrinfo (no NSS, no allocation).
std::optional<socket_address> parse_numeric(const std::string& host, std::uint16_t port) {
    socket_address result;
    auto& v4 = reinterpret_cast<sockaddr_in&>(result.storage);
    if (::inet_pton(AF_INET, host.c_str(), &v4.sin_addr) == 1) {
        v4.sin_family = AF_INET;
        v4.sin_port = htons(port);
        result.length = sizeof(sockaddr_in);
        return result;
    }
    result.storage = {};
    auto& v6 = reinterpret_cast<sockaddr_in6&>(result.storage);
    if (::inet_pton(AF_INET6, host.c_str(), &v6.sin6_addr) == 1) {
        v6.sin6_family = AF_INET6;
        v6.sin6_port = htons(port);
        result.length = sizeof(sockaddr_in6);
        return result;
    }
    return std::nullopt;
}

// The addresses of `host`, in getaddrinfo's order. `passive`: for bind (an empty host is
// every interface).
std::vector<socket_address> resolve(const std::string& host, std::uint16_t port, bool passive) {
    if (!host.empty()) {
        if (auto numeric = parse_numeric(host, port)) return {*numeric};
    }
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
    addrinfo* list = nullptr;
    const std::string service = std::to_string(port);
    const int rc =
        ::getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, &list);
    if (rc != 0) {
        // EAI_SYSTEM means the errno says what went wrong.
        const auto code = rc == EAI_SYSTEM ? std::error_code(errno, std::generic_category())
                                           : std::error_code(rc, resolve_category());
        throw network_error("resolve", '"' + host + '"', code);
    }
    const finally free_list([list] { ::freeaddrinfo(list); });
    std::vector<socket_address> result;
    for (const addrinfo* entry = list; entry != nullptr; entry = entry->ai_next) {
        if (entry->ai_addrlen > sizeof(sockaddr_storage)) continue;
        socket_address address;
        std::memcpy(&address.storage, entry->ai_addr, entry->ai_addrlen);
        address.length = entry->ai_addrlen;
        result.push_back(address);
    }
    if (result.empty()) {
        throw network_error("resolve", '"' + host + '"',
                            std::error_code(EAI_NONAME, resolve_category()));
    }
    return result;
}

// "127.0.0.1:5000", or "127.0.0.1:5000 (localhost)" when the user gave a name.
std::string describe_peer(const endpoint& address, const std::string& host, bool numeric) {
    std::string text = address.to_string();
    if (!numeric) text += " (" + host + ')';
    return text;
}

[[noreturn]] void throw_wait_failure(int error, std::string_view operation, const endpoint& peer,
                                     const std::string& timed_out_waiting_for,
                                     milliseconds timeout) {
    if (error == ETIMEDOUT) throw timeout_error(timed_out_waiting_for, timeout);
    throw network_error(operation, peer.to_string(), error);
}

void set_option(int fd, int level, int name, int value, std::string_view operation,
                const std::string& peer) {
    if (::setsockopt(fd, level, name, &value, sizeof value) != 0) {
        throw network_error(operation, peer, errno);
    }
}

// Closes without waiting; abortive: SO_LINGER 0 first, so the peer sees a reset. Returns
// the first errno, 0 on success. The descriptor is released in every case (a close that
// fails with EINTR has released it on Linux too).
int release_descriptor(int fd, bool abortive) noexcept {
    int error = 0;
    if (abortive) {
        const ::linger reset{1, 0};
        if (::setsockopt(fd, SOL_SOCKET, SO_LINGER, &reset, sizeof reset) != 0) error = errno;
    }
    if (const int close_error = ctxmgr::detail::close_once(fd); error == 0) error = close_error;
    return error;
}

// After shutdown(SHUT_WR): reads and discards until end of stream or the linger time runs
// out, so that close() finds nothing unread and sends no reset. Returns the errno of a
// failed receive (ECONNRESET: the peer did not take everything), 0 otherwise; running out
// of time is not an error.
int drain(int fd, milliseconds linger) noexcept {
    char scratch[read_chunk];
    const auto limit = deadline_of(linger, "linger");
    for (;;) {
        // Poll first: the peer's end of stream has rarely arrived yet when close() starts,
        // so a receive first would mostly cost an extra EAGAIN.
        if (const int error = wait_for(fd, POLLIN, limit); error != 0) {
            return error == ETIMEDOUT ? 0 : error;
        }
        const ssize_t got = ::recv(fd, scratch, sizeof scratch, MSG_DONTWAIT);
        if (got == 0) return 0;
        if (got < 0 && errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK) return errno;
    }
}

}  // namespace

[[noreturn]] void detail::throw_closed(std::string_view operation, const endpoint& peer) {
    if (peer.address.empty()) {
        throw closed_error(std::string(operation) + ": the tcp connection is closed");
    }
    throw closed_error(std::string(operation) + ' ' + peer.to_string() +
                       ": the connection is closed");
}

std::string detail::description_of(const endpoint& local, const endpoint& remote) {
    char text[2 * endpoint_text_size + 4];
    char* end = write_endpoint(text, local);
    std::memcpy(end, " -> ", 4);
    end = write_endpoint(end + 4, remote);
    return std::string(text, end);
}

std::string detail::quoted(std::string_view text) {
    return ctxmgr::detail::quoted(text);
}

namespace {

using detail::description_of;
using detail::throw_closed;

// One receive into [data, data + size): the bytes read, 0 at end of stream, nullopt when
// the deadline passed first. Timed: poll first, then MSG_DONTWAIT (two calls whether or not
// data is waiting); untimed: the blocking call.
std::optional<std::size_t> receive_into(int fd, char* data, std::size_t size, const deadline& limit,
                                        const endpoint& remote) {
    const bool timed = limit.timed();
    const auto wait = [&] {
        const int error = wait_for(fd, POLLIN, limit);
        if (error != 0 && error != ETIMEDOUT) {
            throw network_error("receive from", remote.to_string(), error);
        }
        return error == 0;
    };
    for (;;) {
        if (timed && !wait()) return std::nullopt;
        const ssize_t got = ::recv(fd, data, size, timed ? MSG_DONTWAIT : 0);
        if (got >= 0) return static_cast<std::size_t>(got);
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            // Timed: poll saw data another thread took. Untimed: someone made the
            // descriptor non-blocking through native_handle(); wait as the call would have.
            if (!timed && !wait()) return std::nullopt;
            continue;
        }
        throw network_error("receive from", remote.to_string(), errno);
    }
}

}  // namespace

const std::error_category& stream_category() noexcept {
    static const stream_category_type instance;
    return instance;
}

const std::error_category& resolve_category() noexcept {
    static const resolve_category_type instance;
    return instance;
}

std::string endpoint::to_string() const {
    char text[endpoint_text_size];
    return std::string(text, write_endpoint(text, *this));
}

// ---- connection --------------------------------------------------------------------------

// Bytes in bytes[begin, end); bytes.size() is the capacity, so refilling does not clear
// memory it is about to overwrite.
struct connection::receive_buffer {
    std::string bytes;
    std::size_t begin = 0;
    std::size_t end = 0;

    [[nodiscard]] std::size_t size() const noexcept { return end - begin; }
    [[nodiscard]] std::string_view view() const noexcept {
        return std::string_view(bytes).substr(begin, end - begin);
    }
    void consume(std::size_t n) noexcept {
        begin += n;
        if (begin == end) begin = end = 0;
    }
    // Room for at least n more bytes at end; returns where they go.
    char* prepare(std::size_t n) {
        if (begin > 0 && bytes.size() - end < n) {
            std::memmove(bytes.data(), bytes.data() + begin, end - begin);
            end -= begin;
            begin = 0;
        }
        if (bytes.size() - end < n) bytes.resize(std::max(end + n, 2 * bytes.size()));
        return bytes.data() + end;
    }
    void commit(std::size_t n) noexcept { end += n; }
    void append(const char* data, std::size_t n) {
        std::memcpy(prepare(n), data, n);
        commit(n);
    }
};

connection::connection() noexcept = default;

// If registering throws, the caller still owns `fd` and closes it.
connection::connection(int fd, endpoint local, endpoint remote, milliseconds linger,
                       std::source_location where)
    : fd_(fd),
      linger_(linger),
      local_(std::move(local)),
      remote_(std::move(remote)),
      tracked_(connection_kind, tracking_enabled ? description_of(local_, remote_) : std::string(),
               where) {
}

connection::connection(connection&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)),
      linger_(other.linger_),
      local_(std::move(other.local_)),
      remote_(std::move(other.remote_)),
      buffer_(std::move(other.buffer_)),
      tracked_(std::move(other.tracked_)) {
}

connection& connection::operator=(connection&& other) noexcept {
    if (this != &other) {
        discard();
        fd_ = std::exchange(other.fd_, -1);
        linger_ = other.linger_;
        local_ = std::move(other.local_);
        remote_ = std::move(other.remote_);
        buffer_ = std::move(other.buffer_);
        tracked_ = std::move(other.tracked_);
    }
    return *this;
}

connection::~connection() {
    discard();
}

void connection::discard() noexcept {
    if (fd_ < 0) return;
    // Unwinding means the exchange failed: tell the peer with a reset. Otherwise the kernel
    // delivers what was sent and then end of stream; waiting for the peer has no place here.
    const bool abortive = std::uncaught_exceptions() > 0;
    const int error = release_descriptor(std::exchange(fd_, -1), abortive);
    buffer_.reset();
    tracked_.release();
    if (error == 0) return;
    release_in_destructor(
        [&] {
            throw network_error(abortive ? "abort connection to" : "close connection to",
                                remote_.to_string(), error);
        },
        [&] { return std::string(connection_kind) + ' ' + description_of(local_, remote_); },
        connection_kind, abortive ? "abort in destructor" : "close in destructor");
}

connection& connection::enter() {
    if (fd_ < 0) throw_closed("enter connection to", remote_);
    return *this;
}

void connection::exit(const std::exception_ptr& e) {
    if (!e) {
        close();
        return;
    }
    release_on_exit(e, [&] { abort(); });
}

void connection::send_all(std::string_view data, std::optional<milliseconds> timeout) {
    send_all(std::as_bytes(std::span(data.data(), data.size())), timeout);
}

void connection::send_all(std::span<const std::byte> data, std::optional<milliseconds> timeout) {
    if (fd_ < 0) throw_closed("send to", remote_);
    const auto limit = deadline_of(timeout, "send");
    const auto* bytes = reinterpret_cast<const char*>(data.data());
    const int flags = MSG_NOSIGNAL | (limit.timed() ? MSG_DONTWAIT : 0);
    std::size_t sent = 0;
    while (sent < data.size()) {
        const ssize_t n = ::send(fd_, bytes + sent, data.size() - sent, flags);
        if (n >= 0) {
            sent += static_cast<std::size_t>(n);
            continue;
        }
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            throw network_error("send to", remote_.to_string(), errno);
        }
        if (const int error = wait_for(fd_, POLLOUT, limit); error != 0) {
            throw_wait_failure(error, "send to", remote_,
                               "room to send to " + remote_.to_string() + " (" +
                                   std::to_string(sent) + " of " + std::to_string(data.size()) +
                                   " bytes sent)",
                               *timeout);
        }
    }
}

std::size_t connection::send_some(std::span<const std::byte> data,
                                  std::optional<milliseconds> timeout) {
    if (fd_ < 0) throw_closed("send to", remote_);
    const auto limit = deadline_of(timeout, "send");
    if (data.empty()) return 0;
    for (;;) {
        // MSG_DONTWAIT even untimed: a blocking send would wait to send everything.
        const ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n >= 0) return static_cast<std::size_t>(n);
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            throw network_error("send to", remote_.to_string(), errno);
        }
        if (const int error = wait_for(fd_, POLLOUT, limit); error != 0) {
            throw_wait_failure(error, "send to", remote_, "room to send to " + remote_.to_string(),
                               *timeout);
        }
    }
}

std::size_t connection::receive_some(std::span<std::byte> buffer,
                                     std::optional<milliseconds> timeout) {
    if (buffer.empty()) {
        throw std::invalid_argument(
            "ctxmgr::tcp::connection::receive_some: empty buffer (its 0 would read as end of "
            "stream)");
    }
    if (fd_ < 0) throw_closed("receive from", remote_);
    const auto limit = deadline_of(timeout, "receive");
    if (buffer_ && buffer_->size() > 0) {
        const std::size_t n = std::min(buffer.size(), buffer_->size());
        std::memcpy(buffer.data(), buffer_->bytes.data() + buffer_->begin, n);
        buffer_->consume(n);
        return n;
    }
    const auto got =
        receive_into(fd_, reinterpret_cast<char*>(buffer.data()), buffer.size(), limit, remote_);
    if (!got) throw timeout_error("data from " + remote_.to_string(), *timeout);
    return *got;
}

std::string connection::receive_exactly(std::size_t n, std::optional<milliseconds> timeout) {
    if (fd_ < 0) throw_closed("receive from", remote_);
    const auto limit = deadline_of(timeout, "receive");
    std::string result;
    std::size_t got = 0;
    if (buffer_ && buffer_->size() > 0) {
        got = std::min(n, buffer_->size());
        result.assign(buffer_->bytes, buffer_->begin, got);
        buffer_->consume(got);
    }
    // Grow as data arrives rather than trusting n: a length prefix from the wire may be huge.
    constexpr std::size_t step = 64 * 1024;
    while (got < n) {
        if (result.size() == got) result.resize(std::min(n, got + std::max(got, step)));
        const auto received =
            receive_into(fd_, result.data() + got, result.size() - got, limit, remote_);
        if (!received || *received == 0) {
            // Keep what arrived for the next receive: nothing is lost. The buffer is empty
            // here (its bytes were taken first).
            if (got > 0) {
                if (!buffer_) buffer_ = std::make_unique<receive_buffer>();
                buffer_->append(result.data(), got);
            }
            const std::string progress = " (" + std::to_string(got) + " arrived)";
            if (!received) {
                throw timeout_error(
                    std::to_string(n) + " bytes from " + remote_.to_string() + progress, *timeout);
            }
            throw network_error("receive " + std::to_string(n) + " bytes" + progress + " from",
                                remote_.to_string(), errc::end_of_stream);
        }
        got += *received;
    }
    result.resize(n);
    return result;
}

std::string connection::read_until(std::string_view delimiter, std::size_t max_bytes,
                                   std::optional<milliseconds> timeout) {
    if (delimiter.empty()) {
        throw std::invalid_argument("ctxmgr::tcp::connection::read_until: empty delimiter");
    }
    if (max_bytes < delimiter.size()) {
        throw std::invalid_argument("ctxmgr::tcp::connection::read_until: max_bytes " +
                                    std::to_string(max_bytes) + " is shorter than the delimiter " +
                                    quoted(delimiter));
    }
    if (fd_ < 0) throw_closed("receive from", remote_);
    const auto limit = deadline_of(timeout, "receive");
    if (!buffer_) buffer_ = std::make_unique<receive_buffer>();
    auto& buffer = *buffer_;
    std::size_t searched = 0;  // no match starts before this offset
    for (;;) {
        const auto data = buffer.view();
        const auto at = data.find(delimiter, searched);
        if (at != std::string_view::npos) {
            const std::size_t length = at + delimiter.size();
            if (length > max_bytes) break;
            std::string line(data.substr(0, length));
            buffer.consume(length);
            return line;
        }
        if (data.size() >= max_bytes) break;
        searched = data.size() >= delimiter.size() ? data.size() - delimiter.size() + 1 : 0;
        char* room = buffer.prepare(read_chunk);
        const auto got = receive_into(fd_, room, read_chunk, limit, remote_);
        if (!got) {
            throw timeout_error(quoted(delimiter) + " from " + remote_.to_string() + " (" +
                                    std::to_string(buffer.size()) + " bytes arrived)",
                                *timeout);
        }
        if (*got == 0) {
            throw network_error("read_until " + quoted(delimiter) + " (" +
                                    std::to_string(buffer.size()) + " bytes arrived) from",
                                remote_.to_string(), errc::end_of_stream);
        }
        buffer.commit(*got);
    }
    throw network_error(
        "read_until " + quoted(delimiter) + " within " + std::to_string(max_bytes) + " bytes from",
        remote_.to_string(), std::make_error_code(std::errc::message_size));
}

void connection::shutdown_write() {
    if (fd_ < 0) throw_closed("shut down writing to", remote_);
    if (::shutdown(fd_, SHUT_WR) != 0) {
        throw network_error("shut down writing to", remote_.to_string(), errno);
    }
}

void connection::close() {
    if (fd_ < 0) return;
    const int fd = std::exchange(fd_, -1);
    buffer_.reset();
    int error = 0;
    if (::shutdown(fd, SHUT_WR) == 0) {
        error = drain(fd, linger_);
    } else if (errno == ENOTCONN) {
        // The connection has already ended: both sides closed it (TIME_WAIT leaves the socket
        // CLOSED), or it was reset. A reset that no call has reported yet is pending in
        // SO_ERROR; one that a receive or send already threw is not reported twice.
        socklen_t length = sizeof error;
        if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) != 0) error = 0;
    } else {
        error = errno;
    }
    const int close_error = release_descriptor(fd, false);
    if (error == 0) error = close_error;
    tracked_.release();
    if (error != 0) throw network_error("close connection to", remote_.to_string(), error);
}

void connection::abort() {
    if (fd_ < 0) return;
    buffer_.reset();
    const int error = release_descriptor(std::exchange(fd_, -1), true);
    tracked_.release();
    if (error != 0) throw network_error("abort connection to", remote_.to_string(), error);
}

void connection::set_linger(milliseconds linger) {
    check_not_negative(linger, "linger");
    linger_ = linger;
}

void connection::set_no_delay(bool on) {
    if (fd_ < 0) throw_closed("set TCP_NODELAY on connection to", remote_);
    set_option(fd_, IPPROTO_TCP, TCP_NODELAY, on ? 1 : 0, "set TCP_NODELAY on connection to",
               remote_.to_string());
}

void connection::set_keep_alive(bool on) {
    if (fd_ < 0) throw_closed("set SO_KEEPALIVE on connection to", remote_);
    set_option(fd_, SOL_SOCKET, SO_KEEPALIVE, on ? 1 : 0, "set SO_KEEPALIVE on connection to",
               remote_.to_string());
}

std::size_t connection::buffered() const noexcept {
    return buffer_ ? buffer_->size() : 0;
}

// ---- connect -----------------------------------------------------------------------------

namespace {

// One attempt: a connected descriptor (blocking mode), or the errno, or the deadline ran
// out (timed_out).
struct attempt_result {
    int fd = -1;
    int error = 0;
    bool timed_out = false;
};

attempt_result attempt(const socket_address& address, const deadline& limit,
                       const connect_options& options) {
    const int fd =
        ::socket(address.family(), SOCK_STREAM | SOCK_CLOEXEC | (limit.timed() ? SOCK_NONBLOCK : 0),
                 IPPROTO_TCP);
    if (fd < 0) return {-1, errno, false};
    const auto fail = [fd](int error) {
        ::close(fd);
        return attempt_result{-1, error, false};
    };
    // Before connecting: the options hold from the first segment, and set on a socket that
    // is not yet connected they cannot fail for a reason a connected one would not.
    if (options.no_delay) {
        const int on = 1;
        if (::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on) != 0) return fail(errno);
    }
    if (options.keep_alive) {
        const int on = 1;
        if (::setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on) != 0) return fail(errno);
    }
    if (::connect(fd, address.get(), address.length) != 0) {
        // EINPROGRESS: a non-blocking connect under way. EINTR: a blocking one that a signal
        // interrupted, which the kernel carries on with. Either way, wait and ask SO_ERROR.
        if (errno != EINPROGRESS && errno != EINTR) return fail(errno);
        if (const int error = wait_for(fd, POLLOUT, limit); error != 0) {
            ::close(fd);
            return {-1, error, error == ETIMEDOUT};
        }
        int error = 0;
        socklen_t length = sizeof error;
        if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) != 0) return fail(errno);
        if (error != 0) return fail(error);
    }
    // Back to blocking mode: a fresh socket has no other status flag that F_SETFL would clear.
    if (limit.timed() && ::fcntl(fd, F_SETFL, 0) != 0) return fail(errno);
    return {fd, 0, false};
}

// `failure` with the earlier failures nested in it, as an exception_ptr.
template <class Failure>
std::exception_ptr chain(Failure&& failure, const std::exception_ptr& earlier) {
    try {
        throw_chained(std::forward<Failure>(failure), earlier);
    } catch (...) {
        return std::current_exception();
    }
}

}  // namespace

connection connect(std::string_view host, std::uint16_t port, const connect_options& options,
                   std::source_location where) {
    if (host.empty()) throw std::invalid_argument("ctxmgr::tcp::connect: empty host name");
    check_not_negative(options.linger, "linger");
    const auto limit = deadline_of(options.timeout, "connect");
    const std::string name(host);
    // A numeric address needs neither getaddrinfo nor a vector.
    const auto numeric = parse_numeric(name, port);
    std::vector<socket_address> resolved;
    if (!numeric) resolved = resolve(name, port, false);
    const auto addresses =
        numeric ? std::span<const socket_address>(&*numeric, 1) : std::span(resolved);
    std::exception_ptr failures;
    for (std::size_t i = 0; i < addresses.size(); ++i) {
        const auto& address = addresses[i];
        auto remote = to_endpoint(address.storage);
        const auto peer = [&] { return describe_peer(remote, name, numeric.has_value()); };
        if (i > 0 && limit.expired()) {
            throw_chained(timeout_error("connect to " + peer(), *options.timeout), failures);
        }
        const auto result = attempt(address, limit, options);
        if (result.timed_out) {
            throw_chained(timeout_error("connect to " + peer(), *options.timeout), failures);
        }
        if (result.fd < 0) {
            network_error failure("connect", peer(), result.error);
            if (i + 1 == addresses.size()) throw_chained(std::move(failure), failures);
            failures = chain(std::move(failure), failures);
            continue;
        }
        // try/catch rather than scope_fail on this path: free when nothing throws, where
        // scope_fail asks std::uncaught_exceptions() twice.
        try {
            int error = 0;
            auto local = local_endpoint_of(result.fd, error);
            if (!local) throw network_error("getsockname on connection to", peer(), error);
            return connection(result.fd, std::move(*local), std::move(remote), options.linger,
                              where);
        } catch (...) {
            ::close(result.fd);
            throw;
        }
    }
    // resolve() returns at least one address, so the loop returns or throws.
    throw network_error("connect", name, std::make_error_code(std::errc::address_not_available));
}

bool detail::accept_may_retry(int error) noexcept {
    switch (error) {
        // A signal, or a connection that failed before it was accepted (accept(2): "treat
        // them like EAGAIN by retrying").
        case EINTR:
        case ECONNABORTED:
        case EPROTO:
        case ENETDOWN:
        case ENOPROTOOPT:
        case EHOSTDOWN:
        case ENONET:
        case EHOSTUNREACH:
        case EOPNOTSUPP:
        case ENETUNREACH:
            return true;
        default:
            return false;
    }
}

// ---- listener ----------------------------------------------------------------------------

listener::listener(int fd, endpoint local, std::source_location where)
    : fd_(fd),
      local_(std::move(local)),
      tracked_(listener_kind, "listening on " + local_.to_string(), where) {
}

listener::listener(listener&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)),
      local_(std::move(other.local_)),
      tracked_(std::move(other.tracked_)) {
}

listener& listener::operator=(listener&& other) noexcept {
    if (this != &other) {
        discard("close in move assignment");
        fd_ = std::exchange(other.fd_, -1);
        local_ = std::move(other.local_);
        tracked_ = std::move(other.tracked_);
    }
    return *this;
}

listener::~listener() {
    discard("close in destructor");
}

void listener::discard(const char* context) noexcept {
    if (fd_ < 0) return;
    release_in_destructor(
        [&] { close(); },
        [&] { return std::string(listener_kind) + " listening on " + local_.to_string(); },
        listener_kind, context);
}

listener& listener::enter() {
    if (fd_ < 0) {
        throw closed_error("enter listener on " + local_.to_string() + ": the listener is closed");
    }
    return *this;
}

void listener::exit(const std::exception_ptr& e) {
    release_on_exit(e, [&] { close(); });
}

connection listener::accept(std::optional<milliseconds> timeout, std::source_location where) {
    if (fd_ < 0) {
        throw closed_error("accept on " + local_.to_string() + ": the listener is closed");
    }
    const auto limit = deadline_of(timeout, "accept");
    sockaddr_storage storage{};
    int fd = -1;
    for (;;) {
        socklen_t length = sizeof storage;
        fd = ::accept4(fd_, reinterpret_cast<sockaddr*>(&storage), &length, SOCK_CLOEXEC);
        if (fd >= 0) break;
        const int error = errno;
        if (error == EAGAIN || error == EWOULDBLOCK) {
            if (const int failure = wait_for(fd_, POLLIN, limit); failure != 0) {
                throw_wait_failure(failure, "accept on", local_,
                                   "a connection on " + local_.to_string(), *timeout);
            }
            continue;
        }
        if (detail::accept_may_retry(error)) continue;
        throw network_error("accept on", local_.to_string(), error);
    }
    try {  // as in connect(): try/catch costs nothing when nothing throws
        auto remote = to_endpoint(storage);
        const int on = 1;
        if (::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on) != 0) {
            throw network_error("set TCP_NODELAY on connection from", remote.to_string(), errno);
        }
        int error = 0;
        auto local = local_endpoint_of(fd, error);
        if (!local) {
            throw network_error("getsockname on connection from", remote.to_string(), error);
        }
        return connection(fd, std::move(*local), std::move(remote), connect_options{}.linger,
                          where);
    } catch (...) {
        ::close(fd);
        throw;
    }
}

void listener::close() {
    if (fd_ < 0) return;
    const int error = release_descriptor(std::exchange(fd_, -1), false);
    tracked_.release();
    if (error != 0) throw network_error("close listener on", local_.to_string(), error);
}

listener listen(std::string_view address, std::uint16_t port, int backlog,
                std::source_location where) {
    if (backlog < 0) {
        throw std::invalid_argument("ctxmgr::tcp::listen: negative backlog " +
                                    std::to_string(backlog));
    }
    const std::string name(address);
    const auto addresses = resolve(name, port, true);
    std::exception_ptr failures;
    for (std::size_t i = 0; i < addresses.size(); ++i) {
        const auto& candidate = addresses[i];
        const auto text = to_endpoint(candidate.storage).to_string();
        const int fd =
            ::socket(candidate.family(), SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, IPPROTO_TCP);
        const char* operation = "socket for";
        int error = fd < 0 ? errno : 0;
        if (error == 0) {
            const int on = 1;
            if (::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) != 0) {
                operation = "set SO_REUSEADDR on";
                error = errno;
            } else if (::bind(fd, candidate.get(), candidate.length) != 0) {
                operation = "bind";
                error = errno;
            } else if (::listen(fd, backlog) != 0) {
                operation = "listen on";
                error = errno;
            }
        }
        std::optional<endpoint> local;
        if (error == 0) {
            local = local_endpoint_of(fd, error);
            if (!local) operation = "getsockname on listener";
        }
        if (error == 0) {
            scope_fail close_on_throw([fd] { ::close(fd); });
            return listener(fd, std::move(*local), where);
        }
        if (fd >= 0) ::close(fd);
        network_error failure(operation, text, error);
        if (i + 1 == addresses.size()) throw_chained(std::move(failure), failures);
        failures = chain(std::move(failure), failures);
    }
    throw network_error("listen on", name, std::make_error_code(std::errc::address_not_available));
}

}  // namespace ctxmgr::tcp
