#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>

#include "conf/policy_factory.h"
#include "conf/proxy_settings.h"
#include "filters/policy.h"
#include "proxy/access_log.h"
#include "proxy/active_policy.h"
#include "proxy/connection_limits.h"
#include "proxy/deny_log_limiter.h"
#include "proxy/local_addresses.h"
#include "proxy/metrics.h"
#include "proxy/own_upstreams.h"

namespace acr {

// Process-wide counters, updated with relaxed atomics from every event loop.
struct ProxyStats {
  std::atomic<uint64_t> accepted{0};
  std::atomic<uint64_t> active{0};
  std::atomic<uint64_t> active_tunnels{0};  // connections in the relay state
  std::atomic<uint64_t> rejected_overload{0};
  std::atomic<uint64_t> allowed{0};
  std::atomic<uint64_t> denied{0};
  // Added as bytes are relayed, not when a connection ends, so that a long image pull shows
  // its progress.
  std::atomic<uint64_t> bytes_up{0};
  std::atomic<uint64_t> bytes_down{0};
  std::atomic<uint64_t> bytes_spliced{0};  // of those, moved by splice(2) (Relay: bulk directions)
  std::atomic<uint64_t> accept_errors{0};
  std::atomic<uint64_t> log_suppressed{0};  // refusals not written to the access log
  // Bytes held now in the tunnels' output buffers (settings()->max_buffer_memory), and in
  // unfinished CONNECT heads and ClientHellos (settings()->max_handshake_memory). Signed: the
  // updates of different loops may cross.
  std::atomic<int64_t> relay_buffered{0};
  std::atomic<int64_t> handshake_buffered{0};
};

// What every worker shares: the settings snapshot and the policy snapshot (each swapped
// atomically on reload; each connection keeps the ones it was accepted with), the access log and
// the counters. The settings that need a restart (listeners, workers, admin) are those of the
// first snapshot in every later one (ProxySettings' keepRestartSettings).
class ProxyContext {
 public:
  ProxyContext(ProxySettings settings, std::shared_ptr<const Policy> policy, AccessLog log)
      : ProxyContext(std::make_shared<const ProxySettings>(std::move(settings)), std::move(policy),
                     std::move(log)) {}
  ProxyContext(std::shared_ptr<const ProxySettings> settings, std::shared_ptr<const Policy> policy,
               const AccessLog& log)
      : settings_(settings),
        has_transparent_(std::any_of(settings->listeners.begin(), settings->listeners.end(),
                                     [](const ListenerSettings& listener) {
                                       return listener.kind == ListenerKind::kTransparent;
                                     })),
        local_addresses_(std::make_shared<const LocalAddresses>(
            listeningAddresses(), LocalAddresses::interfaceAddresses())),
        json_log_(log.withFormat(true)),
        text_log_(log.withFormat(false)),
        json_(settings->json_log),
        deny_log_limiter_(settings->deny_log_rate),
        limits_(settings->listeners.size(), settings->max_connections, stats_.active) {
    setPolicy(std::move(policy));
  }

