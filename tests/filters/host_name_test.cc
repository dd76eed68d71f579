#include "filters/host_name.h"

#include <gtest/gtest.h>

#include <string>

namespace acr {
namespace {

using Status = HostName::Status;

struct NameCase {
  const char* label;
  std::string input;
  Status status;
  const char* normalized;
};

// Table of names: what normalises and what is invalid, with the reason.
TEST(HostNameTest, NormalisesAndValidates) {
  const std::string label63(63, 'a');
  const std::string name253 = label63 + "." + label63 + "." + label63 + "." + std::string(61, 'b');
  const NameCase cases[] = {
      {"lower_case", "MyReg.AzureCR.IO", Status::kOk, "myreg.azurecr.io"},
      {"one_trailing_dot", "myreg.azurecr.io.", Status::kOk, "myreg.azurecr.io"},
      {"two_trailing_dots", "myreg.azurecr.io..", Status::kEmptyLabel, ""},
      {"leading_dot", ".azurecr.io", Status::kEmptyLabel, ""},
      {"empty", "", Status::kEmpty, ""},
      {"only_dot", ".", Status::kEmpty, ""},
      {"underscore_ok", "a_b.azurecr.io", Status::kOk, "a_b.azurecr.io"},
      {"label_63", label63 + ".io", Status::kOk, nullptr},
      {"label_64", std::string(64, 'a') + ".io", Status::kLabelTooLong, ""},
      {"name_253", name253, Status::kOk, nullptr},
      {"name_253_with_dot", name253 + ".", Status::kOk, nullptr},
      {"name_254", name253 + "c", Status::kTooLong, ""},
      {"nul_inside", std::string("local\0ost.azurecr.io", 20), Status::kBadCharacter, ""},
      {"space", "my reg.azurecr.io", Status::kBadCharacter, ""},
      {"colon_port", "myreg.azurecr.io:443", Status::kBadCharacter, ""},
      {"percent", "myreg%2eazurecr.io", Status::kBadCharacter, ""},
      {"at_sign", "user@myreg.azurecr.io", Status::kBadCharacter, ""},
      {"slash", "myreg.azurecr.io/x", Status::kBadCharacter, ""},
      {"utf8_label", "m\xc3\xbcller.azurecr.io", Status::kBadCharacter, ""},
      {"punycode_ok", "xn--mller-kva.azurecr.io", Status::kOk, "xn--mller-kva.azurecr.io"},
      {"wildcard_not_in_names", "*.azurecr.io", Status::kBadCharacter, ""},
      {"ipv4_literal", "20.60.1.1", Status::kNumeric, ""},
      {"inet_aton_short", "127.1", Status::kNumeric, ""},
      {"decimal_ip", "2130706433", Status::kNumeric, ""},
      {"hex_ip", "0x7f.0.0.1", Status::kNumeric, ""},
      {"hex_last", "a.0x7f", Status::kNumeric, ""},
      {"ipv6_literal", "::1", Status::kBadCharacter, ""},
      {"digits_not_last_ok", "1.2.3.example", Status::kOk, "1.2.3.example"},
      {"hexish_word_ok", "a.0xzz", Status::kOk, "a.0xzz"},
  };
  for (const NameCase& c : cases) {
    HostName name;
    EXPECT_EQ(HostName::normalize(c.input, name), c.status) << c.label;
    if (c.status == Status::kOk && c.normalized != nullptr) {
      EXPECT_EQ(name.view(), c.normalized) << c.label;
    }
    if (c.status != Status::kOk) {
      EXPECT_EQ(name.view(), "") << c.label;
      EXPECT_EQ(name.labelCount(), 0u) << c.label;
    }
  }
}

// Labels are split at dots, counted from the left.
TEST(HostNameTest, SplitsLabels) {
  HostName name;
  ASSERT_EQ(HostName::normalize("MyReg.EastUS.data.azurecr.io.", name), Status::kOk);
  ASSERT_EQ(name.labelCount(), 5u);
  EXPECT_EQ(name.label(0), "myreg");
  EXPECT_EQ(name.label(1), "eastus");
  EXPECT_EQ(name.label(4), "io");
}

// Patterns may use '*' only as a whole label.
TEST(HostNameTest, WildcardOnlyAsWholeLabel) {
  HostName name;
  EXPECT_EQ(HostName::normalize("*.azurecr.io", name, true), Status::kOk);
  EXPECT_EQ(HostName::normalize("myreg.*.data.azurecr.io", name, true), Status::kOk);
  EXPECT_EQ(HostName::normalize("*reg.azurecr.io", name, true), Status::kBadCharacter);
  EXPECT_EQ(HostName::normalize("a*.azurecr.io", name, true), Status::kBadCharacter);
  EXPECT_EQ(HostName::normalize("**.azurecr.io", name, true), Status::kBadCharacter);
}

}  // namespace
}  // namespace acr
