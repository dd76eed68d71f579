#include "conf/proxy_settings.h"

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

std::string durationText(std::chrono::milliseconds duration) {
  const int64_t ms = duration.count();
  if (ms != 0 && ms % 3'600'000 == 0) {
    return std::to_string(ms / 3'600'000) + "h";
  }
  if (ms != 0 && ms % 60'000 == 0) {
    return std::to_string(ms / 60'000) + "m";
  }
  if (ms != 0 && ms % 1000 == 0) {
    return std::to_string(ms / 1000) + "s";
  }
  return std::to_string(ms) + "ms";
}

// Reads the settings of one Config by the table's rows: the last value given, or the row's
// default, validated against the row's kind and range; records each effective value.
class SettingReader {
 public:
  SettingReader(const Config& config, ProxySettings& out) : config_(config), out_(out) {}

  // The value given last for `setting`, else its default (origin "default"), else empty.
  std::optional<ConfigValue> scalar(Setting setting) const {
    const auto it = config_.settings.find(setting);
    if (it != config_.settings.end() && !it->second.empty()) {
      return it->second.back();
    }
    const SettingRow& row = settingRow(setting);
    if (row.default_value.empty()) {
      return std::nullopt;
    }
    return ConfigValue{std::string(row.default_value), "default"};
  }

  // Every value given for a repeatable setting, else its default as one value.
  std::vector<ConfigValue> list(Setting setting) const {
    const auto it = config_.settings.find(setting);
    if (it != config_.settings.end() && !it->second.empty()) {
      return it->second;
    }
    const std::optional<ConfigValue> fallback = scalar(setting);
    return fallback ? std::vector<ConfigValue>{*fallback} : std::vector<ConfigValue>{};
  }

  template <class T>
  std::optional<T> number(Setting setting) {
    const SettingRow& row = settingRow(setting);
    const std::optional<ConfigValue> value = scalar(setting);
    if (!value) {
      return std::nullopt;
    }
    const auto parsed = parseNumber<uint64_t>(value->text);
    if (!parsed || *parsed < static_cast<uint64_t>(row.min) ||
        *parsed > static_cast<uint64_t>(row.max)) {
      fail(*value, "invalid " + std::string(row.key) + " '" + value->text +
                       "': expected a number from " + std::to_string(row.min) + " to " +
                       std::to_string(row.max));
    }
    record(setting, std::to_string(*parsed));
    return static_cast<T>(*parsed);
  }

  std::chrono::milliseconds duration(Setting setting) {
    const SettingRow& row = settingRow(setting);
    const ConfigValue value = *scalar(setting);  // every duration has a default
    const auto parsed = parseDuration(value.text);
    if (!parsed || parsed->count() < row.min || parsed->count() > row.max) {
      fail(value, "invalid " + std::string(row.key) + " '" + value.text +
                      "': expected a duration from " + std::to_string(row.min) + "ms to " +
                      std::to_string(row.max) + "ms with a unit (ms, s, m, h)");
    }
    record(setting, durationText(*parsed));
    return *parsed;
  }

  std::chrono::seconds seconds(Setting setting) {
    return std::chrono::duration_cast<std::chrono::seconds>(duration(setting));
  }

  bool flag(Setting setting) {
    const SettingRow& row = settingRow(setting);
    const ConfigValue value = *scalar(setting);  // every flag has a default
    if (value.text != "true" && value.text != "false") {
      fail(value,
           "invalid " + std::string(row.key) + " '" + value.text + "': expected true or false");
    }
    record(setting, value.text);
    return value.text == "true";
  }

  std::string choice(Setting setting) {
    const SettingRow& row = settingRow(setting);
    const ConfigValue value = *scalar(setting);
    std::string expected;
    std::string_view rest = row.choices;
    bool found = false;
    while (!rest.empty()) {
      const size_t bar = rest.find('|');
      const std::string_view one = rest.substr(0, bar);
      found = found || one == value.text;
      rest = bar == std::string_view::npos ? std::string_view() : rest.substr(bar + 1);
      expected += (expected.empty() ? "" : rest.empty() ? " or " : ", ") + std::string(one);
    }
    if (!found) {
      fail(value,
           "invalid " + std::string(row.key) + " '" + value.text + "': expected " + expected);
    }
    record(setting, value.text);
    return value.text;
  }

  void record(Setting setting, std::string text) {
    out_.effective[static_cast<size_t>(setting)] = std::move(text);
  }

 private:
  const Config& config_;
  ProxySettings& out_;
};

std::string joined(const std::vector<ConfigValue>& values) {
  std::string text;
  for (const ConfigValue& value : values) {
    text += (text.empty() ? "" : ", ") + value.text;
  }
  return text;
}

// The policy's settings as given, so that a reload names the policy keys that changed too.
void recordPolicySettings(const PolicyConfig& policy, SettingReader& read) {
  auto flag = [](bool on) { return std::string(on ? "true" : "false"); };
  for (const SettingRow& row : allSettings()) {
    std::string text;
    switch (row.setting) {
      case Setting::kRegistries:
        text = joined(policy.registries);
        break;
      case Setting::kRegions:
        text = joined(policy.regions);
        break;
      case Setting::kAllowHosts:
        text = joined(policy.allow_hosts);
        break;
      case Setting::kAllowCidrs:
        text = joined(policy.allow_cidrs);
        break;
      case Setting::kDenyCidrs:
        text = joined(policy.deny_cidrs);
        break;
      case Setting::kServiceTagsFile:
        text = policy.service_tags_file ? policy.service_tags_file->text : "";
        break;
      case Setting::kServiceTags:
        text = joined(policy.service_tags);
        break;
      case Setting::kPorts:
        text = joined(policy.ports);
        break;
      case Setting::kPresets:
        text = joined(policy.presets);
        break;
      case Setting::kStrictIp:
        text = flag(policy.strict_ip);
        break;
      case Setting::kReportOnly:
        text = flag(policy.report_only);
        break;
      case Setting::kRevokeOnReload:
        text = flag(policy.revoke_on_reload);
        break;
      case Setting::kDenyEch:
        text = policy.deny_ech ? "deny" : "allow_outer";
        break;
      case Setting::kClientCidrs:
        text = joined(policy.client_cidrs);
        break;
      case Setting::kBindHostTags:
        for (const BindConfig& bind : policy.binds) {
          text += (text.empty() ? "" : "; ") + joined(bind.hosts) + "=" +
                  joined(bind.service_tags) + (bind.service_tags.empty() ? "" : ",") +
                  joined(bind.allow_cidrs);
        }
        break;
      default:  // --config, and the proxy settings: read by buildProxySettings
        continue;
    }
    read.record(row.setting, std::move(text));
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

void checkListenerExposure(const Config& config) {
  // A group's clients are client rules too: whoever is in no group is refused.
  if (!config.policy.client_cidrs.empty() || !config.policy.groups.empty()) {
    return;
  }
  for (const Setting setting :
       {Setting::kConnectListeners, Setting::kTransparentListeners, Setting::kSniListeners}) {
    const std::string key(settingRow(setting).key);
    const auto it = config.settings.find(setting);
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
  SettingReader read(config, settings);
  recordPolicySettings(config.policy, read);
  const std::pair<Setting, ListenerKind> kinds[] = {
      {Setting::kConnectListeners, ListenerKind::kConnect},
      {Setting::kTransparentListeners, ListenerKind::kTransparent},
      {Setting::kSniListeners, ListenerKind::kSni}};
  // The default listener applies only when no listener of any kind is given.
  bool any_listener = false;
  for (const auto& [setting, kind] : kinds) {
    const auto it = config.settings.find(setting);
    any_listener = any_listener || (it != config.settings.end() && !it->second.empty());
  }
  for (const auto& [setting, kind] : kinds) {
    std::string effective;
    const auto it = config.settings.find(setting);
    const bool given = it != config.settings.end() && !it->second.empty();
    const std::vector<ConfigValue> values = given          ? it->second
                                            : any_listener ? std::vector<ConfigValue>{}
                                                           : read.list(setting);
    for (const ConfigValue& value : values) {
      const auto address = SocketAddress::parse(value.text);
      if (!address) {
        fail(value, "invalid listen address '" + value.text +
                        "': expected IPv4:PORT or [IPv6]:PORT with a port from 1 to 65535");
      }
      settings.listeners.push_back({kind, *address, address->toString()});
      effective += (effective.empty() ? "" : ", ") + address->toString();
    }
    read.record(setting, effective);
  }
  std::string servers;
  for (const ConfigValue& value : read.list(Setting::kDnsServers)) {
    const auto address = SocketAddress::parse(value.text, 53);
    if (!address) {
      fail(value, "invalid DNS server '" + value.text + "': expected ADDR, ADDR:PORT or [V6]:PORT");
    }
    settings.dns_servers.push_back(address->toString());
    servers += (servers.empty() ? "" : ", ") + address->toString();
  }
  read.record(Setting::kDnsServers, servers);
  if (const auto port = read.number<uint16_t>(Setting::kSniUpstreamPort)) {
    settings.sni_upstream_port = *port;
  }
  settings.workers = *read.number<unsigned>(Setting::kWorkers);
  settings.mark = read.number<uint32_t>(Setting::kMark);
  settings.allow_non_tls = read.flag(Setting::kAllowNonTls);
  settings.allow_no_sni = read.flag(Setting::kAllowNoSni);
  settings.head_timeout = read.duration(Setting::kHeadTimeout);
  settings.connect_timeout = read.duration(Setting::kConnectTimeout);
  settings.happy_eyeballs_delay = read.duration(Setting::kHappyEyeballsDelay);
  settings.idle_timeout = read.duration(Setting::kIdleTimeout);
  settings.drain_timeout = read.duration(Setting::kDrainTimeout);
  settings.keepalive_idle = read.seconds(Setting::kKeepaliveIdle);
  settings.max_connections = *read.number<size_t>(Setting::kMaxConnections);
  settings.max_connections_per_client = *read.number<size_t>(Setting::kMaxConnectionsPerClient);
  settings.max_connections_per_listener = *read.number<size_t>(Setting::kMaxConnectionsPerListener);
  settings.max_head_size = *read.number<size_t>(Setting::kMaxHeadSize);
  settings.max_client_hello_size = *read.number<size_t>(Setting::kMaxClientHelloSize);
  settings.max_buffer_memory = *read.number<size_t>(Setting::kMaxBufferMemory);
  settings.max_handshake_memory = *read.number<size_t>(Setting::kMaxHandshakeMemory);
  settings.dns_timeout = read.duration(Setting::kDnsTimeout);
  settings.dns_min_ttl = read.seconds(Setting::kDnsMinTtl);
  settings.dns_max_ttl = read.seconds(Setting::kDnsMaxTtl);
  settings.dns_negative_ttl = read.seconds(Setting::kDnsNegativeTtl);
  if (settings.dns_min_ttl > settings.dns_max_ttl) {
    throw ConfigError(std::string(settingRow(Setting::kDnsMinTtl).key) + " is above " +
                      std::string(settingRow(Setting::kDnsMaxTtl).key));
  }
  settings.dns_cache_size = *read.number<size_t>(Setting::kDnsCacheSize);
  settings.deny_log_rate = *read.number<uint32_t>(Setting::kDenyLogRate);
  settings.json_log = read.choice(Setting::kLogFormat) == "json";
  settings.admin_allow_remote = read.flag(Setting::kAdminAllowRemote);
  if (const std::optional<ConfigValue> value = read.scalar(Setting::kAdmin)) {
    const auto address = SocketAddress::parse(value->text);
    if (!address) {
      fail(*value, "invalid proxy.admin '" + value->text +
                       "': expected IPv4:PORT or [IPv6]:PORT with a port from 1 to 65535");
    }
    if (!address->isLoopback() && !settings.admin_allow_remote) {
      fail(*value, "proxy.admin '" + value->text +
                       "' is not a loopback address: the admin endpoint has no authentication; "
                       "give --admin-allow-remote (proxy.admin_allow_remote = true) to expose it");
    }
    settings.admin = *address;
    read.record(Setting::kAdmin, address->toString());
  }
  settings.upstream_proxy = readUpstreamProxy(config);
  checkUpstreamProxyPolicy(config.policy,
                           settings.upstream_proxy ? &*settings.upstream_proxy : nullptr);
  // What a reload compares: the URL as given and the credentials file's name, never its content.
  if (settings.upstream_proxy) {
    read.record(Setting::kUpstreamProxy, settings.upstream_proxy->text);
  }
  if (const std::optional<ConfigValue> file = read.scalar(Setting::kUpstreamProxyCredentials)) {
    read.record(Setting::kUpstreamProxyCredentials, file->text);
  }
  return settings;
}

std::vector<Setting> changedSettings(const ProxySettings& before, const ProxySettings& after) {
  std::vector<Setting> changed;
  for (size_t i = 0; i < kSettingCount; ++i) {
    if (before.effective[i] != after.effective[i]) {
      changed.push_back(static_cast<Setting>(i));
    }
  }
  return changed;
}

void keepRestartSettings(ProxySettings& next, const ProxySettings& running) {
  // The fields of the rows whose live column is false; the test KeepsEveryRestartSetting
  // checks that this list and the table agree.
  next.listeners = running.listeners;
  next.workers = running.workers;
  next.admin = running.admin;
  next.admin_allow_remote = running.admin_allow_remote;
  next.upstream_proxy = running.upstream_proxy;
  for (const SettingRow& row : allSettings()) {
    if (!row.live) {
      const size_t i = static_cast<size_t>(row.setting);
      next.effective[i] = running.effective[i];
    }
  }
}

}  // namespace acr
