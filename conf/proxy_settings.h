#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "conf/config.h"
#include "conf/settings_table.h"
#include "conf/upstream_proxy.h"
#include "filters/socket_address.h"

namespace acr {

enum class ListenerKind : uint8_t { kConnect, kTransparent, kSni };
std::string_view listenerKindName(ListenerKind kind) noexcept;  // "connect", "transparent", "sni"

struct ListenerSettings {
  ListenerKind kind;
  SocketAddress address;
  std::string text;
};

// Every setting of the proxy outside the policy, validated and typed. The defaults are the
// settings table's (conf/settings_table.cc), applied by buildProxySettings: a ProxySettings not
// made by it holds zeros. Immutable once built; a reload builds a new one and swaps it whole.
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
  std::chrono::milliseconds head_timeout{0};
  std::chrono::milliseconds connect_timeout{0};
  // RFC 8305 "Connection Attempt Delay": the next address is dialled when the previous attempts
  // have not connected after this long (a failed attempt moves on at once). 0: one address at a
  // time, each with an equal share of what is left of connect_timeout.
  std::chrono::milliseconds happy_eyeballs_delay{0};
  std::chrono::milliseconds idle_timeout{0};
  std::chrono::milliseconds drain_timeout{0};
  std::chrono::seconds keepalive_idle{0};
  size_t max_connections = 0;
  // Concurrent connections from one source address (an IPv4-mapped IPv6 source counts as its
  // IPv4), and on each listener (THREATS R4); 0: no such limit, only max_connections.
  size_t max_connections_per_client = 0;
  size_t max_connections_per_listener = 0;
  size_t max_head_size = 0;
  size_t max_client_hello_size = 0;
  // Bytes all tunnels together may hold waiting for a slow reader (docs "Relay"); past it the
  // tunnels holding the most stop being read first.
  size_t max_buffer_memory = 0;
  // Bytes all unfinished CONNECT heads and ClientHellos together may hold (THREATS R8); a
  // connection whose bytes would pass it is refused (handshake_memory).
  size_t max_handshake_memory = 0;
  std::chrono::milliseconds dns_timeout{0};
  std::chrono::seconds dns_min_ttl{0};
  std::chrono::seconds dns_max_ttl{0};
  std::chrono::seconds dns_negative_ttl{0};
  size_t dns_cache_size = 0;
  bool json_log = true;
  // Access-log lines for refused connections per second; past it they are counted, not written
  // (proxy/deny_log_limiter.h). 0: every line.
  uint32_t deny_log_rate = 0;
  // The admin HTTP endpoint (proxy/admin_server.h); none by default. Loopback only unless
  // proxy.admin_allow_remote: it has no authentication and shows the policy.
  std::optional<SocketAddress> admin;
  bool admin_allow_remote = false;
  // Allowed tunnels go through this HTTP proxy with CONNECT (conf/upstream_proxy.h); unset: dial.
  // Its authorization is a secret: never in a log, /policy or a settings dump.
  std::optional<UpstreamProxySettings> upstream_proxy;
  // Each setting's effective value as canonical text ("15m", "127.0.0.1:3128, [::1]:1"); the
  // policy settings as given (the policy itself is built by buildPolicy). What a reload compares
  // (changedSettings) to name the settings that changed.
  std::array<std::string, kSettingCount> effective;
};

// Validates `config.settings`, filling in the table's defaults. Throws ConfigError naming the
// origin of a bad value.
ProxySettings buildProxySettings(const Config& config);

// The settings (policy and proxy) whose effective value differs, in table order.
std::vector<Setting> changedSettings(const ProxySettings& before, const ProxySettings& after);

// Gives `next` the running values of every setting that is not live (the table's "live" column:
// listeners, workers, admin), so that a reload's snapshot describes what really runs. A later
// reload then finds a still-different file "needs a restart" again.
void keepRestartSettings(ProxySettings& next, const ProxySettings& running);

// Secure by default: a listener on a loopback address serves the host itself; one on any other
// address (0.0.0.0, [::], a LAN address) would serve whoever reaches it, so it needs a client
// rule (--client-cidr, policy.client_cidrs; 0.0.0.0/0 says "anyone" explicitly). Throws
// ConfigError naming the listener, its origin and the option to add. For startup,
// --check-config and every reload.
void checkListenerExposure(const Config& config);

// "10s", "250ms", "15m", "1h"; a bare number is refused (the unit is not guessable).
std::optional<std::chrono::milliseconds> parseDuration(std::string_view text) noexcept;

}  // namespace acr
