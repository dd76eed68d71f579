#pragma once

#include <vector>

#include "filters/cidr_set.h"
#include "filters/decision.h"

namespace acr {

// The special-purpose address ranges a resolved or original destination may not be in unless the
// policy allows it explicitly: loopback, unspecified, RFC 1918, CGNAT, link-local (with the
// instance metadata address), Azure's 168.63.129.16, multicast, broadcast, reserved and
// documentation ranges, and their IPv6 counterparts (with 3fff::/20, RFC 9637, and the local-use
// NAT64 prefix 64:ff9b:1::/48, RFC 8215). IPv4 hidden in IPv6 is unwrapped by the policy before it
// asks (IpAddress::embeddedV4), so the /48 only catches the layouts embeddedV4 does not read.
class SpecialRanges {
 public:
  static const SpecialRanges& instance();

  // The rule describing the range that holds `address`, or nullptr.
  const Rule* find(const IpAddress& address) const noexcept {
    const uint32_t index = set_.lookup(address);
    return index == CidrSet::kNoMatch ? nullptr : &rules_[index];
  }
  const std::vector<Rule>& rules() const noexcept { return rules_; }

 private:
  SpecialRanges();

  std::vector<Rule> rules_;
  CidrSet set_;
};

}  // namespace acr
