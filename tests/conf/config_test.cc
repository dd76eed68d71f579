#include "conf/config.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

namespace acr {
namespace {

std::string errorOf(std::string_view text) {
  try {
    parseConfigText(text, "acr.toml");
  } catch (const ConfigError& error) {
    return error.what();
  }
  return "";
}

// Every setting of the policy is read, with the line and column it came from.
TEST(ConfigTest, ReadsEveryPolicySetting) {
  const Config config = parseConfigText(R"([policy]
registries = ["myreg"]
regions = ["eastus", "westeurope"]
allow_hosts = ["*.blob.core.windows.net"]
allow_cidrs = ["10.1.0.0/16"]
deny_cidrs = ["10.1.2.0/24"]
service_tags_file = "tags.json"
service_tags = ["AzureContainerRegistry", "Storage.EastUS"]
ports = [443, 8443]
strict_ip = true
)",
                                        "acr.toml", "/etc/acr-egress");
  const PolicyConfig& p = config.policy;
  ASSERT_EQ(p.registries.size(), 1u);
  EXPECT_EQ(p.registries[0].text, "myreg");
  EXPECT_EQ(p.registries[0].origin, "acr.toml:2:15");
  EXPECT_EQ(p.regions.size(), 2u);
  EXPECT_EQ(p.allow_hosts[0].text, "*.blob.core.windows.net");
  EXPECT_EQ(p.allow_cidrs[0].text, "10.1.0.0/16");
  EXPECT_EQ(p.deny_cidrs[0].text, "10.1.2.0/24");
  ASSERT_TRUE(p.service_tags_file);
  EXPECT_EQ(p.service_tags_file->text, "/etc/acr-egress/tags.json");
  EXPECT_EQ(p.service_tags.size(), 2u);
  ASSERT_EQ(p.ports.size(), 2u);
  EXPECT_EQ(p.ports[1].text, "8443");
  EXPECT_TRUE(p.strict_ip);
}

// Syntax errors, unknown keys and wrong types name file, line and column.
TEST(ConfigTest, ErrorsNameFileLineAndColumn) {
  struct Case {
    const char* label;
    const char* text;
    const char* expected;
  };
  const Case cases[] = {
      {"syntax", "[policy]\nregistries = [\"a\"\n", "acr.toml:2:19: Error while parsing array"},
      {"unknown_top", "[polcy]\n", "acr.toml:1:1: unknown key 'polcy'"},
      {"unknown_key", "[policy]\nregistry = [\"a\"]\n",
       "acr.toml:2:12: unknown key 'policy.registry'"},
      {"string_not_list", "[policy]\nregistries = \"myreg\"\n",
       "acr.toml:2:14: 'registries' must be an array of strings"},
      {"number_in_list", "[policy]\nallow_hosts = [\"a.b\", 3]\n",
       "acr.toml:2:23: 'allow_hosts' must hold strings only"},
      {"port_string", "[policy]\nports = [\"443\"]\n", "acr.toml:2:10: 'ports' must hold integers"},
      {"strict_string", "[policy]\nstrict_ip = \"yes\"\n", "'strict_ip' must be true or false"},
      {"policy_not_table", "policy = 3\n", "'policy' must be a table"},
      {"empty_tags_file", "[policy]\nservice_tags_file = \"\"\n", "must be a non-empty string"},
      {"duplicate_key", "[policy]\nports = [1]\nports = [2]\n", "acr.toml:3:"},
      {"bind_not_tables", "[policy]\nbind = [\"a\"]\n",
       "acr.toml:2:9: 'policy.bind' must hold tables only"},
      {"bind_unknown_key", "[[policy.bind]]\nhosts = [\"a.b\"]\nservice_tag = [\"X\"]\n",
       "acr.toml:3:15: unknown key 'policy.bind.service_tag'"},
      {"bind_without_hosts", "[[policy.bind]]\nallow_cidrs = [\"192.0.2.0/24\"]\n",
       "acr.toml:1:1: a [[policy.bind]] table needs a non-empty 'hosts'"},
      {"bind_to_nothing", "[[policy.bind]]\nhosts = [\"a.b\"]\n",
       "acr.toml:1:1: a [[policy.bind]] table needs 'service_tags' or 'allow_cidrs'"},
      {"bind_hosts_string", "[[policy.bind]]\nhosts = \"a.b\"\n",
       "acr.toml:2:9: 'policy.bind.hosts' must be an array of strings"},
  };
  for (const Case& c : cases) {
    const std::string error = errorOf(c.text);
    EXPECT_NE(error.find(c.expected), std::string::npos) << c.label << ": " << error;
  }
}

// [[policy.bind]] tables are read with the line and column of each value, and merged in order.
TEST(ConfigTest, ReadsBindTables) {
  const Config config = parseConfigText(
      "[policy]\nregistries = [\"myreg\"]\n\n[[policy.bind]]\nhosts = [\"*.azurecr.io\"]\n"
      "service_tags = [\"AzureContainerRegistry\"]\n\n[[policy.bind]]\n"
      "hosts = [\"myreg.azurecr.io\"]\nallow_cidrs = [\"192.0.2.0/24\"]\n",
      "acr.toml");
  ASSERT_EQ(config.policy.binds.size(), 2u);
  EXPECT_EQ(config.policy.binds[0].hosts[0].text, "*.azurecr.io");
  EXPECT_EQ(config.policy.binds[0].hosts[0].origin, "acr.toml:5:10");
  EXPECT_EQ(config.policy.binds[0].service_tags[0].text, "AzureContainerRegistry");
  EXPECT_EQ(config.policy.binds[1].allow_cidrs[0].origin, "acr.toml:10:16");
  Config merged = config;
  mergeConfig(merged, config);
  EXPECT_EQ(merged.policy.binds.size(), 4u);
}

// [[group]] tables: name, clients and the group keys, each with its origin; `given` lists exactly
// the keys the group set (an empty list is set too).
TEST(ConfigTest, ReadsGroupTables) {
  const Config config = parseConfigText(R"([policy]
registries = ["basereg"]

[[group]]
name = "build"
clients = ["10.20.0.0/16"]
registries = ["buildreg", "basereg"]
ports = [443, 8443]

[[group]]
name = "device.eu-1"
clients = ["10.30.0.0/16", "2001:db8:30::/48"]
allow_hosts = []
report_only = true
)",
                                        "acr.toml");
  const auto& groups = config.policy.groups;
  ASSERT_EQ(groups.size(), 2u);
  EXPECT_EQ(groups[0].name.text, "build");
  EXPECT_EQ(groups[0].name.origin, "acr.toml:5:8");
  EXPECT_EQ(groups[0].origin, "acr.toml:4:1");
  ASSERT_EQ(groups[0].clients.size(), 1u);
  EXPECT_EQ(groups[0].clients[0].origin, "acr.toml:6:12");
  EXPECT_EQ(groups[0].policy.registries.size(), 2u);
  // `given` follows the table's key order (toml++ keeps keys sorted).
  EXPECT_EQ(groups[0].given, (std::vector<Setting>{Setting::kPorts, Setting::kRegistries}));
  EXPECT_EQ(groups[1].name.text, "device.eu-1");
  EXPECT_EQ(groups[1].clients.size(), 2u);
  EXPECT_TRUE(groups[1].policy.allow_hosts.empty());
  EXPECT_TRUE(groups[1].policy.report_only);
  EXPECT_EQ(groups[1].given, (std::vector<Setting>{Setting::kAllowHosts, Setting::kReportOnly}));
  // The top-level policy is untouched by the groups' keys.
  EXPECT_EQ(config.policy.registries.size(), 1u);
  EXPECT_TRUE(config.policy.client_cidrs.empty());
}

