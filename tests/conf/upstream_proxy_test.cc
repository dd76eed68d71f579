#include "conf/upstream_proxy.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>

#include "conf/command_line.h"

namespace acr {
namespace {

Config configOf(const std::vector<std::string>& args) {
  setenv("ACR_EGRESS_CONFIG", "", 1);
  return parseCommandLine(args).config;
}

std::string errorOf(const std::vector<std::string>& args) {
  try {
    const Config config = configOf(args);
    const auto proxy = readUpstreamProxy(config);
    checkUpstreamProxyPolicy(config.policy, proxy ? &*proxy : nullptr);
  } catch (const ConfigError& error) {
    return error.what();
  }
  return "";
}

// A credentials file with `text` and `mode`, removed when the test ends.
class CredentialsFile {
 public:
  CredentialsFile(const std::string& text, mode_t mode) {
    char name[] = "/tmp/acr-upstream-cred-XXXXXX";
    const int fd = mkstemp(name);
    path_ = name;
    ::close(fd);
    std::ofstream(path_) << text;
    chmod(path_.c_str(), mode);
  }
  ~CredentialsFile() { unlink(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// No option: no upstream proxy.
TEST(UpstreamProxyTest, UnsetByDefault) { EXPECT_FALSE(readUpstreamProxy(Config{})); }

// http://HOST:PORT with an IPv4, a bracketed IPv6 address or a name; a trailing slash is fine.
TEST(UpstreamProxyTest, AcceptsHostForms) {
  struct Case {
    const char* url;
    const char* host;
    uint16_t port;
  };
  for (const Case& c : {Case{"http://10.0.0.8:3128", "10.0.0.8", 3128},
                        Case{"http://[2001:db8::8]:8080/", "2001:db8::8", 8080},
                        Case{"http://proxy.corp.example:3128", "proxy.corp.example", 3128}}) {
    const auto proxy = readUpstreamProxy(configOf({"--upstream-proxy", c.url}));
    ASSERT_TRUE(proxy) << c.url;
    EXPECT_EQ(proxy->host, c.host);
    EXPECT_EQ(proxy->port, c.port);
    EXPECT_TRUE(proxy->authorization.empty());
  }
}

// Bad URLs name the option; credentials in the URL are refused without being echoed.
TEST(UpstreamProxyTest, RefusesBadUrls) {
  for (const char* url : {"https://10.0.0.8:3128", "10.0.0.8:3128", "http://10.0.0.8",
                          "http://10.0.0.8:0", "http://10.0.0.8:70000", "http://2001:db8::8:80",
                          "http://10.0.0.8:3128/path", "http://bad_name!:3128"}) {
    const std::string error = errorOf({"--upstream-proxy", url});
    EXPECT_TRUE(error.starts_with("--upstream-proxy: ")) << url << ": " << error;
  }
  const std::string error = errorOf({"--upstream-proxy", "http://alice:s3cret@10.0.0.8:3128"});
  EXPECT_NE(error.find("credentials in the upstream proxy URL are refused"), std::string::npos);
  EXPECT_EQ(error.find("s3cret"), std::string::npos) << error;
}

// The file's user:password becomes the Basic credentials (RFC 7617), trailing newline dropped.
TEST(UpstreamProxyTest, ReadsCredentialsFile) {
  const CredentialsFile file("Aladdin:open sesame\n", 0600);
  const auto proxy = readUpstreamProxy(configOf(
      {"--upstream-proxy", "http://127.0.0.1:3128", "--upstream-proxy-credentials", file.path()}));
  ASSERT_TRUE(proxy);
  EXPECT_EQ(proxy->authorization, "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
  EXPECT_EQ(proxy->text, "http://127.0.0.1:3128");
}

// A credentials file others may read or write is refused, naming the file and its mode but not
// its content; so are a file without user:password, and credentials without a proxy.
TEST(UpstreamProxyTest, RefusesBadCredentialsFiles) {
  for (const mode_t mode : {0644, 0602, 0604}) {
    const CredentialsFile file("alice:s3cret\n", mode);
    const std::string error = errorOf(
        {"--upstream-proxy", "http://127.0.0.1:3128", "--upstream-proxy-credentials", file.path()});
    EXPECT_NE(error.find(file.path() + " is readable or writable by others"), std::string::npos)
        << error;
    EXPECT_EQ(error.find("s3cret"), std::string::npos) << error;
  }
  const CredentialsFile no_colon("alice-s3cret\n", 0600);
  EXPECT_NE(errorOf({"--upstream-proxy", "http://127.0.0.1:3128", "--upstream-proxy-credentials",
                     no_colon.path()})
                .find("does not hold user:password"),
            std::string::npos);
  const CredentialsFile fine("alice:s3cret\n", 0600);
  EXPECT_NE(errorOf({"--upstream-proxy-credentials", fine.path()}).find("needs --upstream-proxy"),
            std::string::npos);
}

// --strict-ip and address binding cannot be enforced beside an upstream proxy: configuration
// errors saying why (a binding's names its origin).
TEST(UpstreamProxyTest, StrictIpAndBindingConflict) {
  const std::string error = errorOf({"--upstream-proxy", "http://127.0.0.1:3128", "--strict-ip"});
  EXPECT_NE(error.find("--strict-ip (policy.strict_ip) cannot be enforced together with the "
                       "upstream proxy"),
            std::string::npos)
      << error;
  EXPECT_NE(errorOf({"--upstream-proxy", "http://127.0.0.1:3128", "--bind-host-tag",
                     "*.azurecr.io=192.0.2.0/24"})
                .find("--bind-host-tag: address binding (--bind-host-tag, [[policy.bind]]) "
                      "cannot be enforced together with the upstream proxy http://127.0.0.1:3128"),
            std::string::npos);
  EXPECT_EQ(errorOf({"--upstream-proxy", "http://127.0.0.1:3128"}), "");
}

}  // namespace
}  // namespace acr
