// GoogleTest fixtures for tests that need PostgreSQL (see postgres_cluster.hpp):
//   shared_postgres_test     the shared server of the test run, in server_; the test skips
//                            (fails under CI=true) when there is none.
//   dedicated_postgres_test  a cluster of the test's own, for what breaks a server (killing,
//                            pausing, restarting it): start(options) in the test, then
//                            CTXMGR_REQUIRE_POSTGRES(server_).
#pragma once

#include <gtest/gtest.h>

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

}  // namespace ctxmgr::testing
