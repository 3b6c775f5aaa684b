// Tests of ctxmgr/async_net.hpp. Loopback only: no packet leaves the machine. Every wait is
// bounded (a deadline, or the io_context run for at most `patience`), every loop by a count.
// The peer that judges how a connection ended is raw Asio (or net.hpp's blocking socket),
// never the code under test.
#include <ctxmgr/async_net.hpp>
#include <ctxmgr/async_with.hpp>
#include <ctxmgr/net.hpp>
#include <ctxmgr/tracking.hpp>

#include <gtest/gtest.h>
#include <asio/bind_cancellation_slot.hpp>
#include <asio/cancellation_signal.hpp>
#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/read.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <functional>
#include <optional>
#include <source_location>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "recording.hpp"
#include "refusing_port.hpp"
#include "resource_check.hpp"

namespace {

using namespace std::chrono_literals;
using namespace asio::experimental::awaitable_operators;
namespace tcp = ctxmgr::tcp;
using ctxmgr::testing::contains;
using ctxmgr::testing::exception_from;
using ctxmgr::testing::test_error;
using ctxmgr::testing::what_of;
using std::chrono::steady_clock;
template <class T>
using task = asio::awaitable<T>;
using raw_socket = asio::ip::tcp::socket;

// Generous: the machine is shared and runs sanitizers. Only bounds, never expectations.
constexpr auto patience = 10s;
constexpr auto as_tuple = asio::experimental::as_tuple(asio::use_awaitable);

// Runs `a` on `io` to its end, for at most `patience`; rethrows what it threw.
template <class T>
T run(asio::io_context& io, task<T> a) {
    std::exception_ptr error;
    std::optional<std::conditional_t<std::is_void_v<T>, bool, T>> result;
    if constexpr (std::is_void_v<T>) {
        asio::co_spawn(io, std::move(a), [&](std::exception_ptr e) {
            error = e;
            result.emplace(true);
        });
    } else {
        asio::co_spawn(io, std::move(a), [&](std::exception_ptr e, T value) {
            error = e;
            result.emplace(std::move(value));
        });
    }
    io.run_for(patience);
    io.restart();
    if (!result) throw std::logic_error("the coroutine did not finish within patience");
    if (error) std::rethrow_exception(error);
    if constexpr (!std::is_void_v<T>) return std::move(*result);
}

// How the stream from the peer ended, as the peer's own reads saw it.
struct stream_end {
    std::string data;       // every byte read
    std::error_code error;  // eof for a graceful close, connection_reset for a reset
};

task<stream_end> read_to_end(raw_socket& socket) {
    stream_end end;
    std::array<char, 16 * 1024> chunk{};
    for (;;) {
        auto [error, n] = co_await socket.async_read_some(asio::buffer(chunk), as_tuple);
        end.data.append(chunk.data(), n);
        if (error) {
            end.error = error;
            co_return end;
        }
    }
}

// A raw Asio client connected to `port` on 127.0.0.1.
task<raw_socket> raw_connect(std::uint16_t port) {
    raw_socket socket(co_await asio::this_coro::executor);
    co_await socket.async_connect({asio::ip::make_address("127.0.0.1"), port}, asio::use_awaitable);
    co_return socket;
}

task<void> sleep(std::chrono::milliseconds delay) {
    asio::steady_timer timer(co_await asio::this_coro::executor, delay);
    co_await timer.async_wait(asio::use_awaitable);
}

bool is_reset(const std::error_code& e) {
    return e == asio::error::connection_reset;
}

std::size_t live_count(std::string_view kind) {
    const auto live = ctxmgr::live_resources();
    return static_cast<std::size_t>(std::count_if(
        live.begin(), live.end(), [&](const ctxmgr::resource_info& r) { return r.kind == kind; }));
}

// ---- the header's example ---------------------------------------------------------------

TEST(AsyncNet, TheHeadersExampleRoundTrips) {
    asio::io_context io;
    auto server = tcp::async_listen(io, "127.0.0.1", 0);
    const auto port = server.local_port();
    auto serve = [&]() -> task<void> {
        co_await ctxmgr::async_with(co_await server.async_accept(),
                                    [](tcp::async_connection& c) -> task<void> {
                                        const auto line = co_await c.async_read_until("\n");
                                        EXPECT_EQ(line, "ping\n");
                                        co_await c.async_send_all("pong\n");
                                    });
    };
    std::string reply;
    auto client = [&]() -> task<void> {
        const auto executor = co_await asio::this_coro::executor;
        co_await ctxmgr::async_with(
            tcp::async_connect(executor, "127.0.0.1", port, {.timeout = 2s}),
            [&](tcp::async_connection& c) -> task<void> {
                co_await c.async_send_all("ping\n");
                reply = co_await c.async_read_until("\n", 1024, 500ms);
            });
    };
    run(io, [&]() -> task<void> { co_await (serve() && client()); }());
    EXPECT_EQ(reply, "pong\n");
    EXPECT_EQ(live_count("tcp connection"), 0u);
}

// ---- how a connection ends: gracefully on a normal exit, a reset otherwise ---------------

TEST(AsyncNet, ANormalExitDeliversEveryByteThenEndOfStream) {
    asio::io_context io;
    auto server = tcp::async_listen(io, "127.0.0.1", 0);
    const std::string payload(4 << 20, 'x');
    stream_end seen;
    auto serve = [&]() -> task<void> {
        co_await ctxmgr::async_with(co_await server.async_accept(),
                                    [&](tcp::async_connection& c) -> task<void> {
                                        // The peer's request stays unread: the drain takes it,
                                        // so the close sends no reset over the reply.
                                        co_await c.async_send_all(payload, patience);
                                    });
    };
    auto peer = [&]() -> task<void> {
        auto socket = co_await raw_connect(server.local_port());
        co_await asio::async_write(socket, asio::buffer(std::string(64 * 1024, 'r')),
                                   asio::use_awaitable);
        seen = co_await read_to_end(socket);
    };
    run(io, [&]() -> task<void> { co_await (serve() && peer()); }());
    EXPECT_EQ(seen.error, asio::error::eof) << seen.error.message();
    EXPECT_EQ(seen.data.size(), payload.size());
    EXPECT_TRUE(seen.data == payload);
}

TEST(AsyncNet, ABodyThatThrowsResetsTheConnectionAndItsExceptionPropagates) {
    asio::io_context io;
    auto server = tcp::async_listen(io, "127.0.0.1", 0);
    std::exception_ptr thrown;
    std::exception_ptr caught;
    stream_end seen;
    auto serve = [&]() -> task<void> {
        try {
            co_await ctxmgr::async_with(co_await server.async_accept(),
                                        [&](tcp::async_connection& c) -> task<void> {
                                            co_await c.async_send_all("half a mess");
                                            ctxmgr::testing::throw_recorded(thrown, "failed");
                                        });
        } catch (...) {
            caught = std::current_exception();
        }
    };
    auto peer = [&]() -> task<void> {
        auto socket = co_await raw_connect(server.local_port());
        seen = co_await read_to_end(socket);
    };
    run(io, [&]() -> task<void> { co_await (serve() && peer()); }());
    EXPECT_EQ(caught, thrown) << "the body's own exception object propagates";
    EXPECT_TRUE(is_reset(seen.error)) << seen.error.message();
}

TEST(AsyncNet, AClientBodyThatThrowsMakesTheServerSeeAReset) {
    asio::io_context io;
    auto server = tcp::async_listen(io, "127.0.0.1", 0);
    stream_end seen;
    auto serve = [&]() -> task<void> {
        auto c = co_await server.async_accept();
        auto& socket = c.socket();
        seen = co_await read_to_end(socket);
        c.abort();
    };
    std::string error;
    auto client = [&]() -> task<void> {
        try {
            co_await ctxmgr::async_with(tcp::async_connect(io, "127.0.0.1", server.local_port()),
                                        [](tcp::async_connection& c) -> task<void> {
                                            co_await c.async_send_all("GET /");
                                            throw test_error("client gave up");
                                        });
        } catch (const test_error& e) {
            error = e.what();
        }
    };
    run(io, [&]() -> task<void> { co_await (serve() && client()); }());
    EXPECT_EQ(error, "client gave up");
    EXPECT_EQ(seen.data, "GET /");
    EXPECT_TRUE(is_reset(seen.error)) << seen.error.message();
}

TEST(AsyncNet, CloseReportsAPeerThatResetTheConnection) {
    asio::io_context io;
    auto server = tcp::async_listen(io, "127.0.0.1", 0);
    std::exception_ptr failure;
    auto client = [&]() -> task<void> {
        auto socket = co_await raw_connect(server.local_port());
        co_await asio::async_write(socket, asio::buffer(std::string("data")), asio::use_awaitable);
        socket.set_option(asio::socket_base::linger(true, 0));
        socket.close();
    };
    auto serve = [&]() -> task<void> {
        auto c = co_await server.async_accept();
        co_await sleep(50ms);  // the reset has arrived
        try {
            co_await c.async_close();
        } catch (...) {
            failure = std::current_exception();
        }
        EXPECT_TRUE(c.closed());
    };
    run(io, [&]() -> task<void> { co_await (serve() && client()); }());
    try {
        std::rethrow_exception(failure);
    } catch (const ctxmgr::network_error& e) {
        EXPECT_EQ(e.code(), std::errc::connection_reset) << e.what();
        EXPECT_TRUE(std::string(e.what()).starts_with("close connection to 127.0.0.1:"))
            << e.what();
    } catch (...) {
        ADD_FAILURE() << "expected network_error, got " << what_of(std::current_exception());
    }
}

TEST(AsyncNet, TheDestructorResetsDuringUnwindingAndOtherwiseEndsTheStream) {
    asio::io_context io;
    auto server = tcp::async_listen(io, "127.0.0.1", 0);
    std::array<stream_end, 2> seen;
    auto serve = [&]() -> task<void> {
        {
            auto c = co_await server.async_accept();
            co_await c.async_send_all("kept");
        }  // destroyed without an exception: the stream ends
        try {
            auto c = co_await server.async_accept();
            co_await c.async_send_all("lost");
            throw test_error("unwinding");
        } catch (const test_error&) {
        }
    };
    auto peers = [&]() -> task<void> {
        auto first = co_await raw_connect(server.local_port());
        seen[0] = co_await read_to_end(first);
        auto second = co_await raw_connect(server.local_port());
        seen[1] = co_await read_to_end(second);
    };
    run(io, [&]() -> task<void> { co_await (serve() && peers()); }());
    EXPECT_EQ(seen[0].data, "kept");
    EXPECT_EQ(seen[0].error, asio::error::eof);
    EXPECT_TRUE(is_reset(seen[1].error)) << seen[1].error.message();
}

// ---- cancellation at each await point -----------------------------------------------------

// A listener whose accept queue is full: Linux drops the next SYN, so a connect to it waits
// until it is cancelled or times out. The connections filling the queue are net.hpp's.
struct full_listener {
    tcp::listener server = tcp::listen("127.0.0.1", 0, 0);
    std::vector<tcp::connection> queued;

