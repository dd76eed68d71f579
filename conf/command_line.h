#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "conf/config.h"

namespace acr {

// The options shared by every command (check, --check-config, the proxy): one per row of the
// settings table (conf/settings_table.h), each "--opt VALUE" or "--opt=VALUE" (flags take no
// value). --config FILE is TOML; options given on the command line add to the file's.
// Read when --config is not given and the file exists (ACR_EGRESS_CONFIG overrides; empty: none).
inline constexpr const char* kDefaultConfigPath = "/etc/acr-egress/acr-egress.toml";

struct CommandLine {
  Config config;
  std::vector<std::string> positional;  // arguments that are not options (check's targets)
  std::vector<std::string> flags;       // other recognised flags, e.g. "--check-config"
};

// Parses `args` (without the program name and subcommand). `extra_flags` are valueless flags the
// caller accepts besides the policy options. Throws ConfigError on an unknown option or a missing
// value; loads --config first so that command-line values add to the file's.
CommandLine parseCommandLine(const std::vector<std::string>& args,
                             const std::vector<std::string_view>& extra_flags = {});

}  // namespace acr
