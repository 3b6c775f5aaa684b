// Tests of ctxmgr/net.hpp. Loopback only (127.0.0.1, ::1): no packet leaves the machine.
// Every wait is bounded by a timeout, every loop by a count.
#include <ctxmgr/net.hpp>
#include <ctxmgr/tracking.hpp>
#include <ctxmgr/with.hpp>

#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "recording.hpp"
#include "refusing_port.hpp"
#include "resource_check.hpp"

namespace {

using namespace std::chrono_literals;
namespace tcp = ctxmgr::tcp;
using ctxmgr::testing::exception_from;
using ctxmgr::testing::test_error;
using ctxmgr::testing::unraisable_capture;
using std::chrono::steady_clock;

// Generous: the machine is shared and runs sanitizers. Only bounds, never expectations.
constexpr auto patience = 10s;

using ctxmgr::testing::contains;

std::string what_of(const std::exception_ptr& e) {
    return ctxmgr::testing::what_of(e);
}

// Runs a function on a thread; join() waits and rethrows what it threw.
class background {
  public:
    template <class F>
    explicit background(F f)
        : thread_([this, f = std::move(f)]() mutable {
              try {
                  f();
              } catch (...) {
                  error_ = std::current_exception();
              }
          }) {}
    background(const background&) = delete;
    background& operator=(const background&) = delete;
    ~background() {
        if (thread_.joinable()) thread_.join();
    }
    void join() {
        thread_.join();
        if (error_) std::rethrow_exception(error_);
    }

  private:
    std::exception_ptr error_;
    std::thread thread_;
};

// A listener and both ends of one connection, made on one thread: the kernel completes the
// handshake before accept(). One thread plays both ends, so neither end's close may wait for
// the other: both have a linger of 0.
struct connected {
    tcp::listener server;
    tcp::connection client;
    tcp::connection peer;
};

connected connect_pair(const std::string& address = "127.0.0.1") {
    auto server = tcp::listen(address, 0);
    auto client = tcp::connect(address, server.local_port(), {.timeout = patience, .linger = 0ms});
    auto peer = server.accept(patience);
    peer.set_linger(0ms);
    return {std::move(server), std::move(client), std::move(peer)};
}

// Threads meeting at one point, or giving up after `patience` so a failed test cannot hang.
// The last to arrive runs `on_complete` before any is released (std::barrier's completion).
class rendezvous {
  public:
    explicit rendezvous(int parties, std::function<void()> on_complete = {})
        : waiting_for_(parties), on_complete_(std::move(on_complete)) {}
    bool arrive_and_wait() {
        std::unique_lock lock(mutex_);
        if (--waiting_for_ == 0) {
            if (on_complete_) on_complete_();
            all_here_.notify_all();
        }
        return all_here_.wait_for(lock, patience, [this] { return waiting_for_ <= 0; });
    }

