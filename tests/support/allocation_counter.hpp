// Counts calls of the global operator new in this program. Link allocation_counter.cpp,
// which replaces operator new and delete, into the test binaries that use it.
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

}  // namespace ctxmgr::testing
