#include "proxy/client_counts.h"

#include <gtest/gtest.h>

#include <map>
#include <random>

namespace acr {
namespace {

IpAddress ip(std::string_view text) { return *IpAddress::parse(text); }

// A client's connections are counted up to its limit; the next is refused without changing the
// count, and the entry goes with the last connection.
TEST(ClientCountsTest, CountsUpToTheLimitAndErasesAtZero) {
  ClientCounts counts(8, 1);
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(counts.tryAdd(ip("192.0.2.1"), 3));
  }
  EXPECT_FALSE(counts.tryAdd(ip("192.0.2.1"), 3));
  EXPECT_EQ(counts.count(ip("192.0.2.1")), 3u);
  EXPECT_TRUE(counts.tryAdd(ip("192.0.2.2"), 3));  // another client has its own count
  EXPECT_EQ(counts.clients(), 2u);
  for (int i = 0; i < 3; ++i) {
    counts.remove(ip("192.0.2.1"));
  }
  EXPECT_EQ(counts.count(ip("192.0.2.1")), 0u);
  EXPECT_EQ(counts.clients(), 1u);
}

// Limit 0 is no limit.
TEST(ClientCountsTest, LimitZeroIsUnlimited) {
  ClientCounts counts(8, 1);
  for (int i = 0; i < 1000; ++i) {
    ASSERT_TRUE(counts.tryAdd(ip("2001:db8::1"), 0));
  }
  EXPECT_EQ(counts.count(ip("2001:db8::1")), 1000u);
}

// An IPv4-mapped IPv6 source is the same client as its IPv4 address.
TEST(ClientCountsTest, MappedIpv6CountsAsItsIpv4) {
  ClientCounts counts(8, 1);
  EXPECT_TRUE(counts.tryAdd(ip("198.51.100.7"), 2));
  EXPECT_TRUE(counts.tryAdd(ip("::ffff:198.51.100.7"), 2));
  EXPECT_FALSE(counts.tryAdd(ip("198.51.100.7"), 2));
  EXPECT_EQ(counts.count(ip("::ffff:198.51.100.7")), 2u);
  EXPECT_EQ(counts.clients(), 1u);
  EXPECT_TRUE(counts.tryAdd(ip("::198.51.100.7"), 2));  // IPv4-compatible: another address
  EXPECT_EQ(counts.clients(), 2u);
}

// The table reserved for 8 clients grows when more come, and keeps every count.
TEST(ClientCountsTest, GrowsPastTheReservation) {
  ClientCounts counts(8, 1);
  const size_t reserved = counts.capacity();
  for (uint32_t i = 0; i < 1000; ++i) {
    ASSERT_TRUE(counts.tryAdd(IpAddress::v4(0xc0000200u + i), 1));
  }
  EXPECT_GT(counts.capacity(), reserved);
  for (uint32_t i = 0; i < 1000; ++i) {
    ASSERT_EQ(counts.count(IpAddress::v4(0xc0000200u + i)), 1u) << i;
  }
}

// Differential: 200,000 random adds and removes over 300 addresses (IPv4, IPv6, mapped; many
// collide in a table of 64 slots) agree with a std::map at every step, and the table ends empty.
// Backward-shift deletion must never strand an entry behind a hole.
TEST(ClientCountsTest, AgreesWithAMapOnRandomOperations) {
  std::mt19937_64 random(42);
  ClientCounts counts(32, random());
  std::map<std::pair<uint64_t, uint64_t>, size_t> expected;
  std::vector<IpAddress> addresses;
  for (uint32_t i = 0; i < 100; ++i) {
    addresses.push_back(IpAddress::v4(0xcb007100u + i));
    addresses.push_back(IpAddress::v6((Uint128{0x20010db8} << 96) | random()));
    addresses.push_back(IpAddress::v6((Uint128{0xffff} << 32) | (0xc6336400u + i)));
  }
  auto key = [](const IpAddress& a) {
    const Uint128 v = a.isV4() ? ((Uint128{0xffff} << 32) | a.v4Value()) : a.v6Value();
    return std::pair<uint64_t, uint64_t>(static_cast<uint64_t>(v >> 64), static_cast<uint64_t>(v));
  };
  constexpr size_t kLimit = 4;
  for (int step = 0; step < 200'000; ++step) {
    const IpAddress& address = addresses[random() % addresses.size()];
    size_t& want = expected[key(address)];
    if (random() % 2 == 0) {
      const bool added = counts.tryAdd(address, kLimit);
      ASSERT_EQ(added, want < kLimit) << step;
      want += added ? 1 : 0;
    } else if (want > 0) {
      counts.remove(address);
      --want;
    }
    ASSERT_EQ(counts.count(address), want) << step;
  }
  for (const IpAddress& address : addresses) {
    ASSERT_EQ(counts.count(address), expected[key(address)]);
  }
  for (const IpAddress& address : addresses) {
    for (size_t n = counts.count(address); n > 0; --n) {
      counts.remove(address);
    }
  }
  EXPECT_EQ(counts.clients(), 0u);
}

}  // namespace
}  // namespace acr
