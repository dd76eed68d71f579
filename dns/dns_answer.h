#pragma once

#include <chrono>
#include <cstdint>
#include <string_view>
#include <vector>

#include "filters/ip_address.h"

namespace acr {

// How one resolution ended. The names (dnsStatusName) are stable: logs and tests use them.
enum class DnsStatus : uint8_t {
  kOk,           // "ok": at least one A or AAAA address
  kNxDomain,     // "nxdomain": the name does not exist
  kNoAddresses,  // "no_addresses": the name exists but has no A and no AAAA record
  kTimeout,      // "timeout": no answer within ResolverOptions::timeout
  kFailure,      // "failure": SERVFAIL, REFUSED, connection refused, bad reply, invalid name, ...
  kCancelled,    // "cancelled": reserved; the Resolver never delivers it (see Resolver)
};
std::string_view dnsStatusName(DnsStatus status) noexcept;

// The outcome of resolving one name, handed to every waiter of that name.
struct DnsAnswer {
  DnsStatus status = DnsStatus::kFailure;
  // kOk only: the AAAA addresses, then the A addresses, each family in c-ares order (RFC 6724
  // destination sorting within the family), without duplicates, at most kMaxAddresses of them.
  std::vector<IpAddress> addresses;
  // How long the cache keeps this answer: for kOk the smallest TTL of the answer's records
  // (addresses and CNAMEs) clamped to [min_ttl, max_ttl]; for kNxDomain / kNoAddresses the
  // negative_ttl; 0 for answers that are never cached. A cache hit reports the TTL the entry was
  // stored with, not the time it has left.
  std::chrono::seconds ttl{0};
  bool from_cache = false;

  static constexpr size_t kMaxAddresses = 64;
};

}  // namespace acr