  private:
    std::mutex mutex_;
    std::condition_variable all_here_;
    int waiting_for_;
    std::function<void()> on_complete_;
};

std::span<const std::byte> bytes_of(std::string_view text) {
    return std::as_bytes(std::span(text.data(), text.size()));
}

// Reads until end of stream; fails the test on anything else.
std::string read_to_end(tcp::connection& c) {
    std::string all;
    std::array<std::byte, 64 * 1024> chunk{};
    for (int i = 0; i < 100'000; ++i) {
        const auto n = c.receive_some(chunk, patience);
        if (n == 0) return all;
        all.append(reinterpret_cast<const char*>(chunk.data()), n);
    }
    ADD_FAILURE() << "no end of stream after 100000 reads";
    return all;
}

// The error the peer's reads end with: ECONNRESET for a reset, or nothing for end of stream.
std::optional<std::error_code> how_the_stream_ends(tcp::connection& c) {
    std::array<std::byte, 64 * 1024> chunk{};
    for (int i = 0; i < 100'000; ++i) {
        try {
            if (c.receive_some(chunk, patience) == 0) return std::nullopt;
        } catch (const ctxmgr::network_error& e) {
            return e.code();
        }
    }
    ADD_FAILURE() << "the stream did not end after 100000 reads";
    return std::nullopt;
}

// Waits until a reset or end of stream arrives on `fd`, without reading it.
void wait_until_readable(int fd) {
    pollfd entry{fd, POLLIN, 0};
    ASSERT_EQ(::poll(&entry, 1, 10'000), 1) << "nothing arrived within 10 s";
}

std::error_code reset_code() {
    return std::error_code(ECONNRESET, std::generic_category());
}

int int_option(int fd, int level, int name) {
    int value = -1;
    socklen_t length = sizeof value;
    EXPECT_EQ(::getsockopt(fd, level, name, &value, &length), 0);
    return value;
}

// ---- the round trip ------------------------------------------------------------------------

TEST(Net, EchoRoundTrip) {
    auto server = tcp::listen("127.0.0.1", 0);
    const auto port = server.local_port();
    ASSERT_NE(port, 0);
    EXPECT_EQ(server.local_endpoint(), (tcp::endpoint{"127.0.0.1", port}));
    tcp::endpoint seen_by_server;
    background echo([&] {
        ctxmgr::with(server.accept(patience), [&](tcp::connection& c) {
            seen_by_server = c.remote_endpoint();
            const auto line = c.read_until("\n", 1024, patience);
            c.send_all(line, patience);
        });
    });
    tcp::endpoint client_local;
    const auto reply = ctxmgr::with(
        tcp::connect("127.0.0.1", port, {.timeout = patience}), [&](tcp::connection& c) {
            client_local = c.local_endpoint();
            EXPECT_EQ(c.remote_endpoint(), (tcp::endpoint{"127.0.0.1", port}));
            c.send_all("hello, echo\n");
            return c.read_until("\n", 1024, patience);
        });
    echo.join();
    EXPECT_EQ(reply, "hello, echo\n");
    EXPECT_EQ(seen_by_server, client_local);
    EXPECT_EQ(client_local.address, "127.0.0.1");
    EXPECT_NE(client_local.port, 0);
    server.close();
}

TEST(Net, EchoRoundTripOverIpv6Loopback) {
    connected pair;
    try {
        pair = connect_pair("::1");
    } catch (const ctxmgr::network_error& e) {
        GTEST_SKIP() << "no IPv6 loopback here: " << e.what();
    }
    auto& [server, client, peer] = pair;
    client.send_all("over six\n");
    EXPECT_EQ(peer.read_until("\n", 64, patience), "over six\n");
    EXPECT_EQ(client.remote_endpoint().address, "::1");
    EXPECT_EQ(client.remote_endpoint().to_string(),
              "[::1]:" + std::to_string(client.remote_endpoint().port));
    client.close();
    peer.close();
}

TEST(Net, SpansAndStringsCarryTheSameBytes) {
    auto [server, client, peer] = connect_pair();
    const std::array<std::byte, 4> binary{std::byte{0}, std::byte{0xff}, std::byte{'\n'},
                                          std::byte{7}};
    client.send_all(binary);
    client.send_all(std::string_view("\0x", 2));
    const auto got = peer.receive_exactly(6, patience);
    EXPECT_EQ(got, std::string("\0\xff\n\x07\0x", 6));
    EXPECT_EQ(client.send_some(bytes_of("abc")), 3u);
    EXPECT_EQ(client.send_some({}), 0u);
    EXPECT_EQ(peer.receive_exactly(3, patience), "abc");
    EXPECT_EQ(peer.receive_exactly(0), "");
}

TEST(Net, ConnectsToANameTryingEachAddressInOrder) {
    // "localhost" comes from /etc/hosts: no DNS query leaves the machine.
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* list = nullptr;
    ASSERT_EQ(::getaddrinfo("localhost", "1", &hints, &list), 0);
    std::vector<std::string> addresses;
    for (auto* entry = list; entry != nullptr; entry = entry->ai_next) {
        char text[INET6_ADDRSTRLEN] = {};
        const void* raw = entry->ai_family == AF_INET
                              ? static_cast<const void*>(
                                    &reinterpret_cast<sockaddr_in*>(entry->ai_addr)->sin_addr)
                              : static_cast<const void*>(
                                    &reinterpret_cast<sockaddr_in6*>(entry->ai_addr)->sin6_addr);
        ::inet_ntop(entry->ai_family, raw, text, sizeof text);
        addresses.emplace_back(text);
    }
    ::freeaddrinfo(list);
    ASSERT_FALSE(addresses.empty());
    // Listen on the last address only: connect must get past the others.
    auto server = tcp::listen(addresses.back(), 0);
    auto client =
        tcp::connect("localhost", server.local_port(), {.timeout = patience, .linger = 0ms});
    EXPECT_EQ(client.remote_endpoint().address, addresses.back());
    auto peer = server.accept(patience);
    client.close();
    peer.close();
    if (addresses.size() < 2) {
        std::printf("note: localhost has one address here; the fallback was not exercised\n");
    }
}

// ---- failures to connect -------------------------------------------------------------------

using ctxmgr::testing::refusing_port;

TEST(Net, ConnectionRefusedNamesThePeerAndKeepsTheErrno) {
    const refusing_port refusing;
    const auto peer = "127.0.0.1:" + std::to_string(refusing.port());
    for (const auto& options :
         {tcp::connect_options{}, tcp::connect_options{.timeout = patience}}) {
        try {
            auto c = tcp::connect("127.0.0.1", refusing.port(), options);
            ADD_FAILURE() << "connected to a port that does not listen";
        } catch (const ctxmgr::network_error& e) {
            EXPECT_EQ(e.code(), std::error_code(ECONNREFUSED, std::generic_category()));
            EXPECT_EQ(e.peer(), peer);
            EXPECT_STREQ(e.what(), ("connect " + peer + ": Connection refused").c_str());
        }
    }
}

TEST(Net, ANameThatDoesNotResolveNamesTheHostAndKeepsTheGetaddrinfoCode) {
    // glibc rejects a name that is not a valid host name before asking DNS, so nothing
    // leaves the machine.
    try {
        auto c = tcp::connect("bad host!", 80);
        ADD_FAILURE() << "resolved an invalid host name";
    } catch (const ctxmgr::network_error& e) {
        EXPECT_EQ(e.code().category(), tcp::resolve_category());
        EXPECT_EQ(e.code().value(), EAI_NONAME);
        EXPECT_EQ(e.peer(), "\"bad host!\"");
        EXPECT_EQ(std::string(e.what()),
                  std::string("resolve \"bad host!\": ") + ::gai_strerror(EAI_NONAME));
        EXPECT_STREQ(tcp::resolve_category().name(), "getaddrinfo");
    }
}

TEST(Net, ConnectTimesOutAgainstAListenerWhoseAcceptQueueIsFull) {
    // Backlog 0 holds one connection that is never accepted; once the queue is full, Linux
    // drops the SYN of the next one, which then waits until its timeout.
    auto server = tcp::listen("127.0.0.1", 0, 0);
    std::vector<tcp::connection> queued;
    bool full = false;
    for (int i = 0; i < 64 && !full; ++i) {
        try {
            queued.push_back(tcp::connect("127.0.0.1", server.local_port(), {.timeout = 250ms}));
        } catch (const ctxmgr::timeout_error&) {
            full = true;
        }
    }
    ASSERT_TRUE(full) << "64 connections and the accept queue is still not full";
    const auto start = steady_clock::now();
    try {
        auto c = tcp::connect("127.0.0.1", server.local_port(), {.timeout = 300ms});
        ADD_FAILURE() << "connected past a full accept queue";
    } catch (const ctxmgr::timeout_error& e) {
        const auto waited = steady_clock::now() - start;
        EXPECT_GE(waited, 300ms);
        EXPECT_LT(waited, patience);
        EXPECT_EQ(e.waited(), 300ms);
        EXPECT_EQ(std::string(e.what()),
                  "timed out after 300 ms waiting for connect to 127.0.0.1:" +
                      std::to_string(server.local_port()));
    }
    // Never accepted: closing them gracefully would wait for a peer that will not answer.
    for (auto& c : queued) c.abort();
}

TEST(Net, BadInputIsATypedErrorNamingWhatWasWrong) {
    EXPECT_THROW(static_cast<void>(tcp::connect("", 80)), std::invalid_argument);
    EXPECT_THROW(static_cast<void>(tcp::connect("127.0.0.1", 80, {.timeout = -1ms})),
                 std::invalid_argument);
    EXPECT_THROW(static_cast<void>(tcp::connect("127.0.0.1", 80, {.linger = -1ms})),
                 std::invalid_argument);
    EXPECT_THROW(static_cast<void>(tcp::listen("127.0.0.1", 0, -1)), std::invalid_argument);
    try {
        static_cast<void>(tcp::connect("127.0.0.1", 80, {.timeout = -5ms}));
    } catch (const std::invalid_argument& e) {
        EXPECT_STREQ(e.what(), "ctxmgr::tcp: connect timeout is negative (-5 ms)");
    }

    auto [server, client, peer] = connect_pair();
    EXPECT_THROW(static_cast<void>(server.accept(-1ms)), std::invalid_argument);
    client.send_all("kept\n");
    std::array<std::byte, 8> buffer{};
    EXPECT_THROW(static_cast<void>(peer.receive_some(std::span<std::byte>())),
                 std::invalid_argument);
    EXPECT_THROW(static_cast<void>(peer.receive_some(buffer, -1ms)), std::invalid_argument);
    EXPECT_THROW(static_cast<void>(peer.receive_exactly(1, -1ms)), std::invalid_argument);
    EXPECT_THROW(static_cast<void>(peer.read_until("", 10)), std::invalid_argument);
    try {
        static_cast<void>(peer.read_until("\r\n", 1));
        ADD_FAILURE() << "max_bytes shorter than the delimiter was accepted";
    } catch (const std::invalid_argument& e) {
        EXPECT_TRUE(contains(e.what(), "max_bytes 1 is shorter than the delimiter \"\\r\\n\""))
            << e.what();
    }
    EXPECT_THROW(client.send_all("x", -1ms), std::invalid_argument);
    EXPECT_THROW(peer.set_linger(-1ms), std::invalid_argument);
    // Nothing was consumed by the calls that were refused.
    EXPECT_EQ(peer.read_until("\n", 10, patience), "kept\n");
}

// ---- receiving: timeouts, limits, end of stream, nothing lost --------------------------------

TEST(Net, AReceiveThatTimesOutKeepsWhatArrived) {
    auto [server, client, peer] = connect_pair();
    client.send_all("abc");
    const auto start = steady_clock::now();
    try {
        static_cast<void>(peer.receive_exactly(5, 200ms));
        ADD_FAILURE() << "received 5 bytes of 3";
    } catch (const ctxmgr::timeout_error& e) {
        EXPECT_GE(steady_clock::now() - start, 200ms);
        EXPECT_EQ(std::string(e.what()), "timed out after 200 ms waiting for 5 bytes from " +
                                             peer.remote_endpoint().to_string() + " (3 arrived)");
    }
    EXPECT_EQ(peer.buffered(), 3u);
    client.send_all("de");
    EXPECT_EQ(peer.receive_exactly(5, patience), "abcde");
    EXPECT_EQ(peer.buffered(), 0u);

    std::array<std::byte, 4> buffer{};
    EXPECT_THROW(static_cast<void>(peer.receive_some(buffer, 50ms)), ctxmgr::timeout_error);
    EXPECT_THROW(static_cast<void>(peer.receive_some(buffer, 0ms)), ctxmgr::timeout_error);

    client.send_all("no newline yet");
    EXPECT_THROW(static_cast<void>(peer.read_until("\n", 100, 100ms)), ctxmgr::timeout_error);
    EXPECT_EQ(peer.buffered(), 14u);
    client.send_all("\n");
    EXPECT_EQ(peer.read_until("\n", 100, patience), "no newline yet\n");
}

TEST(Net, ReadUntilKeepsWhatFollowsTheDelimiterAndFindsSplitDelimiters) {
    auto [server, client, peer] = connect_pair();
    client.send_all("one\r\ntwo\r");
    EXPECT_EQ(peer.read_until("\r\n", 100, patience), "one\r\n");
    EXPECT_EQ(peer.buffered(), 4u);
    client.send_all("\nthree");
    EXPECT_EQ(peer.read_until("\r\n", 100, patience), "two\r\n");
    // receive_some serves the buffered bytes first, without a system call.
    std::array<std::byte, 3> head{};
    EXPECT_EQ(peer.receive_some(head, 0ms), 3u);
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(head.data()), 3), "thr");
    EXPECT_EQ(peer.receive_exactly(2, patience), "ee");
}

TEST(Net, ReadUntilPastItsLimitIsMessageSizeAndKeepsTheData) {
    auto [server, client, peer] = connect_pair();
    client.send_all("0123456789abcdef\n");
    try {
        static_cast<void>(peer.read_until("\n", 8, patience));
        ADD_FAILURE() << "returned a line longer than max_bytes";
    } catch (const ctxmgr::network_error& e) {
        EXPECT_EQ(e.code(), std::make_error_code(std::errc::message_size));
        EXPECT_EQ(std::string(e.what()), "read_until \"\\n\" within 8 bytes from " +
                                             peer.remote_endpoint().to_string() +
                                             ": Message too long");
    }
    // The delimiter exactly at the limit is within it.
    EXPECT_EQ(peer.read_until("\n", 17, patience), "0123456789abcdef\n");
}

TEST(Net, ThePeerClosingMidMessageIsEndOfStreamAndKeepsWhatArrived) {
    auto [server, client, peer] = connect_pair();
    client.send_all("partial");
    client.close();
    try {
        static_cast<void>(peer.receive_exactly(10, patience));
        ADD_FAILURE() << "received 10 bytes of 7";
    } catch (const ctxmgr::network_error& e) {
        EXPECT_EQ(e.code(), tcp::errc::end_of_stream);
        EXPECT_EQ(e.code().category(), tcp::stream_category());
        EXPECT_EQ(std::string(e.what()), "receive 10 bytes (7 arrived) from " +
                                             peer.remote_endpoint().to_string() +
                                             ": end of stream: the peer closed the connection");
    }
    try {
        static_cast<void>(peer.read_until("\n", 100, patience));
        ADD_FAILURE() << "found a delimiter that was never sent";
    } catch (const ctxmgr::network_error& e) {
        EXPECT_EQ(e.code(), tcp::errc::end_of_stream);
    }
    EXPECT_EQ(read_to_end(peer), "partial");
    peer.close();
}

TEST(Net, ShutdownWriteEndsTheStreamAndTheReplyStillArrives) {
    auto [server, client, peer] = connect_pair();
    client.send_all("request");
    client.shutdown_write();
    client.shutdown_write();  // idempotent
    EXPECT_EQ(read_to_end(peer), "request");
    peer.send_all("reply");
    peer.close();
    EXPECT_EQ(read_to_end(client), "reply");
    client.close();
}

// ---- how a connection ends -------------------------------------------------------------------

TEST(Net, ANormalExitDeliversEveryByteThenEndOfStream) {
    auto server = tcp::listen("127.0.0.1", 0);
    const std::string payload(1 << 20, 'x');
    background sender([&] {
        ctxmgr::with(server.accept(patience), [&](tcp::connection& c) {
            // The client's request is left unread: a plain close(2) would then send a reset
            // and could destroy the reply in flight. The graceful close drains it instead.
            c.send_all(payload, patience);
        });
    });
    auto client = tcp::connect("127.0.0.1", server.local_port(), {.timeout = patience});
    client.send_all(std::string(64 * 1024, 'r'), patience);
    EXPECT_EQ(read_to_end(client), payload);
    client.close();
    sender.join();
}

TEST(Net, ABodyThatThrowsMakesThePeerSeeAReset) {
    auto [server, client, peer] = connect_pair();
    std::exception_ptr thrown;
    const auto e = exception_from([&] {
        ctxmgr::with(std::move(peer), [&](tcp::connection& c) {
            c.send_all("half a mess");
            ctxmgr::testing::throw_recorded(thrown, "request failed");
        });
    });
    EXPECT_EQ(e, thrown) << "the body's own exception propagates";
    EXPECT_EQ(how_the_stream_ends(client), reset_code());
    client.close();
}

TEST(Net, AClientBodyThatThrowsMakesTheServerSeeAReset) {
    auto server = tcp::listen("127.0.0.1", 0);
    const auto e = exception_from([&] {
        ctxmgr::with(tcp::connect("127.0.0.1", server.local_port()), [](tcp::connection& c) {
            c.send_all("GET /");
            throw test_error("client gave up");
        });
    });
    EXPECT_EQ(what_of(e), "client gave up");
    auto peer = server.accept(patience);
    EXPECT_EQ(how_the_stream_ends(peer), reset_code());
    peer.close();
}

TEST(Net, TheDestructorResetsDuringUnwindingAndOtherwiseEndsTheStream) {
    auto server = tcp::listen("127.0.0.1", 0);
    {
        auto client = tcp::connect("127.0.0.1", server.local_port());
        client.send_all("left open");
    }  // not unwinding: end of stream after the data
    auto first = server.accept(patience);
    EXPECT_EQ(read_to_end(first), "left open");
    first.close();

    EXPECT_THROW(
        {
            auto client = tcp::connect("127.0.0.1", server.local_port());
            client.send_all("doomed");
            throw test_error("unwinding");
        },
        test_error);
    auto second = server.accept(patience);
    EXPECT_EQ(how_the_stream_ends(second), reset_code());
    second.close();
}

TEST(Net, CloseReportsAPeerThatResetTheConnection) {
    auto [server, client, peer] = connect_pair();
    client.send_all("will not be read");
    peer.abort();
    wait_until_readable(client.native_handle());
    try {
        client.close();
        ADD_FAILURE() << "a reset connection closed without an error";
    } catch (const ctxmgr::network_error& e) {
        EXPECT_EQ(e.code(), reset_code());
        EXPECT_EQ(std::string(e.what()), "close connection to " +
                                             client.remote_endpoint().to_string() +
                                             ": Connection reset by peer");
    }
    EXPECT_FALSE(client.is_open());
    EXPECT_EQ(client.native_handle(), -1);
    EXPECT_NO_THROW(client.close());  // closed regardless, and idempotent
}

TEST(Net, ExitWithoutAPendingExceptionThrowsWhatCloseThrows) {
    auto [server, client, peer] = connect_pair();
    const auto e = exception_from([&] {
        ctxmgr::with(std::move(client), [&](tcp::connection& c) {
            peer.abort();
            wait_until_readable(c.native_handle());
        });
    });
    ASSERT_TRUE(ctxmgr::holds<ctxmgr::network_error>(e)) << ctxmgr::describe(e);
    EXPECT_TRUE(contains(what_of(e), "close connection to 127.0.0.1:")) << what_of(e);
}

TEST(Net, AReleaseFailureWithAPendingExceptionIsChainedToIt) {
    auto [server, client, peer] = connect_pair();
    // Closing the descriptor behind the connection's back makes its own release fail (EBADF);
    // this test runs on one thread, so the number cannot be reused meanwhile.
    std::exception_ptr thrown;
    const auto e = exception_from([&] {
        ctxmgr::with(std::move(client), [&](tcp::connection& c) {
            ::close(c.native_handle());
            ctxmgr::testing::throw_recorded(thrown, "body failed");
        });
    });
    ASSERT_TRUE(ctxmgr::holds<ctxmgr::network_error>(e)) << ctxmgr::describe(e);
    try {
        std::rethrow_exception(e);
    } catch (const ctxmgr::network_error& failure) {
        EXPECT_EQ(failure.code(), std::error_code(EBADF, std::generic_category()));
        EXPECT_TRUE(contains(failure.what(), "abort connection to 127.0.0.1:")) << failure.what();
        const auto* nested = dynamic_cast<const std::nested_exception*>(&failure);
        ASSERT_NE(nested, nullptr);
        EXPECT_EQ(nested->nested_ptr(), thrown) << "the body's exception itself is nested";
    }
    peer.close();
}

TEST(Net, ADestructorThatCannotCloseReportsToTheUnraisableHook) {
    unraisable_capture capture;
    auto [server, client, peer] = connect_pair();
    const auto description =
        client.local_endpoint().to_string() + " -> " + client.remote_endpoint().to_string();
    ::close(client.native_handle());
    { const tcp::connection doomed = std::move(client); }
    ASSERT_EQ(capture.reports.size(), 1u);
    EXPECT_EQ(capture.reports[0], "tcp connection " + description +
                                      ": close in destructor: close connection to " +
                                      peer.local_endpoint().to_string() + ": Bad file descriptor");
    peer.close();
}

TEST(Net, LingerBoundsHowLongCloseWaitsForAPeerThatNeverCloses) {
    auto server = tcp::listen("127.0.0.1", 0);
    auto client =
        tcp::connect("127.0.0.1", server.local_port(), {.timeout = patience, .linger = 200ms});
    auto peer = server.accept(patience);
    EXPECT_EQ(client.linger(), 200ms);
    const auto start = steady_clock::now();
    EXPECT_NO_THROW(client.close()) << "running out of linger time is not an error";
    const auto waited = steady_clock::now() - start;
    EXPECT_GE(waited, 200ms);
    EXPECT_LT(waited, patience);

    // The client's end of stream went out before its wait; linger 0: no wait at all.
    EXPECT_EQ(read_to_end(peer), "");
    peer.set_linger(0ms);
    const auto peer_start = steady_clock::now();
    peer.close();
    EXPECT_LT(steady_clock::now() - peer_start, patience);
}

TEST(Net, MovingAConnectionMovesTheSocketAndAssigningReleasesTheOldOne) {
    auto server = tcp::listen("127.0.0.1", 0);
    auto first = tcp::connect("127.0.0.1", server.local_port());
    auto first_peer = server.accept(patience);
    auto second = tcp::connect("127.0.0.1", server.local_port(), {.linger = 0ms});
    auto second_peer = server.accept(patience);
    const int fd = second.native_handle();

    first = std::move(second);  // releases the first connection: its peer sees end of stream
    EXPECT_EQ(first.native_handle(), fd);
    EXPECT_FALSE(second.is_open());  // NOLINT(bugprone-use-after-move): moved-from is closed
    EXPECT_EQ(read_to_end(first_peer), "");
    auto& alias = first;
    first = std::move(alias);  // self-move keeps it
    EXPECT_TRUE(first.is_open());
    first.send_all("still here");
    first.close();
    EXPECT_EQ(read_to_end(second_peer), "still here");
    first_peer.close();
    second_peer.close();
    static_assert(std::is_nothrow_move_constructible_v<tcp::connection>);
    static_assert(std::is_nothrow_move_assignable_v<tcp::connection>);
    static_assert(!std::is_copy_constructible_v<tcp::connection>);
    static_assert(std::is_nothrow_move_constructible_v<tcp::listener>);
    static_assert(!std::is_copy_constructible_v<tcp::listener>);
}

TEST(Net, AClosedConnectionRefusesUseWithClosedError) {
    auto [server, client, peer] = connect_pair();
    client.close();
    client.close();
    client.abort();
    std::array<std::byte, 4> buffer{};
    EXPECT_THROW(client.send_all("x"), ctxmgr::closed_error);
    EXPECT_THROW(static_cast<void>(client.send_some(bytes_of("x"))), ctxmgr::closed_error);
    EXPECT_THROW(static_cast<void>(client.receive_some(buffer)), ctxmgr::closed_error);
    EXPECT_THROW(static_cast<void>(client.receive_exactly(1)), ctxmgr::closed_error);
    EXPECT_THROW(static_cast<void>(client.read_until("\n")), ctxmgr::closed_error);
    EXPECT_THROW(client.shutdown_write(), ctxmgr::closed_error);
    EXPECT_THROW(client.set_no_delay(true), ctxmgr::closed_error);
    EXPECT_THROW(static_cast<void>(client.enter()), ctxmgr::closed_error);
    try {
        client.send_all("x");
    } catch (const ctxmgr::closed_error& e) {
        EXPECT_EQ(std::string(e.what()),
                  "send to " + client.remote_endpoint().to_string() + ": the connection is closed");
    }
    tcp::connection never_opened;
    EXPECT_FALSE(never_opened.is_open());
    EXPECT_EQ(never_opened.native_handle(), -1);
    EXPECT_TRUE(never_opened.remote_endpoint().address.empty());
    EXPECT_THROW(never_opened.send_all("x"), ctxmgr::closed_error);
    EXPECT_NO_THROW(never_opened.close());
    peer.close();
}

// ---- sending -------------------------------------------------------------------------------

TEST(Net, ASendThatTimesOutSaysHowMuchWentOut) {
    auto [server, client, peer] = connect_pair();
    // Small buffers on both sides, so a peer that does not read stops the sender quickly.
    const int small = 4096;
    ASSERT_EQ(::setsockopt(client.native_handle(), SOL_SOCKET, SO_SNDBUF, &small, sizeof small), 0);
    ASSERT_EQ(::setsockopt(peer.native_handle(), SOL_SOCKET, SO_RCVBUF, &small, sizeof small), 0);
    const std::string big(16 << 20, 'b');
    const auto start = steady_clock::now();
    try {
        client.send_all(big, 200ms);
        ADD_FAILURE() << "16 MiB went into a peer that reads nothing";
    } catch (const ctxmgr::timeout_error& e) {
        EXPECT_GE(steady_clock::now() - start, 200ms);
        const std::string what = e.what();
        EXPECT_TRUE(what.starts_with("timed out after 200 ms waiting for room to send to " +
                                     client.remote_endpoint().to_string() + " ("))
            << what;
        EXPECT_TRUE(what.ends_with(" of 16777216 bytes sent)")) << what;
    }
    EXPECT_THROW(static_cast<void>(client.send_some(bytes_of(big), 50ms)), ctxmgr::timeout_error);
    client.abort();
    peer.abort();
}

TEST(Net, SigpipeNeverKillsTheProcessAndDispositionsAreUntouched) {
    struct sigaction saved {};
    struct sigaction fatal {};
    fatal.sa_handler = SIG_DFL;
    ASSERT_EQ(::sigaction(SIGPIPE, &fatal, &saved), 0);  // SIGPIPE would kill us now

    auto [server, client, peer] = connect_pair();
    peer.abort();
    wait_until_readable(client.native_handle());
    std::optional<std::error_code> failure;
    for (int i = 0; i < 100 && !failure; ++i) {
        try {
            client.send_all(std::string(4096, 's'), patience);
        } catch (const ctxmgr::network_error& e) {
            failure = e.code();
        }
    }
    ASSERT_TRUE(failure.has_value()) << "sending into a reset connection kept succeeding";
    EXPECT_TRUE(*failure == std::error_code(EPIPE, std::generic_category()) ||
                *failure == reset_code())
        << failure->message();
    client.abort();

    struct sigaction now {};
    ASSERT_EQ(::sigaction(SIGPIPE, nullptr, &now), 0);
    EXPECT_EQ(now.sa_handler, SIG_DFL) << "the library changed SIGPIPE's disposition";
    ASSERT_EQ(::sigaction(SIGPIPE, &saved, nullptr), 0);
}

// ---- signals -------------------------------------------------------------------------------

std::atomic<int> signals_seen{0};
extern "C" void count_signal(int) {
    signals_seen.fetch_add(1);
}

TEST(Net, ASignalDuringAWaitIsRetriedWithTheTimeLeft) {
    // No SA_RESTART: the signal interrupts poll() and recv() with EINTR.
    struct sigaction handler {};
    handler.sa_handler = count_signal;
    struct sigaction saved {};
    ASSERT_EQ(::sigaction(SIGUSR1, &handler, &saved), 0);
    signals_seen = 0;

    auto [server, client, peer] = connect_pair();
    std::atomic<bool> waiting{false};
    std::optional<steady_clock::duration> timed_out_after;
    std::string received;
    const pthread_t self = ::pthread_self();
    background interrupter([&] {
        for (int i = 0; i < 1000 && !waiting; ++i) std::this_thread::sleep_for(1ms);
        for (int i = 0; i < 5; ++i) {
            std::this_thread::sleep_for(40ms);
            ::pthread_kill(self, SIGUSR1);
        }
    });
    waiting = true;
    const auto start = steady_clock::now();
    try {
        static_cast<void>(client.receive_exactly(1, 600ms));
    } catch (const ctxmgr::timeout_error&) {
        timed_out_after = steady_clock::now() - start;
    }
    interrupter.join();
    EXPECT_GE(signals_seen.load(), 1);
    ASSERT_TRUE(timed_out_after.has_value()) << "the signal ended the wait";
    EXPECT_GE(*timed_out_after, 600ms) << "the time left was not waited out";
    EXPECT_LT(*timed_out_after, patience);

    // Untimed: the blocking call is retried and returns the data that arrives later.
    background late_sender([&] {
        for (int i = 0; i < 3; ++i) {
            std::this_thread::sleep_for(30ms);
            ::pthread_kill(self, SIGUSR1);
        }
        std::this_thread::sleep_for(30ms);
        peer.send_all("late");
    });
    EXPECT_EQ(client.receive_exactly(4), "late");
    late_sender.join();
    ASSERT_EQ(::sigaction(SIGUSR1, &saved, nullptr), 0);
}

// ---- options -------------------------------------------------------------------------------

TEST(Net, OptionsAreAppliedAndDescriptorsAreCloseOnExecAndBlocking) {
    auto server = tcp::listen("127.0.0.1", 0);
    EXPECT_NE(::fcntl(server.native_handle(), F_GETFD) & FD_CLOEXEC, 0);
    for (const auto& options :
         {tcp::connect_options{}, tcp::connect_options{.timeout = patience},
          tcp::connect_options{.timeout = patience, .no_delay = false, .keep_alive = true}}) {
        auto client = tcp::connect("127.0.0.1", server.local_port(), options);
        auto peer = server.accept(patience);
        const int fd = client.native_handle();
        EXPECT_EQ(int_option(fd, IPPROTO_TCP, TCP_NODELAY) != 0, options.no_delay);
        EXPECT_EQ(int_option(fd, SOL_SOCKET, SO_KEEPALIVE) != 0, options.keep_alive);
        EXPECT_NE(::fcntl(fd, F_GETFD) & FD_CLOEXEC, 0);
        EXPECT_EQ(::fcntl(fd, F_GETFL) & O_NONBLOCK, 0) << "a timed connect left it non-blocking";
        EXPECT_EQ(client.linger(), 1000ms);
        // Accepted connections: no delay on, as connect's default; close-on-exec; blocking.
        EXPECT_NE(int_option(peer.native_handle(), IPPROTO_TCP, TCP_NODELAY), 0);
        EXPECT_NE(::fcntl(peer.native_handle(), F_GETFD) & FD_CLOEXEC, 0);
        EXPECT_EQ(::fcntl(peer.native_handle(), F_GETFL) & O_NONBLOCK, 0);
        EXPECT_EQ(peer.linger(), 1000ms);
        client.set_linger(0ms);  // the peer closes after it, on this thread
        peer.set_keep_alive(true);
        EXPECT_NE(int_option(peer.native_handle(), SOL_SOCKET, SO_KEEPALIVE), 0);
        peer.set_no_delay(false);
        EXPECT_EQ(int_option(peer.native_handle(), IPPROTO_TCP, TCP_NODELAY), 0);
        client.close();
        peer.close();
    }
}

// ---- the listener --------------------------------------------------------------------------

TEST(Net, AcceptTimesOutNamingTheListener) {
    auto server = tcp::listen("127.0.0.1", 0);
    const auto start = steady_clock::now();
    try {
        static_cast<void>(server.accept(100ms));
        ADD_FAILURE() << "accepted a connection nobody made";
    } catch (const ctxmgr::timeout_error& e) {
        EXPECT_GE(steady_clock::now() - start, 100ms);
        EXPECT_EQ(std::string(e.what()),
                  "timed out after 100 ms waiting for a connection on 127.0.0.1:" +
                      std::to_string(server.local_port()));
    }
}

TEST(Net, ABusyPortIsABindErrorNamingTheEndpoint) {
    auto first = tcp::listen("127.0.0.1", 0);
    try {
        auto second = tcp::listen("127.0.0.1", first.local_port());
        ADD_FAILURE() << "two listeners on one port";
    } catch (const ctxmgr::network_error& e) {
        EXPECT_EQ(e.code(), std::error_code(EADDRINUSE, std::generic_category()));
        EXPECT_EQ(std::string(e.what()), "bind 127.0.0.1:" + std::to_string(first.local_port()) +
                                             ": Address already in use");
    }
}

TEST(Net, TheListenerIsAManagerThatClosesAndRefusesUseAfterwards) {
    std::uint16_t port = 0;
    ctxmgr::with(tcp::listen("127.0.0.1", 0), [&](tcp::listener& server) {
        port = server.local_port();
        auto client = tcp::connect("127.0.0.1", port, {.linger = 0ms});
        auto peer = server.accept(patience);
        client.close();
        peer.close();
    });
    EXPECT_THROW(static_cast<void>(tcp::connect("127.0.0.1", port)), ctxmgr::network_error);

    auto server = tcp::listen("127.0.0.1", 0);
    auto moved = std::move(server);
    EXPECT_FALSE(server.is_open());  // NOLINT(bugprone-use-after-move): moved-from is closed
    EXPECT_THROW(static_cast<void>(server.accept(0ms)), ctxmgr::closed_error);
    EXPECT_THROW(static_cast<void>(server.enter()), ctxmgr::closed_error);
    moved.close();
    moved.close();
    EXPECT_EQ(moved.local_endpoint().address, "127.0.0.1") << "kept after close, for logging";
    EXPECT_THROW(static_cast<void>(moved.accept(0ms)), ctxmgr::closed_error);
}

TEST(Net, ClosingAListenerResetsTheConnectionsItNeverAccepted) {
    auto server = tcp::listen("127.0.0.1", 0);
    auto client = tcp::connect("127.0.0.1", server.local_port(), {.timeout = patience});
    server.close();
    EXPECT_EQ(how_the_stream_ends(client), reset_code());
    // The reset was reported above, by the receive; close() does not report it twice.
    EXPECT_NO_THROW(client.close());
}

// ---- tracking ------------------------------------------------------------------------------

TEST(Net, ConnectionsAndListenersAreTrackedWithTheirEndpointsAndTheCallersLine) {
    if (!ctxmgr::tracking_enabled) GTEST_SKIP() << "tracking is compiled out";
    auto server = tcp::listen("127.0.0.1", 0);
    const auto listen_line = __LINE__ - 1;
    auto client = tcp::connect("127.0.0.1", server.local_port(), {.linger = 0ms});
    const auto connect_line = __LINE__ - 1;
    auto peer = server.accept(patience);
    const auto accept_line = __LINE__ - 1;
    const auto find = [](std::string_view description) -> std::optional<ctxmgr::resource_info> {
        for (auto& r : ctxmgr::live_resources()) {
            if (r.description == description) return r;
        }
        return std::nullopt;
    };
    const auto port = std::to_string(server.local_port());
    const auto listening = find("listening on 127.0.0.1:" + port);
    ASSERT_TRUE(listening.has_value());
    EXPECT_EQ(listening->kind, "tcp listener");
    EXPECT_EQ(listening->where.line(), static_cast<unsigned>(listen_line));
    const auto client_side = find(client.local_endpoint().to_string() + " -> 127.0.0.1:" + port);
    ASSERT_TRUE(client_side.has_value());
    EXPECT_EQ(client_side->kind, "tcp connection");
    EXPECT_EQ(client_side->where.line(), static_cast<unsigned>(connect_line));
    EXPECT_TRUE(contains(client_side->where.file_name(), "net_test.cpp"));
    const auto server_side =
        find("127.0.0.1:" + port + " -> " + client.local_endpoint().to_string());
    ASSERT_TRUE(server_side.has_value());
    EXPECT_EQ(server_side->where.line(), static_cast<unsigned>(accept_line));

    client.close();
    peer.close();
    server.close();
    EXPECT_FALSE(find("listening on 127.0.0.1:" + port).has_value());
    EXPECT_FALSE(client_side && find(client_side->description).has_value());
}

// ---- scale ---------------------------------------------------------------------------------

TEST(Net, TenThousandConnectCloseCyclesLeakNoDescriptor) {
    constexpr int cycles = 10'000;
    auto server = tcp::listen("127.0.0.1", 0);
    const auto port = server.local_port();
    const auto before = ctxmgr::testing::open_descriptors().size();
    // The server closes first, so the TIME_WAIT state stays on its side and the client's
    // ephemeral ports are free again at once.
    background acceptor([&] {
        for (int i = 0; i < cycles; ++i) server.accept(patience).close();
    });
    std::size_t most = 0;
    for (int i = 0; i < cycles; ++i) {
        auto client = tcp::connect("127.0.0.1", port, {.timeout = patience});
        std::array<std::byte, 1> byte{};
        ASSERT_EQ(client.receive_some(byte, patience), 0u);
        client.close();
        if (i % 500 == 0) most = std::max(most, ctxmgr::testing::open_descriptors().size());
    }
    acceptor.join();
    EXPECT_EQ(ctxmgr::testing::open_descriptors().size(), before);
    EXPECT_LE(most, before + 2) << "descriptors piled up during the cycles";
    server.close();
}

TEST(Net, SixtyFourConcurrentConnectionsToOneListener) {
    constexpr int clients = 64;
    auto server = tcp::listen("127.0.0.1", 0);
    const auto port = server.local_port();
    std::size_t live_at_peak = 0;
    // Both ends of every connection; the last to arrive counts the live resources.
    rendezvous all_connected(2 * clients, [&] { live_at_peak = ctxmgr::live_resources().size(); });
    std::vector<std::unique_ptr<background>> handlers;
    background acceptor([&] {
        for (int i = 0; i < clients; ++i) {
            handlers.push_back(std::make_unique<background>(
                [&all_connected, c = server.accept(patience)]() mutable {
                    EXPECT_TRUE(all_connected.arrive_and_wait());
                    ctxmgr::with(c, [](tcp::connection& connection) {
                        const auto line = connection.read_until("\n", 100, patience);
                        connection.send_all("echo " + line, patience);
                    });
                }));
        }
    });
    std::vector<std::string> replies(clients);
    {
        std::vector<std::unique_ptr<background>> workers;
        for (int i = 0; i < clients; ++i) {
            workers.push_back(std::make_unique<background>([&, i] {
                ctxmgr::with(tcp::connect("127.0.0.1", port, {.timeout = patience}),
                             [&](tcp::connection& c) {
                                 EXPECT_TRUE(all_connected.arrive_and_wait());
                                 c.send_all("client " + std::to_string(i) + "\n", patience);
                                 replies[static_cast<std::size_t>(i)] =
                                     c.read_until("\n", 100, patience);
                             });
            }));
        }
        for (auto& w : workers) w->join();
    }
    acceptor.join();
    for (auto& h : handlers) h->join();
    for (int i = 0; i < clients; ++i) {
        EXPECT_EQ(replies[static_cast<std::size_t>(i)], "echo client " + std::to_string(i) + "\n");
    }
    if (ctxmgr::tracking_enabled) {
        EXPECT_GE(live_at_peak, static_cast<std::size_t>(2 * clients + 1));
    }
    server.close();
}

TEST(Net, SeveralThreadsMayAcceptOnOneListener) {
    constexpr int acceptors = 3;
    constexpr int per_acceptor = 8;
    auto server = tcp::listen("127.0.0.1", 0);
    std::atomic<int> accepted{0};
    std::vector<std::unique_ptr<background>> threads;
    for (int t = 0; t < acceptors; ++t) {
        threads.push_back(std::make_unique<background>([&] {
            for (int i = 0; i < per_acceptor; ++i) {
                auto c = server.accept(patience);
                EXPECT_EQ(c.read_until("\n", 16, patience), "hi\n");
                ++accepted;
                c.close();
            }
        }));
    }
    for (int i = 0; i < acceptors * per_acceptor; ++i) {
        auto c = tcp::connect("127.0.0.1", server.local_port(), {.timeout = patience});
        c.send_all("hi\n");
        EXPECT_EQ(read_to_end(c), "");
        c.close();
    }
    for (auto& t : threads) t->join();
    EXPECT_EQ(accepted.load(), acceptors * per_acceptor);
}

TEST(Net, OneThreadMaySendWhileAnotherReceives) {
    auto [server, client, peer] = connect_pair();
    constexpr int messages = 200;
    background reader([&] {
        for (int i = 0; i < messages; ++i) {
            EXPECT_EQ(client.read_until("\n", 64, patience), std::to_string(i) + "\n");
        }
    });
    background echo([&] {
        for (int i = 0; i < messages; ++i) peer.send_all(peer.read_until("\n", 64, patience));
    });
    for (int i = 0; i < messages; ++i) client.send_all(std::to_string(i) + "\n", patience);
    reader.join();
    echo.join();
    client.close();
    peer.close();
}

}  // namespace

namespace {

// The example at the top of net.hpp, as written there, with a server that answers it.
TEST(Net, TheHeadersExample) {
    auto server = ctxmgr::tcp::listen("127.0.0.1", 0);  // port 0: the OS picks one
    background pong([&] {
        ctxmgr::with(server.accept(patience), [](tcp::connection& c) {
            if (c.read_until("\n", 64, patience) == "ping\n") c.send_all("pong\n");
        });
    });
    std::string answer;
    ctxmgr::with(ctxmgr::tcp::connect("127.0.0.1", server.local_port(), {.timeout = 2s}),
                 [&](ctxmgr::tcp::connection& c) {
                     c.send_all("ping\n");
                     std::string reply = c.read_until("\n", 1024, 500ms);  // "pong\n"
                     answer = reply;
                 });  // shut down, drain, close
    pong.join();
    EXPECT_EQ(answer, "pong\n");
}

}  // namespace
