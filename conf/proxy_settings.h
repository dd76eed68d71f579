#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "conf/config.h"
#include "conf/upstream_proxy.h"

namespace acr {

enum class ListenerKind : uint8_t { kConnect, kTransparent, kSni };
std::string_view listenerKindName(ListenerKind kind) noexcept;  // "connect", "transparent", "sni"

// A socket address parsed from "ADDR:PORT" or "[V6]:PORT".
struct SocketAddress {
  sockaddr_storage storage{};
  socklen_t length = 0;

  static std::optional<SocketAddress> parse(std::string_view text,
                                            std::optional<uint16_t> default_port = std::nullopt);
  const sockaddr* get() const noexcept { return reinterpret_cast<const sockaddr*>(&storage); }
  int family() const noexcept { return storage.ss_family; }
  uint16_t port() const noexcept;
  bool isLoopback() const noexcept;
  std::string toString() const;  // "1.2.3.4:443" or "[::1]:443"
};

struct ListenerSettings {
  ListenerKind kind;
  SocketAddress address;
  std::string text;
};

// Every setting of the proxy outside the policy, validated and typed, with the documented
// defaults (README "Limits and timeouts").
struct ProxySettings {
  std::vector<ListenerSettings> listeners;  // default: connect on 127.0.0.1:3128
  std::vector<std::string> dns_servers;     // empty: /etc/resolv.conf
  // The port sni listeners dial (and the policy judges) instead of their own, so that an sni
  // listener can sit on an unprivileged port; unset: the listener's port.
  std::optional<uint16_t> sni_upstream_port;
  unsigned workers = 0;  // 0: one per core
  std::optional<uint32_t> mark;
  bool allow_non_tls = false;
  bool allow_no_sni = false;
  std::chrono::milliseconds head_timeout{10'000};
  std::chrono::milliseconds connect_timeout{10'000};
  // RFC 8305 "Connection Attempt Delay": the next address is dialled when the previous attempts
  // have not connected after this long (a failed attempt moves on at once). 0: one address at a
  // time, each with an equal share of what is left of connect_timeout.
  std::chrono::milliseconds happy_eyeballs_delay{250};
  std::chrono::milliseconds idle_timeout{15 * 60'000};
  std::chrono::milliseconds drain_timeout{30'000};
  std::chrono::seconds keepalive_idle{120};
  size_t max_connections = 4096;
  size_t max_head_size = 8192;
  size_t max_client_hello_size = 16384;
  // Bytes all tunnels together may hold waiting for a slow reader (README "Relay"); past it the
  // tunnels holding the most stop being read first.
  size_t max_buffer_memory = 64 * 1024 * 1024;
  // Bytes all unfinished CONNECT heads and ClientHellos together may hold (THREATS R8); a
  // connection whose bytes would pass it is refused (handshake_memory).
  size_t max_handshake_memory = 16 * 1024 * 1024;
  std::chrono::milliseconds dns_timeout{5'000};
  std::chrono::seconds dns_min_ttl{5};
  std::chrono::seconds dns_max_ttl{300};
  std::chrono::seconds dns_negative_ttl{30};
  size_t dns_cache_size = 10000;
  bool json_log = true;
  // Access-log lines for refused connections per second; past it they are counted, not written
  // (proxy/deny_log_limiter.h). 0: every line.
  uint32_t deny_log_rate = 1000;
  // The admin HTTP endpoint (proxy/admin_server.h); none by default. Loopback only unless
  // proxy.admin_allow_remote: it has no authentication and shows the policy.
  std::optional<SocketAddress> admin;
  bool admin_allow_remote = false;
  // Allowed tunnels go through this HTTP proxy with CONNECT (conf/upstream_proxy.h); unset: dial.
  std::optional<UpstreamProxySettings> upstream_proxy;
};

// Validates `config.settings`. Throws ConfigError naming the origin of a bad value.
ProxySettings buildProxySettings(const Config& config);

// Secure by default: a listener on a loopback address serves the host itself; one on any other
// address (0.0.0.0, [::], a LAN address) would serve whoever reaches it, so it needs a client
// rule (--client-cidr, policy.client_cidrs; 0.0.0.0/0 says "anyone" explicitly). Throws
// ConfigError naming the listener, its origin and the option to add. For startup,
// --check-config and every reload.
void checkListenerExposure(const Config& config);

// "10s", "250ms", "15m", "1h"; a bare number is refused (the unit is not guessable).
std::optional<std::chrono::milliseconds> parseDuration(std::string_view text) noexcept;

}  // namespace acr
