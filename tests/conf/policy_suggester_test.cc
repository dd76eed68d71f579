#include "conf/policy_suggester.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "conf/config.h"
#include "conf/policy_factory.h"

namespace acr {
namespace {

// An access-log line as proxy/access_log.cc writes it.
std::string line(const std::string& target, int port, const std::string& decision = "allow",
                 const std::string& extra = "") {
  return R"({"time":"2026-12-04T10:00:00.000Z","listener":"connect","client":"10.0.0.5:40000",)"
         R"("target":")" +
         target + R"(","port":)" + std::to_string(port) + R"(,"decision":")" + decision + "\"" +
         extra +
         R"(,"reason":"host_allowed","message":"m","bytes_up":1,"bytes_down":2,)"
         R"("total_ms":1.000,"closed_by":"client","phase":"relay"})";
}

std::shared_ptr<const Policy> policyOf(const std::string& toml) {
  return buildPolicy(parseConfigText(toml, "suggested.toml").policy).policy;
}

// Only connections that were let through count (would_deny included); denials, summaries and
// target-less lines are ignored; garbage is unreadable.
TEST(PolicySuggesterTest, ClassifiesLines) {
  PolicySuggester suggester;
  using Status = PolicySuggester::LineStatus;
  EXPECT_EQ(suggester.addLine(line("myreg.azurecr.io", 443)), Status::kCounted);
  EXPECT_EQ(suggester.addLine(line("x.example", 443, "allow", R"(,"would_deny":true)")),
            Status::kCounted);
  EXPECT_EQ(suggester.addLine(line("evil.example", 443, "deny")), Status::kIgnored);
  EXPECT_EQ(suggester.addLine(R"({"time":"t","decision":"deny","reason":"log_suppressed"})"),
            Status::kIgnored);
  EXPECT_EQ(suggester.addLine(line("", 443)), Status::kIgnored);
  EXPECT_EQ(suggester.addLine("2026-12-04 connect 1.2.3.4:5 -> a:443 allow"), Status::kUnreadable);
  EXPECT_EQ(suggester.addLine(line("a..b", 443)), Status::kUnreadable);
  EXPECT_EQ(suggester.addLine(line("a.example", 0)), Status::kUnreadable);
  EXPECT_EQ(suggester.connections(), 2u);
}

// The suggested policy allows exactly what was seen: registries and regions recognised from ACR
// names, other names exact, IP literals as host ranges, the ports seen; nothing else.
TEST(PolicySuggesterTest, AllowsExactlyWhatWasSeen) {
  PolicySuggester suggester;
  const std::vector<std::pair<std::string, int>> seen = {
      {"contoso.azurecr.io", 443},
      {"contoso.azurecr.io", 443},
      {"contoso.westeurope.data.azurecr.io", 443},
      {"contoso.northeurope.data.azurecr.io", 443},
      {"fabrikam.azurecr.io", 443},
      {"fabrikam.westeurope.data.azurecr.io", 443},
      {"fabrikam.northeurope.geo.azurecr.io", 443},
      {"lonely.azurecr.io", 443},             // no data endpoint seen: listed exactly
      {"other.eastus.data.azurecr.io", 443},  // another region set: listed exactly
      {"MCR.Microsoft.com.", 443},
      {"acct.blob.core.windows.net", 443},
      {"203.0.113.7", 8443},
  };
  for (const auto& [target, port] : seen) {
    ASSERT_EQ(suggester.addLine(line(target, port)), PolicySuggester::LineStatus::kCounted);
  }
  const std::string toml = suggester.toToml();
  EXPECT_EQ(toml,
            "[policy]\n"
            "registries = [\n"
            "  \"contoso\",  # 4 connections\n"
            "  \"fabrikam\",  # 3 connections\n"
            "]\n"
            "regions = [\n"
            "  \"northeurope\",  # 2 connections\n"
            "  \"westeurope\",  # 2 connections\n"
            "]\n"
            "allow_hosts = [\n"
            "  \"acct.blob.core.windows.net\",  # 1 connection\n"
            "  \"lonely.azurecr.io\",  # 1 connection\n"
            "  \"mcr.microsoft.com\",  # 1 connection\n"
            "  \"other.eastus.data.azurecr.io\",  # 1 connection\n"
            "]\n"
            "allow_cidrs = [\n"
            "  \"203.0.113.7/32\",  # 1 connection\n"
            "]\n"
            "ports = [\n"
            "  443,  # 11 connections\n"
            "  8443,  # 1 connection\n"
            "]\n");
  const auto policy = policyOf(toml);
  for (const auto& [target, port] : seen) {
    EXPECT_TRUE(policy->decide(target, static_cast<uint16_t>(port)).allowed()) << target;
  }
  for (const char* unseen :
       {"evil.azurecr.io", "contoso.eastus.data.azurecr.io", "lonely.westeurope.data.azurecr.io",
        "other.azurecr.io", "x.blob.core.windows.net", "microsoft.com",
        "other.westeurope.data.azurecr.io", "203.0.113.8"}) {
    EXPECT_FALSE(policy->decide(unseen, 443).allowed()) << unseen;
  }
  EXPECT_FALSE(policy->decide("contoso.azurecr.io", 22).allowed());
}

// --min-count leaves out names and ports seen fewer times; with no name left there is no
// suggestion (an empty [policy] would mean the embedded default).
TEST(PolicySuggesterTest, MinCountAndNothingToSuggest) {
  PolicySuggester suggester;
  for (int i = 0; i < 3; ++i) {
    suggester.addConnection("contoso.azurecr.io", 443);
  }
  suggester.addConnection("rare.example", 443);
  suggester.addConnection("contoso.azurecr.io", 8443);
  const std::string toml = suggester.toToml(3);
  EXPECT_EQ(toml,
            "[policy]\n"
            "allow_hosts = [\n"
            "  \"contoso.azurecr.io\",  # 4 connections\n"
            "]\n"
            "ports = [\n"
            "  443,  # 4 connections\n"
            "]\n");
  EXPECT_EQ(suggester.toToml(5), "");
  PolicySuggester literals;
  literals.addConnection("203.0.113.7", 443);
  EXPECT_EQ(literals.toToml(), "");
}

}  // namespace
}  // namespace acr
