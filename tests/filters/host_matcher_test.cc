#include "filters/host_matcher.h"

#include <gtest/gtest.h>

#include <string>

namespace acr {
namespace {

uint32_t matchText(const HostMatcher& matcher, std::string_view text) {
  HostName name;
  if (HostName::normalize(text, name) != HostName::Status::kOk) {
    return HostMatcher::kNoMatch;
  }
  return matcher.match(name);
}

// '*' stands for exactly one label, in any position; matching is exact otherwise.
TEST(HostMatcherTest, WildcardIsExactlyOneLabel) {
  HostMatcher matcher;
  ASSERT_EQ(matcher.add("*.blob.core.windows.net", 1), "");
  ASSERT_EQ(matcher.add("myreg.*.data.azurecr.io", 2), "");
  ASSERT_EQ(matcher.add("*.azurecr.io", 3), "");
  ASSERT_EQ(matcher.add("a.*.c.*.e", 4), "");
  EXPECT_EQ(matchText(matcher, "acct.blob.core.windows.net"), 1u);
  EXPECT_EQ(matchText(matcher, "blob.core.windows.net"), HostMatcher::kNoMatch);
  EXPECT_EQ(matchText(matcher, "a.b.blob.core.windows.net"), HostMatcher::kNoMatch);
  EXPECT_EQ(matchText(matcher, "myreg.eastus.data.azurecr.io"), 2u);
  EXPECT_EQ(matchText(matcher, "other.eastus.data.azurecr.io"), HostMatcher::kNoMatch);
  EXPECT_EQ(matchText(matcher, "myreg.azurecr.io"), 3u);
  EXPECT_EQ(matchText(matcher, "azurecr.io"), HostMatcher::kNoMatch);
  EXPECT_EQ(matchText(matcher, "a.x.c.y.e"), 4u);
  EXPECT_EQ(matchText(matcher, "a.x.c.y.f"), HostMatcher::kNoMatch);
  EXPECT_EQ(matchText(matcher, "azurecr.io.evil.com"), HostMatcher::kNoMatch);
  EXPECT_EQ(matchText(matcher, "evilazurecr.io"), HostMatcher::kNoMatch);
}

// An exact pattern wins over a wildcard one, and a repeated pattern keeps its first id.
TEST(HostMatcherTest, ExactBeatsWildcardAndFirstIdStays) {
  HostMatcher matcher;
  ASSERT_EQ(matcher.add("*.azurecr.io", 1), "");
  ASSERT_EQ(matcher.add("myreg.azurecr.io", 2), "");
  ASSERT_EQ(matcher.add("MyReg.AzureCR.io.", 3), "");
  EXPECT_EQ(matchText(matcher, "myreg.azurecr.io"), 2u);
  EXPECT_EQ(matchText(matcher, "other.azurecr.io"), 1u);
  EXPECT_EQ(matcher.size(), 2u);
}

// Many patterns of one shape (hash collisions in small tables, growth) all match exactly.
TEST(HostMatcherTest, ThousandsOfRegistriesMatchExactly) {
  HostMatcher matcher;
  for (uint32_t i = 0; i < 5000; ++i) {
    ASSERT_EQ(matcher.add("reg" + std::to_string(i) + ".azurecr.io", i), "");
    ASSERT_EQ(matcher.add("reg" + std::to_string(i) + ".eastus.data.azurecr.io", 100000 + i), "");
  }
  for (uint32_t i = 0; i < 5000; ++i) {
    EXPECT_EQ(matchText(matcher, "reg" + std::to_string(i) + ".azurecr.io"), i);
    EXPECT_EQ(matchText(matcher, "REG" + std::to_string(i) + ".EASTUS.data.azurecr.io."),
              100000 + i);
    EXPECT_EQ(matchText(matcher, "reg" + std::to_string(i) + "x.azurecr.io"),
              HostMatcher::kNoMatch);
  }
}

// Invalid patterns are refused with the reason.
TEST(HostMatcherTest, RefusesInvalidPatterns) {
  HostMatcher matcher;
  EXPECT_NE(matcher.add("*", 1).find("only wildcards"), std::string::npos);
  EXPECT_NE(matcher.add("*.*", 1).find("only wildcards"), std::string::npos);
  EXPECT_NE(matcher.add("reg*.azurecr.io", 1).find("byte other than"), std::string::npos);
  EXPECT_NE(matcher.add("a..b", 1).find("empty label"), std::string::npos);
  EXPECT_NE(matcher.add("", 1).find("empty name"), std::string::npos);
  EXPECT_NE(matcher.add("10.0.0.1", 1).find("numeric"), std::string::npos);
  EXPECT_EQ(matcher.size(), 0u);
}

}  // namespace
}  // namespace acr
