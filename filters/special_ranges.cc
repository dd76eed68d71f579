#include "filters/special_ranges.h"

#include <cstdlib>

namespace acr {
namespace {

struct Range {
  const char* cidr;
  const char* what;
};

// Sentences read "denied: <address> is <what> and in no allowed range".
constexpr Range kRanges[] = {
    {"0.0.0.0/8", "unspecified (this network, 0.0.0.0/8)"},
    {"10.0.0.0/8", "private (RFC 1918)"},
    {"100.64.0.0/10", "carrier-grade NAT (RFC 6598)"},
    {"127.0.0.0/8", "loopback"},
    {"169.254.0.0/16", "link-local"},
    {"169.254.169.254/32", "the instance metadata service (link-local)"},
    {"168.63.129.16/32", "Azure's platform address 168.63.129.16 (DNS, DHCP, health probes)"},
    {"172.16.0.0/12", "private (RFC 1918)"},
    {"192.0.0.0/24", "reserved (IETF protocol assignments)"},
    {"192.0.2.0/24", "reserved (documentation, RFC 5737)"},
    {"192.88.99.0/24", "reserved (6to4 relay anycast)"},
    {"192.168.0.0/16", "private (RFC 1918)"},
    {"198.18.0.0/15", "reserved (benchmarking, RFC 2544)"},
    {"198.51.100.0/24", "reserved (documentation, RFC 5737)"},
    {"203.0.113.0/24", "reserved (documentation, RFC 5737)"},
    {"224.0.0.0/4", "multicast"},
    {"240.0.0.0/4", "reserved (240.0.0.0/4)"},
    {"255.255.255.255/32", "broadcast"},
    {"::/128", "unspecified (IPv6)"},
    {"::1/128", "loopback (IPv6)"},
    {"64:ff9b:1::/48", "local-use NAT64 (RFC 8215) with an IPv4 layout other than /96"},
    {"100::/64", "reserved (IPv6 discard-only)"},
    {"2001::/23", "reserved (IPv6 IETF protocol assignments)"},
    {"2001:db8::/32", "reserved (IPv6 documentation)"},
    {"3fff::/20", "reserved (IPv6 documentation, RFC 9637)"},
    {"fc00::/7", "private (IPv6 unique local)"},
    {"fe80::/10", "link-local (IPv6)"},
    {"fec0::/10", "reserved (IPv6 site-local)"},
    {"ff00::/8", "multicast (IPv6)"},
};

}  // namespace

const SpecialRanges& SpecialRanges::instance() {
  static const SpecialRanges ranges;
  return ranges;
}

SpecialRanges::SpecialRanges() {
  std::vector<CidrSet::Entry> entries;
  for (const Range& range : kRanges) {
    const auto cidr = Cidr::parse(range.cidr);
    if (!cidr) {
      std::abort();  // the table above is a compile-time constant; a typo is a programming error
    }
    entries.push_back({*cidr, static_cast<uint32_t>(rules_.size())});
    rules_.push_back(
        {Rule::Kind::kSpecialRange, range.what, std::string("special range ") + range.cidr});
  }
  set_ = CidrSet(entries);
}

}  // namespace acr
