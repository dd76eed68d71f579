#include "conf/policy_factory.h"

#include <gtest/gtest.h>

#include <algorithm>

#include "conf/command_line.h"
#include "conf/config.h"
#include "conf/service_tags.h"
#include "test_data.h"

namespace acr {
namespace {

ConfigValue value(std::string text, std::string origin = "--opt") {
  return {std::move(text), std::move(origin)};
}

std::string errorOf(const PolicyConfig& config) {
  try {
    buildPolicy(config);
  } catch (const ConfigError& error) {
    return error.what();
  }
  return "";
}

// With no host option the embedded default applies; any host option replaces it.
TEST(PolicyFactoryTest, DefaultOnlyWithoutHostOptions) {
  const auto defaults = buildPolicy(PolicyConfig{}).policy;
  EXPECT_TRUE(defaults->decide("x.blob.core.windows.net", 443).allowed());
  EXPECT_EQ(defaults->ports(), std::vector<uint16_t>{443});
  PolicyConfig config;
  config.allow_hosts = {value("myreg.azurecr.io")};
  const auto custom = buildPolicy(config).policy;
  EXPECT_TRUE(custom->decide("myreg.azurecr.io", 443).allowed());
  EXPECT_FALSE(custom->decide("x.blob.core.windows.net", 443).allowed());
  EXPECT_EQ(custom->rules().front().origin, "--opt");
}

// Issue 10 defect 5: an explicitly empty host list (allow_hosts = [] with registries = [], or
// either alone) allows no name at all; only an absent key brings the embedded default back, and
// --check-config's summary says that no name is allowed and where the list was emptied.
TEST(PolicyFactoryTest, ExplicitlyEmptyHostListAllowsNoName) {
  for (const char* text : {"[policy]\nallow_hosts = []\nregistries = []\n",
                           "[policy]\nallow_hosts = []\n", "[policy]\nregistries = []\n"}) {
    SCOPED_TRACE(text);
    const Config config = parseConfigText(text, "empty.toml");
    const PolicySnapshot snapshot = buildPolicy(config.policy);
    EXPECT_EQ(snapshot.policy->decide("x.blob.core.windows.net", 443).reason,
              Reason::kHostNotAllowed);
    EXPECT_EQ(snapshot.policy->decide("myreg.azurecr.io", 443).reason, Reason::kHostNotAllowed);
    const std::string summary = snapshot.summary();
    EXPECT_NE(summary.find("host patterns: 0 (the host list is explicitly empty at empty.toml:"),
              std::string::npos)
        << summary;
    EXPECT_NE(summary.find("no host name is allowed"), std::string::npos) << summary;
  }
  // The command line adds to an emptied list; a file without the keys keeps the default.
  Config emptied = parseConfigText("[policy]\nallow_hosts = []\n", "empty.toml");
  Config extra;
  extra.policy.registries = {value("myreg", "--registry")};
  mergeConfig(emptied, extra);
  const auto merged = buildPolicy(emptied.policy).policy;
  EXPECT_TRUE(merged->decide("myreg.azurecr.io", 443).allowed());
  EXPECT_FALSE(merged->decide("x.blob.core.windows.net", 443).allowed());
  const Config absent = parseConfigText("[policy]\nports = [443]\n", "absent.toml");
  const PolicySnapshot defaults = buildPolicy(absent.policy);
  EXPECT_TRUE(defaults.policy->decide("x.blob.core.windows.net", 443).allowed());
  EXPECT_EQ(defaults.summary().find("explicitly empty"), std::string::npos);
}

// Every invalid value is refused with its origin and what is wrong.
TEST(PolicyFactoryTest, RefusesInvalidValuesNamingTheOrigin) {
  struct Case {
    const char* label;
    PolicyConfig config;
    const char* expected;
  };
  auto with = [](auto setter) {
    PolicyConfig config;
    setter(config);
    return config;
  };
  const Case cases[] = {
      {"bad_pattern", with([](PolicyConfig& c) { c.allow_hosts = {value("reg*.io", "f:3:1")}; }),
       "f:3:1: invalid host pattern 'reg*.io'"},
      {"bad_cidr", with([](PolicyConfig& c) { c.allow_cidrs = {value("10.0.0.0/33", "f:4:2")}; }),
       "f:4:2: invalid CIDR '10.0.0.0/33'"},
      {"bad_deny", with([](PolicyConfig& c) { c.deny_cidrs = {value("nope")}; }),
       "--opt: invalid CIDR 'nope'"},
      {"port_zero", with([](PolicyConfig& c) { c.ports = {value("0")}; }), "invalid port '0'"},
      {"port_big", with([](PolicyConfig& c) { c.ports = {value("65536")}; }), "invalid port"},
      {"port_word", with([](PolicyConfig& c) { c.ports = {value("https")}; }), "invalid port"},
      {"port_leading_zero", with([](PolicyConfig& c) { c.ports = {value("0443")}; }),
       "invalid port"},
      {"registry_dotted", with([](PolicyConfig& c) { c.registries = {value("my.reg")}; }),
       "invalid registry name 'my.reg'"},
      {"registry_star", with([](PolicyConfig& c) { c.registries = {value("*")}; }),
       "invalid registry name"},
      {"region_without_registry", with([](PolicyConfig& c) { c.regions = {value("eastus")}; }),
       "a region only applies to a registry"},
      {"tag_without_file", with([](PolicyConfig& c) { c.service_tags = {value("Storage")}; }),
       "needs a service-tags file"},
      {"missing_file",
       with([](PolicyConfig& c) { c.service_tags_file = value("/nonexistent/tags.json"); }),
       "/nonexistent/tags.json: cannot open"},
      {"unknown_tag", with([](PolicyConfig& c) {
         c.service_tags_file = value(test::serviceTagsPath());
         c.service_tags = {value("AzureContainerRegistry.eastus", "--service-tag")};
       }),
       "--service-tag: unknown service tag 'AzureContainerRegistry.eastus'"},
  };
  for (const Case& c : cases) {
    const std::string error = errorOf(c.config);
    EXPECT_NE(error.find(c.expected), std::string::npos) << c.label << ": " << error;
  }
  PolicyConfig unknown;
  unknown.service_tags_file = value(test::serviceTagsPath());
  unknown.service_tags = {value("AzureContainerRegistry.eastus")};
  EXPECT_NE(errorOf(unknown).find("closest: AzureContainerRegistry.EastUS"), std::string::npos)
      << errorOf(unknown);
}

// Service tags put their prefixes in the allowed set and the snapshot remembers the file.
TEST(PolicyFactoryTest, LoadsServiceTags) {
  PolicyConfig config;
  config.service_tags_file = value(test::serviceTagsPath());
  config.service_tags = {value("AzureContainerRegistry"), value("Storage.EastUS")};
  const PolicySnapshot snapshot = buildPolicy(config);
  EXPECT_EQ(snapshot.service_tags_change_number, 376);
  EXPECT_EQ(snapshot.service_tag_names.size(), 2u);
  const std::string summary = snapshot.summary();
  EXPECT_NE(summary.find("changeNumber 376"), std::string::npos) << summary;
  EXPECT_NE(summary.find("tag Storage.EastUS"), std::string::npos) << summary;
  // The first prefix of each tag in the real file is allowed by that tag.
  EXPECT_GT(snapshot.policy->allowedPrefixCount(), 1000u);
}

// A reload logs exactly what changed: rules, ports, prefixes and the changeNumber.
TEST(PolicyFactoryTest, DescribesWhatAReloadChanged) {
  PolicyConfig before;
  before.registries = {value("myreg")};
  before.allow_cidrs = {value("192.0.2.0/24")};
  PolicyConfig after = before;
  EXPECT_EQ(describePolicyChange(buildPolicy(before), buildPolicy(after)), "no change");

  after.registries = {value("other")};
  after.ports = {value("443"), value("8443")};
  after.allow_cidrs = {value("198.51.100.0/24")};
  after.strict_ip = true;
  const std::string change = describePolicyChange(buildPolicy(before), buildPolicy(after));
  EXPECT_NE(change.find("rules added: allow-cidr 198.51.100.0/24, host other.*.data.azurecr.io, "
                        "host other.*.geo.azurecr.io, host other.azurecr.io, "
                        "port 8443"),
            std::string::npos)
      << change;
  EXPECT_NE(change.find("rules removed: allow-cidr 192.0.2.0/24, host myreg."), std::string::npos)
      << change;
  EXPECT_NE(change.find("prefixes added: 198.51.100.0/24; prefixes removed: 192.0.2.0/24; "
                        "allowed prefixes 1 -> 1"),
            std::string::npos)
      << change;
  EXPECT_NE(change.find("strict-ip on"), std::string::npos) << change;

  PolicyConfig tagged = before;
  tagged.service_tags_file = value(test::serviceTagsPath());
  tagged.service_tags = {value("AzureContainerRegistry.EastUS")};
  const PolicySnapshot with_tags = buildPolicy(tagged);
  const std::string added = describePolicyChange(buildPolicy(before), with_tags);
  EXPECT_NE(added.find("rules added: tag AzureContainerRegistry.EastUS"), std::string::npos)
      << added;
  EXPECT_NE(added.find("service-tags changeNumber none -> 376"), std::string::npos) << added;
  EXPECT_NE(added.find(" more)"), std::string::npos) << added;
}

// --preset adds its names with an origin and a rule that name the preset (iotedge's MCR names:
// "iotedge via mcr"); a preset is a host option, so the embedded default no longer applies; an
// unknown name is refused with the known ones.
TEST(PolicyFactoryTest, PresetsAddNamedRules) {
  PolicyConfig config;
  config.presets = {value("iotedge", "f:2:12")};
  const auto policy = buildPolicy(config).policy;
  const Decision hub = policy->decide("contoso-hub.azure-devices.net", 443);
  ASSERT_TRUE(hub.allowed());
  EXPECT_EQ(hub.rule->preset, "iotedge");
  EXPECT_EQ(hub.rule->origin, "f:2:12 preset iotedge");
  const Decision mcr = policy->decide("westeurope.data.mcr.microsoft.com", 443);
  ASSERT_TRUE(mcr.allowed());
  EXPECT_EQ(mcr.rule->preset, "iotedge via mcr");
  EXPECT_EQ(policy->describe(mcr, {"westeurope.data.mcr.microsoft.com", std::nullopt, 443}),
            "allowed: host matches *.data.mcr.microsoft.com (preset iotedge via mcr)");
  EXPECT_FALSE(policy->decide("myreg.azurecr.io", 443).allowed());
  EXPECT_FALSE(policy->decide("login.microsoftonline.com", 443).allowed());

  config.presets = {value("acr")};
  const auto acr = buildPolicy(config).policy;
  EXPECT_TRUE(acr->decide("x.blob.core.windows.net", 443).allowed());
  EXPECT_EQ(acr->rules().size(), std::size(kDefaultHostPatterns));

  config.presets = {value("docker", "--preset")};
  EXPECT_EQ(errorOf(config),
            "--preset: unknown preset 'docker' (known: acr, azure-login, iotedge, mcr)");
}

// --registry also allows the registry's regional geo-replica endpoints, for its regions only.
TEST(PolicyFactoryTest, RegistryAllowsItsGeoEndpoints) {
  PolicyConfig config;
  config.registries = {value("contoso")};
  const auto any = buildPolicy(config).policy;
  EXPECT_TRUE(any->decide("contoso.westeurope.geo.azurecr.io", 443).allowed());
  EXPECT_FALSE(any->decide("other.westeurope.geo.azurecr.io", 443).allowed());
  config.regions = {value("eastus")};
  const auto regional = buildPolicy(config).policy;
  EXPECT_TRUE(regional->decide("contoso.eastus.geo.azurecr.io", 443).allowed());
  EXPECT_FALSE(regional->decide("contoso.westeurope.geo.azurecr.io", 443).allowed());
  // A domain-name-label login server is one label too: the whole label is the registry name.
  config.registries = {value("contoso-b7c9fdbthdb6fkea")};
  const auto dnl = buildPolicy(config).policy;
  EXPECT_TRUE(dnl->decide("contoso-b7c9fdbthdb6fkea.azurecr.io", 443).allowed());
  EXPECT_TRUE(dnl->decide("contoso-b7c9fdbthdb6fkea.eastus.data.azurecr.io", 443).allowed());
  EXPECT_FALSE(dnl->decide("contoso.azurecr.io", 443).allowed());
}

// Broad rules are named in warnings: a wildcard over every storage account (the embedded default
// has one), a client rule admitting everyone, report-only. A narrow policy has none.
TEST(PolicyFactoryTest, WarnsAboutBroadRules) {
  const auto defaults = buildPolicy(PolicyConfig{});
  ASSERT_EQ(defaults.warnings.size(), 1u);
  EXPECT_EQ(defaults.warnings[0],
            "host pattern *.blob.core.windows.net (embedded default) admits every storage account "
            "in Azure, an attacker's included: prefer the registry's dedicated data endpoints "
            "(--registry NAME) or your own accounts' names");
  PolicyConfig config;
  config.registries = {value("myreg")};
  config.client_cidrs = {value("10.0.0.0/8")};
  EXPECT_TRUE(buildPolicy(config).warnings.empty());
  config.client_cidrs = {value("::/0", "f:4:1")};
  config.report_only = true;
  const auto broad = buildPolicy(config);
  ASSERT_EQ(broad.warnings.size(), 2u);
  EXPECT_EQ(broad.warnings[0], "client rule ::/0 (f:4:1) admits everyone who can reach a listener");
  EXPECT_EQ(broad.warnings[1].rfind("REPORT-ONLY: enforcement is OFF", 0), 0u);
}

// Revoke on reload (THREATS F14): off by default; policy.revoke_on_reload and
// --revoke-on-reload turn it on; a reload that changes it says so; a non-boolean is refused
// with its location.
TEST(PolicyFactoryTest, RevokeOnReloadFromFileAndFlag) {
  EXPECT_FALSE(buildPolicy(PolicyConfig{}).policy->revokeOnReload());
  const Config file = parseConfigText("[policy]\nrevoke_on_reload = true\n", "f.toml");
  const PolicySnapshot on = buildPolicy(file.policy);
  EXPECT_TRUE(on.policy->revokeOnReload());
  EXPECT_TRUE(
      buildPolicy(parseCommandLine({"--revoke-on-reload"}).config.policy).policy->revokeOnReload());
  EXPECT_EQ(describePolicyChange(buildPolicy(PolicyConfig{}), on), "revoke-on-reload on");
  try {
    parseConfigText("[policy]\nrevoke_on_reload = 1\n", "f.toml");
    ADD_FAILURE() << "a non-boolean revoke_on_reload was accepted";
  } catch (const ConfigError& error) {
    EXPECT_NE(std::string(error.what()).find("f.toml:2:"), std::string::npos) << error.what();
  }
}

}  // namespace
}  // namespace acr

