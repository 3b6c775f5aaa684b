// Tour chapter 110: beyond one machine. A pool lends connections and takes them back clean;
// a borrower that waits too long is told who holds the connections; a borrow held too long
// is reported with its line. With PostgreSQL (CTXMGR_POSTGRES), a lock that processes on
// many machines share, with fencing tokens that let the protected resource refuse a stale
// holder. On SQLite (a file in the scratch directory) by default.
#include <ctxmgr/ctxmgr.hpp>
#include <ctxmgr/pool.hpp>
#include <ctxmgr/sqlite.hpp>
#if CTXMGR_TOUR_POSTGRES
#include <ctxmgr/distributed_lock.hpp>
#include <ctxmgr/postgres.hpp>
#endif

#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <source_location>
#include <stdexcept>
#include <string>
#include <thread>

#include "tour.hpp"

namespace {

using namespace std::chrono_literals;
using tour::say;
namespace db = ctxmgr::db;

std::string stats_line(const ctxmgr::pool_stats& s) {
    return "size " + std::to_string(s.size) + ", idle " + std::to_string(s.idle) + ", in use " +
           std::to_string(s.in_use) + ", created " + std::to_string(s.created) + ", destroyed " +
           std::to_string(s.destroyed) + ", timeouts " + std::to_string(s.timeouts);
}

template <db::connection Connection, class Factory>
void pool_walk_through(Factory factory, const std::string& table) {
    // Reports of borrows held too long arrive on the pool's thread: printed as they come.
    std::mutex print;
    ctxmgr::pool<Connection> pool(std::move(factory),
                                  {.name = "tour",
                                   .max_size = 2,
                                   .acquire_timeout = 2s,
                                   .leak_threshold = 300ms,
                                   .on_leak = [&](const ctxmgr::resource_info& r) {
                                       std::lock_guard lock(print);
                                       say("  on_leak: " + ctxmgr::describe(r));
                                   }});
    ctxmgr::with(pool.connection(), [&](Connection& c) {
        c.execute_script("DROP TABLE IF EXISTS " + table);
        c.execute("CREATE TABLE " + table + " (id BIGINT PRIMARY KEY, note TEXT)");
    });
    ctxmgr::finally drop_table([&] {
        ctxmgr::with(pool.connection(),
                     [&](Connection& c) { c.execute_script("DROP TABLE IF EXISTS " + table); });
    });

    say("with(pool.connection(), ...) borrows a connection and gives it back; the next borrow");
    say("gets the same one, so only one connection was ever made:");
    tour::show_code("borrow");
    // tour: borrow
    const Connection* first = nullptr;
    ctxmgr::with(pool.connection(), [&](Connection& c) { first = &c; });
    ctxmgr::with(pool.connection(), [&](Connection& c) {
        say(std::string("  same connection: ") + (&c == first ? "yes" : "no"));
    });
    // tour: end
    say("  " + stats_line(pool.stats()));

    say("");
    say("a borrower that forgets to commit: its transaction is rolled back when the");
    say("connection comes back (the back end's transaction state says it is open):");
    ctxmgr::with(pool.connection(), [&](Connection& c) {
        c.execute_script("BEGIN");
        c.execute("INSERT INTO " + table + " (id, note) VALUES ($1, $2)", 1, "never committed");
    });
    ctxmgr::with(pool.connection(), [&](Connection& c) {
        say("  rows now: " +
            std::to_string(c.template query_value<std::int64_t>("SELECT count(*) FROM " + table)));
    });

    say("");
    say("a block that throws: the exception goes on, the connection goes back:");
    try {
        ctxmgr::with(pool.connection(), [&](Connection& c) {
            ctxmgr::with(c.transaction(), [&](Connection& tx) {
                tx.execute("INSERT INTO " + table + " (id, note) VALUES ($1, $2)", 2,
                           "rolled back");
                throw std::runtime_error("the request failed");
            });
        });
    } catch (const std::runtime_error& e) {
        say(std::string("  caught: ") + e.what());
    }
    say("  " + stats_line(pool.stats()));

    say("");
    say("two borrowers hold both connections; a third waits 200 ms, then learns who holds them:");
    {
        auto a = pool.connection();
        auto b = pool.connection();
        static_cast<void>(a.enter());
        static_cast<void>(b.enter());
        try {
            ctxmgr::with(pool.connection(200ms), [](Connection&) {});
        } catch (const ctxmgr::timeout_error&) {
            tour::say_exception(std::current_exception());
        }
    }  // both given back here

    say("");
    say("a borrow held longer than leak_threshold (300 ms) is reported once, with its line:");
    ctxmgr::with(pool.connection(), [&](Connection&) { std::this_thread::sleep_for(500ms); });

    say("");
    say("closing waits for borrowed connections and closes every one:");
    drop_table.release();
    ctxmgr::with(pool.connection(),
                 [&](Connection& c) { c.execute_script("DROP TABLE IF EXISTS " + table); });
    pool.close();
    say("  " + stats_line(pool.stats()));
}

#if CTXMGR_TOUR_POSTGRES
void lock_walk_through(const std::string& conninfo) {
    namespace postgres = ctxmgr::postgres;
    say("");
    say("a distributed lock: pg_advisory_lock on a session of its own, and a fencing token that");
    say("grows with every grant, kept in the server (table ctxmgr_fencing_tokens):");
    auto admin = postgres::connect(conninfo);
    const bool had_tokens =
        admin.query_value<bool>("SELECT to_regclass('ctxmgr_fencing_tokens') IS NOT NULL");
    const std::string resource = "tour_report_" + std::to_string(::getpid());
    const std::string name = "tour-nightly-report-" + std::to_string(::getpid());
    admin.execute_script("CREATE TABLE " + resource +
                         " (id int PRIMARY KEY, body text, fence bigint NOT NULL)");
    admin.execute("INSERT INTO " + resource + " VALUES (1, 'none yet', 0)");
    ctxmgr::finally clean_up([&] {
        admin.execute_script("DROP TABLE IF EXISTS " + resource);
        if (had_tokens) {
            admin.execute("DELETE FROM ctxmgr_fencing_tokens WHERE key = $1",
                          postgres::advisory_key(name));
        } else {
            admin.execute_script("DROP TABLE IF EXISTS ctxmgr_fencing_tokens");
        }
    });
    // The protected resource accepts a write only with a token as new as any it has seen.
    const std::string fenced_write =
        "UPDATE " + resource + " SET body = $1, fence = $2 WHERE id = 1 AND fence <= $2";

    ctxmgr::pool pool([&] { return postgres::connect(conninfo); }, {.name = "locks"});
    postgres::advisory_lock first(pool, name, {.timeout = 5s});
    auto& stale = first.enter();
    say("  holder 1 has \"" + name + "\" with token " + std::to_string(stale.fencing_token()));
    say("  holder 1 pauses; an administrator ends its session (pg_terminate_backend)");
    admin.execute("SELECT pg_terminate_backend($1, 5000)", stale.backend_pid());
    while (!stale.lost()) std::this_thread::sleep_for(5ms);
    say("  holder 1: lost() = true");
    ctxmgr::with(postgres::advisory_lock(pool, name, {.timeout = 5s}), [&](postgres::lease& held) {
        say("  holder 2 gets the lock with token " + std::to_string(held.fencing_token()) +
            " and writes: " +
            std::to_string(admin.execute(fenced_write, "from holder 2", held.fencing_token())) +
            " row");
    });
    say("  holder 1 wakes and writes with its old token: " +
        std::to_string(admin.execute(fenced_write, "from holder 1", stale.fencing_token())) +
        " rows (refused)");
    try {
        first.exit(nullptr);
    } catch (const db::connection_error& e) {
        say(std::string("  holder 1's exit: ") + e.what());
    }
}
#endif

void pool_chapter() {
#if CTXMGR_TOUR_POSTGRES
    if (const std::string connection_string = tour::postgres_from_environment();
        !connection_string.empty()) {
        pool_walk_through<ctxmgr::postgres::connection>(
            [connection_string] { return ctxmgr::postgres::connect(connection_string); },
            "tour_pool_" + std::to_string(::getpid()));
        lock_walk_through(connection_string);
        return;
    }
#endif
    const std::string path = (tour::scratch() / "pool.db").string();
    say("on SQLite, in " + path + " (set CTXMGR_POSTGRES to run this, and the distributed");
    say("lock, on PostgreSQL):");
    say("");
    pool_walk_through<ctxmgr::sqlite::connection>([path] { return ctxmgr::sqlite::connect(path); },
                                                  "requests");
}

const bool registered = tour::add_chapter(
    110, "Pool and distributed locks: connections reused, locks shared between machines",
    &pool_chapter);

}  // namespace
