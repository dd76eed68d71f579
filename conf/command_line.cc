#include "conf/command_line.h"

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <optional>

#include "filters/ip_address.h"

namespace acr {
namespace {

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

// Puts one policy option's value where conf/policy_factory reads it.
void addPolicyValue(Setting setting, const ConfigValue& value, PolicyConfig& policy) {
  switch (setting) {
    case Setting::kRegistries:
      policy.registries.push_back(value);
      break;
    case Setting::kRegions:
      policy.regions.push_back(value);
      break;
    case Setting::kAllowHosts:
      policy.allow_hosts.push_back(value);
      break;
    case Setting::kAllowCidrs:
      policy.allow_cidrs.push_back(value);
      break;
    case Setting::kDenyCidrs:
      policy.deny_cidrs.push_back(value);
      break;
    case Setting::kServiceTags:
      policy.service_tags.push_back(value);
      break;
    case Setting::kServiceTagsFile:
      policy.service_tags_file = value;
      break;
    case Setting::kPorts:
      policy.ports.push_back(value);
      break;
    case Setting::kPresets:
      policy.presets.push_back(value);
      break;
    case Setting::kClientCidrs:
      policy.client_cidrs.push_back(value);
      break;
    case Setting::kBindHostTags:
      policy.binds.push_back(parseBindHostTag(value));
      break;
    case Setting::kStrictIp:
      policy.strict_ip = true;
      break;
    case Setting::kReportOnly:
      policy.report_only = true;
      break;
    case Setting::kRevokeOnReload:
      policy.revoke_on_reload = true;
      break;
    case Setting::kDenyEch:
      policy.deny_ech = true;
      break;
    default:  // --config is read by parseCommandLine itself; proxy rows go to Config::settings
      break;
  }
}

}  // namespace

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
    const SettingRow* row = findSettingByFlag(name);
    // A flag takes no "=VALUE"; every other kind takes one.
    if (row != nullptr && (row->kind != SettingKind::kFlag || !inline_value)) {
      const ConfigValue setting =
          row->kind == SettingKind::kFlag ? ConfigValue{"true", name} : value();
      if (row->setting == Setting::kConfig) {
        config_path = setting.text;
      } else if (isPolicySetting(row->setting)) {
        addPolicyValue(row->setting, setting, policy);
      } else if (row->repeatable) {
        from_args.settings[row->setting].push_back(setting);
      } else {
        from_args.settings[row->setting] = {setting};
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
