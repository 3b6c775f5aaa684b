// main() of every test binary: GoogleTest plus the listener that fails a test which ends
// with resources it did not have when it started.
#include <gtest/gtest.h>

#include <map>
#include <string>

#include "resource_check.hpp"

namespace {

class resource_listener final : public ::testing::EmptyTestEventListener {
    void OnTestStart(const ::testing::TestInfo&) override {
        descriptors_ = ctxmgr::testing::open_descriptors();
    }

    // Listeners' OnTestEnd run in reverse order of registration, so this runs before the
    // default printer and the failure is reported under the test that leaked.
    void OnTestEnd(const ::testing::TestInfo&) override {
        const auto leaked = ctxmgr::testing::describe_new_descriptors(
            descriptors_, ctxmgr::testing::open_descriptors());
        if (!leaked.empty()) {
            ADD_FAILURE() << "file descriptors opened by this test are still open:\n" << leaked;
        }
    }

    std::map<int, std::string> descriptors_;
};

}  // namespace

int main(int argc, char** argv) {
    ::testing::InitGoogleTest(&argc, argv);
    ::testing::UnitTest::GetInstance()->listeners().Append(new resource_listener);
    return RUN_ALL_TESTS();
}