namespace acr {
namespace {

// --bind-host-tag PATTERN=TAG and PATTERN=CIDR build bindings from the real service-tags file:
// an address of the tag passes, one outside is address_not_bound; errors name the origin.
TEST(PolicyFactoryTest, BindsHostsToTagsAndRanges) {
  setenv("ACR_EGRESS_CONFIG", "", 1);
  const CommandLine line = parseCommandLine(
      {"--registry", "myreg", "--service-tags", test::serviceTagsPath(), "--bind-host-tag",
       "*.azurecr.io=AzureContainerRegistry", "--bind-host-tag=myreg.azurecr.io=192.0.2.0/24"});
  ASSERT_EQ(line.config.policy.binds.size(), 2u);
  EXPECT_EQ(line.config.policy.binds[1].allow_cidrs.size(), 1u);
  const PolicySnapshot snapshot = buildPolicy(line.config.policy);
  const Policy& policy = *snapshot.policy;
  // The first prefix of AzureContainerRegistry in the real file.
  const auto acr_address = IpAddress::parse("4.145.75.128");
  ASSERT_TRUE(acr_address);
  EXPECT_EQ(policy.decideDialled("myreg.eastus.geo.azurecr.io", *acr_address).reason,
            Reason::kAddressPublic);
  EXPECT_EQ(policy.decideDialled("other.azurecr.io", *acr_address).reason, Reason::kAddressPublic);
  EXPECT_EQ(policy.decideDialled("other.azurecr.io", *IpAddress::parse("8.8.8.8")).reason,
            Reason::kAddressNotBound);
  // The exact pattern is bound to 192.0.2.0/24 only.
  EXPECT_EQ(policy.decideDialled("myreg.azurecr.io", *acr_address).reason,
            Reason::kAddressNotBound);
  EXPECT_NE(snapshot.summary().find("bind *.azurecr.io to AzureContainerRegistry"),
            std::string::npos)
      << snapshot.summary();

  PolicyConfig no_file;
  no_file.binds.push_back({{value("*.azurecr.io")}, {value("AzureContainerRegistry")}, {}, "b"});
  EXPECT_NE(errorOf(no_file).find("--opt: service tag 'AzureContainerRegistry' of a binding needs "
                                  "a service-tags file"),
            std::string::npos)
      << errorOf(no_file);
  PolicyConfig unknown_tag;
  unknown_tag.service_tags_file = value(test::serviceTagsPath());
  unknown_tag.binds.push_back({{value("*.azurecr.io")}, {value("AzureContainerRegistri")}, {}, ""});
  EXPECT_NE(errorOf(unknown_tag).find("unknown service tag 'AzureContainerRegistri'"),
            std::string::npos);
  PolicyConfig bad_cidr;
  bad_cidr.binds.push_back({{value("*.azurecr.io")}, {}, {value("192.0.2.1/24", "f:3:4")}, ""});
  EXPECT_TRUE(errorOf(bad_cidr).starts_with("f:3:4: ")) << errorOf(bad_cidr);
  PolicyConfig bad_pattern;
  bad_pattern.binds.push_back({{value("*", "f:2:9")}, {}, {value("192.0.2.0/24")}, ""});
  EXPECT_TRUE(errorOf(bad_pattern).starts_with("f:2:9: ")) << errorOf(bad_pattern);
  try {
    parseCommandLine({"--bind-host-tag", "*.azurecr.io"});
    ADD_FAILURE() << "PATTERN without =TAG accepted";
  } catch (const ConfigError& error) {
    EXPECT_NE(std::string(error.what()).find("expected PATTERN=TAG"), std::string::npos);
  }
}

// Group inheritance: a key the group sets replaces the top-level value, one it does not set is
// inherited (even the embedded default host list), an explicitly empty list means empty, and the
// keys that hold for everyone (deny_cidrs, strict_ip) always come from [policy].
TEST(PolicyFactoryTest, GroupsInheritWhatTheyDoNotSet) {
  const Config config = parseConfigText(R"([policy]
registries = ["basereg"]
allow_cidrs = ["192.0.2.0/24"]
deny_cidrs = ["192.0.2.128/25"]
ports = [443, 8443]

[[group]]
name = "build"
clients = ["10.20.0.0/16"]
registries = ["buildreg"]

[[group]]
name = "device"
clients = ["10.30.0.0/16"]
allow_cidrs = []
ports = [5671]
)",
                                        "acr.toml");
  const PolicySnapshot snapshot = buildPolicy(config.policy);
  ASSERT_EQ(snapshot.groups.size(), 2u);
  const Policy& top = *snapshot.policy;
  const Policy& build = *snapshot.groups[0].snapshot->policy;
  const Policy& device = *snapshot.groups[1].snapshot->policy;
  ASSERT_EQ(top.groups().size(), 2u);
  EXPECT_EQ(top.groups()[0].policy.get(), &build);
  // registries: replaced in build, inherited in device.
  EXPECT_TRUE(top.decide("basereg.azurecr.io", 443).allowed());
  EXPECT_FALSE(build.decide("basereg.azurecr.io", 443).allowed());
  EXPECT_TRUE(build.decide("buildreg.azurecr.io", 443).allowed());
  EXPECT_TRUE(device.decide("basereg.azurecr.io", 5671).allowed());
  EXPECT_FALSE(device.decide("buildreg.azurecr.io", 5671).allowed());
  // ports: inherited in build, replaced in device.
  EXPECT_TRUE(build.decide("buildreg.azurecr.io", 8443).allowed());
  EXPECT_FALSE(device.decide("basereg.azurecr.io", 443).allowed());
  // allow_cidrs: inherited in build, explicitly empty in device; deny_cidrs everywhere.
  const IpAddress allowed = *IpAddress::parse("192.0.2.7");
  const IpAddress denied = *IpAddress::parse("192.0.2.200");
  EXPECT_EQ(build.decideLiteral(allowed, 443).reason, Reason::kAddressAllowed);
  EXPECT_EQ(device.decideLiteral(allowed, 5671).reason, Reason::kAddressNotAllowed);
  EXPECT_EQ(build.decideAddress(denied).reason, Reason::kAddressDenied);
  EXPECT_EQ(device.decideAddress(denied).reason, Reason::kAddressDenied);
  // Group policies have no client rules of their own; the top-level one has the groups' clients.
  EXPECT_FALSE(build.hasClientRules());
  EXPECT_TRUE(top.hasClientRules());
  EXPECT_EQ(top.chooseClient(*IpAddress::parse("10.30.1.1")).group, 1u);
  // Without any host list anywhere, a group that sets none inherits the embedded default.
  const Config defaults = parseConfigText(
      "[[group]]\nname = \"g\"\nclients = [\"10.0.0.0/8\"]\nports = [443]\n", "d.toml");
  const PolicySnapshot inherited = buildPolicy(defaults.policy);
  EXPECT_TRUE(inherited.groups[0].snapshot->policy->decide("x.azurecr.io", 443).allowed());
  // An explicitly empty host list in a group is named as the group's.
  const Config empty = parseConfigText(
      "[[group]]\nname = \"g\"\nclients = [\"10.0.0.0/8\"]\nallow_hosts = []\n", "e.toml");
  EXPECT_EQ(buildPolicy(empty.policy).groups[0].snapshot->empty_host_list_origin,
            std::optional<std::string>("e.toml:4:15 (group g allow_hosts)"));
  // --check-config's summary lists the groups, their clients and their own rules.
  const std::string summary = snapshot.summary();
  EXPECT_NE(summary.find("group build    (acr.toml:7:1)\n  clients: 10.20.0.0/16\n"),
            std::string::npos)
      << summary;
  EXPECT_NE(summary.find("  client 10.30.0.0/16 group device"), std::string::npos) << summary;
  EXPECT_NE(summary.find("    host buildreg.azurecr.io"), std::string::npos) << summary;
}

// The service-tags file is loaded with only the tags the policy names (top level, groups and
// bindings) kept: each of them has its ranges in the policy that names it.
TEST(PolicyFactoryTest, LoadsEveryTagThePolicyNames) {
  const Config config =
      parseConfigText("[policy]\nservice_tags_file = \"" + test::serviceTagsPath() +
                          "\"\nservice_tags = [\"AzureContainerRegistry\"]\n"
                          "[[policy.bind]]\nhosts = [\"*.blob.core.windows.net\"]\n"
                          "service_tags = [\"Storage.WestEurope\"]\n"
                          "[[group]]\nname = \"g\"\nclients = [\"10.0.0.0/8\"]\n"
                          "service_tags = [\"Storage.EastUS\"]\n",
                      "t.toml");
  const PolicySnapshot snapshot = buildPolicy(config.policy);
  ASSERT_EQ(snapshot.groups.size(), 1u);
  const ServiceTags tags = ServiceTags::load(test::serviceTagsPath());
  auto firstOf = [&tags](const char* name) { return tags.find(name)->prefixes.front().address; };
  auto reason = [&firstOf](const Policy& policy, const char* tag) {
    return policy.decideLiteral(firstOf(tag), 443).reason;
  };
  const Policy& top = *snapshot.policy;
  const Policy& group = *snapshot.groups[0].snapshot->policy;
  EXPECT_EQ(reason(top, "AzureContainerRegistry"), Reason::kAddressAllowed);
  EXPECT_EQ(reason(top, "Storage.EastUS"), Reason::kAddressNotAllowed);
  EXPECT_EQ(reason(group, "Storage.EastUS"), Reason::kAddressAllowed);
  EXPECT_EQ(reason(group, "AzureContainerRegistry"), Reason::kAddressNotAllowed);
  EXPECT_NE(snapshot.summary().find("Storage.WestEurope"), std::string::npos) << snapshot.summary();
}

// Group names are unique and a client prefix belongs to one place: the same prefix in two groups,
// or in a group and client_cidrs, is an error naming both origins. The same group listing it
// twice is harmless.
TEST(PolicyFactoryTest, GroupNamesAndPrefixesAreUnique) {
  auto errorOf = [](const std::string& text) {
    try {
      buildPolicy(parseConfigText(text, "acr.toml").policy);
    } catch (const ConfigError& error) {
      return std::string(error.what());
    }
    return std::string();
  };
  EXPECT_EQ(errorOf("[[group]]\nname = \"a\"\nclients = [\"10.0.0.0/8\"]\n"
                    "[[group]]\nname = \"a\"\nclients = [\"10.1.0.0/16\"]\n"),
            "acr.toml:5:8: group name 'a' is already used at acr.toml:2:8");
  EXPECT_EQ(errorOf("[[group]]\nname = \"a\"\nclients = [\"10.0.0.0/8\"]\n"
                    "[[group]]\nname = \"b\"\nclients = [\"10.1.0.0/16\", \"10.0.0.0/8\"]\n"),
            "acr.toml:6:27: client range 10.0.0.0/8 of group b is also a client range of group a "
            "(acr.toml:3:12): a client must belong to one group");
  EXPECT_EQ(errorOf("[policy]\nclient_cidrs = [\"10.1.0.0/16\"]\n"
                    "[[group]]\nname = \"a\"\nclients = [\"10.1.0.0/16\"]\n"),
            "acr.toml:5:12: client range 10.1.0.0/16 of group a is also a client range of "
            "policy.client_cidrs (acr.toml:2:17): a client must belong to one group");
  EXPECT_EQ(errorOf("[[group]]\nname = \"a\"\nclients = [\"10.0.0.0/33\"]\n").substr(0, 14),
            "acr.toml:3:12:");
  EXPECT_EQ(errorOf("[[group]]\nname = \"a\"\nclients = [\"10.0.0.0/8\", \"10.0.0.0/8\"]\n"), "");
  // A group's values are validated like top-level ones, naming their origin.
  EXPECT_EQ(errorOf("[[group]]\nname = \"a\"\nclients = [\"10.0.0.0/8\"]\nregistries = [\"a.b\"]\n")
                .substr(0, 14),
            "acr.toml:4:15:");
}

// A group admitting everyone is warned about like a client rule that does; a group's own broad
// rules are named with the group, inherited ones only once.
TEST(PolicyFactoryTest, WarnsAboutBroadGroups) {
  const Config config = parseConfigText(R"([policy]
allow_hosts = ["*.blob.core.windows.net"]
[[group]]
name = "all"
clients = ["0.0.0.0/0", "::/0"]
report_only = true
)",
                                        "acr.toml");
  const PolicySnapshot snapshot = buildPolicy(config.policy);
  auto has = [&](const std::string& text) {
    return std::count(snapshot.warnings.begin(), snapshot.warnings.end(), text);
  };
  EXPECT_EQ(has("group all: client rule 0.0.0.0/0 (acr.toml:5:12) admits everyone who can reach "
                "a listener"),
            1);
  EXPECT_EQ(has("group all: client rule ::/0 (acr.toml:5:25) admits everyone who can reach a "
                "listener"),
            1);
  EXPECT_EQ(has("group all: REPORT-ONLY: enforcement is OFF: denials by host, port and "
                "address-set rules are logged (would_deny) and let through"),
            1);
  size_t storage = 0;
  for (const std::string& warning : snapshot.warnings) {
    storage += warning.find("every storage account") != std::string::npos ? 1 : 0;
  }
  EXPECT_EQ(storage, 1u);
}

