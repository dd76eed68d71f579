#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "filters/ip_address.h"

namespace acr {

// The one port parser: a canonical decimal 1..65535 (digits only: no sign, no space, no leading
// zero, "0" refused). Every port the proxy reads (options, TOML, DNS servers, check targets,
// CONNECT targets) goes through it, so that "0443" or "+443" means the same everywhere: nothing.
std::optional<uint16_t> parsePort(std::string_view text) noexcept;

// The parts of "HOST", "HOST:PORT", "[V6]" or "[V6]:PORT"; the views alias the input.
struct HostPort {
  std::string_view host;   // brackets stripped; may be empty (callers refuse it)
  bool bracketed = false;  // the host was written "[...]"
  bool has_port = false;   // a ':' followed the host
  std::string_view port;   // the text after that ':', unvalidated (parsePort), maybe empty
};

// The one host:port splitter. A text with two or more colons and no brackets is one host (a bare
// IPv6 address, which callers that need a port refuse): "::1:53" is never read as "::1" port 53.
// Returns empty for a '[' without ']' and for anything but ":PORT" after the ']'.
// Allocation-free.
std::optional<HostPort> splitHostPort(std::string_view text) noexcept;

// A socket address parsed from "IPv4:PORT" or "[IPv6]:PORT".
struct SocketAddress {
  // Room for an IPv4 or IPv6 address: 28 bytes, where a sockaddr_storage takes 128 (a connection
  // holds five of these, each open tunnel's memory counts). `v6` first: `{}` zeroes all of it.
  union Storage {
    sockaddr_in6 v6;
    sockaddr_in v4;
    sockaddr sa;
  };
  Storage storage{};
  socklen_t length = 0;

  // "IPv4:PORT" or "[IPv6]:PORT" (addresses as IpAddress::parse, ports as parsePort); the port may
  // be left out when `default_port` is given. A bare IPv6 address, a bracketed IPv4 address and a
  // host name are refused.
  static std::optional<SocketAddress> parse(std::string_view text,
                                            std::optional<uint16_t> default_port = std::nullopt);
  static SocketAddress from(const IpAddress& address, uint16_t port) noexcept;
  const sockaddr* get() const noexcept { return reinterpret_cast<const sockaddr*>(&storage); }
  int family() const noexcept { return storage.sa.sa_family; }
  uint16_t port() const noexcept;
  IpAddress ip() const noexcept;
  bool isLoopback() const noexcept;
  std::string toString() const;  // "1.2.3.4:443" or "[::1]:443"
  // The longest toString(): "[" address "]:" port.
  static constexpr size_t kMaxTextLength = IpAddress::kMaxTextLength + 3 + 5;
  // toString() into `out`, without allocating; returns its length.
  size_t format(std::array<char, kMaxTextLength>& out) const noexcept;
};

}  // namespace acr
