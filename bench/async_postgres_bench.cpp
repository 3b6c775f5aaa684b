// PostgreSQL from coroutines under load: 1,000 `SELECT 1` per run, paired, in rotating order
// (bench/paired.hpp), over 8 sessions each way:
//   async_pool     1,000 coroutines on one thread, each borrowing from a pool of 8
//                  postgres::async_connection (pool.async_connection())
//   async_direct   1,000 coroutines on one thread over 8 async connections, coroutine i on
//                  connection i % 8, taken under an async_mutex (no pool)
//   threaded_pool  8 threads, 125 statements each, through the synchronous pool of 8
//                  postgres::connection
//   libpq          the same 1,000 statements driven by hand over 8 non-blocking libpq
//                  connections and poll(2), the statement prepared once per session: the floor
//   asio_libpq     the same by hand on Asio: 8 coroutines, one per connection, each sending
//                  its next statement and awaiting the socket (Asio's reactor) for the answer:
//                  the floor of any library built on Asio's coroutines, without a frame,
//                  spawn or queue turn per statement
// The counters are each variant's median throughput (statements per second), its context
// switches per statement, and the ratios of async_pool to the others.
//   build/default/bench/async_postgres_bench --benchmark_min_time=0.1 (see docs/performance.md)
#include <libpq-fe.h>
#include <poll.h>
#include <ctxmgr/async_mutex.hpp>
#include <ctxmgr/async_pool.hpp>
#include <ctxmgr/async_postgres.hpp>
#include <ctxmgr/async_with.hpp>
#include <ctxmgr/pool.hpp>
#include <ctxmgr/postgres.hpp>
#include <ctxmgr/with.hpp>

#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <asio/co_spawn.hpp>
#include <asio/io_context.hpp>
#include <asio/posix/stream_descriptor.hpp>
#include <asio/use_awaitable.hpp>

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "paired.hpp"
#include "postgres_server.hpp"

namespace {

namespace postgres = ctxmgr::postgres;

constexpr std::size_t sessions = 8;
constexpr std::int64_t statements = 1000;
constexpr const char* statement = "SELECT 1";

void rethrow(const std::exception_ptr& e) {
    if (e) std::rethrow_exception(e);
}

void expect_sum(std::int64_t sum, const char* who) {
    if (sum != statements) throw std::logic_error(std::string(who) + ": wrong sum");
}

// Every pool connection made before measuring.
template <class Pool>
void fill(Pool& pool) {
    while (pool.stats().idle < sessions) std::this_thread::sleep_for(std::chrono::milliseconds(1));
}

// ---- async_pool ----------------------------------------------------------------------------

asio::awaitable<void> borrow_and_select(ctxmgr::pool<postgres::async_connection>& pool,
                                        std::int64_t& sum) {
    co_await ctxmgr::async_with(pool.async_connection(),
                                [&](postgres::async_connection& c) -> asio::awaitable<void> {
                                    sum += co_await c.async_query_value<std::int64_t>(statement);
                                });
}

// ---- async_direct ----------------------------------------------------------------------------

asio::awaitable<void> lock_and_select(postgres::async_connection& c, ctxmgr::async_mutex& m,
                                      std::int64_t& sum) {
    co_await ctxmgr::async_with(m.lock(), [&]() -> asio::awaitable<void> {
        sum += co_await c.async_query_value<std::int64_t>(statement);
    });
}

// ---- libpq: the same batch against libpq's non-blocking calls and poll(2) ------------------

// 8 libpq sessions, non-blocking, each with the statement prepared as "s", as ctxmgr's
// connections prepare theirs.
class prepared_sessions {
  public:
    explicit prepared_sessions(const std::string& conninfo) {
        for (auto& c : conns_) {
            c = PQconnectdb(conninfo.c_str());
            PGresult* prepared =
                PQstatus(c) == CONNECTION_OK ? PQprepare(c, "s", statement, 0, nullptr) : nullptr;
            const bool ok =
                PQresultStatus(prepared) == PGRES_COMMAND_OK && PQsetnonblocking(c, 1) == 0;
            PQclear(prepared);
            if (!ok) {
                const std::string why = PQerrorMessage(c);
                finish();
                throw std::runtime_error("libpq session: " + why);
            }
        }
    }
    prepared_sessions(const prepared_sessions&) = delete;
    prepared_sessions& operator=(const prepared_sessions&) = delete;
    ~prepared_sessions() { finish(); }

