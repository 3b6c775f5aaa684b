// Tour chapter 95: the same TCP guarantees for coroutines (async_net.hpp). An echo server and
// three clients on one thread and one io_context: two clients finish their exchange (graceful
// close), the third gives up mid-exchange when a timer wins an `||` race, and the cancellation
// resets its connection on both sides. Every connection is released either way: the leak
// tracker counts none afterwards.
#include <ctxmgr/async.hpp>
#include <ctxmgr/tracking.hpp>

#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/io_context.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <string>
#include <vector>

#include "tour.hpp"

namespace {

using namespace std::chrono_literals;
using namespace asio::experimental::awaitable_operators;
using tour::say;
namespace tcp = ctxmgr::tcp;
template <class T>
using task = asio::awaitable<T>;

std::size_t live_connections() {
    std::size_t n = 0;
    for (const auto& r : ctxmgr::live_resources())
        if (r.kind == "tcp connection") ++n;
    return n;
}

task<void> pause(std::chrono::milliseconds delay) {
    asio::steady_timer timer(co_await asio::this_coro::executor, delay);
    co_await timer.async_wait(asio::use_awaitable);
}

// Echoes lines until the client closes; a line "slow ..." is answered after half a second.
task<void> serve(tcp::async_connection accepted) {
    const std::string peer = accepted.remote_endpoint().to_string();
    try {
        co_await ctxmgr::async_with(std::move(accepted),
                                    [](tcp::async_connection& c) -> task<void> {
                                        for (;;) {
                                            std::string line;
                                            try {
                                                line = co_await c.async_read_until("\n", 1024, 2s);
                                            } catch (const ctxmgr::network_error& e) {
                                                if (e.code() == tcp::errc::end_of_stream)
                                                    co_return;  // the client is done
                                                throw;
                                            }
                                            if (line.starts_with("slow")) co_await pause(500ms);
                                            co_await c.async_send_all("echo: " + line, 2s);
                                        }
                                    });
        say("  server: " + peer + " finished, closed gracefully");
    } catch (const ctxmgr::network_error& e) {
        say("  server: " + peer + " ended with a reset: " + std::string(e.what()));
    }
}

task<void> accept_three(tcp::async_listener& server) {
    for (int i = 0; i < 3; ++i) {
        asio::co_spawn(server.get_executor(), serve(co_await server.async_accept(2s)),
                       asio::detached);
    }
}

// One client: sends `lines` one at a time and prints each echo.
// tour: client
task<void> client(std::uint16_t port, std::string name, std::vector<std::string> lines) {
    auto executor = co_await asio::this_coro::executor;
    co_await ctxmgr::async_with(tcp::async_connect(executor, "127.0.0.1", port, {.timeout = 2s}),
                                [&](tcp::async_connection& c) -> task<void> {
                                    for (const auto& line : lines) {
                                        co_await c.async_send_all(line + "\n");
                                        auto reply = co_await c.async_read_until("\n", 1024, 2s);
                                        reply.pop_back();
                                        say("  " + name + " got \"" + reply + '"');
                                    }
                                });
}

// tour: end

void async_network_chapter() {
    tour::show_code("client");
    asio::io_context io;
    auto server = tcp::async_listen(io, "127.0.0.1", 0);
    say("echo server listening on " + server.local_endpoint().to_string() +
        "; three clients, one thread");
    const auto port = server.local_port();
    asio::co_spawn(io, accept_three(server), asio::detached);
    asio::co_spawn(io, client(port, "client 1", {"hello", "world"}), asio::detached);
    asio::co_spawn(io, client(port, "client 2", {"ping"}), asio::detached);
    // Client 3 waits at most 100 ms for its answer: the timer wins the race, the exchange is
    // cancelled at its co_await, and async_with still exits, with a reset.
    say("client 3 races its exchange against a 100 ms timer:");
    tour::show_code("race");
    asio::co_spawn(
        io,
        [&]() -> task<void> {
            asio::steady_timer deadline(io, 100ms);
            auto exchange = client(port, "client 3", {"slow question"});
            try {
                // tour: race
                const auto winner =
                    co_await (std::move(exchange) || deadline.async_wait(asio::use_awaitable));
                // tour: end
                if (winner.index() == 1) say("  client 3 gave up after 100 ms: cancelled");
            } catch (const std::exception& e) {
                say("  client 3: " + std::string(e.what()));
            }
        },
        asio::detached);
    io.run_for(5s);
    server.close();
    if (ctxmgr::tracking_enabled) {
        say("tcp connections still open on either side: " + std::to_string(live_connections()));
    }
}

const bool registered = tour::add_chapter(
    95, "Async network: the same guarantees for coroutines, cancellation included",
    &async_network_chapter);

}  // namespace
