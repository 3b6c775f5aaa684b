// Waiting for something another thread or process does, boundedly: the machine is shared and
// slow under sanitizers, so a test waits up to a generous limit and fails only past it.
#pragma once

#include <chrono>
#include <thread>

namespace ctxmgr::testing {

// Polls `done()` every 5 ms until it holds (true) or `limit` has passed (false).
template <class Done>
bool eventually(Done done, std::chrono::milliseconds limit = std::chrono::seconds(10)) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (!done()) {
        if (std::chrono::steady_clock::now() > deadline) return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return true;
}

}  // namespace ctxmgr::testing
