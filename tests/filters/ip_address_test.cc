#include "filters/ip_address.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>

#include <array>
#include <random>
#include <string>
#include <vector>

#include "filters/socket_address.h"

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

// IpAddress::parse replaced glibc's inet_pton (start-up time): both must accept exactly the same
// texts and give the same address. The edge cases of RFC 4291 text and the dotted quad, then
// 300,000 random texts over the characters that matter (tests/fuzz/ip_address_fuzz.cc goes on
// where this stops).
std::optional<IpAddress> parseWithInetPton(const std::string& text) {
  if (text.empty() || text.size() > IpAddress::kMaxTextLength) {
    return std::nullopt;
  }
  in_addr v4{};
  if (inet_pton(AF_INET, text.c_str(), &v4) == 1) {
    return IpAddress::v4(ntohl(v4.s_addr));
  }
  std::array<uint8_t, 16> v6{};
  if (inet_pton(AF_INET6, text.c_str(), v6.data()) == 1) {
    return IpAddress::fromV6Bytes(v6);
  }
  return std::nullopt;
}

TEST(IpAddressTest, AcceptsExactlyWhatInetPtonAccepts) {
  const std::vector<std::string> edges = {"0.0.0.0",
                                          "255.255.255.255",
                                          "256.0.0.0",
                                          "1.2.3",
                                          "1.2.3.4.",
                                          ".1.2.3.4",
                                          "1..2.3",
                                          "01.2.3.4",
                                          "1.2.3.00",
                                          "1.2.3.0",
                                          "1.2.3.999",
                                          "1.2.3.4a",
                                          "1234.1.1.1",
                                          "::",
                                          ":::",
                                          ":",
                                          "::1",
                                          "1::",
                                          "1:::2",
                                          "::1::",
                                          "1:2:3:4:5:6:7:8",
                                          "1:2:3:4:5:6:7:8:9",
                                          "1:2:3:4:5:6:7::",
                                          "::2:3:4:5:6:7:8",
                                          "1:2:3:4:5:6:7:8::",
                                          "::1:2:3:4:5:6:7:8",
                                          "1:2:3:4::5:6:7:8",
                                          "1:2:3:4:5:6:7",
                                          "12345::",
                                          "ffff::",
                                          "FFFF::",
                                          "fffff::",
                                          "g::",
                                          "::1.2.3.4",
                                          "::ffff:1.2.3.4",
                                          "1:2:3:4:5:6:1.2.3.4",
                                          "1:2:3:4:5:6:7:1.2.3.4",
                                          "1:2:3:4:5::1.2.3.4",
                                          "::1.2.3",
                                          "::1.2.3.4.5",
                                          "::01.2.3.4",
                                          "::1.2.3.4:5",
                                          "1.2.3.4::",
                                          "::ffff:1a.2.3.4",
                                          "1:",
                                          ":1",
                                          "1:2:",
                                          "0:0:0:0:0:0:0:0",
                                          "2001:db8::1%eth0",
                                          "[::1]",
                                          " ::1",
                                          "::1 ",
                                          "0000:0000:0000:0000:0000:0000:0000:0001",
                                          "00000:0:0:0:0:0:0:1",
                                          "::ffff:255.255.255.255",
                                          "::ffff:256.1.1.1"};
  for (const std::string& text : edges) {
    EXPECT_EQ(IpAddress::parse(text), parseWithInetPton(text)) << text;
  }
  std::mt19937 random(20261205);
  static constexpr char kAlphabet[] = "0123456789abcdefABCDEFg.:.:.:%";
  std::uniform_int_distribution<size_t> pick(0, sizeof(kAlphabet) - 2);
  std::uniform_int_distribution<size_t> length(0, 46);
  size_t accepted = 0;
  for (int i = 0; i < 300000; ++i) {
    std::string text(length(random), ' ');
    for (char& c : text) {
      c = kAlphabet[pick(random)];
    }
    const auto expected = parseWithInetPton(text);
    accepted += expected ? 1 : 0;
    ASSERT_EQ(IpAddress::parse(text), expected) << text;
  }
  // Near-valid texts: a random address's text with one or two characters changed, inserted or
  // removed (random characters alone seldom come near a valid address).
  std::uniform_int_distribution<uint64_t> bits;
  for (int i = 0; i < 200000; ++i) {
    const Uint128 value = (Uint128{bits(random)} << 64) | bits(random);
    const int shape = static_cast<int>(bits(random) % 4);
    std::string text = shape == 0   ? IpAddress::v4(static_cast<uint32_t>(value)).toString()
                       : shape == 1 ? IpAddress::v6(value >> 64 << 64).toString()
                       : shape == 2 ? IpAddress::v6(value & 0xffffffffu).toString()
                                    : IpAddress::v6(value).toString();
    for (uint64_t edits = bits(random) % 3; edits > 0 && !text.empty(); --edits) {
      const size_t at = static_cast<size_t>(bits(random) % text.size());
      switch (bits(random) % 3) {
        case 0:
          text[at] = kAlphabet[pick(random)];
          break;
        case 1:
          text.insert(at, 1, kAlphabet[pick(random)]);
          break;
        default:
          text.erase(at, 1);
      }
    }
    const auto expected = parseWithInetPton(text);
    accepted += expected ? 1 : 0;
    ASSERT_EQ(IpAddress::parse(text), expected) << text;
  }
  EXPECT_GT(accepted, 100000u);  // the draw must reach valid texts, or it proves little
  // inet_pton stops at a NUL byte; IpAddress::parse refuses the text instead.
  EXPECT_FALSE(IpAddress::parse(std::string_view("1.2.3.4\0x", 9)).has_value());
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

// IPv4 is formatted by hand; the text is inet_ntop's for edge values and 200,000 random ones,
// and SocketAddress adds the port in both families as "a.b.c.d:port" and "[v6]:port".
TEST(IpAddressTest, FormatsIpv4AsInetNtop) {
  std::mt19937 random(4);
  std::vector<uint32_t> values = {0,          1,          9,          10,         99,
                                  100,        255,        256,        0x7f000001, 0xffffffffu,
                                  0x0a000005, 0xc0000201, 0x01020304, 0x00ff00ff, 0xff00ff00u};
  for (int i = 0; i < 200000; ++i) {
    values.push_back(static_cast<uint32_t>(random()));
  }
  for (const uint32_t value : values) {
    in_addr addr;
    addr.s_addr = htonl(value);
    char expected[INET_ADDRSTRLEN];
    ASSERT_NE(inet_ntop(AF_INET, &addr, expected, sizeof(expected)), nullptr);
    ASSERT_EQ(IpAddress::v4(value).toString(), expected) << value;
    ASSERT_EQ(SocketAddress::from(IpAddress::v4(value), static_cast<uint16_t>(value)).toString(),
              std::string(expected) + ":" + std::to_string(static_cast<uint16_t>(value)));
  }
  EXPECT_EQ(SocketAddress::from(*IpAddress::parse("2001:db8::1"), 65535).toString(),
            "[2001:db8::1]:65535");
  EXPECT_EQ(SocketAddress::from(*IpAddress::parse("::ffff:1.2.3.4"), 0).toString(),
            "[::ffff:1.2.3.4]:0");
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
