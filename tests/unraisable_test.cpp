#include <ctxmgr/unraisable.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

// Restores whatever hook was installed when the test started.
class restore_hook {
  public:
    restore_hook() : saved_(ctxmgr::set_unraisable_hook({})) {
        ctxmgr::set_unraisable_hook(saved_);
    }
    ~restore_hook() { ctxmgr::set_unraisable_hook(std::move(saved_)); }

  private:
    ctxmgr::unraisable_hook saved_;
};

TEST(Unraisable, DefaultHookPrintsOneLineToStderr) {
    restore_hook restore;
    ctxmgr::set_unraisable_hook({});
    std::streambuf* old = std::cerr.rdbuf();
    std::ostringstream captured;
    std::cerr.rdbuf(captured.rdbuf());
    ctxmgr::report_unraisable(std::make_exception_ptr(std::runtime_error("disk gone")),
                              "file \"/tmp/x\": close in destructor");
    std::cerr.rdbuf(old);
    EXPECT_EQ(captured.str(),
              "ctxmgr: exception ignored in file \"/tmp/x\": close in destructor: "
              "std::runtime_error: disk gone\n");
}

TEST(Unraisable, SetReturnsThePreviousHookWhichCanBeInstalledAgain) {
    restore_hook restore;
    std::vector<std::string> first, second;
    ctxmgr::set_unraisable_hook(
        [&](std::exception_ptr, std::string_view where) { first.emplace_back(where); });
    auto previous = ctxmgr::set_unraisable_hook(
        [&](std::exception_ptr, std::string_view where) { second.emplace_back(where); });
    ctxmgr::report_unraisable(std::make_exception_ptr(1), "to second");
    ctxmgr::set_unraisable_hook(std::move(previous));
    ctxmgr::report_unraisable(std::make_exception_ptr(1), "to first");
    EXPECT_EQ(first, (std::vector<std::string>{"to first"}));
    EXPECT_EQ(second, (std::vector<std::string>{"to second"}));
}

TEST(Unraisable, ThePreviousDefaultHookIsReturnedAsACallable) {
    restore_hook restore;
    ctxmgr::set_unraisable_hook({});
    const auto previous = ctxmgr::set_unraisable_hook([](std::exception_ptr, std::string_view) {});
    ASSERT_TRUE(static_cast<bool>(previous));
    std::ostringstream captured;
    std::streambuf* old = std::cerr.rdbuf(captured.rdbuf());
    previous(std::make_exception_ptr(std::logic_error("x")), "here");
    std::cerr.rdbuf(old);
    EXPECT_EQ(captured.str(), "ctxmgr: exception ignored in here: std::logic_error: x\n");
}

TEST(Unraisable, AHookThatThrowsFallsBackToTheDefault) {
    restore_hook restore;
    ctxmgr::set_unraisable_hook(
        [](std::exception_ptr, std::string_view) { throw std::runtime_error("hook broke"); });
    std::ostringstream captured;
    std::streambuf* old = std::cerr.rdbuf(captured.rdbuf());
    ctxmgr::report_unraisable(std::make_exception_ptr(std::runtime_error("original")), "site");
    std::cerr.rdbuf(old);
    const std::string text = captured.str();
    EXPECT_NE(text.find("the unraisable hook: std::runtime_error: hook broke"), std::string::npos)
        << text;
    EXPECT_NE(text.find("site: std::runtime_error: original"), std::string::npos) << text;
}

TEST(Unraisable, HookMayReportAndReplaceTheHookFromInsideItself) {
    restore_hook restore;
    std::vector<std::string> seen;
    ctxmgr::set_unraisable_hook([&](std::exception_ptr, std::string_view where) {
        seen.emplace_back(where);
        if (where == "outer") {
            ctxmgr::set_unraisable_hook([&](std::exception_ptr, std::string_view w) {
                seen.push_back("new " + std::string(w));
            });
            ctxmgr::report_unraisable(nullptr, "inner");
        }
    });
    ctxmgr::report_unraisable(nullptr, "outer");
    EXPECT_EQ(seen, (std::vector<std::string>{"outer", "new inner"}));
}

TEST(Unraisable, ReportingAndReplacingFromManyThreadsIsSafe) {
    restore_hook restore;
    std::atomic<int> reports{0};
    auto counting = [&](std::exception_ptr, std::string_view) { reports.fetch_add(1); };
    ctxmgr::set_unraisable_hook(counting);
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
        threads.emplace_back([&, t] {
            for (int i = 0; i < 500; ++i) {
                if (t == 0 && i % 10 == 0) ctxmgr::set_unraisable_hook(counting);
                ctxmgr::report_unraisable(nullptr, "thread");
            }
        });
    }
    for (auto& t : threads) t.join();
    EXPECT_EQ(reports.load(), 2000);
}

}  // namespace
