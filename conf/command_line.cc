#include "conf/command_line.h"

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <optional>

#include "filters/ip_address.h"

namespace acr {
namespace {

constexpr std::string_view kHelp =
    "Policy options (repeatable unless noted):\n"
    "  --registry NAME        allow NAME.azurecr.io, NAME.<region>.data.azurecr.io and\n"
    "                         NAME.<region>.geo.azurecr.io\n"
    "  --region REGION        regions of the registries' data endpoints (default: any)\n"
    "  --allow-host PATTERN   allow a host; '*' stands for exactly one label\n"
    "  --allow-cidr CIDR      allow an address range\n"
    "  --deny-cidr CIDR       deny an address range (always wins)\n"
    "  --service-tags FILE    Azure service-tags JSON file (once)\n"
    "  --service-tag NAME     allow the prefixes of a service tag, e.g. Storage.WestEurope\n"
    "  --port N               allowed destination port (default: 443)\n"
    "  --preset NAME          allow a documented bundle of hosts: acr, mcr, iotedge,\n"
    "                         azure-login (README \"Presets\")\n"
    "  --strict-ip            every address must be inside the allowed ranges (once)\n"
    "  --report-only          log and count denials by host, port and address-set rules but\n"
    "                         let them through (rollout); special ranges stay refused (once)\n"
    "  --revoke-on-reload     a reload closes the open connections the new policy denies\n"
    "                         (reason revoked); default: they keep running (once)\n"
    "  --deny-ech             deny ClientHellos offering ECH (reason ech); default: judge\n"
    "                         them by their outer SNI (once)\n"
    "  --client-cidr CIDR     clients that may use the proxy; required for a listener on a\n"
    "                         non-loopback address (0.0.0.0/0, ::/0: anyone)\n"
    "  --bind-host-tag PATTERN=TAG  addresses dialled for names matching PATTERN must lie in\n"
    "                         service tag TAG (or a CIDR); else address_not_bound\n"
    "  --config FILE          TOML configuration; command-line options add to it (once);\n"
    "                         default /etc/acr-egress/acr-egress.toml if it exists\n"
    "With no --registry, --allow-host or --preset, the hosts allowed are *.azurecr.io,\n"
    "*.*.data.azurecr.io and *.blob.core.windows.net.\n";

constexpr std::string_view kProxyHelp =
    "Proxy options:\n"
    "  --connect ADDR:PORT        HTTP CONNECT listener (repeatable; default 127.0.0.1:3128)\n"
    "  --transparent ADDR:PORT    listener for TLS redirected by iptables/nftables (repeatable)\n"
    "  --sni ADDR:PORT            listener for DNS-steered TLS clients (repeatable)\n"
    "  --sni-upstream-port N      the port sni listeners dial (default: their own port)\n"
    "  --dns-server ADDR[:PORT]   DNS server (repeatable; default: /etc/resolv.conf)\n"
    "  --workers N                event-loop threads (default: number of cores)\n"
    "  --mark N                   SO_MARK for upstream sockets (firewall exclusion)\n"
    "  --allow-non-tls            let a CONNECT tunnel carry something other than TLS\n"
    "  --allow-no-sni             let a ClientHello without SNI through (transparent only)\n"
    "  --head-timeout T           time to send the CONNECT head or ClientHello (10s)\n"
    "  --dns-timeout T            DNS resolution budget (5s)\n"
    "  --connect-timeout T        upstream connect budget, all attempts together (10s)\n"
    "  --happy-eyeballs-delay T   start the next address when the last has not connected\n"
    "                             after T (RFC 8305; 250ms; 0: one address at a time)\n"
    "  --idle-timeout T           idle tunnel timeout (15m); no total lifetime cap\n"
    "  --drain-timeout T          on SIGTERM, how long tunnels may finish (30s)\n"
    "  --keepalive-idle T         TCP keepalive idle time on both sides (120s)\n"
    "  --max-connections N        concurrent connections (4096)\n"
    "  --max-head-size N          CONNECT head cap in bytes (8192)\n"
    "  --max-client-hello-size N  ClientHello cap in bytes (16384)\n"
    "  --max-buffer-memory N      bytes all tunnels may buffer for slow readers (64 MiB)\n"
    "  --max-handshake-memory N   bytes all unfinished heads/ClientHellos may hold (16 MiB)\n"
    "  --dns-min-ttl T, --dns-max-ttl T, --dns-negative-ttl T, --dns-cache-size N\n"
    "  --log-format json|text     access log format (json)\n"
    "  --deny-log-rate N          access-log lines for refused connections per second; the rest\n"
    "                             are counted and summarised (1000; 0: no cap)\n"
    "  --admin ADDR:PORT          admin HTTP endpoint: /metrics (Prometheus), /healthz, /readyz,\n"
    "                             /policy (default: off; loopback only unless the next option)\n"
    "  --admin-allow-remote       let --admin listen on a non-loopback address (no auth!)\n"
    "  --upstream-proxy URL       open allowed tunnels with CONNECT through this HTTP proxy,\n"
    "                             http://HOST:PORT; it resolves the names (default: dial)\n"
    "  --upstream-proxy-credentials FILE  Basic auth for it: FILE holds user:password and\n"
    "                             must not be readable by others\n"
    "Durations T take a unit: ms, s, m or h (\"10s\", \"15m\").\n";

// Options that map to a "table.key" setting; valueless ones store "true".
struct SettingOption {
  std::string_view flag;
  std::string_view key;
  bool takes_value;
};
constexpr SettingOption kSettingOptions[] = {
    {"--connect", "listeners.connect", true},
    {"--transparent", "listeners.transparent", true},
    {"--sni", "listeners.sni", true},
    {"--sni-upstream-port", "listeners.sni_upstream_port", true},
    {"--dns-server", "dns.servers", true},
    {"--workers", "proxy.workers", true},
    {"--mark", "proxy.mark", true},
    {"--allow-non-tls", "proxy.allow_non_tls", false},
    {"--allow-no-sni", "proxy.allow_no_sni", false},
    {"--head-timeout", "limits.head_timeout", true},
    {"--dns-timeout", "dns.timeout", true},
    {"--connect-timeout", "limits.connect_timeout", true},
    {"--happy-eyeballs-delay", "limits.happy_eyeballs_delay", true},
    {"--idle-timeout", "limits.idle_timeout", true},
    {"--drain-timeout", "limits.drain_timeout", true},
    {"--keepalive-idle", "limits.keepalive_idle", true},
    {"--max-connections", "limits.max_connections", true},
    {"--max-head-size", "limits.max_head_size", true},
    {"--max-client-hello-size", "limits.max_client_hello_size", true},
    {"--max-buffer-memory", "limits.max_buffer_memory", true},
    {"--max-handshake-memory", "limits.max_handshake_memory", true},
    {"--dns-min-ttl", "dns.min_ttl", true},
    {"--dns-max-ttl", "dns.max_ttl", true},
    {"--dns-negative-ttl", "dns.negative_ttl", true},
    {"--dns-cache-size", "dns.cache_size", true},
    {"--log-format", "log.format", true},
    {"--deny-log-rate", "log.deny_rate", true},
    {"--admin", "proxy.admin", true},
    {"--admin-allow-remote", "proxy.admin_allow_remote", false},
    {"--upstream-proxy", "proxy.upstream_proxy", true},
    {"--upstream-proxy-credentials", "proxy.upstream_proxy_credentials", true},
};

// --bind-host-tag PATTERN=TAG, or PATTERN=CIDR (a range instead of a service tag).
BindConfig parseBindHostTag(const ConfigValue& value) {
  const size_t equals = value.text.find('=');
  if (equals == std::string::npos || equals == 0 || equals + 1 == value.text.size()) {
    throw ConfigError(value.origin + ": invalid binding '" + value.text +
                      "': expected PATTERN=TAG or PATTERN=CIDR (e.g. "
                      "*.azurecr.io=AzureContainerRegistry)");
  }
  BindConfig bind;
  bind.origin = value.origin;
  bind.hosts.push_back({value.text.substr(0, equals), value.origin});
  ConfigValue bound{value.text.substr(equals + 1), value.origin};
  (Cidr::parse(bound.text) ? bind.allow_cidrs : bind.service_tags).push_back(std::move(bound));
  return bind;
}

}  // namespace

std::string_view proxyOptionsHelp() noexcept { return kProxyHelp; }

std::string_view policyOptionsHelp() noexcept { return kHelp; }

CommandLine parseCommandLine(const std::vector<std::string>& args,
                             const std::vector<std::string_view>& extra_flags) {
  CommandLine result;
  Config from_args;
  std::optional<std::string> config_path;
  PolicyConfig& policy = from_args.policy;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg.size() < 2 || arg.compare(0, 2, "--") != 0) {
      result.positional.push_back(arg);
      continue;
    }
    if (arg == "--") {
      result.positional.insert(result.positional.end(), args.begin() + static_cast<long>(i) + 1,
                               args.end());
      break;
    }
    std::string name = arg;
    std::optional<std::string> inline_value;
    if (const size_t equals = arg.find('='); equals != std::string::npos) {
      name = arg.substr(0, equals);
      inline_value = arg.substr(equals + 1);
    }
    auto value = [&]() -> ConfigValue {
      if (inline_value) {
        return {*inline_value, name};
      }
      if (i + 1 >= args.size()) {
        throw ConfigError(name + ": missing value");
      }
      return {args[++i], name};
    };
    if (name == "--registry") {
      policy.registries.push_back(value());
    } else if (name == "--region") {
      policy.regions.push_back(value());
    } else if (name == "--allow-host") {
      policy.allow_hosts.push_back(value());
    } else if (name == "--allow-cidr") {
      policy.allow_cidrs.push_back(value());
    } else if (name == "--deny-cidr") {
      policy.deny_cidrs.push_back(value());
    } else if (name == "--service-tag") {
      policy.service_tags.push_back(value());
    } else if (name == "--service-tags") {
      policy.service_tags_file = value();
    } else if (name == "--port") {
      policy.ports.push_back(value());
    } else if (name == "--preset") {
      policy.presets.push_back(value());
    } else if (name == "--client-cidr") {
      policy.client_cidrs.push_back(value());
    } else if (name == "--bind-host-tag") {
      policy.binds.push_back(parseBindHostTag(value()));
    } else if (name == "--config") {
      config_path = value().text;
    } else if (name == "--strict-ip" && !inline_value) {
      policy.strict_ip = true;
    } else if (name == "--report-only" && !inline_value) {
      policy.report_only = true;
    } else if (name == "--revoke-on-reload" && !inline_value) {
      policy.revoke_on_reload = true;
    } else if (name == "--deny-ech" && !inline_value) {
      policy.deny_ech = true;
    } else if (const auto option =
                   std::find_if(std::begin(kSettingOptions), std::end(kSettingOptions),
                                [&](const SettingOption& o) { return o.flag == name; });
               option != std::end(kSettingOptions) && (option->takes_value || !inline_value)) {
      const std::string key(option->key);
      const ConfigValue setting = option->takes_value ? value() : ConfigValue{"true", name};
      if (isListSetting(key)) {
        from_args.settings[key].push_back(setting);
      } else {
        from_args.settings[key] = {setting};
      }
    } else if (!inline_value &&
               std::find(extra_flags.begin(), extra_flags.end(), name) != extra_flags.end()) {
      result.flags.push_back(name);
    } else {
      throw ConfigError(arg + ": unknown option");
    }
  }
  if (!config_path) {
    // Like nginx or haproxy: the packaged configuration applies without naming it. Only when it
    // exists, so that a bare build still runs on the embedded default; ACR_EGRESS_CONFIG names
    // another default (it must exist) or, empty, none at all.
    if (const char* from_env = std::getenv("ACR_EGRESS_CONFIG"); from_env != nullptr) {
      if (*from_env != '\0') {
        config_path = from_env;
      }
    } else if (std::error_code error; std::filesystem::exists(kDefaultConfigPath, error)) {
      config_path = kDefaultConfigPath;
    }
  }
  if (config_path) {
    result.config = loadConfigFile(*config_path);
  }
  mergeConfig(result.config, from_args);
  return result;
}

}  // namespace acr
