#include <malloc.h>

#include <algorithm>
#include <iostream>
#include <stdexcept>
#include <string>
#include <vector>

#include "conf/command_line.h"
#include "conf/policy_factory.h"
#include "conf/proxy_settings.h"
#include "conf/settings_table.h"
#include "proxy/check_command.h"
#include "proxy/libevent_memory.h"
#include "proxy/proxy_server.h"
#include "proxy/reference_command.h"
#include "proxy/suggest_command.h"
#include "proxy/version.h"

namespace {

constexpr const char* kUsage =
    "usage: acr-egress [policy options] [proxy options]     run the proxy\n"
    "       acr-egress check [policy options] TARGET...     judge targets without DNS\n"
    "       acr-egress --check-config [options]             validate and print the policy\n"
    "       acr-egress suggest [--min-count N] LOGFILE...   a policy allowing what a log saw\n"
    "       acr-egress reference settings|reasons         a table of the docs, as markdown\n"
    "       acr-egress --version\n";

// Building a policy from the service-tags file peaks at ~19 MB of temporaries (the file, the JSON
// DOM, every tag's prefixes); they are freed, but glibc keeps the pages, so the idle proxy held
// 12.4 MiB private memory instead of 4.5 MiB (bench/e2e/footprint.py). Hand them back.
acr::PolicySnapshot buildPolicyAndTrim(const acr::PolicyConfig& config) {
  acr::PolicySnapshot snapshot = acr::buildPolicy(config);
  malloc_trim(0);
  return snapshot;
}

bool has(const std::vector<std::string>& args, std::string_view flag) {
  return std::find(args.begin(), args.end(), flag) != args.end();
}

int runProxy(const std::vector<std::string>& args) {
  acr::useSlabForLibevent();  // before anything calls libevent
  try {
    const acr::CommandLine command_line = acr::parseCommandLine(args);
    if (!command_line.positional.empty()) {
      std::cerr << "acr-egress: unexpected argument '" << command_line.positional[0] << "'\n"
                << kUsage;
      return 2;
    }
    acr::ProxySettings settings = acr::buildProxySettings(command_line.config);
    acr::checkListenerExposure(command_line.config);
    acr::PolicySnapshot snapshot = buildPolicyAndTrim(command_line.config.policy);
    // SIGHUP re-reads the same command line and configuration file.
    // With the running upstream proxy (not live), a reload may not add strict-ip or a binding.
    auto reload = [args, upstream = settings.upstream_proxy] {
      const acr::CommandLine again = acr::parseCommandLine(args);
      acr::ProxySettings fresh = acr::buildProxySettings(again.config);
      acr::checkListenerExposure(again.config);  // a reload may not drop the last client rule
      acr::checkUpstreamProxyPolicy(again.config.policy, upstream ? &*upstream : nullptr);
      return acr::ProxyServer::Reloaded{std::move(fresh), buildPolicyAndTrim(again.config.policy)};
    };
    acr::ProxyServer server(std::move(settings), std::move(snapshot), reload);
    return server.run();
  } catch (const acr::ConfigError& error) {
    std::cerr << "acr-egress: " << error.what() << "\n";
    return 2;
  } catch (const std::exception& error) {
    std::cerr << "acr-egress: " << error.what() << "\n";
    return 1;
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (!args.empty() && args[0] == "check") {
    args.erase(args.begin());
    return acr::runCheckCommand(args, std::cout, std::cerr);
  }
  if (!args.empty() && args[0] == "suggest") {
    args.erase(args.begin());
    return acr::runSuggestCommand(args, std::cout, std::cerr);
  }
  if (!args.empty() && args[0] == "reference") {
    args.erase(args.begin());
    return acr::runReferenceCommand(args, std::cout, std::cerr);
  }
  if (has(args, "--version")) {
    std::cout << "acr-egress " << acr::version() << "\n";
    return 0;
  }
  if (has(args, "--help") || has(args, "-h")) {
    std::cout << kUsage;
    acr::writePolicyOptionsHelp(std::cout);
    acr::writeProxyOptionsHelp(std::cout);
    return 0;
  }
  if (has(args, "--check-config")) {
    return acr::runCheckConfig(args, std::cout, std::cerr);
  }
  return runProxy(args);
}
