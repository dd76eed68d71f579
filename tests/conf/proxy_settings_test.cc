#include "conf/proxy_settings.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>

#include "conf/command_line.h"

namespace acr {
namespace {

std::string errorOf(const std::vector<std::string>& args) {
  try {
    buildProxySettings(parseCommandLine(args).config);
  } catch (const ConfigError& error) {
    return error.what();
  }
  return "";
}

// With no listener option the proxy is a connect proxy on 127.0.0.1:3128, with the documented
// defaults.
TEST(ProxySettingsTest, Defaults) {
  const ProxySettings settings = buildProxySettings(Config{});
  ASSERT_EQ(settings.listeners.size(), 1u);
  EXPECT_EQ(settings.listeners[0].kind, ListenerKind::kConnect);
  EXPECT_EQ(settings.listeners[0].address.toString(), "127.0.0.1:3128");
  EXPECT_EQ(settings.head_timeout, std::chrono::seconds(10));
  EXPECT_EQ(settings.connect_timeout, std::chrono::seconds(10));
  EXPECT_EQ(settings.happy_eyeballs_delay, std::chrono::milliseconds(250));
  EXPECT_EQ(settings.dns_timeout, std::chrono::seconds(5));
  EXPECT_EQ(settings.idle_timeout, std::chrono::minutes(15));
  EXPECT_LT(settings.keepalive_idle, std::chrono::seconds(240));  // under Azure's NAT idle
  EXPECT_EQ(settings.max_client_hello_size, 16384u);
  EXPECT_TRUE(settings.json_log);
}

// Every proxy option reaches its typed setting; listeners of all kinds, IPv4 and IPv6.
TEST(ProxySettingsTest, ReadsEveryOption) {
  const ProxySettings s = buildProxySettings(parseCommandLine({"--connect",
                                                               "0.0.0.0:3128",
                                                               "--transparent=[::1]:15001",
                                                               "--sni",
                                                               "127.0.0.1:8443",
                                                               "--dns-server",
                                                               "127.0.0.1:5353",
                                                               "--dns-server",
                                                               "[::1]",
                                                               "--workers",
                                                               "3",
                                                               "--mark",
                                                               "4242",
                                                               "--allow-non-tls",
                                                               "--allow-no-sni",
                                                               "--head-timeout",
                                                               "2s",
                                                               "--connect-timeout",
                                                               "1500ms",
                                                               "--happy-eyeballs-delay",
                                                               "0ms",
                                                               "--idle-timeout",
                                                               "1h",
                                                               "--drain-timeout",
                                                               "0s",
                                                               "--keepalive-idle",
                                                               "60s",
                                                               "--max-connections",
                                                               "100",
                                                               "--max-head-size",
                                                               "4096",
                                                               "--max-client-hello-size",
                                                               "8192",
                                                               "--dns-timeout",
                                                               "3s",
                                                               "--dns-min-ttl",
                                                               "1s",
                                                               "--dns-max-ttl",
                                                               "10m",
                                                               "--dns-negative-ttl",
                                                               "5s",
                                                               "--dns-cache-size",
                                                               "64",
                                                               "--log-format",
                                                               "text"})
                                                 .config);
  ASSERT_EQ(s.listeners.size(), 3u);
  EXPECT_EQ(s.listeners[1].kind, ListenerKind::kTransparent);
  EXPECT_EQ(s.listeners[1].address.toString(), "[::1]:15001");
  EXPECT_EQ(s.listeners[2].kind, ListenerKind::kSni);
  EXPECT_EQ(s.dns_servers, (std::vector<std::string>{"127.0.0.1:5353", "[::1]:53"}));
  EXPECT_EQ(s.workers, 3u);
  EXPECT_EQ(s.mark, 4242u);
  EXPECT_TRUE(s.allow_non_tls && s.allow_no_sni);
  EXPECT_EQ(s.head_timeout, std::chrono::seconds(2));
  EXPECT_EQ(s.connect_timeout, std::chrono::milliseconds(1500));
  EXPECT_EQ(s.happy_eyeballs_delay, std::chrono::milliseconds(0));
  EXPECT_EQ(s.idle_timeout, std::chrono::hours(1));
  EXPECT_EQ(s.drain_timeout, std::chrono::milliseconds(0));
  EXPECT_EQ(s.keepalive_idle, std::chrono::seconds(60));
  EXPECT_EQ(s.max_connections, 100u);
  EXPECT_EQ(s.max_head_size, 4096u);
  EXPECT_EQ(s.max_client_hello_size, 8192u);
  EXPECT_EQ(s.dns_min_ttl, std::chrono::seconds(1));
  EXPECT_EQ(s.dns_max_ttl, std::chrono::minutes(10));
  EXPECT_EQ(s.dns_cache_size, 64u);
  EXPECT_FALSE(s.json_log);
}

// The same settings from TOML; the command line adds listeners and overrides scalars.
TEST(ProxySettingsTest, ReadsTomlAndMergesCommandLine) {
  Config config = parseConfigText(R"([listeners]
connect = ["127.0.0.1:3128"]
sni = ["127.0.0.1:8443"]
[limits]
idle_timeout = "30m"
max_connections = 50
max_connections_per_client = 3
[proxy]
allow_non_tls = true
[dns]
servers = ["127.0.0.1:5353"]
[log]
format = "text"
deny_rate = 20
)",
                                  "acr.toml");
  mergeConfig(config, parseCommandLine({"--connect", "127.0.0.1:3129", "--max-connections", "7",
                                        "--max-connections-per-listener", "5"})
                          .config);
  const ProxySettings s = buildProxySettings(config);
  EXPECT_EQ(s.listeners.size(), 3u);
  EXPECT_EQ(s.max_connections_per_client, 3u);
  EXPECT_EQ(s.max_connections_per_listener, 5u);
  EXPECT_EQ(s.idle_timeout, std::chrono::minutes(30));
  EXPECT_EQ(s.max_connections, 7u);
  EXPECT_TRUE(s.allow_non_tls);
  EXPECT_FALSE(s.json_log);
  EXPECT_EQ(s.deny_log_rate, 20u);
}

// Bad values are refused with their origin and what is expected.
TEST(ProxySettingsTest, RefusesBadValues) {
  struct Case {
    std::vector<std::string> args;
    const char* expected;
  };
  const Case cases[] = {
      {{"--connect", "127.0.0.1"}, "--connect: invalid listen address '127.0.0.1'"},
      {{"--connect", "::1:3128"}, "invalid listen address"},
      {{"--connect", "127.0.0.1:0"}, "invalid listen address"},
      {{"--connect", "localhost:3128"}, "invalid listen address"},
      {{"--sni", "127.0.0.1:70000"}, "invalid listen address"},
      {{"--dns-server", "resolver.example"}, "invalid DNS server"},
      {{"--head-timeout", "10"}, "--head-timeout: invalid limits.head_timeout '10'"},
      {{"--idle-timeout", "1ms"}, "invalid limits.idle_timeout"},
      {{"--happy-eyeballs-delay", "5s"}, "invalid limits.happy_eyeballs_delay"},
      {{"--workers", "-1"}, "invalid proxy.workers"},
      {{"--mark", "0"}, "invalid proxy.mark"},
      {{"--max-connections", "0"}, "invalid limits.max_connections"},
      {{"--max-connections-per-client", "-1"}, "invalid limits.max_connections_per_client"},
      {{"--max-connections-per-listener", "1000001"},
       "invalid limits.max_connections_per_listener"},
      {{"--max-client-hello-size", "20000"}, "invalid limits.max_client_hello_size"},
      {{"--log-format", "xml"}, "invalid log.format"},
      {{"--deny-log-rate", "-5"}, "invalid log.deny_rate"},
      {{"--dns-min-ttl", "10m", "--dns-max-ttl", "1m"}, "dns.min_ttl is above dns.max_ttl"},
      {{"--allow-non-tls=yes"}, "unknown option"},
      {{"--admin", "0.0.0.0:9090"}, "proxy.admin '0.0.0.0:9090' is not a loopback address"},
      {{"--admin", "[::]:9090"}, "is not a loopback address"},
      {{"--admin", "127.0.0.1"}, "invalid proxy.admin"},
      {{"--admin-allow-remote=yes"}, "unknown option"},
  };
  for (const Case& c : cases) {
    const std::string error = errorOf(c.args);
    EXPECT_NE(error.find(c.expected), std::string::npos) << c.args[0] << ": " << error;
  }
  EXPECT_THROW(parseConfigText("[limits]\nidle = \"1m\"\n", "f"), ConfigError);
}

// The admin endpoint is off by default, takes a loopback address, and a remote one only with
// admin_allow_remote (command line or TOML).
TEST(ProxySettingsTest, AdminAddress) {
  EXPECT_FALSE(buildProxySettings(Config{}).admin.has_value());
  const ProxySettings local =
      buildProxySettings(parseCommandLine({"--admin", "[::1]:9090"}).config);
  ASSERT_TRUE(local.admin.has_value());
  EXPECT_EQ(local.admin->toString(), "[::1]:9090");
  const ProxySettings remote = buildProxySettings(
      parseCommandLine({"--admin", "0.0.0.0:9090", "--admin-allow-remote"}).config);
  ASSERT_TRUE(remote.admin.has_value());
  EXPECT_TRUE(remote.admin_allow_remote);
  const ProxySettings toml = buildProxySettings(
      parseConfigText("[proxy]\nadmin = \"10.0.0.1:9090\"\nadmin_allow_remote = true\n", "f.toml"));
  ASSERT_TRUE(toml.admin.has_value());
  EXPECT_EQ(toml.admin->toString(), "10.0.0.1:9090");
}

// Durations need a unit.
TEST(ProxySettingsTest, ParsesDurations) {
  EXPECT_EQ(parseDuration("250ms"), std::chrono::milliseconds(250));
  EXPECT_EQ(parseDuration("10s"), std::chrono::seconds(10));
  EXPECT_EQ(parseDuration("15m"), std::chrono::minutes(15));
  EXPECT_EQ(parseDuration("2h"), std::chrono::hours(2));
  for (const char* bad : {"10", "s", "", "1.5s", "-1s", "01s", "10 s", "1d"}) {
    EXPECT_FALSE(parseDuration(bad).has_value()) << bad;
  }
}

// Without --config the default file is read: ACR_EGRESS_CONFIG names it (it must exist), empty
// means none; --config always wins.
TEST(CommandLineTest, DefaultConfigFileFromTheEnvironment) {
  const std::string path = ::testing::TempDir() + "acr-egress-default.toml";
  {
    FILE* file = std::fopen(path.c_str(), "w");
    ASSERT_NE(file, nullptr);
    std::fputs("[proxy]\nworkers = 3\n", file);
    std::fclose(file);
  }
  const char* saved = std::getenv("ACR_EGRESS_CONFIG");
  const std::string restore = saved != nullptr ? saved : "";
  setenv("ACR_EGRESS_CONFIG", path.c_str(), 1);
  EXPECT_EQ(buildProxySettings(parseCommandLine({}).config).workers, 3u);
  EXPECT_EQ(buildProxySettings(parseCommandLine({"--config", "/dev/null"}).config).workers, 0u);
  setenv("ACR_EGRESS_CONFIG", "", 1);
  EXPECT_EQ(buildProxySettings(parseCommandLine({}).config).workers, 0u);
  setenv("ACR_EGRESS_CONFIG", (path + ".missing").c_str(), 1);
  EXPECT_NE(errorOf({}).find(".missing"), std::string::npos) << errorOf({});
  if (saved != nullptr) {
    setenv("ACR_EGRESS_CONFIG", restore.c_str(), 1);
  } else {
    unsetenv("ACR_EGRESS_CONFIG");
  }
  std::remove(path.c_str());
}

// Secure by default: a listener on a non-loopback address needs a client rule; the error names
// the listener, where it was set and the option to add. Loopback listeners need none.
TEST(ProxySettingsTest, NonLoopbackListenerNeedsAClientRule) {
  auto exposure = [](const std::vector<std::string>& args) -> std::string {
    try {
      checkListenerExposure(parseCommandLine(args).config);
    } catch (const ConfigError& error) {
      return error.what();
    }
    return "";
  };
  EXPECT_EQ(exposure({"--connect", "127.0.0.1:3128", "--sni", "127.0.0.5:443", "--transparent",
                      "[::1]:15001"}),
            "");
  EXPECT_EQ(exposure({"--connect", "127.0.0.1:3128", "--connect", "0.0.0.0:3128"}),
            "--connect: connect listener 0.0.0.0:3128 is not on a loopback address and no client "
            "rule says who may use it: add --client-cidr CIDR (policy.client_cidrs) with your "
            "clients' range, or --client-cidr 0.0.0.0/0 to serve anyone");
  EXPECT_NE(exposure({"--transparent", "[::]:15001"}).find("transparent listener [::]:15001"),
            std::string::npos);
  EXPECT_NE(exposure({"--sni", "192.0.2.1:443"}).find("sni listener 192.0.2.1:443"),
            std::string::npos);
  EXPECT_EQ(exposure({"--connect", "0.0.0.0:3128", "--client-cidr", "10.0.0.0/8"}), "");
  EXPECT_EQ(exposure({"--connect", "0.0.0.0:3128", "--client-cidr", "0.0.0.0/0"}), "");

  char path[] = "/tmp/acr-exposure-XXXXXX.toml";
  const int fd = mkstemps(path, 5);
  ASSERT_GE(fd, 0);
  const std::string text = "[listeners]\nconnect = [\"10.20.0.1:3128\"]\n";
  ASSERT_EQ(write(fd, text.data(), text.size()), static_cast<ssize_t>(text.size()));
  close(fd);
  EXPECT_EQ(exposure({"--config", path}).rfind(std::string(path) + ":2:12: connect listener", 0),
            0u)
      << exposure({"--config", path});
  EXPECT_EQ(exposure({"--config", path, "--client-cidr", "10.20.0.0/16"}), "");
  std::remove(path);
  // A [[group]]'s clients are client rules too: whoever is in no group is refused.
  Config grouped =
      parseConfigText(text + "[[group]]\nname = \"lan\"\nclients = [\"10.20.0.0/16\"]\n", "g.toml");
  EXPECT_NO_THROW(checkListenerExposure(grouped));
}

// --sni-upstream-port / listeners.sni_upstream_port: a port from 1 to 65535; unset by default.
TEST(ProxySettingsTest, SniUpstreamPort) {
  EXPECT_FALSE(buildProxySettings(Config{}).sni_upstream_port);
  const auto settings = buildProxySettings(
      parseCommandLine({"--sni", "127.0.0.1:8443", "--sni-upstream-port", "443"}).config);
  EXPECT_EQ(settings.sni_upstream_port, std::optional<uint16_t>(443));
  const Config toml = parseConfigText("[listeners]\nsni_upstream_port = 8443\n", "t.toml");
  EXPECT_EQ(buildProxySettings(toml).sni_upstream_port, std::optional<uint16_t>(8443));
  EXPECT_NE(errorOf({"--sni-upstream-port", "0"}).find("invalid listeners.sni_upstream_port"),
            std::string::npos);
  EXPECT_NE(errorOf({"--sni-upstream-port", "65536"}).find("expected a number from 1 to 65535"),
            std::string::npos);
}

}  // namespace
}  // namespace acr
