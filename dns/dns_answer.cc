#include "dns/dns_answer.h"

namespace acr {

std::string_view dnsStatusName(DnsStatus status) noexcept {
  switch (status) {
    case DnsStatus::kOk:
      return "ok";
    case DnsStatus::kNxDomain:
      return "nxdomain";
    case DnsStatus::kNoAddresses:
      return "no_addresses";
    case DnsStatus::kTimeout:
      return "timeout";
    case DnsStatus::kFailure:
      return "failure";
    case DnsStatus::kCancelled:
      return "cancelled";
  }
  return "failure";
}

}  // namespace acr
