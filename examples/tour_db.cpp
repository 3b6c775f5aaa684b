// Tour chapter 100: databases. A connection that closes itself, transactions that commit or
// roll back, a savepoint, parameters that stay data, typed errors, and a forgotten
// connection found by the leak tracker. On embedded SQLite (a file in the scratch
// directory) by default; with CTXMGR_POSTGRES set to a connection string, the same chapter
// runs against PostgreSQL.
#include <ctxmgr/ctxmgr.hpp>
#include <ctxmgr/sqlite.hpp>
#if CTXMGR_TOUR_POSTGRES
#include <ctxmgr/postgres.hpp>
#endif

#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>

#include "tour.hpp"

namespace {

using tour::say;
namespace db = ctxmgr::db;

template <db::connection Connection>
void show_accounts(Connection& c, const std::string& table) {
    for (auto row : c.query("SELECT name, balance FROM " + table + " ORDER BY name")) {
        say("  " + row.template get<std::string>("name") + ": " +
            std::to_string(row.template get<std::int64_t>("balance")));
    }
}

// The same walk-through for any back end: `open` makes a new connection.
template <db::connection Connection, class Open>
void walk_through(Open open, const std::string& table) {
    say("Python's sqlite3 commits on `with conn:` but leaves the connection open; here the");
    say("connection is its own manager, and leaving the block closes it:");
    Connection* seen = nullptr;
    ctxmgr::with(open(), [&](Connection& c) {
        seen = &c;
        c.execute_script("DROP TABLE IF EXISTS " + table);
        c.execute("CREATE TABLE " + table +
                  " (name TEXT PRIMARY KEY, balance BIGINT NOT NULL CHECK (balance >= 0))");
        c.execute("INSERT INTO " + table + " (name, balance) VALUES ($1, $2), ($3, $4)", "alice",
                  100, "bob", 20);
        say("  open inside the block: " + std::string(c.is_open() ? "yes" : "no"));
    });
    say("  open after it: " + std::string(seen->is_open() ? "yes" : "no"));
    // Whatever happens below, the table goes (PostgreSQL keeps it beyond the tour).
    ctxmgr::finally drop_table([&] {
        ctxmgr::with(open(),
                     [&](Connection& d) { d.execute_script("DROP TABLE IF EXISTS " + table); });
    });

    auto c = open();
    say("");
    say("a transaction commits when its block ends normally ($1, $2 are bound, never spliced):");
    ctxmgr::with(c.transaction(), [&](Connection& tx) {
        tx.execute("UPDATE " + table + " SET balance = balance - $1 WHERE name = $2", 30, "alice");
        tx.execute("UPDATE " + table + " SET balance = balance + $1 WHERE name = $2", 30, "bob");
    });
    show_accounts(c, table);

    say("");
    say("and rolls back when it throws; the exception goes on unchanged:");
    try {
        ctxmgr::with(c.transaction(), [&](Connection& tx) {
            tx.execute("UPDATE " + table + " SET balance = balance + $1 WHERE name = $2", 500,
                       "bob");
            throw std::runtime_error("the transfer's other half failed");
        });
    } catch (const std::runtime_error& e) {
        say(std::string("  caught: ") + e.what());
    }
    show_accounts(c, table);

    say("");
    say("a transaction inside a transaction is a savepoint: the inner one fails, the outer");
    say("one keeps its own work (a CHECK constraint refuses a negative balance):");
    ctxmgr::with(c.transaction(), [&](Connection& tx) {
        tx.execute("INSERT INTO " + table + " (name, balance) VALUES ($1, $2)", "carol", 5);
        try {
            ctxmgr::with(tx.transaction(), [&](Connection& sp) {
                sp.execute("UPDATE " + table + " SET balance = balance - $1 WHERE name = $2", 50,
                           "carol");
            });
        } catch (const db::constraint_violation& e) {
            say(std::string("  savepoint rolled back: ") + e.what());
        }
    });
    show_accounts(c, table);

    say("");
    say("a parameter that looks like SQL stays data:");
    const std::string hostile = "x'); DROP TABLE " + table + "; --";
    c.execute("INSERT INTO " + table + " (name, balance) VALUES ($1, $2)", hostile, 0);
    say("  stored the name \"" +
        c.template query_value<std::string>(
            "SELECT name FROM " + table + " WHERE balance = $1 AND name <> $2", 0, "carol") +
        "\"; the table still has " +
        std::to_string(c.template query_value<std::int64_t>("SELECT count(*) FROM " + table)) +
        " rows");

    say("");
    say("errors are typed and carry the database's code and the statement:");
    try {
        c.execute("INSERT INTO " + table + " (name, balance) VALUES ($1, $2)", "alice", 1);
    } catch (const db::constraint_violation& e) {
        say(std::string("  ") + e.what());
    }
    try {
        static_cast<void>(c.template query_value<std::int64_t>("SELECT name FROM " + table));
    } catch (const db::conversion_error& e) {
        say(std::string("  ") + e.what());
    }

    if (ctxmgr::tracking_enabled) {
        say("");
        say("the leak tracker lists every live connection with the line that opened it: `c`,");
        say("still in use, and one that nobody closed:");
        std::unique_ptr<Connection> forgotten(new Connection(open()));
        std::ostringstream live;
        ctxmgr::report_live(live);
        std::istringstream lines(live.str());
        for (std::string line; std::getline(lines, line);) say("  " + line);
        forgotten->close();
    }
}

void databases_chapter() {
#if CTXMGR_TOUR_POSTGRES
    if (const std::string connection_string = tour::postgres_from_environment();
        !connection_string.empty()) {
        walk_through<ctxmgr::postgres::connection>(
            [&](std::source_location where = std::source_location::current()) {
                return ctxmgr::postgres::connect(connection_string, {}, where);
            },
            "tour_accounts_" + std::to_string(::getpid()));
        return;
    }
#endif
    const std::string path = (tour::scratch() / "bank.db").string();
    say("on SQLite, in " + path + " (set CTXMGR_POSTGRES to run this on PostgreSQL):");
    say("");
    walk_through<ctxmgr::sqlite::connection>(
        [&](std::source_location where = std::source_location::current()) {
            return ctxmgr::sqlite::connect(path, {}, where);
        },
        "accounts");
}

const bool registered = tour::add_chapter(
    100, "Databases: connections that close, transactions that commit or roll back",
    &databases_chapter);

}  // namespace

std::string tour::postgres_from_environment() {
    const char* conninfo = std::getenv("CTXMGR_POSTGRES");
    if (conninfo == nullptr || *conninfo == '\0') return {};
    say("on PostgreSQL (CTXMGR_POSTGRES), as " + ctxmgr::postgres::redact_secrets(conninfo) + ":");
    say("");
    return conninfo;
}
