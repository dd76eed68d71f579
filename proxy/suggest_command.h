#pragma once

#include <iosfwd>
#include <string>
#include <vector>

namespace acr {

// `acr-egress suggest [--min-count N] LOGFILE...`: prints the smallest [policy] TOML that allows
// the connections the JSON access logs show were let through (conf/policy_suggester.h), with a
// header comment saying what was read. "-" reads standard input. Exit 0; 1 when nothing usable
// was found; 2 on a usage error or an unreadable file.
int runSuggestCommand(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);

}  // namespace acr
