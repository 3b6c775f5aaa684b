// The messages of every resource for bad input: each names the operation and the object
// (errors.hpp's rule), and docs/errors.md lists them as the library writes them. The test
// compares that catalogue with what the library produces, so it cannot fall behind; run it
// with CTXMGR_UPDATE_ERROR_CATALOGUE=1 to write the file anew after a message changes on
// purpose (with a PostgreSQL server, so that every row is there).
#include <ctxmgr/file.hpp>
#include <ctxmgr/file_lock.hpp>
#include <ctxmgr/net.hpp>
#include <ctxmgr/postgres.hpp>
#include <ctxmgr/sqlite.hpp>
#include <ctxmgr/with.hpp>

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "postgres_cluster.hpp"
#include "recording.hpp"
#include "refusing_port.hpp"
#include "temp_directory.hpp"

#ifndef CTXMGR_ERROR_CATALOGUE
#error "CTXMGR_ERROR_CATALOGUE names docs/errors.md (tests/CMakeLists.txt)"
#endif

namespace {

namespace fs = std::filesystem;
namespace db = ctxmgr::db;

using ctxmgr::testing::refusing_port;

void replace_all(std::string& text, const std::string& from, const std::string& to) {
    if (from.empty()) return;
    for (std::size_t at = text.find(from); at != std::string::npos;
         at = text.find(from, at + to.size())) {
        text.replace(at, from.size(), to);
    }
}

// One bad input: what it is, what the message must name, and how to provoke it.
struct bad_input {
    std::string name;       // the catalogue's first column
    std::string operation;  // a word the message must contain
    std::string object;     // the path, peer or statement the message must contain
    std::function<void()> provoke;
};

// One catalogue row: the input, the exception's type and its message, with the parts that
// differ between runs (the temporary directory, a port) replaced by <dir> and <port>.
struct entry {
    std::string name;
    std::string type;
    std::string message;
};

class ErrorMessages : public ::testing::Test {
  protected:
    // Provokes `input`, checks its message and returns the catalogue row.
    entry check(const bad_input& input) {
        const std::exception_ptr e = ctxmgr::testing::exception_from(input.provoke);
        EXPECT_TRUE(e) << input.name << ": no exception";
        if (!e) return {input.name, "none", ""};
        std::string type;
        std::string message;
        try {
            std::rethrow_exception(e);
        } catch (const std::exception& ex) {
            type = ctxmgr::detail::type_name_of(typeid(ex));
            message = ex.what();
        }
        EXPECT_NE(message.find(input.operation), std::string::npos)
            << input.name << ": the operation \"" << input.operation << "\" is not in: " << message;
        EXPECT_NE(message.find(input.object), std::string::npos)
            << input.name << ": the object \"" << input.object << "\" is not in: " << message;
        return {input.name, type, normalized(message)};
    }

    std::string normalized(std::string message) const {
        replace_all(message, directory_.path().string(), "<dir>");
        replace_all(message, std::to_string(refusing_.port()), "<port>");
        return message;
    }

    std::string file(const std::string& name) const { return directory_.file(name); }