// A group's errors name file:line:column: a key that holds for every client, an unknown key, a
// bad or missing name, no clients.
TEST(ConfigTest, GroupErrorsNameFileLineAndColumn) {
  const std::string head = "[[group]]\nname = \"build\"\nclients = [\"10.20.0.0/16\"]\n";
  for (const char* key :
       {"deny_cidrs = [\"10.0.0.0/8\"]", "strict_ip = true", "client_cidrs = [\"10.0.0.0/8\"]",
        "service_tags_file = \"t.json\"",
        "bind = [{hosts = [\"a.azurecr.io\"], allow_cidrs = [\"192.0.2.0/24\"]}]"}) {
    const std::string error = errorOf(head + key + "\n");
    EXPECT_TRUE(error.starts_with("acr.toml:4:")) << error;
    EXPECT_NE(error.find("set it in [policy], not in a [[group]]"), std::string::npos) << error;
  }
  EXPECT_EQ(errorOf(head + "colour = \"red\"\n"), "acr.toml:4:10: unknown key 'group.colour'");
  EXPECT_EQ(errorOf("[[group]]\nname = \"a b\"\nclients = [\"10.0.0.0/8\"]\n"),
            "acr.toml:2:8: 'group.name' must be 1 to 64 characters of letters, digits, '_', '.' "
            "and '-'");
  EXPECT_EQ(
      errorOf("[[group]]\nname = \"" + std::string(65, 'a') + "\"\nclients = [\"10.0.0.0/8\"]\n")
          .substr(0, 13),
      "acr.toml:2:8:");
  EXPECT_EQ(errorOf("[[group]]\nclients = [\"10.0.0.0/8\"]\n"),
            "acr.toml:1:1: a [[group]] table needs a 'name'");
  EXPECT_EQ(errorOf("[[group]]\nname = \"x\"\n"),
            "acr.toml:1:1: group 'x' needs a non-empty 'clients'");
  EXPECT_EQ(errorOf("[group]\nname = \"x\"\n"),
            "acr.toml:1:1: 'group' must be an array of tables ([[group]])");
}

