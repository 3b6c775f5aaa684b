// Uses the public API through the installed (or added) package; prints "consumer: ok".
#include <ctxmgr/ctxmgr.hpp>
#include <ctxmgr/tracking.hpp>

#include <cstdio>
#include <stdexcept>
#include <string>

int main() {
    std::string trace;
    struct recorder {
        std::string& trace;
        int enter() {
            trace += "enter ";
            return 42;
        }
        void exit(std::exception_ptr e) { trace += e ? "exit(error) " : "exit "; }
    };
    const int got = ctxmgr::with(recorder{trace}, [](int& v) { return v; });
    {
        ctxmgr::exit_stack stack;
        stack.callback([&] { trace += "callback "; });
    }
    const auto suppressed = ctxmgr::with(ctxmgr::suppress<std::runtime_error>(),
                                         []() -> int { throw std::runtime_error("x"); });
    if (got != 42 || suppressed.has_value() || trace != "enter exit callback ") {
        std::printf("consumer: wrong result: %s\n", trace.c_str());
        return 1;
    }
    {
        const ctxmgr::tracked registration("consumer resource", "one");
        if (ctxmgr::tracking_enabled && ctxmgr::live_resources().size() != 1) {
            std::printf("consumer: the tracked resource is not live\n");
            return 1;
        }
    }
    if (!ctxmgr::live_resources().empty()) {
        std::printf("consumer: the tracked resource is still live\n");
        return 1;
    }
    std::printf("consumer: ok\n");
    return 0;
}