    ctxmgr::testing::temp_directory directory_;
    refusing_port refusing_;
};

std::vector<bad_input> resource_inputs(const std::string& dir, std::uint16_t port) {
    const std::string missing = dir + "/missing.txt";
    const std::string written = dir + "/written.txt";
    const std::string lock = dir + "/no/such/dir/app.lock";
    const std::string peer = "127.0.0.1:" + std::to_string(port);
    // Not a valid host name: glibc rejects it before asking DNS, so nothing leaves the machine.
    const std::string host = "bad host!";
    return {
        {"file: open a missing file", "open", '"' + missing + '"',
         [=] { static_cast<void>(ctxmgr::open(missing)); }},
        {"file: open a directory as a file", "open", '"' + dir + '"',
         [=] { static_cast<void>(ctxmgr::open(dir)); }},
        {"file: read a file opened for writing", "read", '"' + written + '"',
         [=] {
             auto f = ctxmgr::open(written, "w");
             static_cast<void>(f.read(1));
         }},
        {"file: write a file opened for reading", "write", '"' + written + '"',
         [=] {
             { auto f = ctxmgr::open(written, "w"); }
             auto f = ctxmgr::open(written, "r");
             f.write("x");
         }},
        {"file_lock: lock in a missing directory", "open", '"' + lock + '"',
         [=] { ctxmgr::with(ctxmgr::file_lock(lock), [] {}); }},
        {"tcp: connect to a closed loopback port", "connect", peer,
         [=] { static_cast<void>(ctxmgr::tcp::connect("127.0.0.1", port)); }},
        {"tcp: connect to an unresolvable host", "resolve", '"' + host + '"',
         [=] { static_cast<void>(ctxmgr::tcp::connect(host, 80)); }},
    };
}

// The database cases, the same for both back ends. The statement is the object; the
// operation is the connection's call that ran it.
template <class Connection>
std::vector<bad_input> database_inputs(const std::string& backend,
                                       std::function<Connection()> connect,
                                       const std::string& table) {
    const std::string create = "CREATE TABLE " + table + " (id INTEGER PRIMARY KEY)";
    const std::string insert = "INSERT INTO " + table + " (id) VALUES ($1)";
    return {
        {backend + ": a bad statement", "execute", "SELEC 1",
         [=] { connect().execute("SELEC 1"); }},
        {backend + ": a constraint violation", "execute", insert,
         [=] {
             auto c = connect();
             c.execute(create);
             c.execute(insert, 1);
             c.execute(insert, 1);
         }},
        {backend + ": a wrong parameter count", "query_value", "SELECT $1 + $2",
         [=] { static_cast<void>(connect().template query_value<int>("SELECT $1 + $2", 1)); }},
        {backend + ": text read as an integer", "query_value", "SELECT 'abc'",
         [=] { static_cast<void>(connect().template query_value<int>("SELECT 'abc'")); }},
    };
}

std::vector<entry> read_catalogue(const fs::path& path) {
    std::ifstream in(path);
    std::vector<entry> rows;
    std::string line;
    while (std::getline(in, line)) {
        if (!line.starts_with("| ") || line.starts_with("| Bad input") ||
            line.starts_with("| ---")) {
            continue;
        }
        // | name | `type` | `message` |; a message's line breaks are written as <br>.
        std::vector<std::string> cells;
        std::size_t at = 1;
        for (std::size_t bar = line.find(" | ", at); bar != std::string::npos;
             bar = line.find(" | ", at)) {
            cells.push_back(line.substr(at + 1, bar - at - 1));
            at = bar + 2;
        }
        cells.push_back(line.substr(at + 1, line.size() - at - 3));
        if (cells.size() != 3) continue;
        const auto unquote = [](std::string s) {
            if (s.size() >= 2 && s.front() == '`' && s.back() == '`') s = s.substr(1, s.size() - 2);
            replace_all(s, "\\|", "|");
            replace_all(s, "<br>", "\n");
            return s;
        };
        rows.push_back({cells[0], unquote(cells[1]), unquote(cells[2])});
    }
    return rows;
}

std::string catalogue_row(const entry& e) {
    std::string message = e.message;
    replace_all(message, "|", "\\|");
    replace_all(message, "\n", "<br>");
    return "| " + e.name + " | `" + e.type + "` | `" + message + "` |\n";
}

void write_catalogue(const fs::path& path, const std::vector<entry>& rows) {
    // Everything above the table is kept as written.
    std::ifstream in(path);
    std::stringstream head;
    std::string line;
    while (std::getline(in, line) && !line.starts_with("| Bad input")) head << line << '\n';
    in.close();
    std::ofstream out(path, std::ios::trunc);
    out << head.str();
    out << "| Bad input | Exception | Message |\n| --- | --- | --- |\n";
    for (const entry& e : rows) out << catalogue_row(e);
}

TEST_F(ErrorMessages, EveryResourceNamesTheOperationAndTheObjectAsTheCatalogueSays) {
    std::vector<bad_input> inputs = resource_inputs(directory_.path().string(), refusing_.port());

    const std::string database = file("catalogue.db");
    for (auto& input : database_inputs<ctxmgr::sqlite::connection>(
             "sqlite", [=] { return ctxmgr::sqlite::connect(database); }, "items")) {
        inputs.push_back(std::move(input));
    }
    const std::string no_directory = file("no/such/dir/app.db");
    inputs.push_back({"sqlite: open in a missing directory", "open", '"' + no_directory + '"',
                      [=] { static_cast<void>(ctxmgr::sqlite::connect(no_directory)); }});

    inputs.push_back({"postgresql: a bad conninfo", "connect", "nosuchoption=1",
                      [] { static_cast<void>(ctxmgr::postgres::connect("nosuchoption=1")); }});
    const auto server = ctxmgr::testing::shared_postgres();
    const bool with_postgres = server.available() || ctxmgr::testing::in_ci();
    if (with_postgres) {
        const std::string conninfo = server.conninfo;
        // A temporary table: each connection has its own, so runs do not meet.
        for (auto& input : database_inputs<ctxmgr::postgres::connection>(
                 "postgresql", [=] { return ctxmgr::postgres::connect(conninfo); },
                 "pg_temp.items")) {
            inputs.push_back(std::move(input));
        }
    }

    std::vector<entry> produced;
    for (const bad_input& input : inputs) produced.push_back(check(input));

    const fs::path catalogue = CTXMGR_ERROR_CATALOGUE;
    const char* update = std::getenv("CTXMGR_UPDATE_ERROR_CATALOGUE");
    if (update != nullptr && std::string_view(update) == "1") {
        ASSERT_TRUE(with_postgres) << "the catalogue needs a PostgreSQL server for its rows";
        write_catalogue(catalogue, produced);
        return;
    }
    std::map<std::string, entry> documented;
    for (entry& e : read_catalogue(catalogue)) documented[e.name] = std::move(e);
    for (const entry& e : produced) {
        const auto found = documented.find(e.name);
        if (found == documented.end()) {
            ADD_FAILURE() << catalogue << " lacks the row:\n" << catalogue_row(e);
            continue;
        }
        EXPECT_EQ(found->second.type, e.type) << e.name;
        EXPECT_EQ(found->second.message, e.message)
            << e.name << ": " << catalogue
            << " differs; CTXMGR_UPDATE_ERROR_CATALOGUE=1 rewrites it";
        documented.erase(found);
    }
    // Rows for cases that no longer exist; PostgreSQL's stay when there is no server.
    for (const auto& [name, e] : documented) {
        if (!with_postgres && name.starts_with("postgresql: ")) continue;
        ADD_FAILURE() << catalogue << " has a row no case produces: " << name;
    }
    if (!with_postgres) GTEST_SKIP() << "PostgreSQL rows not checked: " << server.unavailable;
}

}  // namespace
