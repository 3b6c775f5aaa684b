#include "postgres_cluster.hpp"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#ifndef CTXMGR_POSTGRES_CLUSTER_SCRIPT
#error "CTXMGR_POSTGRES_CLUSTER_SCRIPT must name scripts/postgres-cluster"
#endif

namespace ctxmgr::testing {

namespace {

std::string quoted(const std::string& text) {
    std::string out = "'";
    for (char c : text) {
        if (c == '\'') {
            out += "'\\''";
        } else {
            out += c;
        }
    }
    return out + "'";
}

std::string read_file(const std::filesystem::path& path) {
    std::ifstream in(path);
    std::stringstream text;
    text << in.rdbuf();
    std::string s = text.str();
    while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
    return s;
}

// The server processes of a cluster: every one works in its data directory.
std::vector<pid_t> server_processes(const std::filesystem::path& data) {
    std::vector<pid_t> found;
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator("/proc", ec)) {
        const std::string name = entry.path().filename();
        if (name.find_first_not_of("0123456789") != std::string::npos) continue;
        std::error_code link_error;
        if (std::filesystem::read_symlink(entry.path() / "cwd", link_error) == data) {
            found.push_back(static_cast<pid_t>(std::stol(name)));
        }
    }
    return found;
}

// Runs scripts/postgres-cluster with `arguments`; returns its exit status and puts what it
// printed (stdout and stderr) into `output`.
int run_cluster_script(const std::string& arguments, std::string& output) {
    const std::string command =
        quoted(CTXMGR_POSTGRES_CLUSTER_SCRIPT) + ' ' + arguments + " 2>&1 </dev/null";
    FILE* pipe = ::popen(command.c_str(), "re");
    if (pipe == nullptr) {
        output = "popen failed";
        return -1;
    }
    char buffer[512];
    output.clear();
    while (const std::size_t n = std::fread(buffer, 1, sizeof buffer, pipe))
        output.append(buffer, n);
    const int status = ::pclose(pipe);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

}  // namespace

bool in_ci() noexcept {
    const char* ci = std::getenv("CI");
    return ci != nullptr && std::string_view(ci) == "true";
}

postgres_cluster::postgres_cluster(options opts) {
    // Under CTXMGR_TEST_TMPDIR when scripts/test gives one: it removes what an interrupted
    // test leaves there.
    const char* base = std::getenv("CTXMGR_TEST_TMPDIR");
    std::string pattern =
        std::string(base != nullptr && *base ? base : "/tmp") + "/ctxmgr-postgres-XXXXXX";
    if (::mkdtemp(pattern.data()) == nullptr) {
        throw std::runtime_error("mkdtemp " + pattern + " failed");
    }
    directory_ = pattern;
    std::string arguments = "start --dir " + quoted(directory_.string());
    if (opts.max_connections > 0) {
        arguments += " --max-connections " + std::to_string(opts.max_connections);
    }
    std::string output;
    if (run_cluster_script(arguments, output) != 0) {
        std::string ignored;
        run_cluster_script("stop --dir " + quoted(directory_.string()), ignored);
        std::filesystem::remove_all(directory_);
        throw std::runtime_error("scripts/postgres-cluster start failed: " + output);
    }
    conninfo_ = read_file(directory_ / "conninfo");
}

postgres_cluster::~postgres_cluster() {
    if (directory_.empty()) return;
    std::string ignored;
    run_cluster_script("stop --dir " + quoted(directory_.string()), ignored);
    std::error_code ec;
    std::filesystem::remove_all(directory_, ec);
}

std::unique_ptr<postgres_cluster> postgres_cluster::start(options opts, std::string& why_not) {
    try {
        return std::make_unique<postgres_cluster>(opts);
    } catch (const std::exception& e) {
        why_not = e.what();
        return nullptr;
    }
}

pid_t postgres_cluster::postmaster_pid() const {
    const std::string text = read_file(directory_ / "data" / "postmaster.pid");
    if (text.empty()) return 0;
    return static_cast<pid_t>(std::stol(text.substr(0, text.find('\n'))));
}

void postgres_cluster::kill() {
    const auto data = directory_ / "data";
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    for (;;) {
        const auto processes = server_processes(data);
        if (processes.empty() || std::chrono::steady_clock::now() > deadline) return;
        for (const pid_t pid : processes) ::kill(pid, SIGKILL);
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
}

void postgres_cluster::pause() {
    if (const pid_t pid = postmaster_pid(); pid > 0) ::kill(pid, SIGSTOP);
}

void postgres_cluster::resume() {
    if (const pid_t pid = postmaster_pid(); pid > 0) ::kill(pid, SIGCONT);
}

void postgres_cluster::restart() {
    std::string output;
    if (run_cluster_script("restart --dir " + quoted(directory_.string()), output) != 0) {
        throw std::runtime_error("scripts/postgres-cluster restart failed: " + output);
    }
}

const postgres_server& own_postgres() noexcept {
    static std::unique_ptr<postgres_cluster> own;
    static const postgres_server server = []() -> postgres_server {
        try {
            std::string why;
            own = postgres_cluster::start({}, why);
            if (own != nullptr) return {own->conninfo(), ""};
            return {"", std::move(why)};
        } catch (const std::exception& e) {
            return {"", e.what()};
        }
    }();
    return server;
}

postgres_server shared_postgres() noexcept {
    try {
        if (const char* given = std::getenv("CTXMGR_TEST_POSTGRES"); given != nullptr && *given) {
            return {given, ""};
        }
        if (const char* fixture = std::getenv("CTXMGR_TEST_POSTGRES_FIXTURE");
            fixture != nullptr && *fixture) {
            const std::filesystem::path directory(fixture);
            if (std::string conninfo = read_file(directory / "conninfo"); !conninfo.empty()) {
                return {std::move(conninfo), ""};
            }
            std::string why = read_file(directory / "unavailable");
            if (why.empty())
                why = "the ctest fixture `postgres` left nothing in " + directory.string();
            return {"", std::move(why)};
        }
        // Run outside ctest: a cluster of this process.
        return own_postgres();
    } catch (const std::exception& e) {
        return {"", e.what()};
    }
}

}  // namespace ctxmgr::testing
