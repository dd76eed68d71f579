#include "conf/policy_factory.h"

#include <algorithm>
#include <map>
#include <set>
#include <stdexcept>

#include "conf/presets.h"
#include "conf/service_tags.h"
#include "filters/host_name.h"
#include "filters/socket_address.h"

namespace acr {
namespace {

[[noreturn]] void fail(const ConfigValue& value, const std::string& what) {
  throw ConfigError(value.origin + ": " + what);
}

// Registry and region names become one label of a pattern: a single valid label, no wildcard.
std::string singleLabel(const ConfigValue& value, const char* what) {
  HostName name;
  const HostName::Status status = HostName::normalize(value.text, name);
  if (status != HostName::Status::kOk || name.labelCount() != 1 ||
      value.text.find('.') != std::string::npos) {
    fail(value, std::string("invalid ") + what + " '" + value.text +
                    "': expected a single DNS label (letters, digits, '-')");
  }
  return std::string(name.view());
}

uint16_t parsePort(const ConfigValue& value) {
  const std::optional<uint16_t> port = acr::parsePort(value.text);
  if (!port) {
    fail(value, "invalid port '" + value.text + "': expected a number from 1 to 65535");
  }
  return *port;
}

Cidr parseCidr(const ConfigValue& value) {
  std::string error;
  const auto cidr = Cidr::parse(value.text, &error);
  if (!cidr) {
    fail(value, error);
  }
  return *cidr;
}

}  // namespace

namespace {

// One group, built already: its configuration and its snapshot.
struct BuiltGroup {
  const GroupConfig* config;
  std::shared_ptr<const PolicySnapshot> snapshot;
};

// The policy of `config` with `tags` (loaded from config.service_tags_file, or null) and, for the
// top-level policy, the groups built already.
PolicySnapshot buildOne(const PolicyConfig& config, const ServiceTags* tags,
                        const std::vector<BuiltGroup>& groups) {
  Policy::Builder builder;
  PolicySnapshot snapshot;
  auto addPattern = [&](const std::string& pattern, const std::string& origin,
                        const ConfigValue* source) {
    const std::string error = builder.addHostPattern(pattern, origin);
    if (!error.empty()) {
      if (source != nullptr) {
        fail(*source, error);
      }
      throw ConfigError(origin + ": " + error);
    }
  };

  std::vector<std::string> regions;
  for (const ConfigValue& region : config.regions) {
    regions.push_back(singleLabel(region, "region"));
  }
  if (!config.regions.empty() && config.registries.empty()) {
    fail(config.regions.front(), "a region only applies to a registry: add --registry NAME");
  }
  for (const ConfigValue& registry : config.registries) {
    const std::string name = singleLabel(registry, "registry name");
    const std::string origin = registry.origin + " registry " + name;
    addPattern(name + ".azurecr.io", origin, &registry);
    if (regions.empty()) {
      addPattern(name + ".*.data.azurecr.io", origin, &registry);
    }
    for (const std::string& region : regions) {
      addPattern(name + "." + region + ".data.azurecr.io", origin, &registry);
    }
    // Regional endpoints of a geo-replicated registry, NAME.REGION.geo.azurecr.io.
    if (regions.empty()) {
      addPattern(name + ".*.geo.azurecr.io", origin, &registry);
    }
    for (const std::string& region : regions) {
      addPattern(name + "." + region + ".geo.azurecr.io", origin, &registry);
    }
  }
  for (const ConfigValue& host : config.allow_hosts) {
    addPattern(host.text, host.origin, &host);
  }
  for (const ConfigValue& preset : config.presets) {
    const PresetLibrary& library = PresetLibrary::embedded();
    const auto patterns = library.expand(preset.text);
    if (!patterns) {
      std::string known;
      for (const std::string& name : library.names()) {
        known += (known.empty() ? "" : ", ") + name;
      }
      fail(preset, "unknown preset '" + preset.text + "' (known: " + known + ")");
    }
    for (const PresetPattern& pattern : *patterns) {
      const std::string label =
          pattern.preset == preset.text ? preset.text : preset.text + " via " + pattern.preset;
      const std::string error =
          builder.addHostPattern(pattern.pattern, preset.origin + " preset " + label, label);
      if (!error.empty()) {
        fail(preset, "preset " + pattern.preset + ": " + error);
      }
    }
  }
  if (config.registries.empty() && config.allow_hosts.empty() && config.presets.empty()) {
    if (config.host_list_origin) {
      snapshot.empty_host_list_origin = config.host_list_origin;
    } else {
      for (const char* pattern : kDefaultHostPatterns) {
        addPattern(pattern, "embedded default", nullptr);
      }
    }
  }

  if (config.ports.empty()) {
    builder.addPort(kDefaultPort);
  }
  for (const ConfigValue& port : config.ports) {
    builder.addPort(parsePort(port));
  }
  for (const ConfigValue& cidr : config.allow_cidrs) {
    const Cidr parsed = parseCidr(cidr);
    builder.addAllowCidr(parsed, cidr.origin);
    snapshot.allowed_prefixes.push_back(parsed);
  }
  for (const ConfigValue& cidr : config.deny_cidrs) {
    builder.addDenyCidr(parseCidr(cidr), cidr.origin);
  }
  for (const ConfigValue& cidr : config.client_cidrs) {
    builder.addClientCidr(parseCidr(cidr), cidr.origin);
  }
  for (const BuiltGroup& group : groups) {
    const uint32_t index = builder.addGroup(group.config->name.text, group.snapshot->policy);
    PolicySnapshot::Group entry{group.config->name.text, group.config->origin, {}, group.snapshot};
    for (const ConfigValue& cidr : group.config->clients) {
      const Cidr parsed = parseCidr(cidr);
      builder.addClientCidr(parsed, cidr.origin, index);
      entry.clients.push_back(parsed.toString());
    }
    snapshot.groups.push_back(std::move(entry));
  }
  builder.setStrictIp(config.strict_ip);
  builder.setReportOnly(config.report_only);
  builder.setRevokeOnReload(config.revoke_on_reload);
  builder.setDenyEch(config.deny_ech);
  if (!config.service_tags.empty() && !config.service_tags_file) {
    fail(config.service_tags.front(),
         "service tag '" + config.service_tags.front().text +
             "' needs a service-tags file (--service-tags FILE or policy.service_tags_file)");
  }
  // The tag `name` names, or a ConfigError with the closest names.
  auto findTag = [tags](const ConfigValue& name) -> const ServiceTag& {
    const ServiceTag* tag = tags->find(name.text);
    if (tag == nullptr && tags->known(name.text)) {
      // buildPolicy() did not name this tag when it loaded the file: a bug, never to be
      // reported as an unknown tag.
      throw std::logic_error("service tag '" + name.text + "' was loaded without its prefixes");
    }
    if (tag == nullptr) {
      std::string hint;
      for (const std::string& suggestion : tags->suggest(name.text)) {
        hint += (hint.empty() ? "" : ", ") + suggestion;
      }
      fail(name, "unknown service tag '" + name.text + "' in " + tags->source() +
                     " (closest: " + hint + ")");
    }
    return *tag;
  };
  if (tags != nullptr) {
    snapshot.service_tags_change_number = tags->changeNumber();
    snapshot.service_tags_path = config.service_tags_file->text;
    for (const ConfigValue& name : config.service_tags) {
      const ServiceTag* tag = &findTag(name);
      builder.addServiceTag(tag->name, tag->prefixes, name.origin);
      snapshot.allowed_prefixes.insert(snapshot.allowed_prefixes.end(), tag->prefixes.begin(),
                                       tag->prefixes.end());
      snapshot.service_tag_names.push_back(tag->name);
    }
  }
  for (const BindConfig& bind : config.binds) {
    // Every range the binding names, and their names for sentences ("AzureContainerRegistry,
    // 192.0.2.0/24").
    std::vector<Cidr> ranges;
    std::string bound_to;
    for (const ConfigValue& name : bind.service_tags) {
      if (tags == nullptr) {
        fail(name, "service tag '" + name.text +
                       "' of a binding needs a service-tags file (--service-tags FILE or "
                       "policy.service_tags_file)");
      }
      const ServiceTag& tag = findTag(name);
      ranges.insert(ranges.end(), tag.prefixes.begin(), tag.prefixes.end());
      bound_to += (bound_to.empty() ? "" : ", ") + tag.name;
    }
    for (const ConfigValue& cidr : bind.allow_cidrs) {
      ranges.push_back(parseCidr(cidr));
      bound_to += (bound_to.empty() ? "" : ", ") + ranges.back().toString();
    }
    for (const ConfigValue& host : bind.hosts) {
      const std::string error = builder.addBinding(host.text, ranges, bound_to, bind.origin);
      if (!error.empty()) {
        fail(host, error);
      }
    }
  }
  std::sort(snapshot.allowed_prefixes.begin(), snapshot.allowed_prefixes.end(), CidrOrder{});
  snapshot.allowed_prefixes.erase(
      std::unique(snapshot.allowed_prefixes.begin(), snapshot.allowed_prefixes.end()),
      snapshot.allowed_prefixes.end());
  snapshot.policy = builder.build();
  for (const Rule& rule : snapshot.policy->rules()) {
    if (rule.kind == Rule::Kind::kHostPattern && rule.text.starts_with("*.") &&
        rule.text.ends_with(".core.windows.net")) {
      snapshot.warnings.push_back("host pattern " + rule.text + " (" + rule.origin +
                                  ") admits every storage account in Azure, an attacker's "
                                  "included: prefer the registry's dedicated data endpoints "
                                  "(--registry NAME) or your own accounts' names");
    }
    if (rule.kind == Rule::Kind::kClientCidr && rule.text.ends_with("/0")) {
      snapshot.warnings.push_back(
          (rule.group.empty() ? std::string() : "group " + rule.group + ": ") + "client rule " +
          rule.text + " (" + rule.origin + ") admits everyone who can reach a listener");
    }
  }
  if (snapshot.policy->reportOnly()) {
    snapshot.warnings.push_back(
        "REPORT-ONLY: enforcement is OFF: denials by host, port and address-set rules are "
        "logged (would_deny) and let through");
  }
  // A group's own findings, unless the top-level policy has the same one (an inherited rule).
  for (const BuiltGroup& group : groups) {
    for (const std::string& warning : group.snapshot->warnings) {
      if (std::find(snapshot.warnings.begin(), snapshot.warnings.end(), warning) ==
          snapshot.warnings.end()) {
        snapshot.warnings.push_back("group " + group.config->name.text + ": " + warning);
      }
    }
  }
  return snapshot;
}

// The configuration of `group`: the top-level one with the keys the group sets replaced.
PolicyConfig groupConfig(const PolicyConfig& top, const GroupConfig& group) {
  PolicyConfig config = top;
  config.groups.clear();
  config.client_cidrs.clear();
  const PolicyConfig& own = group.policy;
  for (const Setting setting : group.given) {
    switch (setting) {
      case Setting::kRegistries:
      case Setting::kAllowHosts:
        (setting == Setting::kRegistries ? config.registries : config.allow_hosts) =
            setting == Setting::kRegistries ? own.registries : own.allow_hosts;
        // A host list given in the group, even an empty one: the default patterns never apply.
        // config.cc wrote its origin as "FILE:L:C (policy.KEY)"; it is the group's key.
        config.host_list_origin = own.host_list_origin;
        if (config.host_list_origin) {
          const size_t at = config.host_list_origin->find("(policy.");
          if (at != std::string::npos) {
            config.host_list_origin->replace(at, 8, "(group " + group.name.text + " ");
          }
        }
        break;
      case Setting::kRegions:
        config.regions = own.regions;
        break;
      case Setting::kPresets:
        config.presets = own.presets;
        break;
      case Setting::kServiceTags:
        config.service_tags = own.service_tags;
        break;
      case Setting::kAllowCidrs:
        config.allow_cidrs = own.allow_cidrs;
        break;
      case Setting::kPorts:
        config.ports = own.ports;
        break;
      case Setting::kReportOnly:
        config.report_only = own.report_only;
        break;
      default:  // config.cc accepts kGroupSettings only
        break;
    }
  }
  return config;
}

// Group names unique; no client prefix in two places (which group would a client take?).
void checkGroups(const PolicyConfig& config) {
  std::map<std::string, const ConfigValue*> names;
  for (const GroupConfig& group : config.groups) {
    const auto [it, inserted] = names.emplace(group.name.text, &group.name);
    if (!inserted) {
      fail(group.name,
           "group name '" + group.name.text + "' is already used at " + it->second->origin);
    }
  }
  struct Owner {
    std::string what;
    const ConfigValue* value;
  };
  std::map<std::string, Owner> prefixes;
  auto claim = [&prefixes](const ConfigValue& cidr, const std::string& what) {
    const std::string prefix = parseCidr(cidr).toString();
    const auto [it, inserted] = prefixes.emplace(prefix, Owner{what, &cidr});
    if (!inserted && it->second.what != what) {
      fail(cidr, "client range " + prefix + " of " + what + " is also a client range of " +
                     it->second.what + " (" + it->second.value->origin +
                     "): a client must belong to one group");
    }
  };
  for (const ConfigValue& cidr : config.client_cidrs) {
    claim(cidr, "policy.client_cidrs");
  }
  for (const GroupConfig& group : config.groups) {
    for (const ConfigValue& cidr : group.clients) {
      claim(cidr, "group " + group.name.text);
    }
  }
}

}  // namespace

PolicySnapshot buildPolicy(const PolicyConfig& config) {
  checkGroups(config);
  std::optional<ServiceTags> tags;
  if (config.service_tags_file) {
    // Only the tags the policy names have their prefixes parsed and kept (ServiceTags::load).
    std::vector<std::string> used;
    auto use = [&used](const std::vector<ConfigValue>& names) {
      for (const ConfigValue& name : names) {
        used.push_back(name.text);
      }
    };
    use(config.service_tags);
    for (const BindConfig& bind : config.binds) {
      use(bind.service_tags);
    }
    for (const GroupConfig& group : config.groups) {
      use(group.policy.service_tags);
      for (const BindConfig& bind : group.policy.binds) {
        use(bind.service_tags);
      }
    }
    tags = ServiceTags::load(config.service_tags_file->text, &used);
  }
  const ServiceTags* shared_tags = tags ? &*tags : nullptr;
  std::vector<BuiltGroup> groups;
  for (const GroupConfig& group : config.groups) {
    PolicySnapshot built = buildOne(groupConfig(config, group), shared_tags, {});
    built.is_group = true;
    groups.push_back({&group, std::make_shared<const PolicySnapshot>(std::move(built))});
  }
  return buildOne(config, shared_tags, groups);
}

std::string PolicySnapshot::summary() const {
  std::string out;
  size_t patterns = 0;
  std::string hosts;
  std::string allow_cidrs;
  std::string deny_cidrs;
  std::string client_cidrs;
  std::string bindings;
  for (const Rule& rule : policy->rules()) {
    switch (rule.kind) {
      case Rule::Kind::kHostPattern:
        ++patterns;
        if (patterns <= 20) {
          hosts += "  host " + rule.text + "    (" + rule.origin + ")\n";
        }
        break;
      case Rule::Kind::kAllowCidr:
        allow_cidrs += "  allow " + rule.text + "    (" + rule.origin + ")\n";
        break;
      case Rule::Kind::kDenyCidr:
        deny_cidrs += "  deny " + rule.text + "    (" + rule.origin + ")\n";
        break;
      case Rule::Kind::kClientCidr:
        client_cidrs += "  client " + rule.text +
                        (rule.group.empty() ? std::string() : " group " + rule.group) + "    (" +
                        rule.origin + ")\n";
        break;
      case Rule::Kind::kHostBinding:
        bindings += "  bind " + rule.text + " to " + rule.bound_to + "    (" + rule.origin + ")\n";
        break;
      default:
        break;
    }
  }
  if (policy->reportOnly()) {
    out +=
        "REPORT-ONLY: enforcement is OFF: denials by host, port and address-set rules are "
        "logged (would_deny) and let through\n";
  }
  out += "host patterns: " + std::to_string(patterns);
  if (empty_host_list_origin) {
    out += " (the host list is explicitly empty at " + *empty_host_list_origin +
           ": no host name is allowed, only addresses in the allowed set)";
  }
  out += "\n" + hosts;
  if (patterns > 20) {
    out += "  ... and " + std::to_string(patterns - 20) + " more\n";
  }
  std::string ports;
  for (const uint16_t port : policy->ports()) {
    ports += (ports.empty() ? "" : ", ") + std::to_string(port);
  }
  out += "ports: " + ports + "\n";
  out += allow_cidrs + deny_cidrs;
  if (service_tags_change_number) {
    out += "service tags: " + service_tags_path + " (changeNumber " +
           std::to_string(*service_tags_change_number) + ")\n";
    for (const std::string& name : service_tag_names) {
      out += "  tag " + name + "\n";
    }
  }
  out += "allowed prefixes: " + std::to_string(policy->allowedPrefixCount()) + "\n";
  out += std::string("strict-ip: ") + (policy->strictIp() ? "on" : "off") + "\n";
  if (!bindings.empty()) {
    out += "address bindings (a matching name may be dialled only inside these):\n" + bindings;
  }
  if (is_group) {
    return out;  // its clients are listed by the top-level summary
  }
  if (policy->hasClientRules()) {
    out += "clients:\n" + client_cidrs;
  } else {
    out += "clients: anyone who reaches a listener (no --client-cidr)\n";
  }
  for (const Group& group : groups) {
    std::string clients;
    for (const std::string& client : group.clients) {
      clients += (clients.empty() ? "" : ", ") + client;
    }
    out += "group " + group.name + "    (" + group.origin + ")\n  clients: " + clients + "\n";
    // The group's effective policy, indented under it.
    const std::string own = group.snapshot->summary();
    size_t start = 0;
    while (start < own.size()) {
      const size_t end = own.find('\n', start);
      const size_t stop = end == std::string::npos ? own.size() : end;
      out += "  " + own.substr(start, stop - start) + "\n";
      start = stop + 1;
    }
  }
  return out;
}

namespace {

// "kind text" for every rule a user wrote (special ranges are built in and never change).
std::set<std::string> ruleKeys(const Policy& policy) {
  std::set<std::string> keys;
  for (const Rule& rule : policy.rules()) {
    switch (rule.kind) {
      case Rule::Kind::kHostPattern:
        keys.insert("host " + rule.text);
        break;
      case Rule::Kind::kAllowCidr:
        keys.insert("allow-cidr " + rule.text);
        break;
      case Rule::Kind::kDenyCidr:
        keys.insert("deny-cidr " + rule.text);
        break;
      case Rule::Kind::kServiceTag:
        keys.insert("tag " + rule.text);
        break;
      case Rule::Kind::kClientCidr:
        keys.insert("client-cidr " + rule.text +
                    (rule.group.empty() ? std::string() : " (group " + rule.group + ")"));
        break;
      case Rule::Kind::kHostBinding:
        keys.insert("bind " + rule.text + " to " + rule.bound_to);
        break;
      case Rule::Kind::kSpecialRange:
        break;
    }
  }
  for (const uint16_t port : policy.ports()) {
    keys.insert("port " + std::to_string(port));
  }
  return keys;
}

const std::string& text(const std::string& item) { return item; }
std::string text(const Cidr& item) { return item.toString(); }

// Appends "label: a, b, c (+N more)" for the elements of `items` not in `other`; returns the
// count. Both are sorted by `Order`.
template <class Items, class Order = std::less<>>
size_t appendDifference(std::string& out, const char* label, const Items& items, const Items& other,
                        Order order = {}) {
  constexpr size_t kShown = 5;
  std::vector<typename Items::value_type> only;
  std::set_difference(items.begin(), items.end(), other.begin(), other.end(),
                      std::back_inserter(only), order);
  if (only.empty()) {
    return 0;
  }
  out += out.empty() ? "" : "; ";
  out += label;
  out += ": ";
  for (size_t i = 0; i < only.size() && i < kShown; ++i) {
    out += (i == 0 ? "" : ", ") + text(only[i]);
  }
  if (only.size() > kShown) {
    out += " (+" + std::to_string(only.size() - kShown) + " more)";
  }
  return only.size();
}

}  // namespace

std::string describePolicyChange(const PolicySnapshot& before, const PolicySnapshot& after) {
  std::string out;
  const std::set<std::string> old_rules = ruleKeys(*before.policy);
  const std::set<std::string> new_rules = ruleKeys(*after.policy);
  appendDifference(out, "rules added", new_rules, old_rules);
  appendDifference(out, "rules removed", old_rules, new_rules);
  const size_t added = appendDifference(out, "prefixes added", after.allowed_prefixes,
                                        before.allowed_prefixes, CidrOrder{});
  const size_t removed = appendDifference(out, "prefixes removed", before.allowed_prefixes,
                                          after.allowed_prefixes, CidrOrder{});
  if (added + removed > 0) {
    out += "; allowed prefixes " + std::to_string(before.allowed_prefixes.size()) + " -> " +
           std::to_string(after.allowed_prefixes.size());
  }
  if (before.policy->reportOnly() != after.policy->reportOnly()) {
    out += out.empty() ? "" : "; ";
    out += std::string("report-only ") + (after.policy->reportOnly() ? "on" : "off");
  }
  if (before.policy->revokeOnReload() != after.policy->revokeOnReload()) {
    out += out.empty() ? "" : "; ";
    out += std::string("revoke-on-reload ") + (after.policy->revokeOnReload() ? "on" : "off");
  }
  if (before.policy->denyEch() != after.policy->denyEch()) {
    out += out.empty() ? "" : "; ";
    out += std::string("ech ") + (after.policy->denyEch() ? "deny" : "allow_outer");
  }
  if (before.policy->strictIp() != after.policy->strictIp()) {
    out += out.empty() ? "" : "; ";
    out += std::string("strict-ip ") + (after.policy->strictIp() ? "on" : "off");
  }
  if (before.service_tags_change_number != after.service_tags_change_number ||
      before.service_tags_path != after.service_tags_path) {
    auto text = [](const PolicySnapshot& snapshot) {
      return snapshot.service_tags_change_number
                 ? std::to_string(*snapshot.service_tags_change_number)
                 : std::string("none");
    };
    out += out.empty() ? "" : "; ";
    out += "service-tags changeNumber " + text(before) + " -> " + text(after);
  }
  // Groups: added, removed, and what changed inside each kept one.
  std::set<std::string> old_groups;
  std::set<std::string> new_groups;
  for (const PolicySnapshot::Group& group : before.groups) {
    old_groups.insert(group.name);
  }
  for (const PolicySnapshot::Group& group : after.groups) {
    new_groups.insert(group.name);
  }
  appendDifference(out, "groups added", new_groups, old_groups);
  appendDifference(out, "groups removed", old_groups, new_groups);
  for (const PolicySnapshot::Group& group : after.groups) {
    for (const PolicySnapshot::Group& old_group : before.groups) {
      if (old_group.name == group.name) {
        const std::string change = describePolicyChange(*old_group.snapshot, *group.snapshot);
        if (change != "no change") {
          out += (out.empty() ? "group " : "; group ") + group.name + " (" + change + ")";
        }
      }
    }
  }
  return out.empty() ? "no change" : out;
}

}  // namespace acr
