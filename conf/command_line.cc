#include "conf/command_line.h"

#include <algorithm>
#include <optional>

namespace acr {
namespace {

constexpr std::string_view kHelp =
    "Policy options (repeatable unless noted):\n"
    "  --registry NAME        allow NAME.azurecr.io and NAME.<region>.data.azurecr.io\n"
    "  --region REGION        regions of the registries' data endpoints (default: any)\n"
    "  --allow-host PATTERN   allow a host; '*' stands for exactly one label\n"
    "  --allow-cidr CIDR      allow an address range\n"
    "  --deny-cidr CIDR       deny an address range (always wins)\n"
    "  --service-tags FILE    Azure service-tags JSON file (once)\n"
    "  --service-tag NAME     allow the prefixes of a service tag, e.g. Storage.WestEurope\n"
    "  --port N               allowed destination port (default: 443)\n"
    "  --strict-ip            every address must be inside the allowed ranges (once)\n"
    "  --config FILE          TOML configuration; command-line options add to it (once)\n"
    "With no --registry and no --allow-host, the hosts allowed are *.azurecr.io,\n"
    "*.*.data.azurecr.io and *.blob.core.windows.net.\n";

}  // namespace

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
    } else if (name == "--config") {
      config_path = value().text;
    } else if (name == "--strict-ip" && !inline_value) {
      policy.strict_ip = true;
    } else if (!inline_value &&
               std::find(extra_flags.begin(), extra_flags.end(), name) != extra_flags.end()) {
      result.flags.push_back(name);
    } else {
      throw ConfigError(arg + ": unknown option");
    }
  }
  if (config_path) {
    result.config = loadConfigFile(*config_path);
  }
  mergeConfig(result.config, from_args);
  return result;
}

}  // namespace acr
