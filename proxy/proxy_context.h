#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

#include "conf/proxy_settings.h"
#include "filters/policy.h"
#include "proxy/access_log.h"

namespace acr {

// Process-wide counters, updated with relaxed atomics from every event loop.
struct ProxyStats {
  std::atomic<uint64_t> accepted{0};
  std::atomic<uint64_t> active{0};
  std::atomic<uint64_t> rejected_overload{0};
  std::atomic<uint64_t> allowed{0};
  std::atomic<uint64_t> denied{0};
  std::atomic<uint64_t> bytes_up{0};
  std::atomic<uint64_t> bytes_down{0};
  std::atomic<uint64_t> accept_errors{0};
};

// What every worker shares: settings (immutable after start), the current policy snapshot
// (swapped atomically on reload; each connection keeps the one it was accepted with), the access
// log and the counters.
class ProxyContext {
 public:
  ProxyContext(ProxySettings settings, std::shared_ptr<const Policy> policy, AccessLog log)
      : settings_(std::move(settings)), policy_(std::move(policy)), log_(std::move(log)) {}

  const ProxySettings& settings() const noexcept { return settings_; }
  std::shared_ptr<const Policy> policy() const noexcept {
    return policy_.load(std::memory_order_acquire);
  }
  void setPolicy(std::shared_ptr<const Policy> policy) noexcept {
    policy_.store(std::move(policy), std::memory_order_release);
  }
  const AccessLog& log() const noexcept { return log_; }
  ProxyStats& stats() noexcept { return stats_; }

 private:
  const ProxySettings settings_;
  std::atomic<std::shared_ptr<const Policy>> policy_;
  const AccessLog log_;
  ProxyStats stats_;
};

}  // namespace acr
