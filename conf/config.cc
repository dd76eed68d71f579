#include "conf/config.h"

#include <toml++/toml.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace acr {
namespace {

std::string where(const std::string& source, const toml::source_region& region) {
  return source + ":" + std::to_string(region.begin.line) + ":" +
         std::to_string(region.begin.column);
}

[[noreturn]] void fail(const std::string& source, const toml::node& node, const std::string& what) {
  throw ConfigError(where(source, node.source()) + ": " + what);
}

std::vector<ConfigValue> stringList(const std::string& source, const std::string& key,
                                    const toml::node& node) {
  const toml::array* array = node.as_array();
  if (array == nullptr) {
    fail(source, node, "'" + key + "' must be an array of strings");
  }
  std::vector<ConfigValue> values;
  for (const toml::node& item : *array) {
    const auto* text = item.as_string();
    if (text == nullptr) {
      fail(source, item, "'" + key + "' must hold strings only");
    }
    values.push_back({text->get(), where(source, item.source())});
  }
  return values;
}

// [[policy.bind]]: an array of tables, each with `hosts` and at least one of `service_tags` and
// `allow_cidrs`.
void readBinds(const std::string& source, const toml::node& node, PolicyConfig& policy) {
  const toml::array* array = node.as_array();
  if (array == nullptr) {
    fail(source, node, "'policy.bind' must be an array of tables ([[policy.bind]])");
  }
  for (const toml::node& item : *array) {
    const toml::table* table = item.as_table();
    if (table == nullptr) {
      fail(source, item, "'policy.bind' must hold tables only ([[policy.bind]])");
    }
    BindConfig bind;
    bind.origin = where(source, item.source());
    for (const auto& [key_node, value] : *table) {
      const std::string key(key_node.str());
      if (key == "hosts") {
        bind.hosts = stringList(source, "policy.bind.hosts", value);
      } else if (key == "service_tags") {
        bind.service_tags = stringList(source, "policy.bind.service_tags", value);
      } else if (key == "allow_cidrs") {
        bind.allow_cidrs = stringList(source, "policy.bind.allow_cidrs", value);
      } else {
        fail(source, value,
             "unknown key 'policy.bind." + key + "' (known: hosts, service_tags, allow_cidrs)");
      }
    }
    if (bind.hosts.empty()) {
      fail(source, item, "a [[policy.bind]] table needs a non-empty 'hosts'");
    }
    if (bind.service_tags.empty() && bind.allow_cidrs.empty()) {
      fail(source, item,
           "a [[policy.bind]] table needs 'service_tags' or 'allow_cidrs': binding hosts to "
           "nothing would deny them everywhere");
    }
    policy.binds.push_back(std::move(bind));
  }
}

// One key of [policy] (or of a [[group]]: `row` is then one of kGroupSettings).
void readPolicyKey(const std::string& source, const std::string& base_directory,
                   const std::string& key, const SettingRow* row, const toml::node& node,
                   PolicyConfig& policy) {
  auto flag = [&source, &key, &node] {
    const auto* value = node.as_boolean();
    if (value == nullptr) {
      fail(source, node, "'" + key + "' must be true or false");
    }
    return value->get();
  };
  switch (row->setting) {
    case Setting::kRegistries:
    case Setting::kAllowHosts:
      (row->setting == Setting::kRegistries ? policy.registries : policy.allow_hosts) =
          stringList(source, key, node);
      if (!policy.host_list_origin) {
        policy.host_list_origin = where(source, node.source()) + " (policy." + key + ")";
      }
      break;
    case Setting::kRegions:
      policy.regions = stringList(source, key, node);
      break;
    case Setting::kAllowCidrs:
      policy.allow_cidrs = stringList(source, key, node);
      break;
    case Setting::kDenyCidrs:
      policy.deny_cidrs = stringList(source, key, node);
      break;
    case Setting::kServiceTags:
      policy.service_tags = stringList(source, key, node);
      break;
    case Setting::kPresets:
      policy.presets = stringList(source, key, node);
      break;
    case Setting::kClientCidrs:
      policy.client_cidrs = stringList(source, key, node);
      break;
    case Setting::kBindHostTags:
      readBinds(source, node, policy);
      break;
    case Setting::kReportOnly:
      policy.report_only = flag();
      break;
    case Setting::kRevokeOnReload:
      policy.revoke_on_reload = flag();
      break;
    case Setting::kStrictIp:
      policy.strict_ip = flag();
      break;
    case Setting::kDenyEch: {
      const auto* text = node.as_string();
      if (text == nullptr || (text->get() != "allow_outer" && text->get() != "deny")) {
        fail(source, node, "'ech' must be \"allow_outer\" or \"deny\"");
      }
      policy.deny_ech = text->get() == "deny";
      break;
    }
    case Setting::kServiceTagsFile: {
      const auto* text = node.as_string();
      if (text == nullptr || text->get().empty()) {
        fail(source, node, "'service_tags_file' must be a non-empty string");
      }
      std::filesystem::path path(text->get());
      if (path.is_relative() && !base_directory.empty()) {
        path = std::filesystem::path(base_directory) / path;
      }
      policy.service_tags_file = ConfigValue{path.string(), where(source, node.source())};
      break;
    }
    case Setting::kPorts: {
      const toml::array* array = node.as_array();
      if (array == nullptr) {
        fail(source, node, "'ports' must be an array of integers");
      }
      policy.ports.clear();
      for (const toml::node& item : *array) {
        const auto* number = item.as_integer();
        if (number == nullptr) {
          fail(source, item, "'ports' must hold integers only");
        }
        policy.ports.push_back({std::to_string(number->get()), where(source, item.source())});
      }
      break;
    }
    default:  // a row of another table: its key does not start with "policy."
      fail(source, node, "unknown key 'policy." + key + "'");
  }
}

void readPolicy(const std::string& source, const std::string& base_directory,
                const toml::table& table, PolicyConfig& policy) {
  for (const auto& [key_node, node] : table) {
    const std::string key(key_node.str());
    const SettingRow* row = findSettingByKey("policy." + key);
    if (row == nullptr) {
      fail(source, node, "unknown key 'policy." + key + "'");
    }
    readPolicyKey(source, base_directory, key, row, node, policy);
  }
}

bool validGroupName(std::string_view name) {
  if (name.empty() || name.size() > 64) {
    return false;
  }
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '.' || c == '-';
  });
}

