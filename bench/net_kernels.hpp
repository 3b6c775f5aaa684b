// The code the network benchmarks measure, shared by net_bench.cpp (Google Benchmark, wall
// time) and net_instructions.cpp (fixed iterations, for callgrind's instruction counts), so
// both measure the same functions. Each ctxmgr kernel has its baseline next to it: the same
// exchange written with raw POSIX calls, with the same socket options (TCP_NODELAY, which
// tcp::connect sets by default) and the same graceful close (shut down writing, read until
// end of stream, close).
//
// The peer is one server thread written with raw POSIX calls for both, so the figures differ
// only by the client code: `echo` answers every message; `close_at_once` accepts and closes,
// so the server side takes the TIME_WAIT state and the client's ephemeral ports are free for
// the next cycle at once.
#pragma once

#include <ctxmgr/net.hpp>
#include <ctxmgr/with.hpp>

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <thread>

#define CTXMGR_KERNEL __attribute__((noinline))

namespace net_bench {

[[noreturn]] inline void die(const char* what) {
    std::perror(what);
    std::abort();
}

inline sockaddr_in loopback(std::uint16_t port) {
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    address.sin_port = htons(port);
    return address;
}

// The peer of every benchmark: a raw POSIX server on 127.0.0.1, one connection at a time.
class server {
  public:
    enum mode { echo, close_at_once };

    explicit server(mode m) : mode_(m) {
        fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd_ < 0) die("socket");
        const int on = 1;
        ::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
        auto address = loopback(0);
        if (::bind(fd_, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) die("bind");
        if (::listen(fd_, 128) != 0) die("listen");
        socklen_t length = sizeof address;
        ::getsockname(fd_, reinterpret_cast<sockaddr*>(&address), &length);
        port_ = ntohs(address.sin_port);
        thread_ = std::thread([this] { run(); });
    }
    server(const server&) = delete;
    server& operator=(const server&) = delete;
    ~server() {
        ::shutdown(fd_, SHUT_RDWR);  // wakes the blocked accept() with EINVAL
        thread_.join();
        ::close(fd_);
    }

    [[nodiscard]] std::uint16_t port() const { return port_; }

  private:
    void run() {
        for (;;) {
            const int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
            if (c < 0) {
                if (errno == EINTR || errno == ECONNABORTED) continue;
                return;
            }
            const int on = 1;
            ::setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
            if (mode_ == echo) {
                char buffer[4096];
                for (;;) {
                    const ssize_t n = ::recv(c, buffer, sizeof buffer, 0);
                    if (n <= 0) break;
                    for (ssize_t sent = 0; sent < n;) {
                        const ssize_t k = ::send(c, buffer + sent,
                                                 static_cast<std::size_t>(n - sent), MSG_NOSIGNAL);
                        if (k <= 0) break;
                        sent += k;
                    }
                }
            }
            ::close(c);
        }
    }

    mode mode_;
    int fd_ = -1;
    std::uint16_t port_ = 0;
    std::thread thread_;
};

// ---- raw POSIX helpers for the baselines ------------------------------------------------------

inline void raw_send_all(int fd, const char* data, std::size_t size, int flags) {
    for (std::size_t sent = 0; sent < size;) {
        const ssize_t n = ::send(fd, data + sent, size - sent, MSG_NOSIGNAL | flags);
        if (n >= 0) {
            sent += static_cast<std::size_t>(n);
        } else if (errno == EAGAIN) {
            pollfd entry{fd, POLLOUT, 0};
            ::poll(&entry, 1, 1000);
        } else if (errno != EINTR) {
            die("send");
        }
    }
}

inline void raw_receive_exactly(int fd, char* data, std::size_t size, bool timed) {
    for (std::size_t got = 0; got < size;) {
        if (timed) {
            pollfd entry{fd, POLLIN, 0};
            if (::poll(&entry, 1, 1000) <= 0) die("poll");
        }
        const ssize_t n = ::recv(fd, data + got, size - got, timed ? MSG_DONTWAIT : 0);
        if (n > 0) {
            got += static_cast<std::size_t>(n);
        } else if (n == 0) {
            die("end of stream");
        } else if (errno != EINTR && errno != EAGAIN) {
            die("recv");
        }
    }
}

inline int raw_connect(std::uint16_t port, bool timed) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | (timed ? SOCK_NONBLOCK : 0), 0);
    if (fd < 0) die("socket");
    const int on = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
    const auto address = loopback(port);
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof address) != 0) {
        if (errno != EINPROGRESS) die("connect");
        pollfd entry{fd, POLLOUT, 0};
        if (::poll(&entry, 1, 1000) != 1) die("poll");
        int error = 0;
        socklen_t length = sizeof error;
        ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length);
        if (error != 0) die("connect");
        ::fcntl(fd, F_SETFL, 0);
    }
    return fd;
}

