// postgres::async_connection under load: 1,000 coroutines on one thread run SELECT 1 over 8
// connections (coroutine i on connection i % 8, taken under an async_mutex), against the same
// 1,000 statements driven by hand over 8 non-blocking libpq connections and poll(2). One
// iteration is the whole batch of 1,000.
//   build/default/bench/async_postgres_bench --benchmark_repetitions=5
#include <libpq-fe.h>
#include <poll.h>
#include <ctxmgr/async_mutex.hpp>
#include <ctxmgr/async_postgres.hpp>
#include <ctxmgr/async_with.hpp>

#include <benchmark/benchmark.h>
#include <asio/co_spawn.hpp>
#include <asio/io_context.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "postgres_server.hpp"

namespace {

namespace postgres = ctxmgr::postgres;

constexpr std::size_t connections = 8;
constexpr std::int64_t coroutines = 1000;
constexpr const char* statement = "SELECT 1";

void rethrow(const std::exception_ptr& e) {
    if (e) std::rethrow_exception(e);
}

asio::awaitable<void> one_statement(postgres::async_connection& c, ctxmgr::async_mutex& m,
                                    std::int64_t& sum) {
    co_await ctxmgr::async_with(m.lock(), [&]() -> asio::awaitable<void> {
        sum += co_await c.async_query_value<std::int64_t>(statement);
    });
}

asio::awaitable<void> open_all(std::vector<postgres::async_connector>& managers,
                               std::array<postgres::async_connection*, connections>& out) {
    for (std::size_t i = 0; i < connections; ++i)
        out[i] = &(co_await managers[i].async_enter()).get();
}

void async_connections(benchmark::State& state) {
    if (bench::skip_without_postgres(state)) return;
    asio::io_context io;
    std::vector<postgres::async_connector> managers;
    managers.reserve(connections);
    for (std::size_t i = 0; i < connections; ++i) {
        managers.push_back(
            postgres::async_connect(io.get_executor(), bench::postgres_server().conninfo));
    }
    std::array<postgres::async_connection*, connections> open{};
    asio::co_spawn(io, open_all(managers, open), rethrow);
    io.run();
    io.restart();
    std::array<ctxmgr::async_mutex, connections> locks;
    std::int64_t sum = 0;
    for (auto _ : state) {
        for (std::int64_t i = 0; i < coroutines; ++i) {
            const auto k = static_cast<std::size_t>(i) % connections;
            asio::co_spawn(io, one_statement(*open[k], locks[k], sum), rethrow);
        }
        io.run();
        io.restart();
    }
    if (sum != state.iterations() * coroutines) state.SkipWithError("wrong sum");
    for (auto& m : managers) m.exit(nullptr);
    state.SetItemsProcessed(state.iterations() * coroutines);
}
BENCHMARK(async_connections)->Unit(benchmark::kMillisecond)->UseRealTime();

// The baseline: the same batch written against libpq's non-blocking calls and poll(2).
void libpq_nonblocking(benchmark::State& state) {
    if (bench::skip_without_postgres(state)) return;
    std::array<PGconn*, connections> conns{};
    for (auto& c : conns) {
        c = PQconnectdb(bench::postgres_server().conninfo.c_str());
        if (PQstatus(c) != CONNECTION_OK || PQsetnonblocking(c, 1) != 0) {
            state.SkipWithError("connect failed");
            for (auto* d : conns) PQfinish(d);
            return;
        }
    }
    const auto send = [](PGconn* c) {
        if (PQsendQueryParams(c, statement, 0, nullptr, nullptr, nullptr, nullptr, 0) == 0) {
            throw std::runtime_error(PQerrorMessage(c));
        }
        while (PQflush(c) == 1) {
            pollfd out{PQsocket(c), POLLOUT, 0};
            ::poll(&out, 1, -1);
        }
    };
    std::int64_t sum = 0;
    for (auto _ : state) {
        std::int64_t to_send = coroutines;
        std::int64_t done = 0;
        std::array<bool, connections> busy{};
        for (std::size_t i = 0; i < connections && to_send > 0; ++i, --to_send) {
            send(conns[i]);
            busy[i] = true;
        }
        while (done < coroutines) {
            std::array<pollfd, connections> fds{};
            std::array<std::size_t, connections> which{};
            std::size_t n = 0;
            for (std::size_t i = 0; i < connections; ++i) {
                if (!busy[i]) continue;
                fds[n] = pollfd{PQsocket(conns[i]), POLLIN, 0};
                which[n++] = i;
            }
            ::poll(fds.data(), static_cast<nfds_t>(n), -1);
            for (std::size_t k = 0; k < n; ++k) {
                if (fds[k].revents == 0) continue;
                PGconn* c = conns[which[k]];
                PQconsumeInput(c);
                while (PQisBusy(c) == 0) {
                    PGresult* r = PQgetResult(c);
                    if (r == nullptr) {
                        ++done;
                        busy[which[k]] = false;
                        if (to_send > 0) {
                            --to_send;
                            send(c);
                            busy[which[k]] = true;
                        }
                        break;
                    }
                    sum += std::atoll(PQgetvalue(r, 0, 0));
                    PQclear(r);
                }
            }
        }
    }
    if (sum != state.iterations() * coroutines) state.SkipWithError("wrong sum");
    for (auto* c : conns) PQfinish(c);
    state.SetItemsProcessed(state.iterations() * coroutines);
}
BENCHMARK(libpq_nonblocking)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
