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
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

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
    // A named manager, so that it can be asked afterwards: with() exits it, it stays.
    auto first = open();
    ctxmgr::with(first, [&](Connection& c) {
        c.execute_script("DROP TABLE IF EXISTS " + table);
        c.execute("CREATE TABLE " + table +
                  " (name TEXT PRIMARY KEY, balance BIGINT NOT NULL CHECK (balance >= 0))");
        c.execute("INSERT INTO " + table + " (name, balance) VALUES ($1, $2), ($3, $4)", "alice",
                  100, "bob", 20);
        say("  open inside the block: " + std::string(c.is_open() ? "yes" : "no"));
    });
    say("  open after it: " + std::string(first.is_open() ? "yes" : "no"));
    // Whatever happens below, the table goes (PostgreSQL keeps it beyond the tour).
    ctxmgr::finally drop_table([&] {
        ctxmgr::with(open(),
                     [&](Connection& d) { d.execute_script("DROP TABLE IF EXISTS " + table); });
    });

    auto c = open();
    say("");
    say("a transaction commits when its block ends normally ($1, $2 are bound, never spliced):");
    tour::show_code("transaction");
    // tour: transaction
    ctxmgr::with(c.transaction(), [&](Connection& tx) {
        tx.execute("UPDATE " + table + " SET balance = balance - $1 WHERE name = $2", 30, "alice");
        tx.execute("UPDATE " + table + " SET balance = balance + $1 WHERE name = $2", 30, "bob");
    });
    // tour: end
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

#if CTXMGR_TOUR_POSTGRES
std::int64_t client_connections(const std::string& conninfo) {
    return ctxmgr::with(ctxmgr::postgres::connect(conninfo), [](ctxmgr::postgres::connection& c) {
        return c.query_value<std::int64_t>(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'");
    });
}
#endif

void leaked_connections_chapter() {
    constexpr int slots = 8;
    say("In Python, `conn = psycopg.connect(dsn)` without `with` closes the connection only when");
    say("the object is collected; kept alive by a reference somewhere (a list, a cache, a cursor");
    say("in a reference cycle), it stays open, and a server has a fixed number of slots.");
#if CTXMGR_TOUR_POSTGRES
    auto cluster = tour::throwaway_cluster::start(slots);
    if (!cluster) {
#endif
        say("");
        say("(No PostgreSQL server could be started here: scripts/setup installs one. With it,");
        say("this chapter starts a throwaway cluster with max_connections = " +
            std::to_string(slots) + ", keeps every");
        say("connection it opens until the server refuses the next one with \"FATAL: sorry, too");
        say("many clients already\" (SQLSTATE 53300), names the line that opened the leaked ones,");
        say("then runs the same requests with `with`: the server stays at its baseline.)");
        return;
#if CTXMGR_TOUR_POSTGRES
    }
    say("");
    say("a throwaway server with max_connections = " + std::to_string(slots) + " (" +
        cluster->conninfo() + "); requests that keep their connection, the Python way:");
    const std::string& conninfo = cluster->conninfo();
    tour::show_code("leak");
    // tour: leak
    std::vector<ctxmgr::postgres::connection> still_referenced;
    try {
        for (int request = 1; request <= 100; ++request) {
            auto c = ctxmgr::postgres::connect(conninfo);
            static_cast<void>(c.query_value<std::int64_t>("SELECT 1"));
            still_referenced.push_back(std::move(c));  // never closed while referenced
        }
    } catch (const db::connection_error&) {
        say("request " + std::to_string(still_referenced.size() + 1) + " failed:");
        tour::say_exception(std::current_exception());
    }
    // tour: end
    std::size_t leaked = 0;
    std::string where;
    for (const auto& info : ctxmgr::live_resources()) {
        if (info.kind != "postgresql connection") continue;
        ++leaked;
        where = std::filesystem::path(info.where.file_name()).filename().string() + ':' +
                std::to_string(info.where.line());
    }
    if (ctxmgr::tracking_enabled) {
        say("the leak tracker: " + std::to_string(leaked) +
            " live postgresql connections, opened at " + where);
    }
    still_referenced.clear();
    say("");
    say("the same requests, each connection in a `with`:");
    tour::show_code("with");
    // tour: with
    for (int request = 1; request <= 100; ++request) {
        ctxmgr::with(ctxmgr::postgres::connect(conninfo), [](ctxmgr::postgres::connection& c) {
            static_cast<void>(c.query_value<std::int64_t>("SELECT 1"));
        });
    }
    // tour: end
    say("100 requests served; client connections on the server now: " +
        std::to_string(client_connections(conninfo)) + " (the one counting them)");
#endif
}

const bool registered =
    tour::add_chapter(100,
                      "Databases: connections that close, transactions that commit or roll back",
                      &databases_chapter) &&
    tour::add_chapter(105, "What leaked connections do to a server", &leaked_connections_chapter);

}  // namespace

#if CTXMGR_TOUR_POSTGRES
std::optional<tour::throwaway_cluster> tour::throwaway_cluster::start(int max_connections) {
    const char* from_environment = std::getenv("CTXMGR_TOUR_CLUSTER_SCRIPT");
    const std::string script =
        from_environment != nullptr && *from_environment != '\0'
            ? from_environment
            : std::string(CTXMGR_TOUR_SOURCE_DIR) + "/../scripts/postgres-cluster";
    if (!std::filesystem::exists(script)) return std::nullopt;
    // Not in the scratch directory: the server may run as another user (postgres, when
    // the tour runs as root), who must be able to reach its data directory.
    const auto dir = std::filesystem::temp_directory_path() /
                     ("ctxmgr-tour-cluster-" + std::to_string(::getpid()) + "-" +
                      std::to_string(max_connections));
    const std::string command = "'" + script + "' start --dir '" + dir.string() +
                                "' --max-connections " + std::to_string(max_connections) +
                                " 2>/dev/null";
    std::unique_ptr<FILE, int (*)(FILE*)> out(::popen(command.c_str(), "r"), &::pclose);
    if (!out) return std::nullopt;
    std::string conninfo;
    char buffer[256];
    while (std::fgets(buffer, sizeof buffer, out.get()) != nullptr) conninfo += buffer;
    const int status = ::pclose(out.release());
    if (status != 0 || conninfo.empty()) return std::nullopt;
    if (conninfo.back() == '\n') conninfo.pop_back();
    return throwaway_cluster(script, dir, conninfo);
}

tour::throwaway_cluster::throwaway_cluster(std::string script, std::filesystem::path dir,
                                           std::string conninfo)
    : script_(std::move(script)), dir_(std::move(dir)), conninfo_(std::move(conninfo)) {
}

tour::throwaway_cluster::throwaway_cluster(throwaway_cluster&& other) noexcept
    : script_(std::move(other.script_)),
      dir_(std::move(other.dir_)),
      conninfo_(std::move(other.conninfo_)) {
    other.dir_.clear();
}

tour::throwaway_cluster::~throwaway_cluster() {
    if (dir_.empty()) return;
    const std::string command =
        "'" + script_ + "' stop --dir '" + dir_.string() + "' >/dev/null 2>&1";
    static_cast<void>(std::system(command.c_str()));
}
#endif

std::string tour::postgres_from_environment() {
    const char* conninfo = std::getenv("CTXMGR_POSTGRES");
    if (conninfo == nullptr || *conninfo == '\0') return {};
    say("on PostgreSQL (CTXMGR_POSTGRES), as " + ctxmgr::postgres::redact_secrets(conninfo) + ":");
    say("");
    return conninfo;
}
