#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "conf/proxy_settings.h"
#include "dns/dns_observer.h"
#include "proxy/access_log.h"
#include "proxy/close_reason.h"
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

// Connection counts by (listener, decision, reason): one relaxed atomic per key in fixed arrays,
// so add() takes no lock and no key is ever lumped with another. Every reason is a row of the
// close-reason table (proxy/close_reason.h).
class ConnectionCounters {
 public:
  static constexpr size_t kListeners = 3;  // ListenerKind
  static constexpr size_t kOutcomes = 4;   // Outcome

  void add(ListenerKind listener, Outcome decision, CloseReason reason) noexcept;
  uint64_t count(ListenerKind listener, Outcome decision, CloseReason reason) const noexcept;
  // Calls fn(listener, decision, reason, count) for every key counted at least once, by listener,
  // then reason (table order), then decision.
  template <class Fn>
  void forEach(Fn&& fn) const;

 private:
  static size_t index(ListenerKind listener, Outcome decision, CloseReason reason) noexcept {
    return (static_cast<size_t>(listener) * kCloseReasonCount + static_cast<size_t>(reason)) *
               kOutcomes +
           static_cast<size_t>(decision);
  }

  std::array<std::atomic<uint64_t>, kListeners * kCloseReasonCount * kOutcomes> counts_{};
};

// The proxy's metrics (README "Admin endpoint and metrics"). Every record* and DnsObserver call is
// lock-free and may come from any worker thread; recordPolicy and render are for the main thread,
// which runs the admin endpoint.
class Metrics final : public DnsObserver {
 public:
  // Counts one finished connection: its (listener, decision from the record, reason) and its
  // decision latency (AccessRecord::decision_ms; for a refusal without one, the connection's
  // total time). `reason` is the one the record's reason names.
  void recordConnection(ListenerKind listener, CloseReason reason,
                        const AccessRecord& record) noexcept;
  const ConnectionCounters& connections() const noexcept { return connections_; }
  void recordReload(bool ok) noexcept;
  // Counts one finished upstream connection attempt by address family and outcome.
  void recordConnectAttempt(bool ipv6, AttemptOutcome outcome) noexcept;
  // The policy now in force (at start and after every successful reload): bumps the generation
  // and remembers the service-tags changeNumber and file.
  void recordPolicy(const PolicySnapshot& snapshot);
  // The series of client group `name` in acr_egress_group_connections_total: made the first time
  // a policy names the group and kept for the life of the process, so that a group a reload keeps
  // goes on counting and one it adds gets a new series. Main thread (it may allocate).
  // kNoGroupSeries once kMaxGroupSeries names exist: that group's connections go uncounted there.
  uint32_t groupSeries(std::string_view name);
  static constexpr uint32_t kNoGroupSeries = UINT32_MAX;
  static constexpr size_t kMaxGroupSeries = 1024;
  uint64_t groupCount(uint32_t series, Outcome decision) const noexcept;

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
  // Connections by (group series, Outcome): fixed, so that a worker's add never meets a
  // reallocation; only the names grow, under group_mutex_.
  std::array<std::array<std::atomic<uint64_t>, 4>, kMaxGroupSeries> group_connections_{};
  mutable std::mutex group_mutex_;
  std::vector<std::string> group_names_;  // by series
  mutable std::mutex path_mutex_;         // the path changes on reload only; never on the data path
  std::string service_tags_path_;
};

template <class Fn>
void ConnectionCounters::forEach(Fn&& fn) const {
  for (size_t l = 0; l < kListeners; ++l) {
    for (size_t r = 0; r < kCloseReasonCount; ++r) {
      for (size_t d = 0; d < kOutcomes; ++d) {
        const auto listener = static_cast<ListenerKind>(l);
        const auto decision = static_cast<Outcome>(d);
        const auto reason = static_cast<CloseReason>(r);
        const uint64_t value =
            counts_[index(listener, decision, reason)].load(std::memory_order_relaxed);
        if (value != 0) {
          fn(listener, decision, reason, value);
        }
      }
    }
  }
}

}  // namespace acr