  // The current settings; a connection takes its reference when accepted and reads only that.
  std::shared_ptr<const ProxySettings> settings() const noexcept {
    return settings_.load(std::memory_order_acquire);
  }
  // A reload's new settings (main thread): the log format and the deny-log rate change at once,
  // the rest for the connections accepted from now on.
  void setSettings(std::shared_ptr<const ProxySettings> settings) {
    json_.store(settings->json_log, std::memory_order_relaxed);
    deny_log_limiter_.setRate(settings->deny_log_rate);
    settings_.store(std::move(settings), std::memory_order_release);
  }
  std::shared_ptr<const Policy> policy() const noexcept {
    return active_.load(std::memory_order_acquire)->policy;
  }
  // The policy with its groups' metric series; a connection picks its group's policy from it at
  // accept (Policy::chooseClient).
  std::shared_ptr<const ActivePolicy> activePolicy() const noexcept {
    return active_.load(std::memory_order_acquire);
  }
  // Main thread: gives every group of `policy` its metric series, then swaps.
  void setPolicy(std::shared_ptr<const Policy> policy) {
    ActivePolicy active{std::move(policy), {}};
    for (const Policy::Group& group : active.policy->groups()) {
      active.group_series.push_back(metrics_.groupSeries(group.name));
    }
    active_.store(std::make_shared<const ActivePolicy>(std::move(active)),
                  std::memory_order_release);
  }
  // The snapshot the current policy came from (/policy), null before the first. setSnapshot
  // swaps the policy too and tells the metrics (generation, service tags); main thread.
  std::shared_ptr<const PolicySnapshot> snapshot() const noexcept {
    return snapshot_.load(std::memory_order_acquire);
  }
  void setSnapshot(PolicySnapshot snapshot) {
    metrics_.recordPolicy(snapshot);
    auto shared = std::make_shared<const PolicySnapshot>(std::move(snapshot));
    setPolicy(shared->policy);
    snapshot_.store(std::move(shared), std::memory_order_release);
  }
  const AccessLog& log() const noexcept {
    return json_.load(std::memory_order_relaxed) ? json_log_ : text_log_;
  }
  // Writes a finished connection's access-log line, unless it is a refusal past
  // settings()->deny_log_rate in this second (then it is only counted; see flushSuppressedLog).
  void logConnection(const AccessRecord& record) {
    if (record.allowed || deny_log_limiter_.admit(DenyLogLimiter::Clock::now())) {
      log().write(record);
    }
  }
  // Called every second from each loop's heartbeat: one summary line for the refusals left out
  // since the last call, if any (only one loop finds them).
  void flushSuppressedLog() {
    const uint64_t suppressed = deny_log_limiter_.takeSuppressed();
    if (suppressed != 0) {
      stats_.log_suppressed.fetch_add(suppressed, std::memory_order_relaxed);
      log().writeSuppressed(suppressed, deny_log_limiter_.rate());
    }
  }
  ProxyStats& stats() noexcept { return stats_; }
  const ProxyStats& stats() const noexcept { return stats_; }
  Metrics& metrics() noexcept { return metrics_; }
  // The concurrent-connection limits, enforced at accept (Worker::accept); stats().active is
  // their global count.
  ConnectionLimits& limits() noexcept { return limits_; }
  const ConnectionLimits& limits() const noexcept { return limits_; }
  const Metrics& metrics() const noexcept { return metrics_; }
  // Set once a drain (SIGTERM/SIGINT) has begun: /readyz answers 503 from then on.
  void setDraining() noexcept { draining_.store(true, std::memory_order_relaxed); }
  bool draining() const noexcept { return draining_.load(std::memory_order_relaxed); }
  OwnUpstreams& ownUpstreams() noexcept { return own_upstreams_; }
  // Whether upstream endpoints are tracked in ownUpstreams(): always. Any listener kind can be
  // handed the proxy's own upstream connection back (a REDIRECT/DNAT rule, an address the
  // self-connection check did not know yet), and one refused connection (proxy_loop) beats a loop.
  bool guardsLoops() const noexcept { return true; }
  // True when a transparent listener exists (the startup warning about --mark).
  bool hasTransparentListener() const noexcept { return has_transparent_; }
  // Every address:port the process listens on (README "Listeners": self_connection). Read by
  // the workers for each dial; replaced by LocalAddressMonitor when the host's addresses change.
  std::shared_ptr<const LocalAddresses> localAddresses() const noexcept {
    return local_addresses_.load(std::memory_order_acquire);
  }
  void setLocalAddresses(std::shared_ptr<const LocalAddresses> addresses) noexcept {
    local_addresses_.store(std::move(addresses), std::memory_order_release);
  }
  // The listeners' addresses and the admin endpoint's (they need a restart: fixed).
  std::vector<SocketAddress> listeningAddresses() const {
    const std::shared_ptr<const ProxySettings> settings = this->settings();
    std::vector<SocketAddress> out;
    for (const ListenerSettings& listener : settings->listeners) {
      out.push_back(listener.address);
    }
    if (settings->admin) {
      out.push_back(*settings->admin);
    }
    return out;
  }
  // The settings a reload found changed but cannot apply (listeners, workers, admin): their TOML
  // keys, shown by /policy. Main thread writes, the admin endpoint (main thread) reads.
  void setNeedsRestart(std::vector<std::string> keys) { needs_restart_ = std::move(keys); }
  const std::vector<std::string>& needsRestart() const noexcept { return needs_restart_; }
  // Startup findings an operator must see (a transparent listener without IP_TRANSPARENT): set
  // once on the main thread before the workers and the admin endpoint start, read-only after.
  void setListenerWarnings(std::vector<std::string> warnings) {
    listener_warnings_ = std::move(warnings);
  }
  const std::vector<std::string>& listenerWarnings() const noexcept { return listener_warnings_; }

 private:
  std::atomic<std::shared_ptr<const ProxySettings>> settings_;
  const bool has_transparent_;
  std::atomic<std::shared_ptr<const ActivePolicy>> active_;
  std::atomic<std::shared_ptr<const LocalAddresses>> local_addresses_;
  std::atomic<std::shared_ptr<const PolicySnapshot>> snapshot_;
  const AccessLog json_log_;
  const AccessLog text_log_;
  std::atomic<bool> json_;
  DenyLogLimiter deny_log_limiter_;
  ProxyStats stats_;
  ConnectionLimits limits_;  // after stats_, whose `active` it counts in
  Metrics metrics_;
  std::atomic<bool> draining_{false};
  OwnUpstreams own_upstreams_;
  std::vector<std::string> listener_warnings_;
  std::vector<std::string> needs_restart_;
};

}  // namespace acr