// Shut down writing, read until end of stream, close: what tcp::connection::close() does.
// Timed: each wait bounded by poll(), as close()'s linger time bounds it.
inline void raw_graceful_close(int fd, bool timed) {
    ::shutdown(fd, SHUT_WR);
    char scratch[512];
    for (;;) {
        if (timed) {
            pollfd entry{fd, POLLIN, 0};
            if (::poll(&entry, 1, 1000) <= 0) break;
        }
        const ssize_t n = ::recv(fd, scratch, sizeof scratch, timed ? MSG_DONTWAIT : 0);
        if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) break;
    }
    ::close(fd);
}

constexpr std::size_t message_size = 64;

}  // namespace net_bench

namespace kernels {

using namespace std::chrono_literals;

// ---- round trip: send 64 bytes, receive the 64-byte echo ---------------------------------------

CTXMGR_KERNEL inline std::size_t roundtrip_ctxmgr(ctxmgr::tcp::connection& c,
                                                  std::string_view message) {
    c.send_all(message);
    return c.receive_exactly(message.size()).size();
}

CTXMGR_KERNEL inline std::size_t roundtrip_raw(int fd, std::string_view message) {
    char reply[net_bench::message_size];
    net_bench::raw_send_all(fd, message.data(), message.size(), 0);
    net_bench::raw_receive_exactly(fd, reply, message.size(), false);
    return message.size();
}

// Every call with a timeout: MSG_DONTWAIT and poll, in both.
CTXMGR_KERNEL inline std::size_t roundtrip_timed_ctxmgr(ctxmgr::tcp::connection& c,
                                                        std::string_view message) {
    c.send_all(message, 1s);
    return c.receive_exactly(message.size(), 1s).size();
}

CTXMGR_KERNEL inline std::size_t roundtrip_timed_raw(int fd, std::string_view message) {
    char reply[net_bench::message_size];
    net_bench::raw_send_all(fd, message.data(), message.size(), MSG_DONTWAIT);
    net_bench::raw_receive_exactly(fd, reply, message.size(), true);
    return message.size();
}

// ---- connect and close -----------------------------------------------------------------------

// with() around a connection: connect, then exit's graceful close. The baseline's close
// blocks in recv() with no time limit; close() bounds its wait by the linger time (poll).
CTXMGR_KERNEL inline void connect_close_ctxmgr(std::uint16_t port) {
    ctxmgr::with(ctxmgr::tcp::connect("127.0.0.1", port), [](ctxmgr::tcp::connection&) {});
}

CTXMGR_KERNEL inline void connect_close_raw(std::uint16_t port) {
    net_bench::raw_graceful_close(net_bench::raw_connect(port, false), false);
}

// The baseline plus the two system calls connect()+close() make that it does not: getsockname
// (the local endpoint, for the tracked description) and the poll() that bounds close()'s wait.
// What is left between this and connect_close_ctxmgr is the library's user-space work.
CTXMGR_KERNEL inline void connect_close_raw_same_calls(std::uint16_t port) {
    const int fd = net_bench::raw_connect(port, false);
    sockaddr_storage local{};
    socklen_t length = sizeof local;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &length);
    net_bench::raw_graceful_close(fd, true);
}

// A connect timeout: a non-blocking connect and poll, in both; the baseline's close polls too.
CTXMGR_KERNEL inline void connect_close_timed_ctxmgr(std::uint16_t port) {
    ctxmgr::with(ctxmgr::tcp::connect("127.0.0.1", port, {.timeout = 1s}),
                 [](ctxmgr::tcp::connection&) {});
}

CTXMGR_KERNEL inline void connect_close_timed_raw(std::uint16_t port) {
    net_bench::raw_graceful_close(net_bench::raw_connect(port, true), true);
}

}  // namespace kernels
