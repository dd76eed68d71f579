#include "proxy/local_addresses.h"

#include <gtest/gtest.h>

namespace acr {
namespace {

IpAddress ip(const char* text) { return *IpAddress::parse(text); }
SocketAddress endpoint(const char* text) { return *SocketAddress::parse(text); }
Cidr cidr(const char* text) { return *Cidr::parse(text); }

// Local addresses of a made-up host: lo's 127.0.0.0/8 and ::1, one interface address each.
std::vector<Cidr> host() {
  return {cidr("127.0.0.0/8"), cidr("::1/128"), cidr("192.0.2.10/32"), cidr("2001:db8::10/128")};
}

// A listener on a specific address matches that address and port only.
TEST(LocalAddressesTest, SpecificListenerMatchesItsEndpointOnly) {
  const LocalAddresses set({endpoint("127.0.0.1:3128")}, host());
  EXPECT_TRUE(set.contains(ip("127.0.0.1"), 3128));
  EXPECT_FALSE(set.contains(ip("127.0.0.1"), 3129));
  EXPECT_FALSE(set.contains(ip("127.0.0.2"), 3128));
  EXPECT_FALSE(set.contains(ip("192.0.2.10"), 3128));
}

// The IPv4-mapped spelling is the IPv4 address (CONNECT [::ffff:127.0.0.1]:3128).
TEST(LocalAddressesTest, V4MappedSpellingIsNormalised) {
  const LocalAddresses set({endpoint("127.0.0.1:3128")}, host());
  EXPECT_TRUE(set.contains(ip("::ffff:127.0.0.1"), 3128));
  EXPECT_FALSE(set.contains(ip("64:ff9b::7f00:1"), 3128));  // NAT64 leaves the host
}

// A wildcard listener matches every local address of both families, loopback prefix included,
// and nothing remote.
TEST(LocalAddressesTest, WildcardListenerMatchesEveryLocalAddress) {
  const LocalAddresses set({endpoint("0.0.0.0:9443")}, host());
  for (const char* local : {"127.0.0.1", "127.3.2.1", "192.0.2.10", "::1", "2001:db8::10",
                            "::ffff:192.0.2.10", "0.0.0.0", "::"}) {
    EXPECT_TRUE(set.contains(ip(local), 9443)) << local;
  }
  EXPECT_FALSE(set.contains(ip("192.0.2.11"), 9443));
  EXPECT_FALSE(set.contains(ip("20.1.2.3"), 9443));
  EXPECT_FALSE(set.contains(ip("192.0.2.10"), 443));
}

// Every listener counts, not only the one that accepted; a connect() to 0.0.0.0 reaches them.
TEST(LocalAddressesTest, EveryListenerCountsAndUnspecifiedReachesThem) {
  const LocalAddresses set({endpoint("127.0.0.1:3128"), endpoint("[::1]:9443")}, host());
  EXPECT_TRUE(set.contains(ip("::1"), 9443));
  EXPECT_TRUE(set.contains(ip("0.0.0.0"), 3128));
  EXPECT_TRUE(set.contains(ip("::"), 9443));
}

// The host's interface addresses include loopback by prefix.
TEST(LocalAddressesTest, InterfaceAddressesIncludeLoopbackPrefix) {
  const LocalAddresses set({endpoint("0.0.0.0:1")}, LocalAddresses::interfaceAddresses());
  EXPECT_TRUE(set.isLocal(ip("127.0.0.1")));
  EXPECT_TRUE(set.isLocal(ip("127.1.2.3")));
  EXPECT_FALSE(set.isLocal(ip("192.0.2.200")));
}

}  // namespace
}  // namespace acr
