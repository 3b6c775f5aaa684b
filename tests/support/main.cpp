// main() of every test binary: GoogleTest plus the listener that fails a test which ends
// with resources it did not have when it started: file descriptors and, when the compiled
// library is linked, tracked resources (ctxmgr::expect_no_leaks around every test).
#include <gtest/gtest.h>

#include <map>
#include <optional>
#include <string>

#include "resource_check.hpp"

#if CTXMGR_TEST_LEAK_CHECK
#include <ctxmgr/tracking.hpp>
#endif

namespace {

class resource_listener final : public ::testing::EmptyTestEventListener {
    void OnTestStart(const ::testing::TestInfo&) override {
        descriptors_ = ctxmgr::testing::open_descriptors();
#if CTXMGR_TEST_LEAK_CHECK
        leaks_.emplace();
        leaks_->enter();
#endif
    }

    // Listeners' OnTestEnd run in reverse order of registration, so this runs before the
    // default printer and the failure is reported under the test that leaked.
    void OnTestEnd(const ::testing::TestInfo&) override {
        const auto leaked = ctxmgr::testing::describe_new_descriptors(
            descriptors_, ctxmgr::testing::open_descriptors());
        if (!leaked.empty()) {
            ADD_FAILURE() << "file descriptors opened by this test are still open:\n" << leaked;
        }
#if CTXMGR_TEST_LEAK_CHECK
        try {
            leaks_->exit(nullptr);
        } catch (const ctxmgr::leak_error& e) {
            ADD_FAILURE() << "tracked resources acquired by this test are still live:\n"
                          << e.what();
        }
        leaks_.reset();
#endif
    }

    std::map<int, std::string> descriptors_;
#if CTXMGR_TEST_LEAK_CHECK
    std::optional<ctxmgr::expect_no_leaks> leaks_;
#endif
};

}  // namespace

int main(int argc, char** argv) {
    ::testing::InitGoogleTest(&argc, argv);
    ::testing::UnitTest::GetInstance()->listeners().Append(new resource_listener);
    return RUN_ALL_TESTS();
}