// An empty file is a valid, empty configuration (all defaults).
TEST(ConfigTest, EmptyFileMeansDefaults) {
  const Config config = parseConfigText("", "acr.toml");
  EXPECT_TRUE(config.policy.registries.empty());
  EXPECT_FALSE(config.policy.strict_ip);
}

// A missing file is an error naming it; a relative tags file is resolved next to the config.
TEST(ConfigTest, LoadsFilesRelativeToTheirDirectory) {
  EXPECT_THROW(loadConfigFile("/nonexistent/acr.toml"), ConfigError);
  const auto dir = std::filesystem::temp_directory_path() / "acr_config_test";
  std::filesystem::create_directories(dir);
  const auto path = dir / "acr.toml";
  std::ofstream(path) << "[policy]\nservice_tags_file = \"tags.json\"\n";
  const Config config = loadConfigFile(path.string());
  EXPECT_EQ(config.policy.service_tags_file->text, (dir / "tags.json").string());
  std::filesystem::remove_all(dir);
}

// Command-line values add to the file's lists; scalars given later replace earlier ones.
TEST(ConfigTest, MergeAppendsLists) {
  Config base = parseConfigText("[policy]\nregistries = [\"a\"]\nports = [443]\n", "f");
  Config extra;
  extra.policy.registries = {{"b", "--registry"}};
  extra.policy.ports = {{"8443", "--port"}};
  extra.policy.strict_ip = true;
  mergeConfig(base, extra);
  ASSERT_EQ(base.policy.registries.size(), 2u);
  EXPECT_EQ(base.policy.registries[1].text, "b");
  EXPECT_EQ(base.policy.ports.size(), 2u);
  EXPECT_TRUE(base.policy.strict_ip);
}

}  // namespace
}  // namespace acr