// A reload names the groups it adds and removes and what changed inside a kept one, and a client
// moved from one group to another.
TEST(PolicyFactoryTest, DescribesGroupChanges) {
  const PolicySnapshot before =
      buildPolicy(parseConfigText("[[group]]\nname = \"a\"\nclients = [\"10.1.0.0/16\"]\n"
                                  "registries = [\"areg\"]\n"
                                  "[[group]]\nname = \"b\"\nclients = [\"10.2.0.0/16\"]\n",
                                  "acr.toml")
                      .policy);
  const PolicySnapshot after = buildPolicy(
      parseConfigText("[[group]]\nname = \"a\"\nclients = [\"10.1.0.0/16\", \"10.2.0.0/16\"]\n"
                      "registries = [\"breg\"]\n"
                      "[[group]]\nname = \"c\"\nclients = [\"10.3.0.0/16\"]\n",
                      "acr.toml")
          .policy);
  const std::string change = describePolicyChange(before, after);
  EXPECT_NE(change.find("client-cidr 10.2.0.0/16 (group a)"), std::string::npos) << change;
  EXPECT_NE(change.find("groups added: c"), std::string::npos) << change;
  EXPECT_NE(change.find("groups removed: b"), std::string::npos) << change;
  EXPECT_NE(change.find("; group a (rules added: host breg.*.data.azurecr.io, "
                        "host breg.*.geo.azurecr.io, host breg.azurecr.io; rules removed: "
                        "host areg."),
            std::string::npos)
      << change;
  EXPECT_EQ(describePolicyChange(after, after), "no change");
}

}  // namespace
}  // namespace acr
