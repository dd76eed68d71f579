#pragma once

#include <cstdint>
#include <optional>
#include <ostream>
#include <span>
#include <string_view>

namespace acr {

// Every setting of acr-egress, policy and proxy alike. Code names a setting by this enum, never by
// its flag or key text: the text lives in one row of the table (conf/settings_table.cc), which
// drives the TOML keys, the command line, --help, validation, the defaults, the reload's "live or
// needs a restart" and the generated configuration reference (docs/configuration.md).
// docs/architecture.md "How to add a setting" says what a new row needs.
enum class Setting : uint8_t {
  // [policy]: validated into a Policy by conf/policy_factory; a reload rebuilds it.
  kRegistries,
  kRegions,
  kAllowHosts,
  kAllowCidrs,
  kDenyCidrs,
  kServiceTagsFile,
  kServiceTags,
  kPorts,
  kPresets,
  kStrictIp,
  kReportOnly,
  kRevokeOnReload,
  kDenyEch,
  kClientCidrs,
  kBindHostTags,  // --bind-host-tag PATTERN=TAG; TOML [[policy.bind]] tables
  kConfig,        // --config FILE: where the rest comes from; no TOML key
  // The other tables: validated into ProxySettings by conf/proxy_settings.
  kConnectListeners,
  kTransparentListeners,
  kSniListeners,
  kSniUpstreamPort,
  kDnsServers,
  kWorkers,
  kMark,
  kAllowNonTls,
  kAllowNoSni,
  kHeadTimeout,
  kDnsTimeout,
  kConnectTimeout,
  kHappyEyeballsDelay,
  kIdleTimeout,
  kDrainTimeout,
  kKeepaliveIdle,
  kMaxConnections,
  kMaxConnectionsPerClient,
  kMaxConnectionsPerListener,
  kMaxHeadSize,
  kMaxClientHelloSize,
  kMaxBufferMemory,
  kMaxHandshakeMemory,
  kDnsMinTtl,
  kDnsMaxTtl,
  kDnsNegativeTtl,
  kDnsCacheSize,
  kLogFormat,
  kDenyLogRate,
  kAdmin,
  kAdminAllowRemote,
  kUpstreamProxy,
  kUpstreamProxyCredentials,
  kCount,
};
inline constexpr size_t kSettingCount = static_cast<size_t>(Setting::kCount);

// What a setting's value is, which decides how it is read and validated.
enum class SettingKind : uint8_t {
  kFlag,       // a valueless option; TOML true/false
  kNumber,     // a decimal integer from `min` to `max`, no leading zero
  kDuration,   // "500ms", "10s", "15m", "1h": from `min` to `max` milliseconds
  kChoice,     // one of `choices` ("json|text")
  kText,       // a string (a file name, a pattern)
  kAddress,    // IPv4:PORT or [IPv6]:PORT
  kDnsServer,  // ADDR, ADDR:PORT or [IPv6]:PORT (port 53 by default)
  kCidr,       // ADDR/LENGTH
  kPort,       // 1..65535 (TOML: an integer)
};

struct SettingRow {
  Setting setting;
  std::string_view flag;  // "--idle-timeout"
  std::string_view key;   // "limits.idle_timeout"; empty: command line only
  SettingKind kind;
  bool repeatable;  // a list: the flag may repeat, TOML takes an array, merges append
  int64_t min;      // kNumber, kDuration (milliseconds)
  int64_t max;
  std::string_view default_value;  // parsed like a given value when unset; empty: unset
  std::string_view default_note;   // how the docs and --help show the default, if not the value
  bool live;                    // a reload applies it (to new connections); else "needs a restart"
  std::string_view value_name;  // the metavariable of --help ("T", "N", "ADDR:PORT")
  std::string_view help;        // one sentence (may wrap with '\n' for --help)
  std::string_view choices = {};  // kChoice: the values, '|' between them
};

// The row of `setting`; the table's order is the enum's (checked at compile time).
const SettingRow& settingRow(Setting setting) noexcept;
std::span<const SettingRow> allSettings() noexcept;
// The row whose flag is `flag` ("--idle-timeout") or whose key is `key` ("limits.idle_timeout").
const SettingRow* findSettingByFlag(std::string_view flag) noexcept;
const SettingRow* findSettingByKey(std::string_view key) noexcept;
// Whether a row belongs to [policy] (its key starts with "policy.", or it is --config).
bool isPolicySetting(Setting setting) noexcept;

// "--help": the policy options (every command takes them), and the proxy options; one row each.
void writePolicyOptionsHelp(std::ostream& out);
void writeProxyOptionsHelp(std::ostream& out);
// `acr-egress reference settings`: the markdown table of docs/configuration.md.
void writeSettingsReference(std::ostream& out);

}  // namespace acr
