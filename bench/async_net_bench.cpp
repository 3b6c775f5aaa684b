// An echo server of 1,000 loopback connections on one thread, written with ctxmgr
// (async_listen, async_accept, one async_with per connection, async_receive_some /
// async_send_all, graceful close on exit) and the same server written with raw Asio (the same
// calls, the same shutdown-drain-close at the end). One client thread, raw Asio, drives both:
// it opens the 1,000 connections, then each sends `round_trips` messages of 64 bytes and reads
// each echo back; the time is from the first message to the last echo. Paired: every
// iteration runs both servers once, in an order that rotates, so both see the same moments of
// this shared machine; the counters are each server's median throughput (echoes per second)
// and their ratio. Wall time (the client waits for the server thread and the kernel).
#include <benchmark/benchmark.h>
#include <ctxmgr/async_net.hpp>
#include <ctxmgr/async_with.hpp>

#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/read.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <future>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "paired.hpp"

namespace {

template <class T>
using task = asio::awaitable<T>;
constexpr auto as_tuple = asio::experimental::as_tuple(asio::use_awaitable);

constexpr int connections = 1000;
constexpr int round_trips = 50;
constexpr std::size_t message_size = 64;
constexpr std::size_t buffer_size = 4096;

// ---- the two servers --------------------------------------------------------------------

task<void> serve_ctxmgr(ctxmgr::tcp::async_connection accepted) {
    co_await ctxmgr::async_with(
        std::move(accepted), [](ctxmgr::tcp::async_connection& c) -> task<void> {
            std::array<std::byte, buffer_size> buffer{};
            for (;;) {
                const std::size_t n = co_await c.async_receive_some(buffer);
                if (n == 0) co_return;
                co_await c.async_send_all(std::span<const std::byte>(buffer.data(), n));
            }
        });
}

task<void> accept_ctxmgr(ctxmgr::tcp::async_listener& listener) {
    for (int i = 0; i < connections; ++i) {
        asio::co_spawn(listener.get_executor(), serve_ctxmgr(co_await listener.async_accept()),
                       asio::detached);
    }
}

task<void> serve_raw(asio::ip::tcp::socket socket) {
    std::array<char, buffer_size> buffer{};
    for (;;) {
        auto [error, n] = co_await socket.async_read_some(asio::buffer(buffer), as_tuple);
        if (error) break;
        auto [write_error, written] =
            co_await asio::async_write(socket, asio::buffer(buffer.data(), n), as_tuple);
        if (write_error) break;
    }
    // What ctxmgr's exit does on the normal path: shut down, drain to end of stream, close.
    std::error_code ignored;
    socket.shutdown(asio::socket_base::shutdown_send, ignored);
    for (;;) {
        auto [error, n] = co_await socket.async_read_some(asio::buffer(buffer), as_tuple);
        if (error) break;
    }
    socket.close(ignored);
}

task<void> accept_raw(asio::ip::tcp::acceptor& acceptor) {
    for (int i = 0; i < connections; ++i) {
        asio::co_spawn(acceptor.get_executor(),
                       serve_raw(co_await acceptor.async_accept(asio::use_awaitable)),
                       asio::detached);
    }
}

// ---- the client -------------------------------------------------------------------------

// Opens `connections` connections to `port`, then times the exchanges: each connection sends
// round_trips messages, one at a time, reading each echo back. Returns the seconds taken.
double drive(std::uint16_t port) {
    asio::io_context io;
    const asio::ip::tcp::endpoint server(asio::ip::make_address("127.0.0.1"), port);
    std::vector<asio::ip::tcp::socket> sockets;
    sockets.reserve(connections);
    for (int i = 0; i < connections; ++i) {
        sockets.emplace_back(io);
        sockets.back().connect(server);
        sockets.back().set_option(asio::ip::tcp::no_delay(true));
    }
    int done = 0;
    std::chrono::steady_clock::time_point end;
    auto exchange = [&](asio::ip::tcp::socket& socket) -> task<void> {
        const std::string message(message_size, 'm');
        std::array<char, message_size> echo{};
        for (int k = 0; k < round_trips; ++k) {
            co_await asio::async_write(socket, asio::buffer(message), asio::use_awaitable);
            co_await asio::async_read(socket, asio::buffer(echo), asio::use_awaitable);
        }
        if (++done == connections) end = std::chrono::steady_clock::now();
        socket.shutdown(asio::socket_base::shutdown_send);
        std::array<char, 64> rest{};
        for (;;) {
            auto [error, n] = co_await socket.async_read_some(asio::buffer(rest), as_tuple);
            if (error) break;
        }
        socket.close();
    };
    const auto start = std::chrono::steady_clock::now();
    for (auto& socket : sockets) asio::co_spawn(io, exchange(socket), asio::detached);
    io.run();
    return std::chrono::duration<double>(end - start).count();
}

// Runs one server variant on `io` in a thread of its own and drives it; returns echoes per
// second. listen(port) opens the listener, says its port and spawns the accept loop.
template <class Listen>
double measure(asio::io_context& io, Listen listen) {
    std::promise<std::uint16_t> port;
    auto ready = port.get_future();
    std::thread server([&] {
        listen(port);
        io.run();
    });
    const double seconds = drive(ready.get());
    server.join();
    return connections * round_trips / seconds;
}

using bench::median;

void echo_1000_connections_paired(benchmark::State& state) {
    // Each io_context is declared before its listener: Asio objects must go first.
    const std::array<std::function<double()>, 2> variants = {
        [] {
            asio::io_context io;
            std::optional<ctxmgr::tcp::async_listener> listener;
            return measure(io, [&](std::promise<std::uint16_t>& port) {
                listener.emplace(ctxmgr::tcp::async_listen(io, "127.0.0.1", 0, 4096));
                port.set_value(listener->local_port());
                asio::co_spawn(io, accept_ctxmgr(*listener), asio::detached);
            });
        },
        [] {
            asio::io_context io;
            std::optional<asio::ip::tcp::acceptor> acceptor;
            return measure(io, [&](std::promise<std::uint16_t>& port) {
                acceptor.emplace(io,
                                 asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
                acceptor->listen(4096);
                port.set_value(acceptor->local_endpoint().port());
                asio::co_spawn(io, accept_raw(*acceptor), asio::detached);
            });
        },
    };
    std::array<std::vector<double>, 2> rates;
    std::size_t turn = 0;
    for (auto _ : state) {
        for (std::size_t k = 0; k < variants.size(); ++k) {
            const std::size_t which = (turn + k) % variants.size();
            rates[which].push_back(variants[which]());
        }
        ++turn;
    }
    const double ctxmgr_rate = median(rates[0]);
    const double raw_rate = median(rates[1]);
    state.counters["ctxmgr_echo_per_s"] = ctxmgr_rate;
    state.counters["raw_echo_per_s"] = raw_rate;
    state.counters["ctxmgr/raw"] = ctxmgr_rate / raw_rate;
}
BENCHMARK(echo_1000_connections_paired)
    ->Iterations(15)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
