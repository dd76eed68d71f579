#include "conf/proxy_settings.h"

#include <arpa/inet.h>

#include <charconv>
#include <cstring>

namespace acr {
namespace {

[[noreturn]] void fail(const ConfigValue& value, const std::string& what) {
  throw ConfigError(value.origin + ": " + what);
}

template <class T>
std::optional<T> parseNumber(std::string_view text) {
  T number{};
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), number);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size() ||
      (text.size() > 1 && text[0] == '0')) {
    return std::nullopt;
  }
  return number;
}

const ConfigValue* scalar(const Config& config, const std::string& key) {
  const auto it = config.settings.find(key);
  return it == config.settings.end() || it->second.empty() ? nullptr : &it->second.back();
}

void readDuration(const Config& config, const std::string& key, std::chrono::milliseconds min,
                  std::chrono::milliseconds max, std::chrono::milliseconds& out) {
  if (const ConfigValue* value = scalar(config, key)) {
    const auto duration = parseDuration(value->text);
    if (!duration || *duration < min || *duration > max) {
      fail(*value, "invalid " + key + " '" + value->text + "': expected a duration from " +
                       std::to_string(min.count()) + "ms to " + std::to_string(max.count()) +
                       "ms with a unit (ms, s, m, h)");
    }
    out = *duration;
  }
}

template <class T>
void readNumber(const Config& config, const std::string& key, T min, T max, T& out) {
  if (const ConfigValue* value = scalar(config, key)) {
    const auto number = parseNumber<T>(value->text);
    if (!number || *number < min || *number > max) {
      fail(*value, "invalid " + key + " '" + value->text + "': expected a number from " +
                       std::to_string(min) + " to " + std::to_string(max));
    }
    out = *number;
  }
}

void readBool(const Config& config, const std::string& key, bool& out) {
  if (const ConfigValue* value = scalar(config, key)) {
    if (value->text != "true" && value->text != "false") {
      fail(*value, "invalid " + key + " '" + value->text + "': expected true or false");
    }
    out = value->text == "true";
  }
}

}  // namespace

std::string_view listenerKindName(ListenerKind kind) noexcept {
  switch (kind) {
    case ListenerKind::kConnect:
      return "connect";
    case ListenerKind::kTransparent:
      return "transparent";
    case ListenerKind::kSni:
      return "sni";
  }
  return "unknown";
}

std::optional<std::chrono::milliseconds> parseDuration(std::string_view text) noexcept {
  size_t digits = 0;
  while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9') {
    ++digits;
  }
  const auto number = parseNumber<uint64_t>(text.substr(0, digits));
  const std::string_view unit = text.substr(digits);
  if (!number || *number > 1'000'000'000ull) {
    return std::nullopt;
  }
  uint64_t factor = 0;
  if (unit == "ms") {
    factor = 1;
  } else if (unit == "s") {
    factor = 1000;
  } else if (unit == "m") {
    factor = 60'000;
  } else if (unit == "h") {
    factor = 3'600'000;
  } else {
    return std::nullopt;
  }
  return std::chrono::milliseconds(*number * factor);
}

