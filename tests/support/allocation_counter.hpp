// Counts calls of the global operator new in this program, and can make them fail. Link
// allocation_counter.cpp, which replaces operator new and delete, into the test binaries that
// use it.
#pragma once

#include <cstddef>

namespace ctxmgr::testing {

// Allocations made by the calling thread so far.
std::size_t allocations() noexcept;

// Counts the allocations made by the calling thread during its lifetime.
class allocation_scope {
  public:
    allocation_scope() noexcept : start_(allocations()) {}
    [[nodiscard]] std::size_t count() const noexcept { return allocations() - start_; }

  private:
    std::size_t start_;
};

// While it lives, every operator new of the calling thread throws std::bad_alloc: running
// out of memory, on purpose.
class allocation_failure {
  public:
    allocation_failure() noexcept;
    allocation_failure(const allocation_failure&) = delete;
    allocation_failure& operator=(const allocation_failure&) = delete;
    ~allocation_failure();

  private:
    bool previous_;
};

}  // namespace ctxmgr::testing
