#include "proxy/check_command.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <sstream>
#include <string>

namespace acr {
namespace {

struct Result {
  int code;
  std::string out;
  std::string err;
};

Result check(std::vector<std::string> args) {
  std::ostringstream out;
  std::ostringstream err;
  const int code = runCheckCommand(args, out, err);
  return {code, out.str(), err.str()};
}

std::string tagsFile() { return std::string(ACR_SHARED_DIR) + "/data/ServiceTags_Public.json"; }

// One line per target: verdict, target, sentence, reason id; exit 0 only if all are allowed.
TEST(CheckCommandTest, PrintsOneLinePerTarget) {
  const Result allowed = check({"myreg.azurecr.io", "acct.blob.core.windows.net:443"});
  EXPECT_EQ(allowed.code, 0) << allowed.err;
  EXPECT_EQ(allowed.out,
            "allow myreg.azurecr.io allowed: host matches *.azurecr.io [host_allowed]\n"
            "allow acct.blob.core.windows.net:443 allowed: host matches *.blob.core.windows.net "
            "[host_allowed]\n");
  const Result mixed = check({"myreg.azurecr.io", "evil.example.com", "myreg.azurecr.io:22"});
  EXPECT_EQ(mixed.code, 1);
  EXPECT_NE(mixed.out.find("deny evil.example.com denied: host evil.example.com matches no "
                           "allowed host pattern [host_not_allowed]"),
            std::string::npos)
      << mixed.out;
  EXPECT_NE(mixed.out.find("deny myreg.azurecr.io:22 denied: port 22 is not allowed"),
            std::string::npos);
}

// Every target form is understood: host, host:port, IPv4[:port], [IPv6][:port].
TEST(CheckCommandTest, AcceptsEveryTargetForm) {
  const Result result =
      check({"--allow-cidr", "20.60.0.0/16", "--allow-cidr", "2603:1030::/32", "20.60.1.1",
             "20.60.1.1:443", "[2603:1030::1]", "[2603:1030::1]:443", "[::ffff:20.60.1.1]"});
  EXPECT_EQ(result.code, 0) << result.out << result.err;
  EXPECT_NE(result.out.find("allow [2603:1030::1]:443 allowed: 2603:1030::1 is in allowed range "
                            "2603:1030::/32"),
            std::string::npos)
      << result.out;
  const Result literal = check({"8.8.8.8", "[::1]:443"});
  EXPECT_EQ(literal.code, 1);
  EXPECT_NE(literal.out.find("deny 8.8.8.8 denied: 8.8.8.8 is an IP literal in no allowed range "
                             "[address_not_allowed]"),
            std::string::npos);
}

// Usage and configuration errors exit 2 with a message and print no verdicts.
TEST(CheckCommandTest, ErrorsExitTwo) {
  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {},
           {"--bogus", "x.azurecr.io"},
           {"--allow-cidr"},
           {"--allow-cidr", "10.0.0.0/33", "x.azurecr.io"},
           {"--port", "0", "x.azurecr.io"},
           {"2603:1030::1"},
           {"[nothex]:443"},
           {"host:0443"},
           {"host:"},
           {"--service-tags", tagsFile(), "--service-tag", "storage", "x.azurecr.io"},
           {"--config", "/nonexistent.toml", "x.azurecr.io"},
       }) {
    const Result result = check(args);
    EXPECT_EQ(result.code, 2) << (args.empty() ? "(none)" : args[0]);
    EXPECT_EQ(result.out, "");
    EXPECT_FALSE(result.err.empty());
  }
  const Result unknown = check({"--service-tags", tagsFile(), "--service-tag", "storage", "x"});
  EXPECT_NE(unknown.err.find("closest: Storage"), std::string::npos) << unknown.err;
}

// The real binary behaves the same, exit codes included.
TEST(CheckCommandTest, BinaryExitCodes) {
  auto run = [](const std::string& args) {
    const std::string command = std::string(ACR_BINARY) + " " + args + " 2>&1";
    FILE* pipe = popen(command.c_str(), "r");
    std::string output;
    std::array<char, 512> buffer;
    while (fgets(buffer.data(), buffer.size(), pipe) != nullptr) {
      output += buffer.data();
    }
    const int status = pclose(pipe);
    return std::make_pair(WEXITSTATUS(status), output);
  };
  EXPECT_EQ(run("check myreg.azurecr.io").first, 0);
  EXPECT_EQ(run("check example.com").first, 1);
  EXPECT_EQ(run("check --port x myreg.azurecr.io").first, 2);
  const auto tags = run("check --service-tags " + tagsFile() +
                        " --service-tag Storage.WestUS --service-tag Storage 20.60.1.1");
  EXPECT_EQ(tags.first, 0) << tags.second;
  EXPECT_EQ(tags.second,
            "allow 20.60.1.1 allowed: 20.60.1.1 is in service tag Storage.WestUS "
            "[address_allowed]\n");
  const auto version = run("--version");
  EXPECT_EQ(version.first, 0);
  EXPECT_EQ(version.second.rfind("acr-egress ", 0), 0u);
  const auto config =
      run("--check-config --service-tags " + tagsFile() + " --service-tag AzureContainerRegistry");
  EXPECT_EQ(config.first, 0) << config.second;
  EXPECT_NE(config.second.find("changeNumber 376"), std::string::npos);
  EXPECT_EQ(run("--check-config --allow-cidr 1.2.3.4/8").first, 2);
}

