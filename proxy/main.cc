#include <algorithm>
#include <iostream>
#include <string>
#include <vector>

#include "conf/command_line.h"
#include "proxy/check_command.h"
#include "proxy/version.h"

namespace {

constexpr const char* kUsage =
    "usage: acr-egress check [policy options] TARGET...   judge targets without DNS\n"
    "       acr-egress --check-config [policy options]    validate and print the policy\n"
    "       acr-egress --version\n";

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (!args.empty() && args[0] == "check") {
    args.erase(args.begin());
    return acr::runCheckCommand(args, std::cout, std::cerr);
  }
  if (std::find(args.begin(), args.end(), "--version") != args.end()) {
    std::cout << "acr-egress " << acr::version() << "\n";
    return 0;
  }
  if (std::find(args.begin(), args.end(), "--help") != args.end() ||
      std::find(args.begin(), args.end(), "-h") != args.end()) {
    std::cout << kUsage << acr::policyOptionsHelp();
    return 0;
  }
  if (std::find(args.begin(), args.end(), "--check-config") != args.end()) {
    return acr::runCheckConfig(args, std::cout, std::cerr);
  }
  std::cerr << "acr-egress: the proxy listeners are not built yet; use 'check' or "
               "'--check-config'\n"
            << kUsage;
  return 2;
}
