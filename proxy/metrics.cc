#include "proxy/metrics.h"

#include <sys/stat.h>

#include <algorithm>
#include <charconv>

#include "conf/policy_factory.h"
#include "proxy/proxy_context.h"

namespace acr {
namespace {

constexpr auto kRelaxed = std::memory_order_relaxed;

static_assert(static_cast<size_t>(ListenerKind::kSni) + 1 == ConnectionCounters::kListeners);
static_assert(static_cast<size_t>(Outcome::kWouldDeny) + 1 == ConnectionCounters::kOutcomes);

void appendNumber(std::string& out, uint64_t value) {
  char buffer[24];
  const auto result = std::to_chars(buffer, buffer + sizeof(buffer), value);
  out.append(buffer, result.ptr);
}

void appendNumber(std::string& out, int64_t value) {
  char buffer[24];
  const auto result = std::to_chars(buffer, buffer + sizeof(buffer), value);
  out.append(buffer, result.ptr);
}

// Shortest round-trip text in fixed notation ("0.0005", "2.5", "10"): bucket bounds read as
// people write them, and Prometheus parses any float.
void appendNumber(std::string& out, double value) {
  char buffer[400];
  const auto result =
      std::to_chars(buffer, buffer + sizeof(buffer), value, std::chars_format::fixed);
  out.append(buffer, result.ptr);
}

// HELP text escaping: backslash and newline.
void appendHelpText(std::string& out, std::string_view text) {
  for (const char c : text) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
}

void appendFamily(std::string& out, std::string_view name, std::string_view type,
                  std::string_view help) {
  out += "# HELP ";
  out += name;
  out += ' ';
  appendHelpText(out, help);
  out += "\n# TYPE ";
  out += name;
  out += ' ';
  out += type;
  out += '\n';
}

template <class T>
void appendSample(std::string& out, std::string_view name, T value) {
  out += name;
  out += ' ';
  appendNumber(out, value);
  out += '\n';
}

template <class T>
void appendScalar(std::string& out, std::string_view name, std::string_view type,
                  std::string_view help, T value) {
  appendFamily(out, name, type, help);
  appendSample(out, name, value);
}

void appendHistogram(std::string& out, std::string_view name, std::string_view help,
                     const LatencyHistogram& histogram) {
  const LatencyHistogram::Snapshot snapshot = histogram.snapshot();
  appendFamily(out, name, "histogram", help);
  const std::string bucket = std::string(name) + "_bucket{le=\"";
  for (size_t i = 0; i < snapshot.cumulative.size(); ++i) {
    out += bucket;
    if (i < LatencyHistogram::kBounds.size()) {
      appendNumber(out, LatencyHistogram::kBounds[i]);
    } else {
      out += "+Inf";
    }
    out += "\"} ";
    appendNumber(out, snapshot.cumulative[i]);
    out += '\n';
  }
  appendSample(out, std::string(name) + "_sum", snapshot.sum_seconds);
  appendSample(out, std::string(name) + "_count", snapshot.count);
}

}  // namespace

// ---- LatencyHistogram ----

void LatencyHistogram::observe(std::chrono::nanoseconds elapsed) noexcept {
  const int64_t ns = std::max<int64_t>(elapsed.count(), 0);
  const double seconds = static_cast<double>(ns) / 1e9;
  size_t index = 0;
  while (index < kBounds.size() && seconds > kBounds[index]) {
    ++index;
  }
  buckets_[index].fetch_add(1, kRelaxed);
  sum_ns_.fetch_add(static_cast<uint64_t>(ns), kRelaxed);
}

LatencyHistogram::Snapshot LatencyHistogram::snapshot() const noexcept {
  Snapshot snapshot;
  uint64_t total = 0;
  for (size_t i = 0; i < buckets_.size(); ++i) {
    total += buckets_[i].load(kRelaxed);
    snapshot.cumulative[i] = total;
  }
  snapshot.count = total;
  snapshot.sum_seconds = static_cast<double>(sum_ns_.load(kRelaxed)) / 1e9;
  return snapshot;
}

// ---- ConnectionCounters ----

void ConnectionCounters::add(ListenerKind listener, Outcome decision, CloseReason reason) noexcept {
  const size_t i = index(listener, decision, reason);
  if (i < counts_.size()) {
    counts_[i].fetch_add(1, kRelaxed);
  }
}

uint64_t ConnectionCounters::count(ListenerKind listener, Outcome decision,
                                   CloseReason reason) const noexcept {
  const size_t i = index(listener, decision, reason);
  return i < counts_.size() ? counts_[i].load(kRelaxed) : 0;
}

// ---- Metrics ----

void Metrics::recordConnection(ListenerKind listener, CloseReason reason,
                               const AccessRecord& record) noexcept {
  connections_.add(listener, outcomeOf(record), reason);
  if (record.group_series < kMaxGroupSeries) {
    group_connections_[record.group_series][static_cast<size_t>(outcomeOf(record))].fetch_add(
        1, kRelaxed);
  }
  double decision_ms = record.decision_ms;
  if (decision_ms < 0 && !record.allowed) {
    decision_ms = record.total_ms;
  }
  if (decision_ms >= 0) {
    decision_latency_.observe(std::chrono::nanoseconds(static_cast<int64_t>(decision_ms * 1e6)));
  }
}

uint32_t Metrics::groupSeries(std::string_view name) {
  const std::lock_guard lock(group_mutex_);
  for (size_t i = 0; i < group_names_.size(); ++i) {
    if (group_names_[i] == name) {
      return static_cast<uint32_t>(i);
    }
  }
  if (group_names_.size() >= kMaxGroupSeries) {
    return kNoGroupSeries;
  }
  group_names_.emplace_back(name);
  return static_cast<uint32_t>(group_names_.size() - 1);
}

uint64_t Metrics::groupCount(uint32_t series, Outcome decision) const noexcept {
  return series < kMaxGroupSeries
             ? group_connections_[series][static_cast<size_t>(decision)].load(kRelaxed)
             : 0;
}

void Metrics::recordConnectAttempt(bool ipv6, AttemptOutcome outcome) noexcept {
  const auto index = static_cast<size_t>(outcome);
  if (index < kAttemptOutcomeCount) {
    connect_attempts_[ipv6 ? 1 : 0][index].fetch_add(1, kRelaxed);
  }
}

void Metrics::recordReload(bool ok) noexcept {
  (ok ? reloads_ok_ : reloads_failed_).fetch_add(1, kRelaxed);
}

void Metrics::recordPolicy(const PolicySnapshot& snapshot) {
  change_number_.store(snapshot.service_tags_change_number.value_or(0), kRelaxed);
  has_change_number_.store(snapshot.service_tags_change_number.has_value(), kRelaxed);
  {
    const std::lock_guard lock(path_mutex_);
    service_tags_path_ = snapshot.service_tags_path;
  }
  policy_generation_.fetch_add(1, kRelaxed);
}

void Metrics::onCacheHit() noexcept { dns_cache_hits_.fetch_add(1, kRelaxed); }

void Metrics::onCacheMiss() noexcept { dns_cache_misses_.fetch_add(1, kRelaxed); }

void Metrics::onResolution(DnsStatus status, std::chrono::nanoseconds elapsed) noexcept {
  dns_latency_.observe(elapsed);
  const auto index = static_cast<size_t>(status);
  if (index < dns_resolutions_.size()) {
    dns_resolutions_[index].fetch_add(1, kRelaxed);
  }
}

void Metrics::onChannelReset() noexcept { dns_channel_resets_.fetch_add(1, kRelaxed); }

void Metrics::appendLabelValue(std::string& out, std::string_view value) {
  for (const char c : value) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
}

void Metrics::render(std::string& out, const ProxyStats& stats,
                     std::chrono::system_clock::time_point now) const {
  appendFamily(out, "acr_egress_connections_total", "counter",
               "Connections ended, by listener, decision (allow: the tunnel was relayed; "
               "incomplete: allowed, ended before relaying; would_deny: relayed only because of "
               "report-only) and reason (the access log's reason).");
  connections_.forEach(
      [&out](ListenerKind listener, Outcome decision, CloseReason reason, uint64_t count) {
        out += "acr_egress_connections_total{listener=\"";
        appendLabelValue(out, listenerKindName(listener));
        out += "\",decision=\"";
        out += outcomeName(decision);
        out += "\",reason=\"";
        appendLabelValue(out, closeReasonName(reason));
        out += "\"} ";
        appendNumber(out, count);
        out += '\n';
      });
  {
    const std::lock_guard lock(group_mutex_);
    if (!group_names_.empty()) {
      appendFamily(out, "acr_egress_group_connections_total", "counter",
                   "Connections ended, by the client group ([[group]]) whose policy judged them "
                   "and decision (as in acr_egress_connections_total). Connections judged by the "
                   "top-level policy are not in this family.");
      for (size_t i = 0; i < group_names_.size(); ++i) {
        for (const Outcome decision :
             {Outcome::kAllow, Outcome::kDeny, Outcome::kIncomplete, Outcome::kWouldDeny}) {
          out += "acr_egress_group_connections_total{group=\"";
          appendLabelValue(out, group_names_[i]);
          out += "\",decision=\"";
          out += outcomeName(decision);
          out += "\"} ";
          appendNumber(out, groupCount(static_cast<uint32_t>(i), decision));
          out += '\n';
        }
      }
    }
  }
  appendScalar(out, "acr_egress_active_connections", "gauge",
               "Connections open now (being judged, dialling or relaying).",
               stats.active.load(kRelaxed));
  appendScalar(out, "acr_egress_active_tunnels", "gauge",
               "Tunnels relaying now (allowed, upstream connected).",
               stats.active_tunnels.load(kRelaxed));
  appendScalar(out, "acr_egress_bytes_up_total", "counter",
               "Bytes relayed from clients to upstreams, counted as they are relayed.",
               stats.bytes_up.load(kRelaxed));
  appendScalar(out, "acr_egress_bytes_down_total", "counter",
               "Bytes relayed from upstreams to clients, counted as they are relayed.",
               stats.bytes_down.load(kRelaxed));
  appendScalar(out, "acr_egress_relay_spliced_bytes_total", "counter",
               "Of the bytes relayed both ways, those moved socket to socket by splice(2), never "
               "copied through the proxy (bulk transfers).",
               stats.bytes_spliced.load(kRelaxed));
  appendScalar(out, "acr_egress_accepted_total", "counter", "Connections accepted.",
               stats.accepted.load(kRelaxed));
  appendScalar(out, "acr_egress_rejected_overload_total", "counter",
               "Connections closed at accept by a connection limit (max_connections, per "
               "listener or per client: the reason label of acr_egress_connections_total says "
               "which).",
               stats.rejected_overload.load(kRelaxed));
  appendScalar(out, "acr_egress_access_log_suppressed_total", "counter",
               "Refused connections not written to the access log (past deny_log_rate per second; "
               "still counted in acr_egress_connections_total).",
               stats.log_suppressed.load(kRelaxed));
  appendScalar(out, "acr_egress_relay_buffered_bytes", "gauge",
               "Bytes waiting in the tunnels' buffers for a slow side (max_buffer_memory).",
               static_cast<uint64_t>(std::max<int64_t>(0, stats.relay_buffered.load(kRelaxed))));
  appendScalar(
      out, "acr_egress_handshake_buffered_bytes", "gauge",
      "Bytes held by unfinished CONNECT heads and ClientHellos (max_handshake_memory).",
      static_cast<uint64_t>(std::max<int64_t>(0, stats.handshake_buffered.load(kRelaxed))));
  appendScalar(out, "acr_egress_accept_errors_total", "counter",
               "accept() failures (descriptor exhaustion and others).",
               stats.accept_errors.load(kRelaxed));
  appendScalar(out, "acr_egress_dns_cache_hits_total", "counter",
               "Name resolutions answered from the DNS cache.", dns_cache_hits_.load(kRelaxed));
  appendScalar(out, "acr_egress_dns_cache_misses_total", "counter",
               "Name resolutions not in the DNS cache.", dns_cache_misses_.load(kRelaxed));
  appendFamily(out, "acr_egress_dns_resolutions_total", "counter",
               "DNS resolutions (cache misses; one per name in flight, shared by its waiters), by "
               "outcome.");
  for (const DnsStatus status : {DnsStatus::kOk, DnsStatus::kNxDomain, DnsStatus::kNoAddresses,
                                 DnsStatus::kTimeout, DnsStatus::kFailure}) {
    out += "acr_egress_dns_resolutions_total{status=\"";
    out += dnsStatusName(status);
    out += "\"} ";
    appendNumber(out, dns_resolutions_[static_cast<size_t>(status)].load(kRelaxed));
    out += '\n';
  }
  appendScalar(out, "acr_egress_dns_channel_resets_total", "counter",
               "c-ares channels replaced (resolv.conf changed, or after a refused or timed-out "
               "resolution).",
               dns_channel_resets_.load(kRelaxed));
  appendHistogram(out, "acr_egress_dns_lookup_duration_seconds",
                  "Time of DNS lookups (cache misses), from start to answer, timeout or failure.",
                  dns_latency_);
  appendHistogram(out, "acr_egress_decision_duration_seconds",
                  "Time from accept to the verdict: the tunnel relaying, or the refusal.",
                  decision_latency_);
  appendFamily(out, "acr_egress_upstream_connect_total", "counter",
               "Upstream connection attempts (Happy Eyeballs: several per connection), by address "
               "family and outcome (the access log's attempts).");
  for (const bool ipv6 : {false, true}) {
    for (size_t i = 0; i < kAttemptOutcomeCount; ++i) {
      const auto outcome = static_cast<AttemptOutcome>(i);
      if (outcome == AttemptOutcome::kPending) {
        continue;
      }
      out += ipv6 ? "acr_egress_upstream_connect_total{family=\"ipv6\",outcome=\""
                  : "acr_egress_upstream_connect_total{family=\"ipv4\",outcome=\"";
      out += attemptOutcomeName(outcome);
      out += "\"} ";
      appendNumber(out, connect_attempts_[ipv6 ? 1 : 0][i].load(kRelaxed));
      out += '\n';
    }
  }
  appendFamily(out, "acr_egress_reloads_total", "counter",
               "Policy reloads (SIGHUP), by result; a failed reload keeps the old policy.");
  out += "acr_egress_reloads_total{result=\"ok\"} ";
  appendNumber(out, reloads_ok_.load(kRelaxed));
  out += "\nacr_egress_reloads_total{result=\"failed\"} ";
  appendNumber(out, reloads_failed_.load(kRelaxed));
  out += '\n';
  appendScalar(out, "acr_egress_policy_generation", "gauge",
               "Policies loaded since start: 1 for the first, +1 per successful reload.",
               policy_generation_.load(kRelaxed));
  appendFamily(out, "acr_egress_service_tags_change_number", "gauge",
               "changeNumber of the service-tags file of the policy in force (absent without "
               "one).");
  if (has_change_number_.load(kRelaxed)) {
    appendSample(out, "acr_egress_service_tags_change_number", change_number_.load(kRelaxed));
  }
  appendFamily(out, "acr_egress_service_tags_file_age_seconds", "gauge",
               "Seconds since the service-tags file was last modified (absent without one).");
  std::string path;
  {
    const std::lock_guard lock(path_mutex_);
    path = service_tags_path_;
  }
  struct stat info {};
  if (!path.empty() && stat(path.c_str(), &info) == 0) {
    const auto mtime = std::chrono::system_clock::time_point(
        std::chrono::seconds(info.st_mtim.tv_sec) + std::chrono::nanoseconds(info.st_mtim.tv_nsec));
    const double age = std::chrono::duration<double>(now - mtime).count();
    appendSample(out, "acr_egress_service_tags_file_age_seconds", std::max(age, 0.0));
  }
}

}  // namespace acr
