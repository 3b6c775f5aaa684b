// What a pool counts for pool_metrics and pool_stats: connections made and closed, borrowers
// timed out and refused, and the histograms of wait, use and create times. Guarded by the
// pool's mutex.
//
// The two most frequent samples, a borrow served at once (wait 0) and a return within the
// coarse clock's tick of its borrow (use 0), are counted by the core on the cache line that
// every borrow and return writes anyway (see pool_core.hpp), and handed to metrics().
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>

#include "ctxmgr/pool.hpp"

namespace ctxmgr::detail {

class pool_accounting {
  public:
    void created(std::chrono::nanoseconds took) noexcept {
        ++created_;
        create_time_.record(took);
    }
    void destroyed(std::size_t connections) noexcept { destroyed_ += connections; }
    void timed_out() noexcept { ++timeouts_; }
    void refused() noexcept { ++refused_; }
    void waited(std::chrono::nanoseconds d) noexcept { wait_time_.record(d); }
    void used(std::chrono::nanoseconds d) noexcept { use_time_.record(d); }

    [[nodiscard]] std::uint64_t created() const noexcept { return created_; }
    [[nodiscard]] std::uint64_t destroyed() const noexcept { return destroyed_; }
    [[nodiscard]] std::uint64_t timeouts() const noexcept { return timeouts_; }

    // `now`: the counts of this moment (idle, used, pending, max), completed with what is
    // counted here and the core's zeros.
    [[nodiscard]] pool_metrics metrics(pool_metrics now, std::uint64_t unwaited,
                                       std::uint64_t instant_uses) const noexcept {
        now.timeouts = timeouts_;
        now.refused = refused_;
        now.created = created_;
        now.destroyed = destroyed_;
        now.wait_time = wait_time_;
        now.wait_time.buckets[0] += unwaited;
        now.wait_time.count += unwaited;
        now.use_time = use_time_;
        now.use_time.buckets[0] += instant_uses;
        now.use_time.count += instant_uses;
        now.create_time = create_time_;
        return now;
    }

  private:
    std::uint64_t created_ = 0;
    std::uint64_t destroyed_ = 0;
    std::uint64_t timeouts_ = 0;
    std::uint64_t refused_ = 0;  // too_many_waiters
    pool_histogram wait_time_;
    pool_histogram use_time_;
    pool_histogram create_time_;
};

}  // namespace ctxmgr::detail
