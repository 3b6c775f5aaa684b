// Uses ctxmgr::postgres through the installed (or added) package, with no server: a refused
// connection on loopback must throw db::connection_error, typed across the library boundary,
// naming the server and not the password. Fails (exit 1) otherwise.
#include <ctxmgr/errors.hpp>
#include <ctxmgr/postgres.hpp>

#include <chrono>
#include <cstdio>
#include <string>

int main() {
    using namespace std::chrono_literals;
    try {
        auto connection = ctxmgr::postgres::connect(
            "host=127.0.0.1 port=1 user=consumer password=not-for-logs dbname=consumer",
            {.connect_timeout = 2s});
        std::printf("consumer_postgres: connected to port 1\n");
        return 1;
    } catch (const ctxmgr::db::connection_error& e) {
        const std::string message = e.what();
        if (message.find("127.0.0.1") == std::string::npos ||
            message.find("not-for-logs") != std::string::npos) {
            std::printf("consumer_postgres: wrong message: %s\n", message.c_str());
            return 1;
        }
    }
    std::printf("consumer_postgres: ok\n");
    return 0;
}
