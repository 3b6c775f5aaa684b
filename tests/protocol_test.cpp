#include <ctxmgr/protocol.hpp>

#include <gtest/gtest.h>

#include <exception>
#include <stdexcept>
#include <string>

namespace {

struct void_void {
    void enter() {}
    void exit(std::exception_ptr) {}
};
struct int_bool {
    int enter() { return 1; }
    bool exit(const std::exception_ptr&) { return false; }
};
struct ref_target {
    std::string s;
    std::string& enter() { return s; }
    void exit(std::exception_ptr) noexcept {}
};
struct const_manager {
    int enter() const { return 0; }
    void exit(std::exception_ptr) const {}
};
struct no_exit {
    void enter() {}
};
struct no_enter {
    void exit(std::exception_ptr) {}
};
struct exit_returns_int {
    void enter() {}
    int exit(std::exception_ptr) { return 0; }
};
struct exit_without_parameter {
    void enter() {}
    void exit() {}
};

static_assert(ctxmgr::context_manager<void_void>);
static_assert(ctxmgr::context_manager<int_bool>);
static_assert(ctxmgr::context_manager<ref_target>);
static_assert(ctxmgr::context_manager<ref_target&>);
static_assert(ctxmgr::context_manager<const const_manager>);
static_assert(!ctxmgr::context_manager<const ref_target>);
static_assert(!ctxmgr::context_manager<no_exit>);
static_assert(!ctxmgr::context_manager<no_enter>);
static_assert(!ctxmgr::context_manager<exit_returns_int>);
static_assert(!ctxmgr::context_manager<exit_without_parameter>);
static_assert(!ctxmgr::context_manager<int>);

static_assert(std::is_void_v<ctxmgr::enter_result_t<void_void>>);
static_assert(std::is_same_v<ctxmgr::enter_result_t<int_bool>, int>);
static_assert(std::is_same_v<ctxmgr::enter_result_t<ref_target>, std::string&>);
static_assert(!ctxmgr::can_suppress_v<void_void>);
static_assert(ctxmgr::can_suppress_v<int_bool>);

struct base_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};
struct derived_error : base_error {
    using base_error::base_error;
};

TEST(Protocol, HoldsMatchesTheTypeAndItsBases) {
    const auto e = std::make_exception_ptr(derived_error("x"));
    EXPECT_TRUE(ctxmgr::holds<derived_error>(e));
    EXPECT_TRUE(ctxmgr::holds<base_error>(e));
    EXPECT_TRUE(ctxmgr::holds<std::runtime_error>(e));
    EXPECT_TRUE(ctxmgr::holds<std::exception>(e));
    EXPECT_FALSE(ctxmgr::holds<std::logic_error>(e));
    EXPECT_FALSE(ctxmgr::holds<derived_error>(std::make_exception_ptr(base_error("y"))));
}

TEST(Protocol, HoldsIsFalseForNull) {
    EXPECT_FALSE(ctxmgr::holds<std::exception>(nullptr));
    static_assert(noexcept(ctxmgr::holds<std::exception>(nullptr)));
}

TEST(Protocol, HoldsWorksForNonClassExceptions) {
    EXPECT_TRUE(ctxmgr::holds<int>(std::make_exception_ptr(3)));
    EXPECT_FALSE(ctxmgr::holds<long>(std::make_exception_ptr(3)));
    EXPECT_FALSE(ctxmgr::holds<std::exception>(std::make_exception_ptr(3)));
}

TEST(Protocol, ExitInHandlerMakesThePendingExceptionCurrent) {
    const auto e = std::make_exception_ptr(std::runtime_error("pending"));
    std::exception_ptr current;
    ctxmgr::detail::exit_in_handler(
        [&](const std::exception_ptr&) {
            current = std::current_exception();
            return false;
        },
        e);
    EXPECT_EQ(current, e);
}

}  // namespace
