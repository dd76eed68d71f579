#pragma once

#include <iosfwd>
#include <string>
#include <vector>

namespace acr {

// `acr-egress check [policy options] TARGET...`: judges each target with the proxy's own policy
// code, without DNS. TARGET is host, host:port, IPv4, IPv4:port, [IPv6] or [IPv6]:port (port
// 443 by default). Prints "allow|deny TARGET SENTENCE" per target. Returns 0 if all are allowed,
// 1 if any is denied, 2 on a usage or configuration error (message on `err`).
int runCheckCommand(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);

// `acr-egress --check-config [policy options]`: validates everything, prints the effective policy
// summary. Returns 0 or 2.
int runCheckConfig(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);

}  // namespace acr
