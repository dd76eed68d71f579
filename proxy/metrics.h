#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>

#include "dns/dns_observer.h"
#include "proxy/access_log.h"
#include "proxy/happy_eyeballs_dialer.h"

namespace acr {

struct PolicySnapshot;
struct ProxyStats;

// Latencies in fixed buckets (upper bounds in seconds). observe() is lock-free and wait-free
// (relaxed atomics), callable from any thread.
class LatencyHistogram {
 public:
  static constexpr std::array<double, 14> kBounds = {
      0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};

  // A consistent-looking view for rendering: cumulative[i] counts observations <= kBounds[i],
  // cumulative.back() (+Inf) equals count, and the counts never decrease along the buckets.
  struct Snapshot {
    std::array<uint64_t, kBounds.size() + 1> cumulative{};
    uint64_t count = 0;
    double sum_seconds = 0;
  };

  void observe(std::chrono::nanoseconds elapsed) noexcept;
  Snapshot snapshot() const noexcept;

 private:
  std::array<std::atomic<uint64_t>, kBounds.size() + 1> buckets_{};  // per bucket, not cumulative
  std::atomic<uint64_t> sum_ns_{0};
};

// Connection counts by (listener, decision, reason), in a fixed open-addressing table so that
// add() takes no lock: a key's slot is claimed once with a compare-exchange, then only its
// counter changes. Labels longer than kMaxLabel bytes are truncated; keys beyond kSlots distinct
// ones are counted under reason "other".
class ConnectionCounters {
 public:
  static constexpr size_t kSlots = 512;
  static constexpr size_t kMaxLabel = 47;

  void add(std::string_view listener, Outcome decision, std::string_view reason) noexcept;
  // Calls fn(listener, decision, reason, count) for every key counted so far.
  template <class Fn>
  void forEach(Fn&& fn) const;

 private:
  enum SlotState : uint8_t { kEmpty, kClaimed, kReady };
  struct Slot {
    std::atomic<uint8_t> state{kEmpty};
    Outcome decision = Outcome::kDeny;
    uint8_t listener_length = 0;
    uint8_t reason_length = 0;
    char listener[kMaxLabel] = {};
    char reason[kMaxLabel] = {};
    std::atomic<uint64_t> count{0};
  };

  std::array<Slot, kSlots> slots_;
  std::array<std::atomic<uint64_t>, 4> overflow_{};  // by Outcome
};

// The proxy's metrics (README "Admin endpoint and metrics"). Every record* and DnsObserver call is
// lock-free and may come from any worker thread; recordPolicy and render are for the main thread,
// which runs the admin endpoint.
class Metrics final : public DnsObserver {
 public:
  // Counts one finished connection from its access-log record: its (listener, decision, reason)
  // and its decision latency (AccessRecord::decision_ms; for a refusal without one,
  // the connection's total time).
  void recordConnection(const AccessRecord& record) noexcept;
  void recordReload(bool ok) noexcept;
  // Counts one finished upstream connection attempt by address family and outcome.
  void recordConnectAttempt(bool ipv6, AttemptOutcome outcome) noexcept;
  // The policy now in force (at start and after every successful reload): bumps the generation
  // and remembers the service-tags changeNumber and file.
  void recordPolicy(const PolicySnapshot& snapshot);

  void onCacheHit() noexcept override;
  void onCacheMiss() noexcept override;
  void onResolution(DnsStatus status, std::chrono::nanoseconds elapsed) noexcept override;
  void onChannelReset() noexcept override;

  uint64_t policyGeneration() const noexcept {
    return policy_generation_.load(std::memory_order_relaxed);
  }

  // Appends every metric family to `out` in the Prometheus text exposition format 0.0.4: each
  // family's # HELP and # TYPE lines, then its samples. `stats` gives the process counters; `now`
  // dates the service-tags file age (from the file's mtime).
  void render(std::string& out, const ProxyStats& stats,
              std::chrono::system_clock::time_point now) const;

  // Label value escaping of the exposition format: backslash, double quote and newline.
  static void appendLabelValue(std::string& out, std::string_view value);

 private:
  ConnectionCounters connections_;
  std::atomic<uint64_t> dns_cache_hits_{0};
  std::atomic<uint64_t> dns_cache_misses_{0};
  LatencyHistogram dns_latency_;
  // Resolutions by DnsStatus (indexed by the enum; kCancelled is never delivered, never shown).
  std::array<std::atomic<uint64_t>, static_cast<size_t>(DnsStatus::kCancelled) + 1>
      dns_resolutions_{};
  std::atomic<uint64_t> dns_channel_resets_{0};
  LatencyHistogram decision_latency_;
  // [ipv6][outcome]
  std::array<std::array<std::atomic<uint64_t>, kAttemptOutcomeCount>, 2> connect_attempts_{};
  std::atomic<uint64_t> reloads_ok_{0};
  std::atomic<uint64_t> reloads_failed_{0};
  std::atomic<uint64_t> policy_generation_{0};
  std::atomic<bool> has_change_number_{false};
  std::atomic<int64_t> change_number_{0};
  mutable std::mutex path_mutex_;  // the path changes on reload only; never on the data path
  std::string service_tags_path_;
};

template <class Fn>
void ConnectionCounters::forEach(Fn&& fn) const {
  for (const Slot& slot : slots_) {
    if (slot.state.load(std::memory_order_acquire) != kReady) {
      continue;
    }
    const uint64_t count = slot.count.load(std::memory_order_relaxed);
    if (count != 0) {
      fn(std::string_view(slot.listener, slot.listener_length), slot.decision,
         std::string_view(slot.reason, slot.reason_length), count);
    }
  }
  for (const Outcome decision :
       {Outcome::kAllow, Outcome::kDeny, Outcome::kIncomplete, Outcome::kWouldDeny}) {
    const uint64_t count = overflow_[static_cast<size_t>(decision)].load(std::memory_order_relaxed);
    if (count != 0) {
      fn(std::string_view("other"), decision, std::string_view("other"), count);
    }
  }
}

}  // namespace acr
