#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "filters/ip_address.h"

namespace acr {

// One upstream DNS server named in the configuration.
struct DnsServer {
  static constexpr uint16_t kDefaultPort = 53;

  IpAddress address;
  uint16_t port = kDefaultPort;

  // Strict parse of "ADDR", "ADDR:PORT" (IPv4), "V6" or "[V6]" or "[V6]:PORT". Addresses as
  // IpAddress::parse; PORT is 1..65535 in decimal without leading zeros. On failure returns empty
  // and, if `error` is given, says why.
  static std::optional<DnsServer> parse(std::string_view text, std::string* error = nullptr);

  // "ADDR:PORT" or "[V6]:PORT".
  std::string toString() const;

  friend bool operator==(const DnsServer&, const DnsServer&) = default;
};

}  // namespace acr
