#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>

namespace acr {

// Caps the access-log lines written for refused connections at `rate` per second (THREATS R10:
// a flood of denied connections must not flood the log or the disk). Allowed connections are
// always logged, and every connection is still counted in /metrics; what was left out is
// reported by one summary line per second (takeSuppressed). A fixed one-second window: simple,
// exact to count, and burst-tolerant enough for a log. rate 0: no cap. Thread-safe; the lock is
// taken only on the deny path.
class DenyLogLimiter {
 public:
  using Clock = std::chrono::steady_clock;

  explicit DenyLogLimiter(uint32_t rate) : rate_(rate) {}

  // True if this refused connection's line may be written now; false counts it as suppressed.
  bool admit(Clock::time_point now) {
    const uint32_t rate = rate_.load(std::memory_order_relaxed);
    if (rate == 0) {
      return true;
    }
    std::lock_guard lock(mutex_);
    if (now - window_start_ >= std::chrono::seconds(1)) {
      window_start_ = now;
      written_ = 0;
    }
    if (written_ < rate) {
      ++written_;
      return true;
    }
    ++suppressed_;
    return false;
  }

  // Lines suppressed since the last call (then reset to 0).
  uint64_t takeSuppressed() {
    std::lock_guard lock(mutex_);
    const uint64_t suppressed = suppressed_;
    suppressed_ = 0;
    return suppressed;
  }

  uint32_t rate() const noexcept { return rate_.load(std::memory_order_relaxed); }
  // A reload's new rate; applies from the next admit().
  void setRate(uint32_t rate) noexcept { rate_.store(rate, std::memory_order_relaxed); }

 private:
  std::atomic<uint32_t> rate_;
  std::mutex mutex_;
  Clock::time_point window_start_{};
  uint32_t written_ = 0;
  uint64_t suppressed_ = 0;
};

}  // namespace acr
