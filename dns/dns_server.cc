#include "dns/dns_server.h"

#include "filters/socket_address.h"

namespace acr {
namespace {

std::optional<DnsServer> fail(std::string* error, const char* why) {
  if (error != nullptr) {
    *error = why;
  }
  return std::nullopt;
}

}  // namespace

std::optional<DnsServer> DnsServer::parse(std::string_view text, std::string* error) {
  const std::optional<HostPort> parts = splitHostPort(text);
  if (!parts) {
    return fail(error, text.find(']') == std::string_view::npos ? "'[' without ']'"
                                                                : "expected ':PORT' after ']'");
  }
  const std::string_view address_text = parts->host;
  const std::string_view port_text = parts->port;
  const bool has_port = parts->has_port;
  const std::optional<IpAddress> address = IpAddress::parse(address_text);
  if (!address) {
    return fail(error, "not an IPv4 or IPv6 address");
  }
  if (parts->bracketed && address->isV4()) {
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
