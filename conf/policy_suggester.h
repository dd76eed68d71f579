#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>

namespace acr {

// Builds the smallest [policy] that allows what an access log shows was let through (the
// `acr-egress suggest` command; README "Rolling out"). Feed it the JSON access-log lines of, say,
// a report-only week; it prints TOML for the configuration file.
//
// What it counts: lines whose "decision" is "allow" (report-only's would_deny lines included)
// with a "target" and a "port". Denials, summaries and lines without a target are ignored.
// What it writes: ACR names are recognised (REGISTRY.azurecr.io, REGISTRY.REGION.data.azurecr.io,
// REGISTRY.REGION.geo.azurecr.io) and become `registries` and `regions`; every other name becomes
// an exact `allow_hosts` entry, an IP literal a /32 or /128 `allow_cidrs` entry, and the ports
// `ports`. It never writes a wildcard: a registry becomes a `registries` entry only when the
// regions it was seen in are exactly the `regions` written (the set of the busiest such registry),
// since `registries` without `regions` would allow any region; other registries' names are listed
// exactly. Each entry carries a comment with the number of connections it covers.
class PolicySuggester {
 public:
  enum class LineStatus : uint8_t {
    kCounted,     // a connection that was let through
    kIgnored,     // valid, but not such a connection (a denial, a summary line)
    kUnreadable,  // not a JSON object, or its target or port is not usable
  };

  LineStatus addLine(std::string_view line);
  // One connection let through to `target` (a host name or an IP literal) on `port`. Returns
  // false, counting nothing, for a target that is neither a valid host name nor an IP literal.
  bool addConnection(std::string_view target, uint16_t port);

  uint64_t connections() const noexcept { return connections_; }
  // The TOML text; names and ports seen fewer than `min_count` times are left out. Empty when no
  // host name is left (IP literals alone cannot make a policy: a [policy] without any host rule
  // means the embedded default, which would allow far more than was seen).
  std::string toToml(uint64_t min_count = 1) const;

 private:
  std::map<std::string, uint64_t> hosts_;  // normalised name or canonical IP text -> count
  std::map<uint16_t, uint64_t> ports_;
  uint64_t connections_ = 0;
};

}  // namespace acr
