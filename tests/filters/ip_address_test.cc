#include "filters/ip_address.h"

#include <gtest/gtest.h>

namespace acr {
namespace {

// Only strict dotted quads and RFC 4291 text parse; inet_aton shorthands and zone ids do not.
TEST(IpAddressTest, ParsesOnlyStrictForms) {
  EXPECT_EQ(IpAddress::parse("20.60.1.1"), IpAddress::v4(0x143c0101));
  EXPECT_TRUE(IpAddress::parse("::1").has_value());
  EXPECT_TRUE(IpAddress::parse("2603:1030::1").has_value());
  for (const char* bad :
       {"127.1", "2130706433", "0x7f.0.0.1", "0177.0.0.1", "1.2.3.4 ", " 1.2.3.4", "[::1]",
        "fe80::1%eth0", "", "1.2.3.4.5", "256.1.1.1", "::1:443:", "myreg.azurecr.io"}) {
    EXPECT_FALSE(IpAddress::parse(bad).has_value()) << bad;
  }
}

// Every form that hides an IPv4 address in IPv6 yields that address; other IPv6 yields nothing.
TEST(IpAddressTest, ExtractsEmbeddedIpv4) {
  const auto v4 = IpAddress::v4(0xa9fea9fe);  // 169.254.169.254
  for (const char* text :
       {"::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::", "::a9fe:a9fe",
        "2002:a9fe:a9fe:1:2:3:4:5", "64:ff9b:1::a9fe:a9fe", "64:ff9b:1:ffff::a9fe:a9fe"}) {
    const auto address = IpAddress::parse(text);
    ASSERT_TRUE(address) << text;
    EXPECT_EQ(address->embeddedV4(), v4) << text;
  }
  // 64:ff9b:1::/48 with bits 64..95 set is another RFC 6052 layout: not read (SpecialRanges).
  for (const char* text : {"::", "::1", "2603:1030::1", "64:ff9b:1:a9fe:a9:fe00::",
                           "64:ff9b:2::a9fe:a9fe", "64:ff9b::1:0:0:1"}) {
    EXPECT_FALSE(IpAddress::parse(text)->embeddedV4().has_value()) << text;
  }
  EXPECT_FALSE(IpAddress::v4(1).embeddedV4().has_value());
}

// Text form round-trips and IPv6 is printed canonically.
TEST(IpAddressTest, FormatsCanonically) {
  EXPECT_EQ(IpAddress::parse("2603:1030:0:0:0:0:0:1")->toString(), "2603:1030::1");
  EXPECT_EQ(IpAddress::parse("10.0.0.5")->toString(), "10.0.0.5");
  EXPECT_EQ(IpAddress::parse("::ffff:1.2.3.4")->toString(), "::ffff:1.2.3.4");
}

// CIDRs parse strictly and say exactly what is wrong otherwise.
TEST(CidrTest, ParsesStrictlyWithReasons) {
  const auto cidr = Cidr::parse("20.60.0.0/16");
  ASSERT_TRUE(cidr);
  EXPECT_TRUE(cidr->contains(*IpAddress::parse("20.60.255.1")));
  EXPECT_FALSE(cidr->contains(*IpAddress::parse("20.61.0.0")));
  EXPECT_FALSE(cidr->contains(*IpAddress::parse("::ffff:20.60.0.1")));
  EXPECT_TRUE(Cidr::parse("0.0.0.0/0")->contains(*IpAddress::parse("255.255.255.255")));
  EXPECT_TRUE(Cidr::parse("::/0")->contains(*IpAddress::parse("ffff::1")));
  EXPECT_TRUE(Cidr::parse("2603:1030::/32"));
  EXPECT_TRUE(Cidr::parse("1.2.3.4/32"));

  struct Case {
    const char* text;
    const char* error_part;
  };
  for (const Case& c : std::initializer_list<Case>{
           {"20.0.0.0/33", "over 32"},
           {"::/129", "over 128"},
           {"10.0.0.5/8", "host bits are set (the network is 10.0.0.0/8)"},
           {"10.0.0.0", "expected address/length"},
           {"10.0.0.0/", "not a decimal number"},
           {"10.0.0.0/08", "not a decimal number"},
           {"10.0.0.0/-1", "not a decimal number"},
           {"10.0.0.0/8x", "not a decimal number"},
           {"10.0.0/8", "not an IP address"},
           {"2603:1030::1/32", "host bits are set"},
       }) {
    std::string error;
    EXPECT_FALSE(Cidr::parse(c.text, &error)) << c.text;
    EXPECT_NE(error.find(c.error_part), std::string::npos) << c.text << " -> " << error;
  }
}

}  // namespace
}  // namespace acr
