// What every example of the documentation may use without including it: the whole library
// (the async headers when the page uses Asio) and the standard headers examples reach for.
// std::chrono_literals is in scope, as the pages assume (`2s`, `50ms`).
#pragma once

#include <ctxmgr/ctxmgr.hpp>
#include <ctxmgr/distributed_lock.hpp>
#include <ctxmgr/postgres.hpp>
#include <ctxmgr/release.hpp>
#include <ctxmgr/sqlite.hpp>
#if CTXMGR_DOCS_EXAMPLES_ASYNC
#include <ctxmgr/async.hpp>
#include <ctxmgr/async_postgres.hpp>
#endif

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <functional>
#include <iostream>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace docs_examples {
using namespace std::chrono_literals;

// Runs one program of a page (its main, renamed) in an empty temporary directory; returns
// the number of failures (0 or 1) and says which program failed.
int run_program(const char* page, int line, int (*program)());
}  // namespace docs_examples