std::optional<SocketAddress> SocketAddress::parse(std::string_view text,
                                                  std::optional<uint16_t> default_port) {
  std::string host;
  std::optional<std::string_view> port_text;
  const bool bracketed = !text.empty() && text.front() == '[';
  if (bracketed) {
    const size_t close = text.find(']');
    if (close == std::string_view::npos) {
      return std::nullopt;
    }
    host = std::string(text.substr(1, close - 1));
    const std::string_view rest = text.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') {
        return std::nullopt;
      }
      port_text = rest.substr(1);
    }
  } else {
    const size_t colon = text.find(':');
    if (colon == std::string_view::npos) {
      host = std::string(text);
    } else if (text.find(':', colon + 1) == std::string_view::npos) {
      host = std::string(text.substr(0, colon));
      port_text = text.substr(colon + 1);
    } else {
      return std::nullopt;  // a bare IPv6 address must be bracketed
    }
  }
  uint16_t port = 0;
  if (port_text) {
    const auto parsed = parseNumber<unsigned>(*port_text);
    if (!parsed || *parsed > 65535) {
      return std::nullopt;
    }
    port = static_cast<uint16_t>(*parsed);
  } else if (default_port) {
    port = *default_port;
  } else {
    return std::nullopt;
  }
  SocketAddress address;
  auto* v4 = reinterpret_cast<sockaddr_in*>(&address.storage);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&address.storage);
  if (!bracketed && inet_pton(AF_INET, host.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(port);
    address.length = sizeof(sockaddr_in);
    return address;
  }
  if (bracketed && inet_pton(AF_INET6, host.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(port);
    address.length = sizeof(sockaddr_in6);
    return address;
  }
  return std::nullopt;
}

uint16_t SocketAddress::port() const noexcept {
  if (family() == AF_INET) {
    return ntohs(reinterpret_cast<const sockaddr_in*>(&storage)->sin_port);
  }
  return ntohs(reinterpret_cast<const sockaddr_in6*>(&storage)->sin6_port);
}

bool SocketAddress::isLoopback() const noexcept {
  if (family() == AF_INET) {
    return (ntohl(reinterpret_cast<const sockaddr_in*>(&storage)->sin_addr.s_addr) >> 24) == 127;
  }
  const in6_addr& addr = reinterpret_cast<const sockaddr_in6*>(&storage)->sin6_addr;
  return IN6_IS_ADDR_LOOPBACK(&addr);
}

std::string SocketAddress::toString() const {
  char buffer[INET6_ADDRSTRLEN] = {};
  if (family() == AF_INET) {
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(&storage)->sin_addr, buffer,
              sizeof(buffer));
    return std::string(buffer) + ":" + std::to_string(port());
  }
  inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(&storage)->sin6_addr, buffer,
            sizeof(buffer));
  return "[" + std::string(buffer) + "]:" + std::to_string(port());
}

void checkListenerExposure(const Config& config) {
  if (!config.policy.client_cidrs.empty()) {
    return;
  }
  for (const char* key : {"listeners.connect", "listeners.transparent", "listeners.sni"}) {
    const auto it = config.settings.find(key);
    if (it == config.settings.end()) {
      continue;
    }
    for (const ConfigValue& value : it->second) {
      const auto address = SocketAddress::parse(value.text);
      if (address && !address->isLoopback()) {
        fail(value, std::string(key).substr(10) + " listener " + address->toString() +
                        " is not on a loopback address and no client rule says who may use it: "
                        "add --client-cidr CIDR (policy.client_cidrs) with your clients' range, "
                        "or --client-cidr 0.0.0.0/0 to serve anyone");
      }
    }
  }
}

