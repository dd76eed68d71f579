#pragma once

#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "conf/settings_table.h"

namespace acr {

// Any invalid configuration, command line or data file. The message names where the bad value
// came from (file:line:column, a JSON path, or the option) and what is wrong with it.
class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// One configured value as text, with where it came from ("conf.toml:3:14", "--allow-cidr"), so
// that validation errors and decision logs can name the origin.
struct ConfigValue {
  std::string text;
  std::string origin;
};

// One address binding (--bind-host-tag PATTERN=TAG, [[policy.bind]]): addresses dialled for a
// name matching one of `hosts` must lie inside `service_tags` or `allow_cidrs`.
struct BindConfig {
  std::vector<ConfigValue> hosts;
  std::vector<ConfigValue> service_tags;
  std::vector<ConfigValue> allow_cidrs;
  std::string origin;  // "--bind-host-tag" or the [[policy.bind]] table's file:line:column
};

struct GroupConfig;

// The policy settings exactly as given; conf/policy_factory validates them into a Policy.
struct PolicyConfig {
  std::vector<ConfigValue> registries;
  std::vector<ConfigValue> regions;
  std::vector<ConfigValue> allow_hosts;
  std::vector<ConfigValue> allow_cidrs;
  std::vector<ConfigValue> deny_cidrs;
  std::vector<ConfigValue> service_tags;
  std::optional<ConfigValue> service_tags_file;
  std::vector<ConfigValue> ports;  // empty: 443 only
  bool strict_ip = false;
  std::vector<ConfigValue> presets;  // names of conf/presets/ bundles (--preset, policy.presets)
  // Where a host list (policy.registries or policy.allow_hosts, even an empty one) was first
  // given. The embedded default host patterns apply only when no host list was given anywhere:
  // `allow_hosts = []` means "no host name is allowed", not "the default".
  std::optional<std::string> host_list_origin;
  bool report_only = false;  // --report-only, policy.report_only: see Policy::reportOnly
  // --revoke-on-reload, policy.revoke_on_reload: see Policy::revokeOnReload
  bool revoke_on_reload = false;
  bool deny_ech = false;  // --deny-ech, policy.ech = "deny" ("allow_outer": the default)
  std::vector<ConfigValue> client_cidrs;  // who may use the proxy; empty: see checkListenerExposure
  std::vector<BindConfig> binds;          // address binding, in the order given
  std::vector<GroupConfig> groups;        // [[group]], in the order given (top-level only)
};

// One client group ([[group]], docs/policy.md "Client groups"): clients in `clients` are judged by
// the top-level policy with the keys in `given` replaced by the group's values in `policy`.
struct GroupConfig {
  ConfigValue name;
  std::vector<ConfigValue> clients;
  PolicyConfig policy;         // only the keys in `given` are meaningful
  std::vector<Setting> given;  // the policy keys the group sets (kGroupSettings only)
  std::string origin;          // the [[group]] table's file:line:column
};

// The policy keys a group may set; every other one holds for all clients and stays in [policy].
inline constexpr Setting kGroupSettings[] = {
    Setting::kRegistries,  Setting::kRegions,    Setting::kAllowHosts, Setting::kPresets,
    Setting::kServiceTags, Setting::kAllowCidrs, Setting::kPorts,      Setting::kReportOnly,
};
inline constexpr size_t kMaxGroups = 256;

// Every other setting, keyed by its row of the settings table (conf/settings_table.h);
// conf/proxy_settings validates and types them. Repeatable settings hold several values, the
// others one.
using SettingMap = std::map<Setting, std::vector<ConfigValue>>;

struct Config {
  PolicyConfig policy;
  SettingMap settings;
};

// Reads a TOML configuration file. Throws ConfigError naming the file, line and column of a
// syntax error, an unknown key, or a value of the wrong type. A relative service_tags_file is
// taken relative to the directory of the configuration file.
Config loadConfigFile(const std::string& path);

// The same from text already in memory; `source` names it in errors.
Config parseConfigText(std::string_view text, const std::string& source,
                       const std::string& base_directory = {});

// Adds `extra` to `base`: lists are appended, a set scalar replaces the base's.
void mergeConfig(Config& base, const Config& extra);

}  // namespace acr
