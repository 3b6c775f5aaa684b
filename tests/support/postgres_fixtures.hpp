// GoogleTest fixtures for tests that need PostgreSQL (see postgres_cluster.hpp):
//   shared_postgres_test     the shared server of the test run, in server_; the test skips
//                            (fails under CI=true) when there is none.
//   dedicated_postgres_test  a cluster of the test's own, for what breaks a server (killing,
//                            pausing, restarting it): start(options) in the test, then
//                            CTXMGR_REQUIRE_POSTGRES(server_).
//   stopped_backend          a server process stopped (SIGSTOP) for its scope: a session
//                            whose server never answers, as behind a silently cut network.
#pragma once

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/types.h>

#include <memory>
#include <string>

#include "postgres_cluster.hpp"

namespace ctxmgr::testing {

class shared_postgres_test : public ::testing::Test {
  protected:
    void SetUp() override {
        server_ = shared_postgres();
        CTXMGR_REQUIRE_POSTGRES(server_);
    }
    postgres_server server_;
};

class dedicated_postgres_test : public ::testing::Test {
  protected:
    void start(postgres_cluster::options opts = {}) {
        std::string why;
        cluster_ = postgres_cluster::start(opts, why);
        server_ = {cluster_ != nullptr ? cluster_->conninfo() : "", why};
    }
    std::unique_ptr<postgres_cluster> cluster_;
    postgres_server server_;
};

// Stops the server process `pid` (a session's backend_pid()) until destroyed. stopped() is
// false when it could not be signalled (a server of another user, not run by this test).
class stopped_backend {
  public:
    explicit stopped_backend(int pid) noexcept
        : pid_(static_cast<pid_t>(pid)), stopped_(pid > 0 && ::kill(pid_, SIGSTOP) == 0) {}
    stopped_backend(const stopped_backend&) = delete;
    stopped_backend& operator=(const stopped_backend&) = delete;
    ~stopped_backend() {
        if (stopped_) ::kill(pid_, SIGCONT);
    }
    [[nodiscard]] bool stopped() const noexcept { return stopped_; }

  private:
    pid_t pid_;
    bool stopped_;
};

}  // namespace ctxmgr::testing
