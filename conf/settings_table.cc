#include "conf/settings_table.h"

#include <algorithm>
#include <string>

#include "conf/command_line.h"

namespace acr {
namespace {

using K = SettingKind;
using S = Setting;

constexpr int64_t kSecond = 1000;
constexpr int64_t kMinute = 60 * kSecond;
constexpr int64_t kHour = 60 * kMinute;
constexpr int64_t kDay = 24 * kHour;

// One row per setting, in the order of enum Setting. Columns: setting, flag, TOML key, kind,
// repeatable, min, max, default value, default as shown, live, --help metavariable, help.
// Policy rows are all live: a reload builds a whole new policy from them.
constexpr SettingRow kRows[] = {
    {S::kRegistries, "--registry", "policy.registries", K::kText, true, 0, 0, "", "", true, "NAME",
     "allow NAME.azurecr.io, NAME.<region>.data.azurecr.io and NAME.<region>.geo.azurecr.io"},
    {S::kRegions, "--region", "policy.regions", K::kText, true, 0, 0, "", "any", true, "REGION",
     "regions of the registries' data endpoints"},
    {S::kAllowHosts, "--allow-host", "policy.allow_hosts", K::kText, true, 0, 0, "", "", true,
     "PATTERN", "allow a host; '*' stands for exactly one label"},
    {S::kAllowCidrs, "--allow-cidr", "policy.allow_cidrs", K::kCidr, true, 0, 0, "", "", true,
     "CIDR", "allow an address range"},
    {S::kDenyCidrs, "--deny-cidr", "policy.deny_cidrs", K::kCidr, true, 0, 0, "", "", true, "CIDR",
     "deny an address range (always wins)"},
    {S::kServiceTagsFile, "--service-tags", "policy.service_tags_file", K::kText, false, 0, 0, "",
     "", true, "FILE",
     "Azure service-tags JSON file; in TOML relative to the configuration file's directory"},
    {S::kServiceTags, "--service-tag", "policy.service_tags", K::kText, true, 0, 0, "", "", true,
     "NAME", "allow the prefixes of a service tag, e.g. Storage.WestEurope"},
    {S::kPorts, "--port", "policy.ports", K::kPort, true, 1, 65535, "", "443", true, "N",
     "allowed destination port"},
    {S::kPresets, "--preset", "policy.presets", K::kText, true, 0, 0, "", "", true, "NAME",
     "allow a documented bundle of hosts: acr, mcr, iotedge, azure-login (docs/policy.md)"},
    {S::kStrictIp, "--strict-ip", "policy.strict_ip", K::kFlag, false, 0, 0, "false", "", true, "",
     "every address must be inside the allowed ranges"},
    {S::kReportOnly, "--report-only", "policy.report_only", K::kFlag, false, 0, 0, "false", "",
     true, "",
     "log and count denials by host, port and address-set rules but let them through (rollout); "
     "special ranges stay refused"},
    {S::kRevokeOnReload, "--revoke-on-reload", "policy.revoke_on_reload", K::kFlag, false, 0, 0,
     "false", "", true, "",
     "a reload closes the open connections the new policy denies (reason revoked); otherwise "
     "they keep running"},
    {S::kDenyEch, "--deny-ech", "policy.ech", K::kFlag, false, 0, 0, "", "allow_outer", true, "",
     "deny ClientHellos offering ECH (reason ech; TOML ech = \"deny\"); otherwise judge them by "
     "their outer SNI (ech = \"allow_outer\")"},
    {S::kClientCidrs, "--client-cidr", "policy.client_cidrs", K::kCidr, true, 0, 0, "", "", true,
     "CIDR",
     "clients that may use the proxy; required for a listener on a non-loopback address "
     "(0.0.0.0/0, ::/0: anyone)"},
    {S::kBindHostTags, "--bind-host-tag", "policy.bind", K::kText, true, 0, 0, "", "", true,
     "PATTERN=TAG",
     "addresses dialled for names matching PATTERN must lie in service tag TAG (or a CIDR), else "
     "address_not_bound; TOML: [[policy.bind]] tables with hosts, service_tags, allow_cidrs"},
    {S::kConfig, "--config", "", K::kText, false, 0, 0, "", kDefaultConfigPath, false, "FILE",
     "TOML configuration; command-line options add to it; the default is read only if it "
     "exists"},
    {S::kConnectListeners, "--connect", "listeners.connect", K::kAddress, true, 0, 0,
     "127.0.0.1:3128", "", false, "ADDR:PORT", "HTTP CONNECT listener"},
    {S::kTransparentListeners, "--transparent", "listeners.transparent", K::kAddress, true, 0, 0,
     "", "", false, "ADDR:PORT", "listener for TLS redirected by iptables/nftables"},
    {S::kSniListeners, "--sni", "listeners.sni", K::kAddress, true, 0, 0, "", "", false,
     "ADDR:PORT", "listener for DNS-steered TLS clients"},
    {S::kSniUpstreamPort, "--sni-upstream-port", "listeners.sni_upstream_port", K::kNumber, false,
     1, 65535, "", "their own port", true, "N", "the port sni listeners dial"},
    {S::kDnsServers, "--dns-server", "dns.servers", K::kDnsServer, true, 0, 0, "",
     "/etc/resolv.conf", true, "ADDR[:PORT]", "DNS server"},
    {S::kWorkers, "--workers", "proxy.workers", K::kNumber, false, 0, 256, "0",
     "0: number of cores", false, "N", "event-loop threads"},
    {S::kMark, "--mark", "proxy.mark", K::kNumber, false, 1, 4294967295, "", "none", true, "N",
     "SO_MARK for upstream sockets (firewall exclusion)"},
    {S::kAllowNonTls, "--allow-non-tls", "proxy.allow_non_tls", K::kFlag, false, 0, 0, "false", "",
     true, "", "let a CONNECT tunnel carry something other than TLS"},
    {S::kAllowNoSni, "--allow-no-sni", "proxy.allow_no_sni", K::kFlag, false, 0, 0, "false", "",
     true, "", "let a ClientHello without SNI through (transparent only)"},
    {S::kHeadTimeout, "--head-timeout", "limits.head_timeout", K::kDuration, false, 100, kHour,
     "10s", "", true, "T", "time to send the CONNECT head or ClientHello"},
    {S::kDnsTimeout, "--dns-timeout", "dns.timeout", K::kDuration, false, 100, kMinute, "5s", "",
     true, "T", "DNS resolution budget"},
    {S::kConnectTimeout, "--connect-timeout", "limits.connect_timeout", K::kDuration, false, 100,
     10 * kMinute, "10s", "", true, "T", "upstream connect budget, all attempts together"},
    // RFC 8305 recommends 250 ms and at least 100 ms (10 ms floor); 0 keeps one at a time.
    {S::kHappyEyeballsDelay, "--happy-eyeballs-delay", "limits.happy_eyeballs_delay", K::kDuration,
     false, 0, 2 * kSecond, "250ms", "", true, "T",
     "start the next address when the last has not connected after T (RFC 8305; 0: one address "
     "at a time)"},
    {S::kIdleTimeout, "--idle-timeout", "limits.idle_timeout", K::kDuration, false, kSecond,
     7 * kDay, "15m", "", true, "T", "idle tunnel timeout; no total lifetime cap"},
    {S::kDrainTimeout, "--drain-timeout", "limits.drain_timeout", K::kDuration, false, 0, kDay,
     "30s", "", true, "T", "on SIGTERM, how long tunnels may finish"},
    {S::kKeepaliveIdle, "--keepalive-idle", "limits.keepalive_idle", K::kDuration, false, kSecond,
     2 * kHour, "120s", "", true, "T", "TCP keepalive idle time on both sides (whole seconds)"},
    {S::kMaxConnections, "--max-connections", "limits.max_connections", K::kNumber, false, 1,
     1'000'000, "4096", "", true, "N", "concurrent connections"},
    // One host may hold a quarter of the default global limit: a flood from one address cannot
    // take every slot, yet a docker daemon pulling many layers at once (a few dozen tunnels)
    // never meets it. A value at or above --max-connections changes nothing.
    {S::kMaxConnectionsPerClient, "--max-connections-per-client",
     "limits.max_connections_per_client", K::kNumber, false, 0, 1'000'000, "1024", "", true, "N",
     "concurrent connections from one source address (IPv4-mapped IPv6 counts as its IPv4; 0: "
     "no per-client limit)"},
    // Off by default: with one listener (the default) it would only repeat --max-connections.
    {S::kMaxConnectionsPerListener, "--max-connections-per-listener",
     "limits.max_connections_per_listener", K::kNumber, false, 0, 1'000'000, "0", "", true, "N",
     "concurrent connections on each listener, so that a flood on one cannot take the slots of "
     "the others (0: off)"},
    {S::kMaxHeadSize, "--max-head-size", "limits.max_head_size", K::kNumber, false, 256, 65536,
     "8192", "", true, "N", "CONNECT head cap in bytes"},
    {S::kMaxClientHelloSize, "--max-client-hello-size", "limits.max_client_hello_size", K::kNumber,
     false, 512, 16384, "16384", "", true, "N", "ClientHello cap in bytes"},
    {S::kMaxBufferMemory, "--max-buffer-memory", "limits.max_buffer_memory", K::kNumber, false,
     int64_t{1} << 20, int64_t{1} << 36, "67108864", "64 MiB", true, "N",
     "bytes all tunnels may buffer for slow readers"},
    {S::kMaxHandshakeMemory, "--max-handshake-memory", "limits.max_handshake_memory", K::kNumber,
     false, int64_t{1} << 18, int64_t{1} << 34, "16777216", "16 MiB", true, "N",
     "bytes all unfinished heads/ClientHellos may hold"},
    {S::kDnsMinTtl, "--dns-min-ttl", "dns.min_ttl", K::kDuration, false, 0, kDay, "5s", "", true,
     "T", "shortest time an answer is cached (whole seconds)"},
    {S::kDnsMaxTtl, "--dns-max-ttl", "dns.max_ttl", K::kDuration, false, 0, kDay, "300s", "", true,
     "T", "longest time an answer is cached (whole seconds)"},
    {S::kDnsNegativeTtl, "--dns-negative-ttl", "dns.negative_ttl", K::kDuration, false, 0, kDay,
     "30s", "", true, "T", "how long a name without addresses is cached (whole seconds)"},
    {S::kDnsCacheSize, "--dns-cache-size", "dns.cache_size", K::kNumber, false, 1, 10'000'000,
     "10000", "", true, "N", "names cached per worker"},
    {S::kLogFormat, "--log-format", "log.format", K::kChoice, false, 0, 0, "json", "", true,
     "json|text", "access and service log format", "json|text"},
    {S::kDenyLogRate, "--deny-log-rate", "log.deny_rate", K::kNumber, false, 0, 1'000'000, "1000",
     "", true, "N",
     "access-log lines for refused connections per second; the rest are counted and summarised "
     "(0: no cap)"},
    {S::kAdmin, "--admin", "proxy.admin", K::kAddress, false, 0, 0, "", "off", false, "ADDR:PORT",
     "admin HTTP endpoint: /metrics (Prometheus), /healthz, /readyz, /policy; loopback only "
     "unless the next option"},
    {S::kAdminAllowRemote, "--admin-allow-remote", "proxy.admin_allow_remote", K::kFlag, false, 0,
     0, "false", "", false, "", "let --admin listen on a non-loopback address (no auth!)"},
    {S::kUpstreamProxy, "--upstream-proxy", "proxy.upstream_proxy", K::kText, false, 0, 0, "",
     "dial", false, "URL",
     "open allowed tunnels with CONNECT through this HTTP proxy, http://HOST:PORT; it resolves "
     "the names"},
    {S::kUpstreamProxyCredentials, "--upstream-proxy-credentials",
     "proxy.upstream_proxy_credentials", K::kText, false, 0, 0, "", "none", false, "FILE",
     "Basic auth for the upstream proxy: FILE holds user:password and must not be readable by "
     "others (never on the command line, never logged)"},
};

constexpr bool rowsFollowTheEnum() {
  if (std::size(kRows) != kSettingCount) {
    return false;
  }
  for (size_t i = 0; i < std::size(kRows); ++i) {
    if (static_cast<size_t>(kRows[i].setting) != i) {
      return false;
    }
  }
  return true;
}
static_assert(rowsFollowTheEnum(), "kRows must hold one row per Setting, in the enum's order");

std::string_view kindName(SettingKind kind) noexcept {
  switch (kind) {
    case K::kFlag:
      return "flag";
    case K::kNumber:
      return "number";
    case K::kDuration:
      return "duration";
    case K::kChoice:
      return "choice";
    case K::kText:
      return "text";
    case K::kAddress:
      return "address";
    case K::kDnsServer:
      return "DNS server";
    case K::kCidr:
      return "CIDR";
    case K::kPort:
      return "port";
  }
  return "unknown";
}

std::string durationText(int64_t ms) {
  if (ms != 0 && ms % kDay == 0) {
    return std::to_string(ms / kDay) + "d";
  }
  if (ms != 0 && ms % kHour == 0) {
    return std::to_string(ms / kHour) + "h";
  }
  if (ms != 0 && ms % kMinute == 0) {
    return std::to_string(ms / kMinute) + "m";
  }
  if (ms != 0 && ms % kSecond == 0) {
    return std::to_string(ms / kSecond) + "s";
  }
  return std::to_string(ms) + "ms";
}

std::string rangeText(const SettingRow& row) {
  switch (row.kind) {
    case K::kNumber:
    case K::kPort:
      return std::to_string(row.min) + " to " + std::to_string(row.max);
    case K::kDuration:
      return durationText(row.min) + " to " + durationText(row.max);
    case K::kChoice: {
      std::string text(row.choices);
      for (char& c : text) {
        c = c == '|' ? ',' : c;
      }
      return text;
    }
    default:
      return "";
  }
}

std::string defaultText(const SettingRow& row) {
  if (!row.default_note.empty()) {
    return std::string(row.default_note);
  }
  return std::string(row.default_value);
}

// `text` wrapped at 79 columns, continuation lines indented by `indent`.
void writeWrapped(std::ostream& out, std::string_view text, size_t column, size_t indent) {
  constexpr size_t kWidth = 79;
  while (!text.empty()) {
    size_t take = text.size();
    if (column + take > kWidth) {
      const size_t space = text.rfind(' ', kWidth - column);
      take = space == std::string_view::npos || space == 0 ? text.find(' ') : space;
      take = take == std::string_view::npos ? text.size() : take;
    }
    out << text.substr(0, take);
    text.remove_prefix(take);
    while (!text.empty() && text.front() == ' ') {
      text.remove_prefix(1);
    }
    if (!text.empty()) {
      out << "\n" << std::string(indent, ' ');
      column = indent;
    }
  }
  out << "\n";
}

void writeHelpRows(std::ostream& out, bool policy) {
  constexpr size_t kIndent = 30;
  for (const SettingRow& row : kRows) {
    if (isPolicySetting(row.setting) != policy) {
      continue;
    }
    std::string left = "  " + std::string(row.flag);
    if (!row.value_name.empty()) {
      left += " " + std::string(row.value_name);
    }
    left.resize(std::max(left.size() + 1, kIndent), ' ');
    std::string help(row.help);
    std::string notes;
    const std::string default_text = defaultText(row);
    if (!default_text.empty() && row.kind != K::kFlag) {
      notes = "default " + default_text;
    }
    if (row.repeatable) {
      notes += notes.empty() ? "repeatable" : "; repeatable";
    }
    if (!notes.empty()) {
      help += " (" + notes + ")";
    }
    out << left;
    writeWrapped(out, help, left.size(), kIndent);
  }
}

}  // namespace

const SettingRow& settingRow(Setting setting) noexcept {
  return kRows[static_cast<size_t>(setting)];
}

std::span<const SettingRow> allSettings() noexcept { return kRows; }

const SettingRow* findSettingByFlag(std::string_view flag) noexcept {
  for (const SettingRow& row : kRows) {
    if (row.flag == flag) {
      return &row;
    }
  }
  return nullptr;
}

const SettingRow* findSettingByKey(std::string_view key) noexcept {
  for (const SettingRow& row : kRows) {
    if (!row.key.empty() && row.key == key) {
      return &row;
    }
  }
  return nullptr;
}

bool isPolicySetting(Setting setting) noexcept { return setting <= Setting::kConfig; }

void writePolicyOptionsHelp(std::ostream& out) {
  out << "Policy options:\n";
  writeHelpRows(out, true);
  out << "With no --registry, --allow-host or --preset, the hosts allowed are *.azurecr.io,\n"
         "*.*.data.azurecr.io and *.blob.core.windows.net.\n";
}

void writeProxyOptionsHelp(std::ostream& out) {
  out << "Proxy options:\n";
  writeHelpRows(out, false);
  out << "Durations T take a unit: ms, s, m or h (\"10s\", \"15m\"). Each option takes\n"
         "\"--opt VALUE\" or \"--opt=VALUE\".\n";
}

void writeSettingsReference(std::ostream& out) {
  out << "| Flag | TOML key | Kind | Range | Default | Reload | Meaning |\n"
         "|---|---|---|---|---|---|---|\n";
  for (const SettingRow& row : kRows) {
    std::string flag = "`" + std::string(row.flag);
    if (!row.value_name.empty()) {
      flag += " " + std::string(row.value_name);
    }
    flag += "`";
    // A '|' inside a table cell ends the cell, even in a code span: GitHub reads "\|".
    for (size_t at = flag.find('|'); at != std::string::npos; at = flag.find('|', at + 2)) {
      flag.replace(at, 1, "\\|");
    }
    std::string kind(kindName(row.kind));
    if (row.repeatable) {
      kind += ", repeatable";
    }
    const std::string key = row.key.empty() ? "" : "`" + std::string(row.key) + "`";
    const std::string default_text = defaultText(row);
    std::string help(row.help);
    for (char& c : help) {
      c = c == '|' ? '/' : c;
    }
    out << "| " << flag << " | " << key << " | " << kind << " | " << rangeText(row) << " | "
        << (default_text.empty() ? "" : "`" + default_text + "`") << " | "
        << (row.key.empty() ? ""
            : row.live      ? "live"
                            : "needs a restart")
        << " | " << help << " |\n";
  }
}

}  // namespace acr