    full_listener() {
        for (int i = 0; i < 64; ++i) {
            try {
                queued.push_back(
                    tcp::connect("127.0.0.1", server.local_port(), {.timeout = 250ms}));
            } catch (const ctxmgr::timeout_error&) {
                return;
            }
        }
        ADD_FAILURE() << "64 connections and the accept queue is still not full";
    }
    full_listener(const full_listener&) = delete;
    full_listener& operator=(const full_listener&) = delete;
    // Never accepted: a graceful close would wait for a peer that does not answer.
    ~full_listener() {
        for (auto& c : queued) c.abort();
    }
};

TEST(AsyncNet, CancellingAConnectLeavesNoDescriptorAndNothingTracked) {
    full_listener full;
    const auto connections = live_count("tcp connection");  // the ones filling the queue
    asio::io_context io;
    // The io_context opens its own descriptors (epoll, eventfd, timerfd) with its first timer.
    const asio::steady_timer reactor_started(io);
    const auto before = ctxmgr::testing::open_descriptors();
    bool entered = false;
    std::size_t winner = 99;
    run(io, [&]() -> task<void> {
        asio::steady_timer timer(io, 100ms);
        const auto result = co_await (
            ctxmgr::async_with(tcp::async_connect(io, "127.0.0.1", full.server.local_port()),
                               [&](tcp::async_connection&) -> task<void> {
                                   entered = true;
                                   co_return;
                               }) ||
            timer.async_wait(asio::use_awaitable));
        winner = result.index();
    }());
    EXPECT_EQ(winner, 1u);
    EXPECT_FALSE(entered);
    EXPECT_EQ(live_count("tcp connection"), connections);
    EXPECT_EQ(
        ctxmgr::testing::describe_new_descriptors(before, ctxmgr::testing::open_descriptors()), "");
}

TEST(AsyncNet, ACancelledConnectThrowsOperationAbortedNamingThePeer) {
    full_listener full;
    asio::io_context io;
    asio::cancellation_signal signal;
    std::exception_ptr failure;
    asio::co_spawn(
        io,
        ctxmgr::async_with(tcp::async_connect(io, "127.0.0.1", full.server.local_port()),
                           [](tcp::async_connection&) -> task<void> { co_return; }),
        asio::bind_cancellation_slot(signal.slot(), [&](std::exception_ptr e) { failure = e; }));
    asio::steady_timer timer(io, 50ms);
    timer.async_wait([&](std::error_code) { signal.emit(asio::cancellation_type::terminal); });
    io.run_for(patience);
    try {
        std::rethrow_exception(failure);
    } catch (const ctxmgr::network_error& e) {
        EXPECT_EQ(e.code(), std::errc::operation_canceled);
        EXPECT_TRUE(std::string(e.what()).starts_with(
            "connect 127.0.0.1:" + std::to_string(full.server.local_port()) + ": "))
            << e.what();
    } catch (...) {
        ADD_FAILURE() << "expected network_error, got " << what_of(std::current_exception());
    }
}

TEST(AsyncNet, AConnectTimeoutIsATimeoutErrorNamingThePeer) {
    full_listener full;
    asio::io_context io;
    const auto start = steady_clock::now();
    const auto e = exception_from([&] {
        run(io, ctxmgr::async_with(tcp::async_connect(io, "127.0.0.1", full.server.local_port(),
                                                      {.timeout = 200ms}),
                                   [](tcp::async_connection&) -> task<void> { co_return; }));
    });
    const auto waited = steady_clock::now() - start;
    EXPECT_GE(waited, 200ms);
    EXPECT_LT(waited, patience);
    EXPECT_EQ(what_of(e), "timed out after 200 ms waiting for connect to 127.0.0.1:" +
                              std::to_string(full.server.local_port()));
    try {
        std::rethrow_exception(e);
    } catch (const ctxmgr::timeout_error& t) {
        EXPECT_EQ(t.waited(), 200ms);
    } catch (...) {
        ADD_FAILURE() << "expected timeout_error";
    }
}

// A body cancelled at `where` (a receive or a send that cannot complete) by a timer raced
// with `||`: the exit still runs, and with the cancellation pending it resets.
TEST(AsyncNet, CancellationAtAReceiveOrASendResetsThePeer) {
    for (const std::string where : {"receive", "send"}) {
        SCOPED_TRACE(where);
        asio::io_context io;
        auto server = tcp::async_listen(io, "127.0.0.1", 0);
        stream_end seen;
        std::size_t winner = 99;
        std::exception_ptr inside;
        bool exited = false;
        auto serve = [&]() -> task<void> {
            auto accepted = co_await server.async_accept();
            asio::steady_timer timer(io, 100ms);
            const auto result =
                co_await (ctxmgr::async_with(std::move(accepted),
                                             [&](tcp::async_connection& c) -> task<void> {
                                                 try {
                                                     if (where == "receive") {
                                                         std::array<std::byte, 16> buffer{};
                                                         static_cast<void>(
                                                             co_await c.async_receive_some(buffer));
                                                     } else {
                                                         // More than the socket buffers hold: the
                                                         // peer does not read.
                                                         const std::string big(64 << 20, 'x');
                                                         co_await c.async_send_all(big);
                                                     }
                                                 } catch (...) {
                                                     inside = std::current_exception();
                                                     throw;
                                                 }
                                             }) ||
                          timer.async_wait(asio::use_awaitable));
            winner = result.index();
            exited = true;
        };
        auto peer = [&]() -> task<void> {
            auto socket = co_await raw_connect(server.local_port());
            co_await sleep(300ms);  // reads nothing until the server has been cancelled
            seen = co_await read_to_end(socket);
        };
        run(io, [&]() -> task<void> { co_await (serve() && peer()); }());
        EXPECT_TRUE(exited);
        EXPECT_EQ(winner, 1u);
        try {
            std::rethrow_exception(inside);
        } catch (const ctxmgr::network_error& e) {
            EXPECT_EQ(e.code(), std::errc::operation_canceled) << e.what();
            EXPECT_TRUE(std::string(e.what()).starts_with(
                where == "receive" ? "receive from 127.0.0.1:" : "send to 127.0.0.1:"))
                << e.what();
        } catch (...) {
            ADD_FAILURE() << "expected network_error, got " << what_of(std::current_exception());
        }
        EXPECT_TRUE(is_reset(seen.error)) << seen.error.message();
        EXPECT_EQ(live_count("tcp connection"), 0u);
    }
}

TEST(AsyncNet, CancellingAnAcceptLeavesTheListenerUsable) {
    asio::io_context io;
    auto server = tcp::async_listen(io, "127.0.0.1", 0);
    std::size_t winner = 99;
    std::string second;
    run(io, [&]() -> task<void> {
        asio::steady_timer timer(io, 50ms);
        const auto result =
            co_await (server.async_accept() || timer.async_wait(asio::use_awaitable));
        winner = result.index();
        auto serve = [&]() -> task<void> {
            co_await ctxmgr::async_with(co_await server.async_accept(patience),
                                        [&](tcp::async_connection& c) -> task<void> {
                                            second = co_await c.async_receive_exactly(2, patience);
                                        });
        };
        auto peer = [&]() -> task<void> {
            auto socket = co_await raw_connect(server.local_port());
            co_await asio::async_write(socket, asio::buffer(std::string("ok")),
                                       asio::use_awaitable);
            static_cast<void>(co_await read_to_end(socket));
        };
        co_await (serve() && peer());
    }());
    EXPECT_EQ(winner, 1u);
    EXPECT_EQ(second, "ok");
    EXPECT_TRUE(server.is_open());
}

TEST(AsyncNet, AnAcceptTimeoutNamesTheListener) {
    asio::io_context io;
    auto server = tcp::async_listen(io, "127.0.0.1", 0);
    const auto e = exception_from([&] { static_cast<void>(run(io, server.async_accept(100ms))); });
    EXPECT_EQ(what_of(e), "timed out after 100 ms waiting for a connection on 127.0.0.1:" +
                              std::to_string(server.local_port()));
}

// ---- deadlines ----------------------------------------------------------------------------

TEST(AsyncNet, AReceiveThatTimesOutKeepsWhatArrived) {
    asio::io_context io;
    auto server = tcp::async_listen(io, "127.0.0.1", 0);
    std::string message;
    std::size_t kept = 0;
    std::string rest;
    auto serve = [&]() -> task<void> {
        co_await ctxmgr::async_with(
            co_await server.async_accept(), [&](tcp::async_connection& c) -> task<void> {
                try {
                    static_cast<void>(co_await c.async_receive_exactly(10, 100ms));
                } catch (const ctxmgr::timeout_error& e) {
                    message = e.what();
                }
                kept = c.buffered();
                rest = co_await c.async_receive_exactly(10, patience);
            });
    };
    auto peer = [&]() -> task<void> {
        auto socket = co_await raw_connect(server.local_port());
        co_await asio::async_write(socket, asio::buffer(std::string("abc")), asio::use_awaitable);
        co_await sleep(300ms);
        co_await asio::async_write(socket, asio::buffer(std::string("defghij")),
                                   asio::use_awaitable);
        static_cast<void>(co_await read_to_end(socket));
    };
    run(io, [&]() -> task<void> { co_await (serve() && peer()); }());
    EXPECT_TRUE(message.starts_with("timed out after 100 ms waiting for 10 bytes from 127.0.0.1:"))
        << message;
    EXPECT_TRUE(contains(message, "(3 arrived)")) << message;
    EXPECT_EQ(kept, 3u);
    EXPECT_EQ(rest, "abcdefghij");
}

TEST(AsyncNet, ASendThatTimesOutSaysHowMuchWentOut) {
    asio::io_context io;
    auto server = tcp::async_listen(io, "127.0.0.1", 0);
    std::exception_ptr left_with;
    stream_end seen;
    auto serve = [&]() -> task<void> {
        try {
            co_await ctxmgr::async_with(co_await server.async_accept(),
                                        [&](tcp::async_connection& c) -> task<void> {
                                            const std::string big(64 << 20, 'x');
                                            co_await c.async_send_all(big, 200ms);
                                        });
        } catch (...) {
            left_with = std::current_exception();
        }
    };
    auto peer = [&]() -> task<void> {
        auto socket = co_await raw_connect(server.local_port());
        co_await sleep(500ms);
        seen = co_await read_to_end(socket);
    };
    run(io, [&]() -> task<void> { co_await (serve() && peer()); }());
    try {
        std::rethrow_exception(left_with);
    } catch (const ctxmgr::timeout_error& e) {
        const std::string message = e.what();
        EXPECT_TRUE(
            message.starts_with("timed out after 200 ms waiting for room to send to 127.0.0.1:"))
            << message;
        EXPECT_TRUE(contains(message, " of 67108864 bytes sent)")) << message;
    } catch (...) {
        ADD_FAILURE() << "expected timeout_error, got " << what_of(std::current_exception());
    }
    EXPECT_TRUE(is_reset(seen.error)) << "a send that timed out leaves the block with a reset";
    EXPECT_GT(seen.data.size(), 0u);
    EXPECT_LT(seen.data.size(), 64u << 20);
}

TEST(AsyncNet, ReadUntilKeepsWhatFollowsAndEndOfStreamIsTyped) {
    asio::io_context io;
    auto server = tcp::async_listen(io, "127.0.0.1", 0);
    std::vector<std::string> lines;
    std::error_code end;
    std::string end_message;
    std::size_t left = 0;
    auto serve = [&]() -> task<void> {
        co_await ctxmgr::async_with(
            co_await server.async_accept(), [&](tcp::async_connection& c) -> task<void> {
                lines.push_back(co_await c.async_read_until("\r\n", 64, patience));
                lines.push_back(co_await c.async_read_until("\r\n", 64, patience));
                try {
                    static_cast<void>(co_await c.async_read_until("\r\n", 64, patience));
                } catch (const ctxmgr::network_error& e) {
                    end = e.code();
                    end_message = e.what();
                }
                left = c.buffered();
            });
    };
    auto peer = [&]() -> task<void> {
        auto socket = co_await raw_connect(server.local_port());
        co_await asio::async_write(socket, asio::buffer(std::string("one\r")), asio::use_awaitable);
        co_await sleep(20ms);
        co_await asio::async_write(socket, asio::buffer(std::string("\ntwo\r\nthr")),
                                   asio::use_awaitable);
        socket.shutdown(asio::socket_base::shutdown_send);
        static_cast<void>(co_await read_to_end(socket));
    };
    run(io, [&]() -> task<void> { co_await (serve() && peer()); }());
    EXPECT_EQ(lines, (std::vector<std::string>{"one\r\n", "two\r\n"}));
    EXPECT_EQ(end, tcp::errc::end_of_stream);
    EXPECT_TRUE(end_message.starts_with("read_until \"\\r\\n\" (3 bytes arrived) from 127.0.0.1:"))
        << end_message;
    EXPECT_EQ(left, 3u);
}

TEST(AsyncNet, AReceiveSomeThatTimesOutNamesThePeerAndASendSomeCountsWhatWentOut) {
    asio::io_context io;
    auto server = tcp::async_listen(io, "127.0.0.1", 0);
    std::string message;
    std::size_t sent = 0;
    std::string received;
    auto serve = [&]() -> task<void> {
        co_await ctxmgr::async_with(
            co_await server.async_accept(patience), [&](tcp::async_connection& c) -> task<void> {
                std::array<std::byte, 8> buffer{};
                try {
                    static_cast<void>(co_await c.async_receive_some(buffer, 50ms));
                } catch (const ctxmgr::timeout_error& e) {
                    message = e.what();
                }
                const std::string data = "some";
                sent = co_await c.async_send_some(
                    std::as_bytes(std::span(data.data(), data.size())), patience);
            });
    };
    auto peer = [&]() -> task<void> {
        auto socket = co_await raw_connect(server.local_port());
        received = (co_await read_to_end(socket)).data;
    };
    run(io, [&]() -> task<void> { co_await (serve() && peer()); }());
    EXPECT_TRUE(message.starts_with("timed out after 50 ms waiting for data from 127.0.0.1:"))
        << message;
    EXPECT_EQ(sent, 4u);
    EXPECT_EQ(received, "some");
}

TEST(AsyncNet, LingerBoundsHowLongCloseWaitsForAPeerThatNeverCloses) {
    asio::io_context io;
    auto server = tcp::async_listen(io, "127.0.0.1", 0);
    std::chrono::steady_clock::duration closing{};
    stream_end seen;
    auto serve = [&]() -> task<void> {
        auto c = co_await server.async_accept(patience);
        c.set_linger(150ms);
        co_await c.async_send_all("bye");
        const auto start = steady_clock::now();
        co_await c.async_close();  // the peer reads but never closes: linger runs out
        closing = steady_clock::now() - start;
    };
    auto peer = [&]() -> task<void> {
        auto socket = co_await raw_connect(server.local_port());
        seen = co_await read_to_end(socket);
        co_await sleep(500ms);  // this side stays open past the server's linger
    };
    run(io, [&]() -> task<void> { co_await (serve() && peer()); }());
    EXPECT_GE(closing, 150ms);
    EXPECT_LT(closing, patience);
    EXPECT_EQ(seen.data, "bye");
    EXPECT_EQ(seen.error, asio::error::eof);
    EXPECT_THROW(
        [&] {
            asio::io_context other;
            auto l = tcp::async_listen(other, "127.0.0.1", 0);
            tcp::async_connection never;
            never.set_linger(-1ms);
        }(),
        std::invalid_argument);
}

// ---- errors -------------------------------------------------------------------------------

TEST(AsyncNet, ConnectionRefusedNamesThePeerAndKeepsTheErrno) {
    ctxmgr::testing::refusing_port port;
    asio::io_context io;
    const auto e = exception_from([&] {
        run(io, ctxmgr::async_with(tcp::async_connect(io, "127.0.0.1", port.port()),
                                   [](tcp::async_connection&) -> task<void> { co_return; }));
    });
    try {
        std::rethrow_exception(e);
    } catch (const ctxmgr::network_error& error) {
        EXPECT_EQ(error.code(), std::errc::connection_refused);
        EXPECT_EQ(error.peer(), "127.0.0.1:" + std::to_string(port.port()));
        EXPECT_TRUE(std::string(error.what())
                        .starts_with("connect 127.0.0.1:" + std::to_string(port.port()) + ": "))
            << error.what();
    } catch (...) {
        ADD_FAILURE() << "expected network_error, got " << what_of(e);
    }
}

TEST(AsyncNet, ANameIsResolvedAndABadOneNamesTheHost) {
    asio::io_context io;
    auto server = tcp::async_listen(io, "127.0.0.1", 0);
    std::string remote;
    auto serve = [&]() -> task<void> {
        auto c = co_await server.async_accept(patience);
        co_await c.async_close();
    };
    auto client = [&]() -> task<void> {
        co_await ctxmgr::async_with(tcp::async_connect(io, "localhost", server.local_port()),
                                    [&](tcp::async_connection& c) -> task<void> {
                                        remote = c.remote_endpoint().to_string();
                                        co_return;
                                    });
    };
    // localhost may resolve to ::1 first, which refuses: the next address is tried.
    run(io, [&]() -> task<void> { co_await (serve() && client()); }());
    EXPECT_EQ(remote, "127.0.0.1:" + std::to_string(server.local_port()));
    const auto e = exception_from([&] {
        run(io, ctxmgr::async_with(tcp::async_connect(io, "bad host!", 80),
                                   [](tcp::async_connection&) -> task<void> { co_return; }));
    });
    try {
        std::rethrow_exception(e);
    } catch (const ctxmgr::network_error& error) {
        EXPECT_EQ(error.peer(), "\"bad host!\"");
        EXPECT_TRUE(std::string(error.what()).starts_with("resolve \"bad host!\": "))
            << error.what();
    } catch (...) {
        ADD_FAILURE() << "expected network_error, got " << what_of(e);
    }
}

TEST(AsyncNet, AnUntimedReceiveSaysEndOfStreamWithZeroAndAResetWithTheErrnoAndThePeer) {
    asio::io_context io;
    auto server = tcp::async_listen(io, "127.0.0.1", 0);
    std::vector<std::size_t> received;
    std::exception_ptr failure;
    auto serve = [&]() -> task<void> {
        for (int i = 0; i < 2; ++i) {
            auto c = co_await server.async_accept(patience);
            std::array<std::byte, 16> buffer{};
            try {
                for (;;) {
                    const std::size_t n = co_await c.async_receive_some(buffer);
                    received.push_back(n);
                    if (n == 0) break;
                }
            } catch (...) {
                failure = std::current_exception();
            }
            c.abort();
        }
    };
    auto peer = [&]() -> task<void> {
        auto ends = co_await raw_connect(server.local_port());  // sends, then ends its stream
        co_await asio::async_write(ends, asio::buffer("hello", 5), asio::use_awaitable);
        ends.shutdown(asio::socket_base::shutdown_send);
        static_cast<void>(co_await read_to_end(ends));
        auto resets = co_await raw_connect(server.local_port());
        co_await sleep(50ms);  // accepted and waiting in its receive by then
        resets.set_option(asio::socket_base::linger(true, 0));
        resets.close();
    };
    run(io, [&]() -> task<void> { co_await (serve() && peer()); }());
    EXPECT_EQ(received, (std::vector<std::size_t>{5, 0}));
    try {
        std::rethrow_exception(failure);
    } catch (const ctxmgr::network_error& e) {
        EXPECT_EQ(e.code(), std::errc::connection_reset) << e.what();
        EXPECT_TRUE(std::string(e.what()).starts_with("receive from 127.0.0.1:")) << e.what();
    } catch (...) {
        ADD_FAILURE() << "expected network_error, got " << what_of(std::current_exception());
    }
    EXPECT_EQ(live_count("tcp connection"), 0u);
}

TEST(AsyncNet, BadInputAndUseAfterCloseAreTypedErrors) {
    asio::io_context io;
    EXPECT_THROW(static_cast<void>(tcp::async_listen(io, "127.0.0.1", 0, -1)),
                 std::invalid_argument);
    auto server = tcp::async_listen(io, "127.0.0.1", 0);
    const auto busy = exception_from(
        [&] { static_cast<void>(tcp::async_listen(io, "127.0.0.1", server.local_port())); });
    EXPECT_EQ(what_of(busy),
              "bind 127.0.0.1:" + std::to_string(server.local_port()) + ": Address already in use");
    auto empty = exception_from([&] {
        run(io, ctxmgr::async_with(tcp::async_connect(io, "", 1),
                                   [](tcp::async_connection&) -> task<void> { co_return; }));
    });
    EXPECT_EQ(what_of(empty), "ctxmgr::tcp::async_connect: empty host name");
    auto negative = exception_from([&] {
        run(io, ctxmgr::async_with(tcp::async_connect(io, "127.0.0.1", 1, {.timeout = -5ms}),
                                   [](tcp::async_connection&) -> task<void> { co_return; }));
    });
    EXPECT_EQ(what_of(negative), "ctxmgr::tcp: connect timeout is negative (-5 ms)");

    std::vector<std::string> errors;
    auto serve = [&]() -> task<void> {
        auto c = co_await server.async_accept(patience);
        co_await c.async_close();
        const auto record = [&](auto&& call) -> task<void> {
            try {
                co_await call();
            } catch (const ctxmgr::closed_error& e) {
                errors.push_back(e.what());
            }
        };
        co_await record([&]() -> task<void> { co_await c.async_send_all("x"); });
        co_await record(
            [&]() -> task<void> { static_cast<void>(co_await c.async_receive_exactly(1)); });
        co_await record([&]() -> task<void> {
            std::array<std::byte, 4> buffer{};
            static_cast<void>(co_await c.async_receive_some(buffer));
        });
        co_await record([&]() -> task<void> {
            co_await ctxmgr::async_with(c, [](auto&) -> task<void> { co_return; });
        });
        co_await c.async_close();  // idempotent
    };
    auto peer = [&]() -> task<void> {
        auto socket = co_await raw_connect(server.local_port());
        static_cast<void>(co_await read_to_end(socket));
    };
    run(io, [&]() -> task<void> { co_await (serve() && peer()); }());
    ASSERT_EQ(errors.size(), 4u);
    EXPECT_TRUE(errors[0].starts_with("send to 127.0.0.1:")) << errors[0];
    EXPECT_TRUE(errors[0].ends_with(": the connection is closed")) << errors[0];
    EXPECT_TRUE(errors[1].starts_with("receive from 127.0.0.1:")) << errors[1];
    EXPECT_TRUE(errors[2].starts_with("receive from 127.0.0.1:")) << errors[2];
    EXPECT_TRUE(errors[3].starts_with("enter connection to 127.0.0.1:")) << errors[3];
    server.close();
    EXPECT_THROW(static_cast<void>(run(io, server.async_accept())), ctxmgr::closed_error);
}

// ---- tracking -----------------------------------------------------------------------------

TEST(AsyncNet, ConnectionsAndListenersAreTrackedAtTheCallersLine) {
    asio::io_context io;
    const auto find = [](std::string_view kind, std::string_view description) {
        for (const auto& r : ctxmgr::live_resources()) {
            if (r.kind == kind && r.description == description) return std::optional(r);
        }
        return std::optional<ctxmgr::resource_info>();
    };
    const unsigned listen_line = __LINE__ + 1;
    auto server = tcp::async_listen(io, "127.0.0.1", 0);
    const auto listener_entry =
        find("tcp listener", "listening on 127.0.0.1:" + std::to_string(server.local_port()));
    ASSERT_TRUE(listener_entry);
    EXPECT_EQ(listener_entry->where.line(), listen_line);
    EXPECT_TRUE(
        std::string_view(listener_entry->where.file_name()).ends_with("async_net_test.cpp"));

    unsigned accept_line = 0;
    unsigned connect_line = 0;
    std::optional<ctxmgr::resource_info> accepted_entry, connected_entry;
    auto serve = [&]() -> task<void> {
        accept_line = __LINE__ + 1;
        auto c = co_await server.async_accept(patience);
        accepted_entry = find("tcp connection", ctxmgr::tcp::detail::description_of(
                                                    c.local_endpoint(), c.remote_endpoint()));
        static_cast<void>(co_await read_to_end(c.socket()));
        co_await c.async_close();
    };
    auto client = [&]() -> task<void> {
        connect_line = __LINE__ + 1;
        auto connector = tcp::async_connect(io, "127.0.0.1", server.local_port());
        co_await ctxmgr::async_with(
            std::move(connector), [&](tcp::async_connection& c) -> task<void> {
                connected_entry = find("tcp connection", c.local_endpoint().to_string() + " -> " +
                                                             c.remote_endpoint().to_string());
                co_return;
            });
    };
    run(io, [&]() -> task<void> { co_await (serve() && client()); }());
    ASSERT_TRUE(accepted_entry);
    ASSERT_TRUE(connected_entry);
    EXPECT_EQ(accepted_entry->where.line(), accept_line);
    EXPECT_EQ(connected_entry->where.line(), connect_line);
    EXPECT_EQ(live_count("tcp connection"), 0u);
    server.close();
    EXPECT_EQ(live_count("tcp listener"), 0u);
}

TEST(AsyncNet, AConnectorNeverEnteredSaysSo) {
    asio::io_context io;
    ctxmgr::testing::unraisable_log log;
    const unsigned line = __LINE__ + 1;
    { auto connector = tcp::async_connect(io, "127.0.0.1", 1); }
    const auto reports = log.reports();
    ASSERT_EQ(reports.size(), 1u);
    EXPECT_TRUE(ctxmgr::testing::reports_never_entered(reports[0], "tcp::async_connect",
                                                       "async_net_test.cpp", line))
        << reports[0];
}

TEST(AsyncNet, EveryDescriptorIsCloseOnExecAndNonBlocking) {
    asio::io_context io;
    auto server = tcp::async_listen(io, "127.0.0.1", 0);
    std::vector<int> descriptors{server.acceptor().native_handle()};
    auto serve = [&]() -> task<void> {
        auto c = co_await server.async_accept(patience);
        descriptors.push_back(c.socket().native_handle());
        static_cast<void>(co_await read_to_end(c.socket()));
        co_await c.async_close();
    };
    auto client = [&]() -> task<void> {
        co_await ctxmgr::async_with(tcp::async_connect(io, "127.0.0.1", server.local_port()),
                                    [&](tcp::async_connection& c) -> task<void> {
                                        descriptors.push_back(c.socket().native_handle());
                                        co_return;
                                    });
    };
    auto check = [&]() -> task<void> {
        // Both connections are open here (the client's body has run, the server reads).
        while (descriptors.size() < 3) co_await sleep(1ms);
        for (const int fd : descriptors) {
            EXPECT_NE(::fcntl(fd, F_GETFD) & FD_CLOEXEC, 0) << fd;
            EXPECT_NE(::fcntl(fd, F_GETFL) & O_NONBLOCK, 0) << fd;
        }
    };
    run(io, [&]() -> task<void> {
        co_await (serve() && [&]() -> task<void> { co_await (check() && client()); }());
    }());
    EXPECT_EQ(descriptors.size(), 3u);
}

// README.md's example: a timer that wins the race cancels the exchange; the peer sees a reset.
task<void> ask(asio::any_io_executor ex, std::uint16_t port) {
    asio::steady_timer deadline(ex, 200ms);
    co_await (ctxmgr::async_with(tcp::async_connect(ex, "127.0.0.1", port, {.timeout = 2s}),
                                 [](tcp::async_connection& c) -> asio::awaitable<void> {
                                     co_await c.async_send_all("ping\n");
                                     auto reply = co_await c.async_read_until("\n", 1024, 500ms);
                                     std::printf("%s", reply.c_str());
                                 }) ||
              deadline.async_wait(asio::use_awaitable));
}

TEST(AsyncNet, TheReadmeExampleResetsWhenTheTimerWins) {
    asio::io_context io;
    auto server = tcp::async_listen(io, "127.0.0.1", 0);
    stream_end seen;
    auto silent_server = [&]() -> task<void> {
        auto c = co_await server.async_accept(patience);
        seen = co_await read_to_end(c.socket());  // never answers
        c.abort();
    };
    const auto start = steady_clock::now();
    run(io, [&]() -> task<void> {
        co_await (silent_server() && ask(io.get_executor(), server.local_port()));
    }());
    EXPECT_GE(steady_clock::now() - start, 200ms);
    EXPECT_EQ(seen.data, "ping\n");
    EXPECT_TRUE(is_reset(seen.error)) << seen.error.message();
}

// ---- scale: ten thousand connections on one thread ----------------------------------------

// The sanitizers multiply the cost of every coroutine step: they run a tenth of the count.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr int scale_connections = 1'000;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
constexpr int scale_connections = 1'000;
#else
constexpr int scale_connections = 10'000;
#endif
#else
constexpr int scale_connections = 10'000;
#endif
// Listeners on 127.0.0.1 .. 127.0.0.8: each has an accept queue of its own (the kernel caps a
// backlog at net.core.somaxconn, 4096 by default) and a four-tuple space of its own.
constexpr int scale_listeners = 8;
constexpr auto scale_limit = 60s;

// What the server saw after echoing connection i's message: 'E' end of stream (the client left
// its block normally), 'R' a reset (its body threw), else a failure.
char server_outcome(std::string_view seen, int i) {
    return i < static_cast<int>(seen.size()) ? seen[static_cast<std::size_t>(i)] : '?';
}

void write_all(int fd, const void* data, std::size_t size) {
    const auto* bytes = static_cast<const char*>(data);
    while (size > 0) {
        const ssize_t n = ::write(fd, bytes, size);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) ::_exit(3);
        bytes += n;
        size -= static_cast<std::size_t>(n);
    }
}

