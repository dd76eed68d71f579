#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "conf/config.h"
#include "filters/policy.h"

namespace acr {

// The host patterns used when no host option (--registry, --allow-host) is given at all; an
// explicitly empty list (`allow_hosts = []`) is a host option (PolicyConfig::host_list_origin).
inline constexpr const char* kDefaultHostPatterns[] = {
    "*.azurecr.io",
    "*.*.data.azurecr.io",
    "*.blob.core.windows.net",
};
inline constexpr uint16_t kDefaultPort = 443;

// A policy snapshot plus what an operator wants to know about where it came from.
struct PolicySnapshot {
  std::shared_ptr<const Policy> policy;
  std::optional<int64_t> service_tags_change_number;
  std::string service_tags_path;
  std::vector<std::string> service_tag_names;
  // Every allowed prefix (--allow-cidr and tag prefixes), sorted by CidrOrder and unique: what a
  // reload compares to say which addresses it added or removed. Kept as values and written as
  // text only for that message: formatting ~1,700 tag prefixes at every start was 4 % of it.
  std::vector<Cidr> allowed_prefixes;
  // Set when the host lists were given but empty (PolicyConfig::host_list_origin): no name passes.
  std::optional<std::string> empty_host_list_origin;
  // Broad rules an operator should know about, one sentence each (startup log, reload log,
  // --check-config): a wildcard over every storage account, a client rule admitting everyone,
  // report-only.
  std::vector<std::string> warnings;
  // Client groups ([[group]]), in the order given: each one's own snapshot, whose policy is the
  // one policy->groups() holds at the same index.
  struct Group {
    std::string name;
    std::string origin;                // the [[group]] table's file:line:column
    std::vector<std::string> clients;  // the group's client ranges, normalised, as given
    std::shared_ptr<const PolicySnapshot> snapshot;
  };
  std::vector<Group> groups;
  bool is_group = false;  // a group's own snapshot (it has no client rules of its own)
  // Multi-line, human-readable summary of the effective policy (--check-config, logs), groups
  // included.
  std::string summary() const;
};

// What changed from `before` to `after`, in one line for the reload log: rules, ports and tags
// added or removed, allowed prefixes added/removed (counts and the first few), strict-ip, and the
// service-tags changeNumber old -> new, groups added or removed and, for a kept group, its own
// change in parentheses ("group build (rules added: ...)"). "no change" when the two are
// equivalent.
std::string describePolicyChange(const PolicySnapshot& before, const PolicySnapshot& after);

// Validates every value of `config` and builds the policy, loading the service-tags file if one
// is named (once: the groups' policies share it). Each [[group]] gets its own policy: the
// top-level keys with the ones the group sets replaced (docs/policy.md "Client groups"). Throws
// ConfigError naming the origin of the first bad value: an invalid pattern, CIDR, port, registry or
// region name, a missing file, or an unknown tag (with the closest names), a group name given
// twice, or a client prefix given in two places (two groups, or a group and client_cidrs).
PolicySnapshot buildPolicy(const PolicyConfig& config);

}  // namespace acr