// Each preset's names are allowed by check, with a sentence naming the preset; the names of the
// other presets stay denied.
TEST(CheckCommandTest, JudgesEveryPresetsNames) {
  struct Case {
    const char* preset;
    std::vector<std::string> allowed;
    std::vector<std::string> denied;
  };
  const Case cases[] = {
      {"acr",
       {"myreg.azurecr.io", "myreg.eastus.data.azurecr.io", "acct.blob.core.windows.net"},
       {"mcr.microsoft.com", "login.microsoftonline.com"}},
      {"mcr",
       {"mcr.microsoft.com", "westeurope.data.mcr.microsoft.com"},
       {"myreg.azurecr.io", "microsoft.com", "a.b.data.mcr.microsoft.com"}},
      {"iotedge",
       {"contoso.azure-devices.net", "global.azure-devices-provisioning.net", "mcr.microsoft.com",
        "eastus.data.mcr.microsoft.com"},
       {"myreg.azurecr.io", "contoso.azure-devices-provisioning.net", "management.azure.com"}},
      {"azure-login",
       {"login.microsoftonline.com", "management.azure.com"},
       {"evil.microsoftonline.com", "mcr.microsoft.com", "myreg.azurecr.io"}},
  };
  for (const Case& c : cases) {
    for (const std::string& name : c.allowed) {
      const Result result = check({"--preset", c.preset, name});
      EXPECT_EQ(result.code, 0) << c.preset << " " << name << ": " << result.out << result.err;
      EXPECT_NE(result.out.find("(preset " + std::string(c.preset)), std::string::npos)
          << result.out;
    }
    for (const std::string& name : c.denied) {
      const Result result = check({"--preset", c.preset, name});
      EXPECT_EQ(result.code, 1) << c.preset << " " << name << ": " << result.out;
    }
  }
  const Result mcr = check({"--preset=iotedge", "mcr.microsoft.com"});
  EXPECT_EQ(mcr.out,
            "allow mcr.microsoft.com allowed: host matches mcr.microsoft.com (preset iotedge via "
            "mcr) [host_allowed]\n");
}

// The presets are inside the binary: it judges them with no source tree and no preset file
// around (run from /), and --check-config names where each pattern came from.
TEST(CheckCommandTest, BinaryCarriesThePresets) {
  auto run = [](const std::string& args) {
    const std::string command =
        "cd / && ACR_EGRESS_CONFIG= " + std::string(ACR_BINARY) + " " + args + " 2>&1";
    FILE* pipe = popen(command.c_str(), "r");
    std::string output;
    std::array<char, 512> buffer;
    while (fgets(buffer.data(), buffer.size(), pipe) != nullptr) {
      output += buffer.data();
    }
    const int status = pclose(pipe);
    return std::make_pair(WEXITSTATUS(status), output);
  };
  const auto check = run("check --preset iotedge contoso.azure-devices.net");
  EXPECT_EQ(check.first, 0) << check.second;
  EXPECT_EQ(check.second,
            "allow contoso.azure-devices.net allowed: host matches *.azure-devices.net (preset "
            "iotedge) [host_allowed]\n");
  const auto config = run("--check-config --preset azure-login");
  EXPECT_EQ(config.first, 0) << config.second;
  EXPECT_NE(config.second.find("host management.azure.com    (--preset preset azure-login)"),
            std::string::npos)
      << config.second;
  EXPECT_EQ(run("check --preset nope x.azurecr.io").first, 2);
}

// check --client judges as that client would be judged: refused clients get client_not_allowed
// for every target; admitted ones the usual decision. Without client rules any client passes.
TEST(CheckCommandTest, JudgesAsAClient) {
  const Result inside =
      check({"--client-cidr", "10.20.0.0/16", "--client", "10.20.1.2", "myreg.azurecr.io"});
  EXPECT_EQ(inside.code, 0) << inside.err;
  EXPECT_EQ(inside.out,
            "allow myreg.azurecr.io allowed: host matches *.azurecr.io [host_allowed]\n");
  const Result outside = check({"--client-cidr", "10.20.0.0/16", "--client=192.0.2.7",
                                "myreg.azurecr.io", "evil.example.com"});
  EXPECT_EQ(outside.code, 1);
  EXPECT_EQ(outside.out,
            "deny myreg.azurecr.io denied: client 192.0.2.7 is in no client range (--client-cidr) "
            "[client_not_allowed]\n"
            "deny evil.example.com denied: client 192.0.2.7 is in no client range (--client-cidr) "
            "[client_not_allowed]\n");
  EXPECT_EQ(check({"--client", "192.0.2.7", "myreg.azurecr.io"}).code, 0);
  const Result bad = check({"--client", "not-an-ip", "myreg.azurecr.io"});
  EXPECT_EQ(bad.code, 2);
  EXPECT_NE(bad.err.find("--client: invalid address 'not-an-ip'"), std::string::npos) << bad.err;
  EXPECT_EQ(check({"myreg.azurecr.io", "--client"}).code, 2);
}

