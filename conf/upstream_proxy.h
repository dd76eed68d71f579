#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "conf/config.h"

namespace acr {

// An HTTP proxy that every allowed tunnel goes through (--upstream-proxy, proxy.upstream_proxy):
// acr-egress judges the target as usual, then asks this proxy to open it with CONNECT name:port
// instead of resolving and dialling it itself (docs/listeners.md "Upstream proxy").
struct UpstreamProxySettings {
  std::string host;  // an IP literal (IPv6 without brackets) or a host name, resolved by the
                     // proxy's own resolver at dial time
  uint16_t port = 0;
  // "Basic <base64(user:password)>" from --upstream-proxy-credentials, empty without one. Secret:
  // never logged, never in an error message, never in /policy.
  std::string authorization;
  std::string text;  // "http://HOST:PORT" as given, for logs (never holds credentials)
};

// Reads proxy.upstream_proxy and proxy.upstream_proxy_credentials; nullopt when no upstream proxy
// is set. Throws ConfigError naming the option (or file:line:column) for: a URL that is not
// http://HOST:PORT (other schemes, a path, a missing or bad port, credentials in the URL, which
// would leave them on the command line); a credentials file given without an upstream proxy,
// unreadable, not a regular file, readable or writable by others (o+rw: it holds a password), or
// whose content is not `user:password` on one line. Messages never quote the file's content.
std::optional<UpstreamProxySettings> readUpstreamProxy(const Config& config);

// With an upstream proxy, acr-egress never learns the addresses the names resolve to, so rules
// that judge those addresses cannot be enforced: --strict-ip (policy.strict_ip) and address
// binding (--bind-host-tag, [[policy.bind]]) are refused with a ConfigError saying why. `proxy`
// is the upstream proxy the process runs with (null: none): at startup and --check-config the
// configuration's own, on reload the running one (the setting is not live, so a reloaded file
// that drops it still runs through the proxy).
void checkUpstreamProxyPolicy(const PolicyConfig& policy, const UpstreamProxySettings* proxy);

}  // namespace acr
