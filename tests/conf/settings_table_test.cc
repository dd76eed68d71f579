#include "conf/settings_table.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <set>
#include <sstream>
#include <string>

#include "conf/command_line.h"
#include "conf/proxy_settings.h"

namespace acr {
namespace {

// Flags and keys are unique, well formed, and every key's table is one the TOML reader knows.
TEST(SettingsTableTest, FlagsAndKeysAreUnique) {
  std::set<std::string_view> flags;
  std::set<std::string_view> keys;
  for (const SettingRow& row : allSettings()) {
    EXPECT_TRUE(row.flag.starts_with("--")) << row.flag;
    EXPECT_TRUE(flags.insert(row.flag).second) << row.flag;
    EXPECT_EQ(findSettingByFlag(row.flag), &row) << row.flag;
    EXPECT_FALSE(row.help.empty()) << row.flag;
    if (!row.key.empty()) {
      EXPECT_TRUE(keys.insert(row.key).second) << row.key;
      EXPECT_EQ(findSettingByKey(row.key), &row) << row.key;
      EXPECT_EQ(isPolicySetting(row.setting), row.key.starts_with("policy.")) << row.key;
    }
    EXPECT_EQ(row.kind == SettingKind::kFlag, row.value_name.empty()) << row.flag;
  }
  EXPECT_EQ(findSettingByFlag("--idle_timeout"), nullptr);
  EXPECT_EQ(findSettingByKey("limits.idle-timeout"), nullptr);
}

// With nothing given, every default of the table parses and gives the documented values (the
// defaults ProxySettings had before the table).
TEST(SettingsTableTest, DefaultsAreTheDocumentedOnes) {
  const ProxySettings s = buildProxySettings(Config{});
  ASSERT_EQ(s.listeners.size(), 1u);
  EXPECT_EQ(s.listeners[0].text, "127.0.0.1:3128");
  EXPECT_TRUE(s.dns_servers.empty());
  EXPECT_FALSE(s.sni_upstream_port.has_value());
  EXPECT_EQ(s.workers, 0u);
  EXPECT_FALSE(s.mark.has_value());
  EXPECT_FALSE(s.allow_non_tls);
  EXPECT_FALSE(s.allow_no_sni);
  EXPECT_EQ(s.head_timeout, std::chrono::seconds(10));
  EXPECT_EQ(s.connect_timeout, std::chrono::seconds(10));
  EXPECT_EQ(s.happy_eyeballs_delay, std::chrono::milliseconds(250));
  EXPECT_EQ(s.idle_timeout, std::chrono::minutes(15));
  EXPECT_EQ(s.drain_timeout, std::chrono::seconds(30));
  EXPECT_EQ(s.keepalive_idle, std::chrono::seconds(120));
  EXPECT_EQ(s.max_connections, 4096u);
  EXPECT_EQ(s.max_connections_per_client, 1024u);
  EXPECT_EQ(s.max_connections_per_listener, 0u);  // off: only max_connections
  EXPECT_EQ(s.max_head_size, 8192u);
  EXPECT_EQ(s.max_client_hello_size, 16384u);
  EXPECT_EQ(s.max_buffer_memory, 64u * 1024 * 1024);
  EXPECT_EQ(s.max_handshake_memory, 16u * 1024 * 1024);
  EXPECT_EQ(s.dns_timeout, std::chrono::seconds(5));
  EXPECT_EQ(s.dns_min_ttl, std::chrono::seconds(5));
  EXPECT_EQ(s.dns_max_ttl, std::chrono::seconds(300));
  EXPECT_EQ(s.dns_negative_ttl, std::chrono::seconds(30));
  EXPECT_EQ(s.dns_cache_size, 10000u);
  EXPECT_TRUE(s.json_log);
  EXPECT_EQ(s.deny_log_rate, 1000u);
  EXPECT_FALSE(s.admin.has_value());
  EXPECT_FALSE(s.admin_allow_remote);
}

// A value at the edge of each numeric or duration row's range is taken, one past it refused
// with the row's key: the range in the table is the range enforced.
TEST(SettingsTableTest, RangesAreEnforced) {
  setenv("ACR_EGRESS_CONFIG", "", 1);
  for (const SettingRow& row : allSettings()) {
    if (isPolicySetting(row.setting) ||
        (row.kind != SettingKind::kNumber && row.kind != SettingKind::kDuration)) {
      continue;
    }
    const std::string unit = row.kind == SettingKind::kDuration ? "ms" : "";
    const std::string flag(row.flag);
    for (const int64_t edge : {row.min, row.max}) {
      // The TTL bounds also check each other (min <= max): give the other its widest value.
      EXPECT_NO_THROW(
          buildProxySettings(parseCommandLine({"--dns-min-ttl", "0ms", "--dns-max-ttl", "24h", flag,
                                               std::to_string(edge) + unit})
                                 .config))
          << flag << " " << edge;
    }
    try {
      buildProxySettings(parseCommandLine({flag, std::to_string(row.max + 1) + unit}).config);
      ADD_FAILURE() << flag << " " << row.max + 1 << " was taken";
    } catch (const ConfigError& error) {
      EXPECT_NE(std::string(error.what()).find("invalid " + std::string(row.key)),
                std::string::npos)
          << error.what();
    }
  }
}

// Every proxy flag and every TOML key reaches the same setting.
TEST(SettingsTableTest, FlagAndKeyReachTheSameSetting) {
  setenv("ACR_EGRESS_CONFIG", "", 1);
  for (const SettingRow& row : allSettings()) {
    if (isPolicySetting(row.setting) || row.kind == SettingKind::kFlag) {
      continue;
    }
    const Config from_flag = parseCommandLine({std::string(row.flag), "x"}).config;
    EXPECT_EQ(from_flag.settings.count(row.setting), 1u) << row.flag;
    const std::string key(row.key);
    const size_t dot = key.find('.');
    const std::string toml = "[" + key.substr(0, dot) + "]\n" + key.substr(dot + 1) +
                             (row.repeatable ? " = [\"x\"]\n" : " = \"x\"\n");
    const Config from_toml = parseConfigText(toml, "t.toml");
    ASSERT_EQ(from_toml.settings.count(row.setting), 1u) << key;
    EXPECT_EQ(from_toml.settings.at(row.setting).front().origin,
              "t.toml:2:" + std::to_string(key.size() - dot + (row.repeatable ? 4 : 3)))
        << key;
  }
}

// keepRestartSettings and the table's live column agree: after it, no setting that is not live
// differs, and every live one that was changed still does.
TEST(SettingsTableTest, KeepsEveryRestartSetting) {
  setenv("ACR_EGRESS_CONFIG", "", 1);
  const ProxySettings running = buildProxySettings(Config{});
  char credentials[] = "/tmp/acr-settings-test-XXXXXX";  // mkstemp: mode 0600, as required
  const int fd = mkstemp(credentials);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(write(fd, "user:secret\n", 12), 12);
  close(fd);
  ProxySettings next = buildProxySettings(parseCommandLine({"--connect",
                                                            "127.0.0.1:4000",
                                                            "--transparent",
                                                            "127.0.0.1:4001",
                                                            "--sni",
                                                            "127.0.0.1:4002",
                                                            "--workers",
                                                            "3",
                                                            "--admin",
                                                            "127.0.0.1:9000",
                                                            "--admin-allow-remote",
                                                            "--max-connections",
                                                            "7",
                                                            "--dns-timeout",
                                                            "1s",
                                                            "--log-format",
                                                            "text",
                                                            "--upstream-proxy",
                                                            "http://127.0.0.1:3129",
                                                            "--upstream-proxy-credentials",
                                                            credentials})
                                              .config);
  unlink(credentials);
  std::vector<std::string> before;
  for (const Setting setting : changedSettings(running, next)) {
    before.emplace_back(settingRow(setting).key);
  }
  EXPECT_EQ(before,
            (std::vector<std::string>{"listeners.connect", "listeners.transparent", "listeners.sni",
                                      "proxy.workers", "dns.timeout", "limits.max_connections",
                                      "log.format", "proxy.admin", "proxy.admin_allow_remote",
                                      "proxy.upstream_proxy", "proxy.upstream_proxy_credentials"}));
  keepRestartSettings(next, running);
  std::vector<std::string> after;
  for (const Setting setting : changedSettings(running, next)) {
    EXPECT_TRUE(settingRow(setting).live) << settingRow(setting).key;
    after.emplace_back(settingRow(setting).key);
  }
  EXPECT_EQ(after,
            (std::vector<std::string>{"dns.timeout", "limits.max_connections", "log.format"}));
  EXPECT_EQ(next.listeners.size(), 1u);
  EXPECT_EQ(next.workers, 0u);
  EXPECT_FALSE(next.admin.has_value());
  EXPECT_FALSE(next.upstream_proxy.has_value());
  EXPECT_EQ(next.max_connections, 7u);
  // Every row that is not live is one of those kept above (or --config, which has no key).
  for (const SettingRow& row : allSettings()) {
    if (!row.live && !row.key.empty()) {
      EXPECT_NE(std::find(before.begin(), before.end(), row.key), before.end()) << row.key;
    }
  }
}

// --help and the reference show every flag; the reference every key and its reload column.
TEST(SettingsTableTest, HelpAndReferenceShowEveryRow) {
  std::ostringstream help;
  writePolicyOptionsHelp(help);
  writeProxyOptionsHelp(help);
  std::ostringstream reference;
  writeSettingsReference(reference);
  for (const SettingRow& row : allSettings()) {
    EXPECT_NE(help.str().find("  " + std::string(row.flag) + " "), std::string::npos) << row.flag;
    EXPECT_NE(reference.str().find("`" + std::string(row.flag)), std::string::npos) << row.flag;
    if (!row.key.empty()) {
      const std::string cell = "`" + std::string(row.key) + "` |";
      const size_t at = reference.str().find(cell);
      ASSERT_NE(at, std::string::npos) << row.key;
      const std::string line = reference.str().substr(at, reference.str().find('\n', at) - at);
      EXPECT_NE(line.find(row.live ? "| live |" : "| needs a restart |"), std::string::npos)
          << line;
    }
  }
}

}  // namespace
}  // namespace acr

namespace acr {
namespace {

// A reload names the policy keys that changed as well (all live): a host added, ECH denied.
TEST(SettingsTableTest, ChangedSettingsNamePolicyKeys) {
  setenv("ACR_EGRESS_CONFIG", "", 1);
  const ProxySettings before =
      buildProxySettings(parseCommandLine({"--allow-host", "a.azurecr.io"}).config);
  const ProxySettings after =
      buildProxySettings(parseCommandLine({"--allow-host", "a.azurecr.io", "--allow-host",
                                           "b.azurecr.io", "--deny-ech", "--idle-timeout", "900s"})
                             .config);
  std::vector<Setting> expected = {Setting::kAllowHosts, Setting::kDenyEch};
  EXPECT_EQ(changedSettings(before, after), expected);  // 900s is the default 15m: no change
}

}  // namespace
}  // namespace acr
