// Tour chapter 90: TCP connections that always close. A client and a server in one program on
// loopback: a request that completes (graceful close: the client reads every byte, then end of
// stream), and a request that fails half-way with an exception (abortive close: the server
// sees a reset, not a truncated request it might mistake for a whole one). Both sides are
// closed either way: the leak tracker lists nothing afterwards.
#include <ctxmgr/ctxmgr.hpp>

#include <array>
#include <chrono>
#include <cstddef>
#include <exception>
#include <stdexcept>
#include <string>
#include <thread>

#include "tour.hpp"

namespace {

using namespace std::chrono_literals;
using tour::say;
namespace tcp = ctxmgr::tcp;

// The server's side of one connection: answers one request, "OK <request>". A failure (the
// client vanished) ends the connection abortively too; what happened is returned as text.
std::string serve_one(tcp::listener& server) {
    try {
        return ctxmgr::with(server.accept(5s), [](tcp::connection& c) {
            auto request = c.read_until("\n", 1024, 5s);
            c.send_all("OK " + request, 5s);
            request.pop_back();
            return "answered \"" + request + "\" and closed gracefully";
        });
    } catch (const ctxmgr::network_error& e) {
        return std::string("gave up: ") + e.what();
    }
}

std::size_t live_connections() {
    std::size_t n = 0;
    for (const auto& r : ctxmgr::live_resources())
        if (r.kind == "tcp connection") ++n;
    return n;
}

void network_chapter() {
    auto server = tcp::listen("127.0.0.1", 0);  // port 0: the OS picks a free one
    say("listening on " + server.local_endpoint().to_string());
    std::string server_saw;
    std::thread server_thread([&] { server_saw = serve_one(server); });

    say("");
    say("a request that completes: exit closes gracefully (shut down writing, drain, close):");
    ctxmgr::with(tcp::connect("127.0.0.1", server.local_port(), {.timeout = 2s}),
                 [](tcp::connection& c) {
                     say("  client " + c.local_endpoint().to_string() + " -> " +
                         c.remote_endpoint().to_string());
                     c.send_all("GET /orders\n");
                     auto reply = c.read_until("\n", 1024, 2s);
                     reply.pop_back();  // the delimiter is part of what read_until returns
                     say("  client got: \"" + reply + '"');
                     std::array<std::byte, 16> more{};
                     say("  then end of stream: receive_some returned " +
                         std::to_string(c.receive_some(more, 2s)));
                 });
    server_thread.join();
    say("  server: " + server_saw);

    say("");
    say("a request that fails half-way: exit with an exception resets the connection:");
    server_thread = std::thread([&] { server_saw = serve_one(server); });
    tour::show_code("reset");
    try {
        // tour: reset
        ctxmgr::with(tcp::connect("127.0.0.1", server.local_port(), {.timeout = 2s}),
                     [](tcp::connection& c) {
                         c.send_all("POST /orders {\"qty\": ");  // half a request, no newline
                         throw std::runtime_error("the order form failed to validate");
                     });
        // tour: end
    } catch (const std::runtime_error& e) {
        say("  client: " + std::string(e.what()) + " (the body's own exception propagates)");
    }
    server_thread.join();
    say("  server: " + server_saw);
    server.close();

    say("");
    if (ctxmgr::tracking_enabled) {
        say("tcp connections still open on either side: " + std::to_string(live_connections()));
    }
}

const bool registered =
    tour::add_chapter(90, "Network: TCP connections that always close", &network_chapter);

}  // namespace