ProxySettings buildProxySettings(const Config& config) {
  ProxySettings settings;
  const std::pair<const char*, ListenerKind> kinds[] = {
      {"listeners.connect", ListenerKind::kConnect},
      {"listeners.transparent", ListenerKind::kTransparent},
      {"listeners.sni", ListenerKind::kSni}};
  for (const auto& [key, kind] : kinds) {
    const auto it = config.settings.find(key);
    if (it == config.settings.end()) {
      continue;
    }
    for (const ConfigValue& value : it->second) {
      const auto address = SocketAddress::parse(value.text);
      if (!address || address->port() == 0) {
        fail(value, "invalid listen address '" + value.text +
                        "': expected IPv4:PORT or [IPv6]:PORT with a port from 1 to 65535");
      }
      settings.listeners.push_back({kind, *address, address->toString()});
    }
  }
  if (settings.listeners.empty()) {
    settings.listeners.push_back(
        {ListenerKind::kConnect, *SocketAddress::parse("127.0.0.1:3128"), "127.0.0.1:3128"});
  }
  if (const auto it = config.settings.find("dns.servers"); it != config.settings.end()) {
    for (const ConfigValue& value : it->second) {
      const auto address = SocketAddress::parse(value.text, 53);
      if (!address || address->port() == 0) {
        fail(value,
             "invalid DNS server '" + value.text + "': expected ADDR, ADDR:PORT or [V6]:PORT");
      }
      settings.dns_servers.push_back(address->toString());
    }
  }
  unsigned sni_upstream_port = 0;
  readNumber<unsigned>(config, "listeners.sni_upstream_port", 1, 65535, sni_upstream_port);
  if (sni_upstream_port != 0) {
    settings.sni_upstream_port = static_cast<uint16_t>(sni_upstream_port);
  }
  readNumber<unsigned>(config, "proxy.workers", 0, 256, settings.workers);
  if (const ConfigValue* value = scalar(config, "proxy.mark")) {
    const auto mark = parseNumber<uint32_t>(value->text);
    if (!mark || *mark == 0) {
      fail(*value,
           "invalid proxy.mark '" + value->text + "': expected a number from 1 to 4294967295");
    }
    settings.mark = *mark;
  }
  readBool(config, "proxy.allow_non_tls", settings.allow_non_tls);
  readBool(config, "proxy.allow_no_sni", settings.allow_no_sni);
  using std::chrono::milliseconds;
  readDuration(config, "limits.head_timeout", milliseconds(100), milliseconds(3'600'000),
               settings.head_timeout);
  readDuration(config, "limits.connect_timeout", milliseconds(100), milliseconds(600'000),
               settings.connect_timeout);
  // RFC 8305 recommends 250 ms and at least 100 ms (10 ms floor); 0 keeps one at a time.
  readDuration(config, "limits.happy_eyeballs_delay", milliseconds(0), milliseconds(2'000),
               settings.happy_eyeballs_delay);
  readDuration(config, "limits.idle_timeout", milliseconds(1000), milliseconds(7 * 86'400'000LL),
               settings.idle_timeout);
  readDuration(config, "limits.drain_timeout", milliseconds(0), milliseconds(86'400'000),
               settings.drain_timeout);
  milliseconds keepalive = settings.keepalive_idle;
  readDuration(config, "limits.keepalive_idle", milliseconds(1000), milliseconds(7'200'000),
               keepalive);
  settings.keepalive_idle = std::chrono::duration_cast<std::chrono::seconds>(keepalive);
  readNumber<size_t>(config, "limits.max_connections", 1, 1'000'000, settings.max_connections);
  readNumber<size_t>(config, "limits.max_head_size", 256, 65536, settings.max_head_size);
  readNumber<size_t>(config, "limits.max_client_hello_size", 512, 16384,
                     settings.max_client_hello_size);
  readNumber<size_t>(config, "limits.max_buffer_memory", size_t{1} << 20, size_t{1} << 36,
                     settings.max_buffer_memory);
  readNumber<size_t>(config, "limits.max_handshake_memory", size_t{1} << 18, size_t{1} << 34,
                     settings.max_handshake_memory);
  readDuration(config, "dns.timeout", milliseconds(100), milliseconds(60'000),
               settings.dns_timeout);
  auto readSeconds = [&](const char* key, std::chrono::seconds& out) {
    milliseconds value = out;
    readDuration(config, key, milliseconds(0), milliseconds(86'400'000), value);
    out = std::chrono::duration_cast<std::chrono::seconds>(value);
  };
  readSeconds("dns.min_ttl", settings.dns_min_ttl);
  readSeconds("dns.max_ttl", settings.dns_max_ttl);
  readSeconds("dns.negative_ttl", settings.dns_negative_ttl);
  if (settings.dns_min_ttl > settings.dns_max_ttl) {
    throw ConfigError("dns.min_ttl is above dns.max_ttl");
  }
  readNumber<size_t>(config, "dns.cache_size", 1, 10'000'000, settings.dns_cache_size);
  readNumber<uint32_t>(config, "log.deny_rate", 0, 1'000'000, settings.deny_log_rate);
  if (const ConfigValue* value = scalar(config, "log.format")) {
    if (value->text != "json" && value->text != "text") {
      fail(*value, "invalid log.format '" + value->text + "': expected json or text");
    }
    settings.json_log = value->text == "json";
  }
  readBool(config, "proxy.admin_allow_remote", settings.admin_allow_remote);
  if (const ConfigValue* value = scalar(config, "proxy.admin")) {
    const auto address = SocketAddress::parse(value->text);
    if (!address || address->port() == 0) {
      fail(*value, "invalid proxy.admin '" + value->text +
                       "': expected IPv4:PORT or [IPv6]:PORT with a port from 1 to 65535");
    }
    if (!address->isLoopback() && !settings.admin_allow_remote) {
      fail(*value, "proxy.admin '" + value->text +
                       "' is not a loopback address: the admin endpoint has no authentication; "
                       "give --admin-allow-remote (proxy.admin_allow_remote = true) to expose it");
    }
    settings.admin = *address;
  }
  settings.upstream_proxy = readUpstreamProxy(config);
  checkUpstreamProxyPolicy(config.policy,
                           settings.upstream_proxy ? &*settings.upstream_proxy : nullptr);
  return settings;
}

}  // namespace acr
