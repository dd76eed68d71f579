#include "dns/dns_server.h"

namespace acr {
namespace {

std::optional<uint16_t> parsePort(std::string_view text) {
  if (text.empty() || text.size() > 5 || text[0] == '0') {
    return std::nullopt;
  }
  uint32_t value = 0;
  for (char c : text) {
    if (c < '0' || c > '9') {
      return std::nullopt;
    }
    value = value * 10 + static_cast<uint32_t>(c - '0');
  }
  if (value > 65535) {
    return std::nullopt;
  }
  return static_cast<uint16_t>(value);
}

std::optional<DnsServer> fail(std::string* error, const char* why) {
  if (error != nullptr) {
    *error = why;
  }
  return std::nullopt;
}

}  // namespace

std::optional<DnsServer> DnsServer::parse(std::string_view text, std::string* error) {
  std::string_view address_text = text;
  std::string_view port_text;
  bool has_port = false;
  if (!text.empty() && text.front() == '[') {
    const size_t close = text.find(']');
    if (close == std::string_view::npos) {
      return fail(error, "'[' without ']'");
    }
    address_text = text.substr(1, close - 1);
    const std::string_view rest = text.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') {
        return fail(error, "expected ':PORT' after ']'");
      }
      port_text = rest.substr(1);
      has_port = true;
    }
  } else if (const size_t colon = text.find(':');
             colon != std::string_view::npos &&
             text.find(':', colon + 1) == std::string_view::npos) {
    // Exactly one colon: IPv4 "ADDR:PORT". Two or more colons: a bare IPv6 address.
    address_text = text.substr(0, colon);
    port_text = text.substr(colon + 1);
    has_port = true;
  }
  const std::optional<IpAddress> address = IpAddress::parse(address_text);
  if (!address) {
    return fail(error, "not an IPv4 or IPv6 address");
  }
  if (text.front() == '[' && address->isV4()) {
    return fail(error, "brackets are for IPv6 addresses only");
  }
  DnsServer server;
  server.address = *address;
  if (has_port) {
    const std::optional<uint16_t> port = parsePort(port_text);
    if (!port) {
      return fail(error, "port is not a number in 1..65535");
    }
    server.port = *port;
  }
  return server;
}

std::string DnsServer::toString() const {
  const std::string address_text = address.toString();
  const std::string port_text = std::to_string(port);
  return address.isV4() ? address_text + ":" + port_text : "[" + address_text + "]:" + port_text;
}

}  // namespace acr
