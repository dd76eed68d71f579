#pragma once

#include <ostream>
#include <string>
#include <vector>

namespace acr {

// `acr-egress reference KIND`: prints one of the proxy's own tables as markdown, for the docs
// (scripts/update-docs puts them into docs/*.md, and the docs_reference test keeps them equal):
//   settings  every setting: flag, TOML key, kind, range, default, live (conf/settings_table.h)
//   reasons   every reason a connection ends with (proxy/close_reason.h)
// Exit status 0, or 2 for an unknown KIND.
int runReferenceCommand(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);

}  // namespace acr
