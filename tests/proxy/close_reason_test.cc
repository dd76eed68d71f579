#include "proxy/close_reason.h"

#include <gtest/gtest.h>

#include <fstream>
#include <set>
#include <sstream>
#include <string>

namespace acr {
namespace {

// Every enum value has its own row, in order, with a unique, non-empty snake_case name and the
// texts the README table shows.
TEST(CloseReasonTest, EveryReasonHasOneRowWithAUniqueName) {
  std::set<std::string_view> names;
  for (size_t i = 0; i < kCloseReasonCount; ++i) {
    const auto reason = static_cast<CloseReason>(i);
    const CloseReasonInfo& info = closeReasonInfo(reason);
    EXPECT_EQ(info.reason, reason) << i;
    EXPECT_TRUE(names.insert(info.name).second) << "duplicate name " << info.name;
    EXPECT_FALSE(info.name.empty()) << i;
    for (const char c : info.name) {
      EXPECT_TRUE((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_') << info.name;
    }
    EXPECT_FALSE(info.phases.empty()) << info.name;
    EXPECT_FALSE(info.meaning.empty()) << info.name;
    EXPECT_FALSE(info.action.empty()) << info.name;
    for (const std::string_view text : {info.phases, info.meaning, info.action}) {
      EXPECT_EQ(text.find('|'), std::string_view::npos) << info.name;  // a markdown cell
    }
    EXPECT_TRUE(info.http_status == 0 || info.http_status == 200 ||
                (info.http_status >= 400 && info.http_status < 600))
        << info.name;
    EXPECT_EQ(closeReasonName(reason), info.name);
  }
  EXPECT_EQ(names.size(), kCloseReasonCount);
}

// The rows mirroring filters/ enums carry the very names those enums give (reasonName,
// connectErrorName, clientHelloErrorName, dnsStatusName): one vocabulary in logs and metrics.
TEST(CloseReasonTest, MirrorsTheFiltersNames) {
  for (int i = 0; i <= static_cast<int>(Reason::kClientNotAllowed); ++i) {
    const auto reason = static_cast<Reason>(i);
    const CloseReason close = closeReasonOf(reason);
    EXPECT_EQ(closeReasonName(close), reasonName(reason));
    const Verdict verdict = reason == Reason::kHostAllowed || reason == Reason::kAddressAllowed ||
                                    reason == Reason::kAddressPublic ||
                                    reason == Reason::kClientAllowed
                                ? Verdict::kAllow
                                : Verdict::kDeny;
    EXPECT_EQ(isAllowingReason(close), verdict == Verdict::kAllow) << reasonName(reason);
    if (verdict == Verdict::kDeny) {
      EXPECT_EQ(closeReasonInfo(close).http_status, 403) << reasonName(reason);
    }
  }
  for (int i = static_cast<int>(ConnectError::kBadRequestLine);
       i <= static_cast<int>(ConnectError::kTooLarge); ++i) {
    const auto error = static_cast<ConnectError>(i);
    EXPECT_EQ(closeReasonName(closeReasonOf(error)), connectErrorName(error));
  }
  for (int i = static_cast<int>(ClientHelloError::kNotTls);
       i <= static_cast<int>(ClientHelloError::kTooLarge); ++i) {
    const auto error = static_cast<ClientHelloError>(i);
    EXPECT_EQ(closeReasonName(closeReasonOf(error)), clientHelloErrorName(error));
  }
  for (const DnsStatus status :
       {DnsStatus::kNxDomain, DnsStatus::kNoAddresses, DnsStatus::kTimeout, DnsStatus::kFailure}) {
    EXPECT_EQ(closeReasonName(closeReasonOf(status)), "dns_" + std::string(dnsStatusName(status)));
  }
}

// A connect refusal names the reason in the status line and the X-Acr-Egress-Reason header, with
// the table's status and a body whose Content-Length is exact.
TEST(CloseReasonTest, HttpRefusalCarriesTheTablesStatusAndReason) {
  const std::string response = httpRefusal(CloseReason::kHeadTimeout, "denied: slow");
  EXPECT_EQ(response,
            "HTTP/1.1 408 Request Timeout (acr-egress: head_timeout)\r\n"
            "X-Acr-Egress-Reason: head_timeout\r\nContent-Type: text/plain\r\n"
            "Content-Length: 25\r\nConnection: close\r\n\r\nacr-egress: denied: slow\n");
  EXPECT_NE(httpRefusal(CloseReason::kOverloaded, "x").find("503 Service Unavailable"),
            std::string::npos);
  EXPECT_NE(httpRefusal(CloseReason::kConnectOnly, "x").find("405 Method Not Allowed"),
            std::string::npos);
}

// docs/troubleshooting.md's "Reasons" section holds exactly the generated table, so a reason added
// to the table without the docs (or the other way round) fails here (scripts/update-docs writes
// it).
TEST(CloseReasonTest, DocsTroubleshootingTableIsTheGeneratedOne) {
  std::ostringstream generated;
  writeCloseReasonReference(generated);
  std::ifstream file(std::string(ACR_SOURCE_DIR) + "/docs/troubleshooting.md");
  ASSERT_TRUE(file) << "docs/troubleshooting.md not found";
  std::stringstream readme;
  readme << file.rdbuf();
  const std::string text = readme.str();
  const size_t section = text.find("## Reasons");
  ASSERT_NE(section, std::string::npos);
  const size_t next = text.find("\n## ", section + 1);
  const std::string body = text.substr(section, next - section);
  EXPECT_NE(body.find(generated.str()), std::string::npos)
      << "docs/troubleshooting.md's table differs from writeCloseReasonReference; expected:\n"
      << generated.str();
}

}  // namespace
}  // namespace acr
