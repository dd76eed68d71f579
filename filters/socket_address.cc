#include "filters/socket_address.h"

#include <arpa/inet.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cstring>

namespace acr {

std::optional<uint16_t> parsePort(std::string_view text) noexcept {
  if (text.empty() || text.size() > 5 || text.front() == '0') {
    return std::nullopt;
  }
  uint32_t value = 0;
  for (const char c : text) {
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

std::optional<HostPort> splitHostPort(std::string_view text) noexcept {
  HostPort out;
  if (!text.empty() && text.front() == '[') {
    const size_t close = text.find(']');
    if (close == std::string_view::npos) {
      return std::nullopt;
    }
    out.host = text.substr(1, close - 1);
    out.bracketed = true;
    const std::string_view rest = text.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') {
        return std::nullopt;
      }
      out.has_port = true;
      out.port = rest.substr(1);
    }
    return out;
  }
  const size_t colon = text.find(':');
  if (colon == std::string_view::npos || text.find(':', colon + 1) != std::string_view::npos) {
    out.host = text;  // no port, or a bare IPv6 address
    return out;
  }
  out.host = text.substr(0, colon);
  out.has_port = true;
  out.port = text.substr(colon + 1);
  return out;
}

std::optional<SocketAddress> SocketAddress::parse(std::string_view text,
                                                  std::optional<uint16_t> default_port) {
  const std::optional<HostPort> parts = splitHostPort(text);
  if (!parts) {
    return std::nullopt;
  }
  const std::optional<IpAddress> address = IpAddress::parse(parts->host);
  // IPv6 only in brackets, IPv4 only without: one spelling per address.
  if (!address || address->isV4() == parts->bracketed) {
    return std::nullopt;
  }
  std::optional<uint16_t> port = default_port;
  if (parts->has_port) {
    port = parsePort(parts->port);
  }
  if (!port) {
    return std::nullopt;
  }
  return from(*address, *port);
}

SocketAddress SocketAddress::from(const IpAddress& address, uint16_t port) noexcept {
  SocketAddress out;
  if (address.isV4()) {
    auto* v4 = reinterpret_cast<sockaddr_in*>(&out.storage);
    v4->sin_family = AF_INET;
    v4->sin_port = htons(port);
    v4->sin_addr.s_addr = htonl(address.v4Value());
    out.length = sizeof(sockaddr_in);
  } else {
    auto* v6 = reinterpret_cast<sockaddr_in6*>(&out.storage);
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(port);
    const std::array<uint8_t, 16> bytes = address.v6Bytes();
    std::memcpy(&v6->sin6_addr, bytes.data(), bytes.size());
    out.length = sizeof(sockaddr_in6);
  }
  return out;
}

uint16_t SocketAddress::port() const noexcept {
  if (family() == AF_INET) {
    return ntohs(reinterpret_cast<const sockaddr_in*>(&storage)->sin_port);
  }
  return ntohs(reinterpret_cast<const sockaddr_in6*>(&storage)->sin6_port);
}

IpAddress SocketAddress::ip() const noexcept {
  if (family() == AF_INET) {
    return IpAddress::v4(ntohl(reinterpret_cast<const sockaddr_in*>(&storage)->sin_addr.s_addr));
  }
  std::array<uint8_t, 16> bytes{};
  std::memcpy(bytes.data(), &reinterpret_cast<const sockaddr_in6*>(&storage)->sin6_addr,
              bytes.size());
  return IpAddress::fromV6Bytes(bytes);
}

bool SocketAddress::isLoopback() const noexcept {
  if (family() == AF_INET) {
    return (ntohl(reinterpret_cast<const sockaddr_in*>(&storage)->sin_addr.s_addr) >> 24) == 127;
  }
  const in6_addr& addr = reinterpret_cast<const sockaddr_in6*>(&storage)->sin6_addr;
  return IN6_IS_ADDR_LOOPBACK(&addr);
}

size_t SocketAddress::format(std::array<char, kMaxTextLength>& out) const noexcept {
  std::array<char, IpAddress::kMaxTextLength + 1> address;
  const size_t text_length = ip().format(address);
  const bool v6 = family() != AF_INET;
  char* end = out.data();
  if (v6) {
    *end++ = '[';
  }
  end = std::copy_n(address.data(), text_length, end);
  if (v6) {
    *end++ = ']';
  }
  *end++ = ':';
  end = std::to_chars(end, out.data() + out.size(), port()).ptr;
  return static_cast<size_t>(end - out.data());
}

std::string SocketAddress::toString() const {
  // Formatted on the stack, so that the string is made once at its exact length: one that fits
  // std::string's inline buffer (15 bytes: "10.1.2.3:54321") allocates nothing.
  std::array<char, kMaxTextLength> text;
  return std::string(text.data(), format(text));
}

}  // namespace acr