// [[group]]: an array of tables, each with `name`, `clients` and any of kGroupSettings. The keys
// that hold for every client (deny_cidrs, strict_ip, bind, ...) are refused here by name.
void readGroups(const std::string& source, const std::string& base_directory,
                const toml::node& node, PolicyConfig& policy) {
  const toml::array* array = node.as_array();
  if (array == nullptr) {
    fail(source, node, "'group' must be an array of tables ([[group]])");
  }
  for (const toml::node& item : *array) {
    const toml::table* table = item.as_table();
    if (table == nullptr) {
      fail(source, item, "'group' must hold tables only ([[group]])");
    }
    GroupConfig group;
    group.origin = where(source, item.source());
    bool named = false;
    for (const auto& [key_node, value] : *table) {
      const std::string key(key_node.str());
      if (key == "name") {
        const auto* text = value.as_string();
        if (text == nullptr || !validGroupName(text->get())) {
          fail(source, value,
               "'group.name' must be 1 to 64 characters of letters, digits, '_', '.' and '-'");
        }
        group.name = {text->get(), where(source, value.source())};
        named = true;
        continue;
      }
      if (key == "clients") {
        group.clients = stringList(source, "group.clients", value);
        continue;
      }
      const SettingRow* row = findSettingByKey("policy." + key);
      if (row == nullptr) {
        fail(source, value, "unknown key 'group." + key + "'");
      }
      if (std::find(std::begin(kGroupSettings), std::end(kGroupSettings), row->setting) ==
          std::end(kGroupSettings)) {
        fail(source, value,
             "'" + key +
                 "' holds for every client: set it in [policy], not in a [[group]] "
                 "(a group inherits it)");
      }
      readPolicyKey(source, base_directory, key, row, value, group.policy);
      if (std::find(group.given.begin(), group.given.end(), row->setting) == group.given.end()) {
        group.given.push_back(row->setting);
      }
    }
    if (!named) {
      fail(source, item, "a [[group]] table needs a 'name'");
    }
    if (group.clients.empty()) {
      fail(source, item, "group '" + group.name.text + "' needs a non-empty 'clients'");
    }
    if (policy.groups.size() >= kMaxGroups) {
      fail(source, item, "too many [[group]] tables (at most " + std::to_string(kMaxGroups) + ")");
    }
    policy.groups.push_back(std::move(group));
  }
}

