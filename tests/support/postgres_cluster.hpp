// PostgreSQL servers for tests and benchmarks, on loopback, through scripts/postgres-cluster.
//
//   - shared_postgres(): the server of the test run, shared by every test that only needs a
//     database: CTXMGR_TEST_POSTGRES (scripts/test sets it), else the one ctest's fixture
//     `postgres` started, else one this process starts on first use and stops at exit.
//   - postgres_cluster: a dedicated, throwaway cluster for a test that is destructive
//     (max_connections = 20, killing or pausing the server, restarting it). RAII: the
//     destructor stops it and removes its directory (under CTXMGR_TEST_TMPDIR, which
//     scripts/test sets and cleans, else /tmp).
//   - CTXMGR_REQUIRE_POSTGRES(reason_or_value): skips a test with a visible reason when no
//     server can be started, except under CI=true, where that is a failure.
//
//   TEST(Postgres, Something) {
//       const auto server = ctxmgr::testing::shared_postgres();
//       CTXMGR_REQUIRE_POSTGRES(server);
//       auto db = ctxmgr::postgres::connect(server.conninfo);
//   }
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <memory>
#include <optional>
#include <string>

namespace ctxmgr::testing {

// A server to use, or why there is none.
struct postgres_server {
    std::string conninfo;     // empty when unavailable
    std::string unavailable;  // the reason, when conninfo is empty
    [[nodiscard]] bool available() const noexcept { return !conninfo.empty(); }
};

// The shared server of the test run (see above). Never throws.
[[nodiscard]] postgres_server shared_postgres() noexcept;
// A cluster of this process, started on first call and stopped when the process exits: what
// shared_postgres() falls back on outside ctest, and the benchmarks' server.
[[nodiscard]] const postgres_server& own_postgres() noexcept;

// True when CI=true: a test that cannot get a server must fail, not skip.
[[nodiscard]] bool in_ci() noexcept;

// A dedicated cluster, started in the constructor (about a second) and stopped and removed
// in the destructor. Move-only.
class postgres_cluster {
  public:
    struct options {
        int max_connections = 0;  // 0: the server's default (100)
    };

    // Throws std::runtime_error with the script's output when the cluster cannot start.
    explicit postgres_cluster(options opts);
    postgres_cluster(const postgres_cluster&) = delete;
    postgres_cluster& operator=(const postgres_cluster&) = delete;
    ~postgres_cluster();

    // Starts one, or returns why it cannot (with the same rules as shared_postgres).
    static std::unique_ptr<postgres_cluster> start(options opts, std::string& why_not);

    [[nodiscard]] const std::string& conninfo() const noexcept { return conninfo_; }
    // The postmaster's pid (from postmaster.pid); 0 when it is not running.
    [[nodiscard]] pid_t postmaster_pid() const;

    // A crash: SIGKILL to the postmaster and every server process, and waits until they are
    // gone. The cluster can then only be stopped (the destructor does it).
    void kill();
    // SIGSTOP / SIGCONT to the postmaster: a server that accepts TCP but never answers.
    void pause();
    void resume();
    // A fast shutdown and a start on the same port and data: sessions are cut.
    void restart();

  private:
    std::filesystem::path directory_;
    std::string conninfo_;
};

}  // namespace ctxmgr::testing

// Skips (or, under CI=true, fails) the current test when `server` (a postgres_server) is not
// available, naming the reason.
#define CTXMGR_REQUIRE_POSTGRES(server)                                                   \
    do {                                                                                  \
        if (!(server).available()) {                                                      \
            if (::ctxmgr::testing::in_ci()) {                                             \
                FAIL() << "no PostgreSQL server under CI=true: " << (server).unavailable; \
            }                                                                             \
            GTEST_SKIP() << "no PostgreSQL server: " << (server).unavailable;             \
        }                                                                                 \
    } while (false)