    PGconn* operator[](std::size_t i) const noexcept { return conns_[i]; }

  private:
    void finish() noexcept {
        for (auto*& c : conns_) {
            if (c != nullptr) PQfinish(c);
            c = nullptr;
        }
    }

    std::array<PGconn*, sessions> conns_{};
};

class libpq_batch {
  public:
    explicit libpq_batch(const std::string& conninfo) : conns_(conninfo) {}

    std::int64_t run() {
        std::int64_t sum = 0;
        std::int64_t to_send = statements;
        std::int64_t done = 0;
        std::array<bool, sessions> busy{};
        for (std::size_t i = 0; i < sessions && to_send > 0; ++i, --to_send) {
            send(conns_[i]);
            busy[i] = true;
        }
        while (done < statements) {
            std::array<pollfd, sessions> fds{};
            std::array<std::size_t, sessions> which{};
            std::size_t n = 0;
            for (std::size_t i = 0; i < sessions; ++i) {
                if (!busy[i]) continue;
                fds[n] = pollfd{PQsocket(conns_[i]), POLLIN, 0};
                which[n++] = i;
            }
            ::poll(fds.data(), static_cast<nfds_t>(n), -1);
            for (std::size_t k = 0; k < n; ++k) {
                if (fds[k].revents == 0) continue;
                PGconn* c = conns_[which[k]];
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
        return sum;
    }

  private:
    static void send(PGconn* c) {
        if (PQsendQueryPrepared(c, "s", 0, nullptr, nullptr, nullptr, 0) == 0) {
            throw std::runtime_error(PQerrorMessage(c));
        }
        while (PQflush(c) == 1) {
            pollfd out{PQsocket(c), POLLOUT, 0};
            ::poll(&out, 1, -1);
        }
    }
    prepared_sessions conns_;
};

// ---- asio_libpq: the same batch by hand on Asio's reactor --------------------------------

class asio_batch {
  public:
    asio_batch(asio::io_context& io, const std::string& conninfo) : io_(io), conns_(conninfo) {
        for (std::size_t i = 0; i < sessions; ++i) {
            const int own = ::fcntl(PQsocket(conns_[i]), F_DUPFD_CLOEXEC, 0);
            if (own < 0) throw std::runtime_error("dup libpq's socket");
            sockets_.emplace_back(io, own);
        }
    }

    std::int64_t run() {
        std::int64_t sum = 0;
        std::int64_t to_send = statements;
        for (std::size_t i = 0; i < sessions; ++i) {
            asio::co_spawn(io_, worker(i, to_send, sum), rethrow);
        }
        io_.run();
        io_.restart();
        return sum;
    }

  private:
    asio::awaitable<void> worker(std::size_t i, std::int64_t& to_send, std::int64_t& sum) {
        PGconn* c = conns_[i];
        while (to_send > 0) {
            --to_send;
            if (PQsendQueryPrepared(c, "s", 0, nullptr, nullptr, nullptr, 0) == 0 ||
                PQflush(c) != 0) {
                throw std::runtime_error(PQerrorMessage(c));
            }
            for (bool answered = false; !answered;) {
                // Asio's registration is edge-triggered: bytes that came before the wait
                // would not be reported.
                pollfd in{PQsocket(c), POLLIN, 0};
                if (::poll(&in, 1, 0) == 0) {
                    co_await sockets_[i].async_wait(asio::posix::descriptor_base::wait_read,
                                                    asio::use_awaitable);
                }
                PQconsumeInput(c);
                while (PQisBusy(c) == 0) {
                    PGresult* r = PQgetResult(c);
                    if (r == nullptr) {
                        answered = true;
                        break;
                    }
                    sum += std::atoll(PQgetvalue(r, 0, 0));
                    PQclear(r);
                }
            }
        }
    }
    asio::io_context& io_;
    prepared_sessions conns_;
    std::vector<asio::posix::stream_descriptor> sockets_;
};

void select_1000_paired(benchmark::State& state) {
    if (bench::skip_without_postgres(state)) return;
    const std::string conninfo = bench::postgres_server().conninfo;
    asio::io_context io;

    ctxmgr::pool<postgres::async_connection> async_pool(
        [ex = io.get_executor(), conninfo] {
            return postgres::async_connection::open(ex, conninfo);
        },
        {.name = "async", .max_size = sessions, .min_idle = sessions});
    ctxmgr::pool<postgres::connection> threaded_pool(
        [conninfo] { return postgres::connect(conninfo); },
        {.name = "threaded", .max_size = sessions, .min_idle = sessions});
    fill(async_pool);
    fill(threaded_pool);
    std::vector<postgres::async_connection> direct;
    for (std::size_t i = 0; i < sessions; ++i) {
        direct.push_back(postgres::async_connection::open(io.get_executor(), conninfo));
    }
    std::array<ctxmgr::async_mutex, sessions> locks;
    libpq_batch floor(conninfo);
    asio_batch asio_floor(io, conninfo);

    const auto on_io = [&](auto spawn_all) {
        return bench::timed(static_cast<double>(statements), [&] {
            spawn_all();
            io.run();
            io.restart();
        });
    };
    const std::vector<bench::variant> variants = {
        {"async_pool",
         [&] {
             std::int64_t sum = 0;
             const auto r = on_io([&] {
                 for (std::int64_t i = 0; i < statements; ++i) {
                     asio::co_spawn(io, borrow_and_select(async_pool, sum), rethrow);
                 }
             });
             expect_sum(sum, "async_pool");
             return r;
         }},
        {"async_direct",
         [&] {
             std::int64_t sum = 0;
             const auto r = on_io([&] {
                 for (std::int64_t i = 0; i < statements; ++i) {
                     const auto k = static_cast<std::size_t>(i) % sessions;
                     asio::co_spawn(io, lock_and_select(direct[k], locks[k], sum), rethrow);
                 }
             });
             expect_sum(sum, "async_direct");
             return r;
         }},
        {"threaded_pool",
         [&] {
             std::array<std::int64_t, sessions> sums{};
             const auto r = bench::run_threads(
                 static_cast<int>(sessions), static_cast<int>(statements / sessions),
                 [&](std::size_t t) {
                     ctxmgr::with(threaded_pool.connection(), [&](postgres::connection& c) {
                         sums[t] += c.query_value<std::int64_t>(statement);
                     });
                 });
             std::int64_t sum = 0;
             for (const auto s : sums) sum += s;
             expect_sum(sum, "threaded_pool");
             return r;
         }},
        {"libpq",
         [&] {
             std::int64_t sum = 0;
             const auto r =
                 bench::timed(static_cast<double>(statements), [&] { sum = floor.run(); });
             expect_sum(sum, "libpq");
             return r;
         }},
        {"asio_libpq",
         [&] {
             std::int64_t sum = 0;
             const auto r =
                 bench::timed(static_cast<double>(statements), [&] { sum = asio_floor.run(); });
             expect_sum(sum, "asio_libpq");
             return r;
         }},
    };
    const std::vector<double> rate = bench::run_paired(state, variants, "per_s");
    state.counters["async_pool/libpq"] = rate[0] / rate[3];
    state.counters["async_pool/threaded_pool"] = rate[0] / rate[2];
    state.counters["async_direct/libpq"] = rate[1] / rate[3];
    state.counters["asio_libpq/libpq"] = rate[4] / rate[3];
    state.counters["async_pool/asio_libpq"] = rate[0] / rate[4];
    state.counters["async_direct/asio_libpq"] = rate[1] / rate[4];
    state.counters["asio_libpq/threaded_pool"] = rate[4] / rate[2];
    state.SetItemsProcessed(state.iterations() * statements *
                            static_cast<std::int64_t>(variants.size()));
}
BENCHMARK(select_1000_paired)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(30);

}  // namespace

BENCHMARK_MAIN();