// Whether `name` is a table of the settings table other than [policy] ("limits", "dns").
bool isSettingTable(std::string_view name) {
  for (const SettingRow& row : allSettings()) {
    if (!isPolicySetting(row.setting) && row.key.size() > name.size() &&
        row.key.starts_with(name) && row.key[name.size()] == '.') {
      return true;
    }
  }
  return false;
}

// A scalar TOML value as text: strings as they are, integers in decimal, booleans as true/false.
std::optional<std::string> scalarText(const toml::node& node) {
  if (const auto* text = node.as_string()) {
    return text->get();
  }
  if (const auto* number = node.as_integer()) {
    return std::to_string(number->get());
  }
  if (const auto* flag = node.as_boolean()) {
    return flag->get() ? "true" : "false";
  }
  return std::nullopt;
}

void readSettings(const std::string& source, const std::string& table_name,
                  const toml::table& table, SettingMap& settings) {
  for (const auto& [key_node, node] : table) {
    const std::string key = table_name + "." + std::string(key_node.str());
    const SettingRow* row = findSettingByKey(key);
    if (row == nullptr || isPolicySetting(row->setting)) {
      fail(source, node, "unknown key '" + key + "'");
    }
    std::vector<ConfigValue> values;
    if (row->repeatable) {
      values = stringList(source, key, node);
    } else {
      const auto text = scalarText(node);
      if (!text) {
        fail(source, node, "'" + key + "' must be a string, number or boolean");
      }
      values.push_back({*text, where(source, node.source())});
    }
    settings[row->setting] = std::move(values);
  }
}

}  // namespace

Config parseConfigText(std::string_view text, const std::string& source,
                       const std::string& base_directory) {
  toml::table root;
  try {
    root = toml::parse(text, source);
  } catch (const toml::parse_error& error) {
    throw ConfigError(where(source, error.source()) + ": " + std::string(error.description()));
  }
  Config config;
  for (const auto& [key_node, node] : root) {
    const std::string key(key_node.str());
    if (key == "policy") {
      const toml::table* table = node.as_table();
      if (table == nullptr) {
        fail(source, node, "'policy' must be a table ([policy])");
      }
      readPolicy(source, base_directory, *table, config.policy);
    } else if (key == "group") {
      readGroups(source, base_directory, node, config.policy);
    } else if (isSettingTable(key)) {
      const toml::table* table = node.as_table();
      if (table == nullptr) {
        fail(source, node, "'" + key + "' must be a table ([" + key + "])");
      }
      readSettings(source, key, *table, config.settings);
    } else {
      fail(source, node, "unknown key '" + key + "'");
    }
  }
  return config;
}

Config loadConfigFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw ConfigError(path + ": cannot open the configuration file");
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) {
    throw ConfigError(path + ": cannot read the configuration file");
  }
  const std::string directory = std::filesystem::path(path).parent_path().string();
  return parseConfigText(text.str(), path, directory);
}

void mergeConfig(Config& base, const Config& extra) {
  auto append = [](std::vector<ConfigValue>& to, const std::vector<ConfigValue>& from) {
    to.insert(to.end(), from.begin(), from.end());
  };
  PolicyConfig& to = base.policy;
  const PolicyConfig& from = extra.policy;
  append(to.registries, from.registries);
  append(to.regions, from.regions);
  append(to.allow_hosts, from.allow_hosts);
  append(to.allow_cidrs, from.allow_cidrs);
  append(to.deny_cidrs, from.deny_cidrs);
  append(to.service_tags, from.service_tags);
  append(to.ports, from.ports);
  append(to.presets, from.presets);
  append(to.client_cidrs, from.client_cidrs);
  to.binds.insert(to.binds.end(), from.binds.begin(), from.binds.end());
  to.groups.insert(to.groups.end(), from.groups.begin(), from.groups.end());
  if (from.service_tags_file) {
    to.service_tags_file = from.service_tags_file;
  }
  to.strict_ip = to.strict_ip || from.strict_ip;
  if (!to.host_list_origin) {
    to.host_list_origin = from.host_list_origin;
  }
  to.report_only = to.report_only || from.report_only;
  to.revoke_on_reload = to.revoke_on_reload || from.revoke_on_reload;
  to.deny_ech = to.deny_ech || from.deny_ech;
  for (const auto& [key, values] : extra.settings) {
    auto& target = base.settings[key];
    if (settingRow(key).repeatable) {
      target.insert(target.end(), values.begin(), values.end());
    } else {
      target = values;
    }
  }
}

}  // namespace acr
