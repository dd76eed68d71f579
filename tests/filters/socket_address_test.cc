#include "filters/socket_address.h"

#include <gtest/gtest.h>

#include <array>
#include <string>

namespace acr {
namespace {

// One port grammar everywhere: the old parsers agreed on 1..65535 but not on "0" (the listener
// parser took it and left the refusal to its callers) nor on where the digits are checked.
TEST(SocketAddressTest, ParsePortIsCanonicalDecimal) {
  EXPECT_EQ(parsePort("1"), 1);
  EXPECT_EQ(parsePort("443"), 443);
  EXPECT_EQ(parsePort("65535"), 65535);
  for (const char* bad : {"", "0", "00", "0443", "+443", "-1", " 443", "443 ", "65536", "99999",
                          "100000", "4e2", "0x1bb", "https", "44 3"}) {
    EXPECT_FALSE(parsePort(bad).has_value()) << bad;
  }
}

// The splitter keeps the port text as written (validation is parsePort's) and never cuts a bare
// IPv6 address at its last colon.
TEST(SocketAddressTest, SplitHostPortForms) {
  struct Case {
    const char* text;
    const char* host;
    bool bracketed;
    bool has_port;
    const char* port;
  };
  for (const Case& c : {
           Case{"myreg.azurecr.io", "myreg.azurecr.io", false, false, ""},
           Case{"myreg.azurecr.io:443", "myreg.azurecr.io", false, true, "443"},
           Case{"1.2.3.4:", "1.2.3.4", false, true, ""},
           Case{"[::1]", "::1", true, false, ""},
           Case{"[::1]:53", "::1", true, true, "53"},
           Case{"[::1]:", "::1", true, true, ""},
           Case{"::1", "::1", false, false, ""},
           Case{"::1:53", "::1:53", false, false, ""},  // a bare IPv6 address, not port 53
           Case{"", "", false, false, ""},
           Case{"[]:1", "", true, true, "1"},
       }) {
    const auto parts = splitHostPort(c.text);
    ASSERT_TRUE(parts) << c.text;
    EXPECT_EQ(parts->host, c.host) << c.text;
    EXPECT_EQ(parts->bracketed, c.bracketed) << c.text;
    EXPECT_EQ(parts->has_port, c.has_port) << c.text;
    EXPECT_EQ(parts->port, c.port) << c.text;
  }
  for (const char* bad : {"[::1", "[::1]53", "[::1]x:53", "["}) {
    EXPECT_FALSE(splitHostPort(bad).has_value()) << bad;
  }
}

// format() writes what toString() returns, without allocating, into a buffer sized for the
// longest text there is (a bracketed IPv6 address of INET6_ADDRSTRLEN - 1 characters, a
// five-digit port).
TEST(SocketAddressTest, FormatWritesWhatToStringReturns) {
  std::array<char, SocketAddress::kMaxTextLength> text;
  for (const char* spelled :
       {"[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535", "[::ffff:255.255.255.255]:65535",
        "198.51.100.10:443", "[::1]:1", "255.255.255.255:65535"}) {
    const auto address = SocketAddress::parse(spelled);
    ASSERT_TRUE(address.has_value()) << spelled;
    const size_t length = address->format(text);
    EXPECT_LE(length, SocketAddress::kMaxTextLength);
    EXPECT_EQ(std::string(text.data(), length), spelled);
    EXPECT_EQ(address->toString(), spelled);
  }
}

// Listener and admin addresses: IPv4 bare, IPv6 bracketed, a port 1..65535 unless defaulted.
TEST(SocketAddressTest, ParsesListenAddresses) {
  EXPECT_EQ(SocketAddress::parse("127.0.0.1:3128")->toString(), "127.0.0.1:3128");
  EXPECT_EQ(SocketAddress::parse("[::1]:15001")->toString(), "[::1]:15001");
  EXPECT_EQ(SocketAddress::parse("[2001:db8:0::1]:443")->toString(), "[2001:db8::1]:443");
  EXPECT_EQ(SocketAddress::parse("192.0.2.1", 53)->toString(), "192.0.2.1:53");
  EXPECT_EQ(SocketAddress::parse("[2001:db8::53]", 53)->toString(), "[2001:db8::53]:53");
  EXPECT_EQ(SocketAddress::parse("192.0.2.1:5353", 53)->port(), 5353);
  for (const char* bad :
       {"127.0.0.1", "127.0.0.1:0", "127.0.0.1:0443", "127.0.0.1:65536", "127.0.0.1:", "::1",
        "::1:3128", "[127.0.0.1]:3128", "[::1]3128", "localhost:3128", "127.1:3128",
        "[fe80::1%eth0]:1", " 127.0.0.1:3128", ""}) {
    EXPECT_FALSE(SocketAddress::parse(bad).has_value()) << bad;
  }
  EXPECT_FALSE(SocketAddress::parse("::1", 53).has_value());  // bare IPv6, even with a default
}

// The address and port survive the trip through sockaddr; loopback is 127/8 and ::1.
TEST(SocketAddressTest, RoundTripsAndLoopback) {
  const auto v6 = SocketAddress::parse("[2001:db8::7]:8443");
  ASSERT_TRUE(v6);
  EXPECT_EQ(v6->ip(), *IpAddress::parse("2001:db8::7"));
  EXPECT_EQ(SocketAddress::from(v6->ip(), v6->port()).toString(), "[2001:db8::7]:8443");
  EXPECT_TRUE(SocketAddress::parse("127.9.9.9:1")->isLoopback());
  EXPECT_TRUE(SocketAddress::parse("[::1]:1")->isLoopback());
  EXPECT_FALSE(SocketAddress::parse("0.0.0.0:1")->isLoopback());
  EXPECT_FALSE(SocketAddress::parse("[::]:1")->isLoopback());
}

}  // namespace
}  // namespace acr