std::string read_all(int fd) {
    std::string out;
    char chunk[4096];
    for (;;) {
        const ssize_t n = ::read(fd, chunk, sizeof chunk);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return out;
        out.append(chunk, static_cast<std::size_t>(n));
    }
}

std::uint32_t id_of(std::string_view message) {
    std::uint32_t id = 0;
    std::memcpy(&id, message.data(), sizeof id);
    return id;
}

// The echo server, in a process of its own so that each process holds one end of every
// connection (RLIMIT_NOFILE's hard limit is often 20,000, too few for both ends). It reports
// the ports, then one outcome byte per connection and a last line: live tracked resources
// and descriptors left open, both of which must be 0.
[[noreturn]] void run_scale_server(int report) {
    ::alarm(static_cast<unsigned>(scale_limit.count()) + 30);
    std::string seen(scale_connections, '?');
    std::string summary = "no summary";
    {
        asio::io_context io;
        const asio::steady_timer reactor_started(io);
        const auto before = ctxmgr::testing::open_descriptors();
        {
            std::vector<tcp::async_listener> listeners;
            std::array<std::uint16_t, scale_listeners> ports{};
            for (int k = 0; k < scale_listeners; ++k) {
                listeners.push_back(
                    tcp::async_listen(io, "127.0.0." + std::to_string(k + 1), 0, 4096));
                ports[static_cast<std::size_t>(k)] = listeners.back().local_port();
            }
            write_all(report, ports.data(), sizeof ports);
            int accepted = 0;
            auto serve = [&](tcp::async_connection accepted_connection) -> task<void> {
                int id = -1;
                try {
                    co_await ctxmgr::async_with(
                        std::move(accepted_connection),
                        [&](tcp::async_connection& c) -> task<void> {
                            const auto message = co_await c.async_receive_exactly(8, scale_limit);
                            id = static_cast<int>(id_of(message));
                            co_await c.async_send_all(message, scale_limit);
                            std::array<std::byte, 16> next{};
                            char outcome = 'D';  // more data: a protocol failure
                            try {
                                if (co_await c.async_receive_some(next, scale_limit) == 0) {
                                    outcome = 'E';
                                }
                            } catch (const ctxmgr::network_error& e) {
                                outcome = e.code() == std::errc::connection_reset ? 'R' : 'N';
                            }
                            if (id >= 0 && id < scale_connections) {
                                seen[static_cast<std::size_t>(id)] = outcome;
                            }
                        });
                } catch (...) {
                    if (id >= 0 && id < scale_connections) seen[static_cast<std::size_t>(id)] = 'X';
                }
            };
            auto accept_loop = [&](tcp::async_listener& l) -> task<void> {
                try {
                    while (accepted < scale_connections) {
                        auto c = co_await l.async_accept(scale_limit);
                        if (++accepted == scale_connections) {
                            for (auto& other : listeners) other.close();
                        }
                        asio::co_spawn(io, serve(std::move(c)), asio::detached);
                    }
                } catch (...) {  // closed by the loop that took the last connection
                }
            };
            for (auto& l : listeners) asio::co_spawn(io, accept_loop(l), asio::detached);
            io.run_for(scale_limit);
        }
        summary = "live " + std::to_string(ctxmgr::live_resources().size()) + ", descriptors " +
                  std::to_string(ctxmgr::testing::open_descriptors().size() - before.size());
    }
    seen += '\n' + summary;
    write_all(report, seen.data(), seen.size());
    ::_exit(0);
}