// check --client with client groups: the client is judged by its group's policy (the most
// specific range), and the sentence names the group; a client in no range is refused.
TEST(CheckCommandTest, JudgesAsAClientOfItsGroup) {
  char path[] = "/tmp/acr-check-groups-XXXXXX.toml";
  const int fd = mkstemps(path, 5);
  ASSERT_GE(fd, 0);
  const std::string text =
      "[policy]\nregistries = []\n"
      "[[group]]\nname = \"build\"\nclients = [\"10.20.0.0/16\"]\n"
      "registries = [\"buildreg\", \"basereg\"]\n"
      "[[group]]\nname = \"device\"\nclients = [\"10.30.0.0/16\"]\n"
      "registries = [\"devicereg\"]\nregions = [\"westeurope\"]\n"
      "[[group]]\nname = \"lab\"\nclients = [\"10.30.7.0/24\"]\n"
      "registries = [\"basereg\"]\n";
  ASSERT_EQ(write(fd, text.data(), text.size()), static_cast<ssize_t>(text.size()));
  close(fd);
  const Result build = check({"--config", path, "--client", "10.20.1.2", "basereg.azurecr.io",
                              "devicereg.westeurope.data.azurecr.io"});
  EXPECT_EQ(build.code, 1) << build.err;
  EXPECT_EQ(build.out,
            "allow basereg.azurecr.io allowed: host matches basereg.azurecr.io; client 10.20.1.2 "
            "is in group build (client range 10.20.0.0/16) [host_allowed]\n"
            "deny devicereg.westeurope.data.azurecr.io denied: host "
            "devicereg.westeurope.data.azurecr.io matches no allowed host pattern; client "
            "10.20.1.2 is in group build (client range 10.20.0.0/16) [host_not_allowed]\n");
  const Result device =
      check({"--config", path, "--client", "10.30.1.1", "devicereg.westeurope.data.azurecr.io"});
  EXPECT_EQ(device.code, 0) << device.out;
  EXPECT_NE(device.out.find("is in group device"), std::string::npos) << device.out;
  const Result lab = check({"--config", path, "--client", "10.30.7.9", "basereg.azurecr.io",
                            "devicereg.westeurope.data.azurecr.io"});
  EXPECT_EQ(lab.code, 1);
  EXPECT_NE(lab.out.find("allow basereg.azurecr.io allowed: host matches basereg.azurecr.io; "
                         "client 10.30.7.9 is in group lab (client range 10.30.7.0/24)"),
            std::string::npos)
      << lab.out;
  const Result outside = check({"--config", path, "--client", "192.0.2.7", "basereg.azurecr.io"});
  EXPECT_EQ(outside.code, 1);
  EXPECT_EQ(outside.out,
            "deny basereg.azurecr.io denied: client 192.0.2.7 is in no client range (--client-cidr "
            "or a [[group]]) [client_not_allowed]\n");
  // Without --client the top-level policy judges (here: no host at all).
  EXPECT_EQ(check({"--config", path, "basereg.azurecr.io"}).code, 1);
  std::remove(path);
}

// check in report-only: what the proxy would let through says allow, with the sentence saying it
// would be denied; special addresses stay denied; --check-config says enforcement is off.
TEST(CheckCommandTest, ReportOnly) {
  const Result result =
      check({"--report-only", "--registry", "myreg", "evil.example.com", "169.254.169.254"});
  EXPECT_EQ(result.code, 1);
  EXPECT_EQ(result.out,
            "allow evil.example.com report-only, would be denied: host evil.example.com matches "
            "no allowed host pattern [host_not_allowed]\n"
            "deny 169.254.169.254 denied: 169.254.169.254 is the instance metadata service "
            "(link-local) and in no allowed range [address_special]\n");
  std::ostringstream out;
  std::ostringstream err;
  EXPECT_EQ(runCheckConfig({"--check-config", "--report-only"}, out, err), 0) << err.str();
  EXPECT_NE(out.str().find("REPORT-ONLY: enforcement is OFF"), std::string::npos) << out.str();
}

}  // namespace
}  // namespace acr