TEST(AsyncNetScale, TenThousandConcurrentConnectionsOnOneThreadEachReleasedAndClosedRightly) {
    // One end of every connection per process, plus the test's own descriptors.
    const rlim_t needed = scale_connections + 256;
    rlimit limit{};
    ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &limit), 0);
    if (limit.rlim_max != RLIM_INFINITY && limit.rlim_max < needed) {
        GTEST_SKIP() << "RLIMIT_NOFILE's hard limit is " << limit.rlim_max << ", below the "
                     << needed << " descriptors " << scale_connections
                     << " connections need in one process";
    }
    const rlimit saved = limit;
    if (limit.rlim_cur < needed) {
        limit.rlim_cur = limit.rlim_max;
        ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &limit), 0);
    }
    int pipe_fds[2];
    ASSERT_EQ(::pipe2(pipe_fds, O_CLOEXEC), 0);
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
        ::close(pipe_fds[0]);
        run_scale_server(pipe_fds[1]);
    }
    ::close(pipe_fds[1]);
    std::array<std::uint16_t, scale_listeners> ports{};
    std::size_t got = 0;
    while (got < sizeof ports) {
        const ssize_t n =
            ::read(pipe_fds[0], reinterpret_cast<char*>(ports.data()) + got, sizeof ports - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        got += static_cast<std::size_t>(n);
    }
    if (got != sizeof ports) {
        ::close(pipe_fds[0]);
        ::waitpid(child, nullptr, 0);
        ::setrlimit(RLIMIT_NOFILE, &saved);
        FAIL() << "the server process did not report its ports";
    }

    const auto start = steady_clock::now();
    std::string client_outcome(scale_connections, '?');
    std::string first_failure;
    std::size_t live_at_peak = 0;
    {
        asio::io_context io;
        const asio::steady_timer reactor_started(io);
        const auto before = ctxmgr::testing::open_descriptors();
        const auto connections_before = live_count("tcp connection");
        // Every client waits here once its exchange is done, so that all are open at once.
        asio::steady_timer gate(io, steady_clock::time_point::max());
        int arrived = 0;
        int finished = 0;
        const auto arrive = [&](bool& counted) {
            if (std::exchange(counted, true)) return;
            if (++arrived == scale_connections) {
                live_at_peak = live_count("tcp connection") - connections_before;
                gate.cancel();
            }
        };
        auto client = [&](int i) -> task<void> {
            bool counted = false;
            const auto k = static_cast<std::size_t>(i % scale_listeners);
            char outcome = 'G';
            try {
                co_await ctxmgr::async_with(
                    tcp::async_connect(io, "127.0.0." + std::to_string(k + 1), ports[k],
                                       {.timeout = scale_limit}),
                    [&](tcp::async_connection& c) -> task<void> {
                        std::string message(8, '.');
                        const auto id = static_cast<std::uint32_t>(i);
                        std::memcpy(message.data(), &id, sizeof id);
                        co_await c.async_send_all(message, scale_limit);
                        const auto echo = co_await c.async_receive_exactly(8, scale_limit);
                        if (echo != message) throw std::runtime_error("wrong echo");
                        arrive(counted);
                        // The last to arrive opened the gate: a wait begun now would never end.
                        if (arrived < scale_connections) {
                            static_cast<void>(co_await gate.async_wait(as_tuple));
                        }
                        if (i % 10 == 0) throw test_error("the body failed");
                    });
            } catch (const test_error&) {
                outcome = 'T';
            } catch (...) {
                outcome = 'X';
                if (first_failure.empty()) {
                    first_failure = std::to_string(i) + ": " + what_of(std::current_exception());
                }
            }
            client_outcome[static_cast<std::size_t>(i)] = outcome;
            arrive(counted);
            ++finished;
        };
        for (int i = 0; i < scale_connections; ++i) asio::co_spawn(io, client(i), asio::detached);
        io.run_for(scale_limit);
        EXPECT_EQ(finished, scale_connections) << "clients still running after the time limit";
        EXPECT_EQ(live_count("tcp connection"), connections_before);
        EXPECT_EQ(
            ctxmgr::testing::describe_new_descriptors(before, ctxmgr::testing::open_descriptors()),
            "");
    }
    const auto elapsed = steady_clock::now() - start;
    const std::string report = read_all(pipe_fds[0]);
    ::close(pipe_fds[0]);
    int status = 0;
    ::waitpid(child, &status, 0);
    ::setrlimit(RLIMIT_NOFILE, &saved);

    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "server status " << status;
    EXPECT_EQ(live_at_peak, static_cast<std::size_t>(scale_connections))
        << "connections open at once";
    EXPECT_EQ(first_failure, "");
    const auto newline = report.find('\n');
    ASSERT_NE(newline, std::string::npos) << "the server's report is incomplete";
    const std::string_view seen = std::string_view(report).substr(0, newline);
    EXPECT_EQ(report.substr(newline + 1), "live 0, descriptors 0");
    int wrong = 0;
    std::string examples;
    for (int i = 0; i < scale_connections; ++i) {
        const bool throws = i % 10 == 0;
        const char client_expected = throws ? 'T' : 'G';
        const char server_expected = throws ? 'R' : 'E';
        const char client_saw = client_outcome[static_cast<std::size_t>(i)];
        const char server_saw = server_outcome(seen, i);
        if (client_saw == client_expected && server_saw == server_expected) continue;
        if (++wrong <= 5) {
            examples += ' ' + std::to_string(i) + ':' + client_saw + server_saw;
        }
    }
    EXPECT_EQ(wrong, 0) << "connections ended wrongly (client, server):" << examples;
    EXPECT_LT(elapsed, scale_limit);
    std::printf("%d connections (%d listeners) in %.2f s\n", scale_connections, scale_listeners,
                std::chrono::duration<double>(elapsed).count());
}

}  // namespace
