#include "filters/cidr_set.h"

#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "conf/service_tags.h"
#include "test_data.h"

namespace acr {
namespace {

Cidr cidr(const char* text) { return *Cidr::parse(text); }
IpAddress ip(const char* text) { return *IpAddress::parse(text); }

// Brute force: the value of the longest containing prefix, earliest entry first among equals.
uint32_t bruteForce(const std::vector<CidrSet::Entry>& entries, const IpAddress& address) {
  int best_length = -1;
  uint32_t best = CidrSet::kNoMatch;
  for (const CidrSet::Entry& entry : entries) {
    if (entry.cidr.contains(address) && entry.cidr.length > best_length) {
      best_length = entry.cidr.length;
      best = entry.value;
    }
  }
  return best;
}

// Every prefix of every tag of the real service-tags file, the value being the tag's index.
std::vector<CidrSet::Entry> realFileEntries() {
  const ServiceTags tags = ServiceTags::load(test::serviceTagsPath());
  std::vector<CidrSet::Entry> entries;
  for (uint32_t t = 0; t < tags.tags().size(); ++t) {
    for (const Cidr& prefix : tags.tags()[t].prefixes) {
      entries.push_back({prefix, t});
    }
  }
  return entries;
}

// The most specific prefix decides, nested or not, and gaps match nothing.
TEST(CidrSetTest, LongestPrefixWins) {
  const std::vector<CidrSet::Entry> entries = {
      {cidr("20.0.0.0/8"), 1},      {cidr("20.60.0.0/16"), 2}, {cidr("20.60.1.0/24"), 3},
      {cidr("20.60.1.128/25"), 4},  {cidr("2603::/16"), 5},    {cidr("2603:1030::/32"), 6},
      {cidr("2603:1030::5/128"), 7}};
  const CidrSet set(entries);
  EXPECT_EQ(set.lookup(ip("20.1.1.1")), 1u);
  EXPECT_EQ(set.lookup(ip("20.60.0.1")), 2u);
  EXPECT_EQ(set.lookup(ip("20.60.1.1")), 3u);
  EXPECT_EQ(set.lookup(ip("20.60.1.200")), 4u);
  EXPECT_EQ(set.lookup(ip("20.60.2.0")), 2u);
  EXPECT_EQ(set.lookup(ip("21.0.0.0")), CidrSet::kNoMatch);
  EXPECT_EQ(set.lookup(ip("19.255.255.255")), CidrSet::kNoMatch);
  EXPECT_EQ(set.lookup(ip("2603:1030::5")), 7u);
  EXPECT_EQ(set.lookup(ip("2603:1030::6")), 6u);
  EXPECT_EQ(set.lookup(ip("2603:1031::")), 5u);
  EXPECT_EQ(set.lookup(ip("2604::")), CidrSet::kNoMatch);
  // Families never mix: ::ffff:20.60.1.1 is an IPv6 address to the set.
  EXPECT_EQ(set.lookup(ip("::ffff:20.60.1.1")), CidrSet::kNoMatch);
}

// Edges of the address space: /0, the last address, /32 and /128 at the very top.
TEST(CidrSetTest, HandlesTheEdgesOfTheSpace) {
  const std::vector<CidrSet::Entry> entries = {
      {cidr("0.0.0.0/0"), 1},
      {cidr("255.255.255.255/32"), 2},
      {cidr("0.0.0.0/32"), 3},
      {cidr("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"), 4}};
  const CidrSet set(entries);
  EXPECT_EQ(set.lookup(ip("255.255.255.255")), 2u);
  EXPECT_EQ(set.lookup(ip("255.255.255.254")), 1u);
  EXPECT_EQ(set.lookup(ip("0.0.0.0")), 3u);
  EXPECT_EQ(set.lookup(ip("0.0.0.1")), 1u);
  EXPECT_EQ(set.lookup(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")), 4u);
  EXPECT_EQ(set.lookup(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe")), CidrSet::kNoMatch);
  EXPECT_TRUE(CidrSet().empty());
  EXPECT_EQ(CidrSet().lookup(ip("1.2.3.4")), CidrSet::kNoMatch);
}

// Equal prefixes: the entry listed first keeps the prefix.
TEST(CidrSetTest, FirstOfEqualPrefixesWins) {
  const std::vector<CidrSet::Entry> entries = {{cidr("20.60.1.0/24"), 7},
                                               {cidr("20.60.1.0/24"), 8}};
  EXPECT_EQ(CidrSet(entries).lookup(ip("20.60.1.9")), 7u);
}

// Dense tables: 4096 adjacent /32s and /128s with distinct values force deep radix tables.
TEST(CidrSetTest, DenseRangesResolveExactly) {
  std::vector<CidrSet::Entry> entries;
  for (uint32_t i = 0; i < 4096; i += 1) {
    entries.push_back({Cidr{IpAddress::v4(0x0a000000u + i * 3), 32}, i});
    entries.push_back({Cidr{IpAddress::v6((Uint128{0x2603} << 112) + i * 5), 128}, 10000 + i});
  }
  const CidrSet set(entries);
  for (uint32_t i = 0; i < 4096 * 3; ++i) {
    const auto v4 = IpAddress::v4(0x0a000000u + i);
    EXPECT_EQ(set.lookup(v4), i % 3 == 0 ? i / 3 : CidrSet::kNoMatch) << i;
    const auto v6 = IpAddress::v6((Uint128{0x2603} << 112) + i);
    EXPECT_EQ(set.lookup(v6), i % 5 == 0 && i / 5 < 4096 ? 10000 + i / 5 : CidrSet::kNoMatch);
  }
}

// Prefixes longer than /64 in many adjacent /64s, each /64 with its own value: every /64 gets a
// shortcut, and a shortcut filed under or answering for the wrong /64 gives a wrong value.
TEST(CidrSetTest, LongPrefixesInAdjacent64sResolveExactly) {
  constexpr uint32_t kNetworks = 600;
  const Uint128 base = Uint128{0x2001'0db8'0000'0000ull} << 64;
  std::vector<CidrSet::Entry> entries;
  for (uint32_t i = 0; i < kNetworks; ++i) {
    const Uint128 network = base + (Uint128{i} << 64);
    entries.push_back({Cidr{IpAddress::v6(network), 64}, 3 * i});
    entries.push_back({Cidr{IpAddress::v6(network + 0x100), 120}, 3 * i + 1});
    entries.push_back({Cidr{IpAddress::v6(network + 0x1000 + i), 128}, 3 * i + 2});
  }
  const CidrSet set(entries);
  for (uint32_t i = 0; i < kNetworks; ++i) {
    const Uint128 network = base + (Uint128{i} << 64);
    auto at = [&](Uint128 offset) { return set.lookup(IpAddress::v6(network + offset)); };
    EXPECT_EQ(at(0), 3 * i) << i;
    EXPECT_EQ(at(0xff), 3 * i) << i;
    EXPECT_EQ(at(0x100), 3 * i + 1) << i;
    EXPECT_EQ(at(0x1ff), 3 * i + 1) << i;
    EXPECT_EQ(at(0x200), 3 * i) << i;
    EXPECT_EQ(at(0x1000 + i), 3 * i + 2) << i;
    EXPECT_EQ(at(0x1001 + i), 3 * i) << i;
    EXPECT_EQ(at(~uint64_t{0}), 3 * i) << i;
  }
  EXPECT_EQ(set.lookup(IpAddress::v6(base - 1)), CidrSet::kNoMatch);
  EXPECT_EQ(set.lookup(IpAddress::v6(base + (Uint128{kNetworks} << 64))), CidrSet::kNoMatch);
}

// Differential: on the real service-tags file with every tag loaded, the radix lookup, the
// binary-search baseline and a brute-force scan agree on 1,000,000 random IPv4 and IPv6
// addresses, half of them drawn from inside the prefixes.
TEST(CidrSetTest, AgreesWithBruteForceOnTheRealFile) {
  const std::vector<CidrSet::Entry> entries = realFileEntries();
  ASSERT_GT(entries.size(), 90000u);
  const CidrSet set(entries);
  // Brute force over 95k prefixes is slow; compare it on a subset, and the binary-search baseline
  // (an independent lookup over the same intervals) on all addresses.
  std::vector<CidrSet::Entry> v4_entries;
  std::vector<CidrSet::Entry> v6_entries;
  for (const auto& entry : entries) {
    (entry.cidr.address.isV4() ? v4_entries : v6_entries).push_back(entry);
  }
  std::mt19937_64 random(20261123);
  auto randomAddress = [&](bool v4, bool inside) {
    if (inside) {
      const auto& pool = v4 ? v4_entries : v6_entries;
      const Cidr& base = pool[random() % pool.size()].cidr;
      const int bits = v4 ? 32 : 128;
      const Uint128 host_mask =
          base.length == 0 ? ~Uint128{0} : ((Uint128{1} << (bits - base.length)) - 1);
      const Uint128 noise = (Uint128{random()} << 64) | random();
      if (v4) {
        return IpAddress::v4(base.address.v4Value() | static_cast<uint32_t>(noise & host_mask));
      }
      return IpAddress::v6(base.address.v6Value() | (noise & host_mask));
    }
    if (v4) {
      return IpAddress::v4(static_cast<uint32_t>(random()));
    }
    // Random IPv6 almost never lands in a prefix; bias half of it into 2603::/16 and 2a01::/16.
    Uint128 value = (Uint128{random()} << 64) | random();
    if (random() % 2 == 0) {
      value =
          (value & ((Uint128{1} << 112) - 1)) | (Uint128{random() % 2 ? 0x2603u : 0x2a01u} << 112);
    }
    return IpAddress::v6(value);
  };
  size_t matched = 0;
  for (int i = 0; i < 1000000; ++i) {
    const bool v4 = i % 2 == 0;
    const IpAddress address = randomAddress(v4, i % 4 < 2);
    const uint32_t value = set.lookup(address);
    ASSERT_EQ(value, set.lookupByBinarySearch(address)) << address.toString();
    matched += value != CidrSet::kNoMatch;
    if (i % 500 == 0) {
      const uint32_t expected = bruteForce(v4 ? v4_entries : v6_entries, address);
      // Equal-length prefixes in several tags: any of them is a correct answer only if it is the
      // first listed; bruteForce keeps the first too.
      ASSERT_EQ(value, expected) << address.toString();
    }
  }
  EXPECT_GT(matched, 400000u);
}

// Edges: for every prefix of the real file, the addresses just before, at, and just after both of
// its ends resolve as the binary search over the same intervals says. This walks every /64
// shortcut (prefixes longer than /64) and every radix block at its borders, where an off-by-one in
// a mask or a window would show.
TEST(CidrSetTest, AgreesWithBinarySearchAtEveryPrefixEdgeOfTheRealFile) {
  const std::vector<CidrSet::Entry> entries = realFileEntries();
  const CidrSet set(entries);
  size_t checked = 0;
  for (const auto& entry : entries) {
    const Cidr& cidr = entry.cidr;
    const bool v4 = cidr.address.isV4();
    const int bits = v4 ? 32 : 128;
    const Uint128 all = v4 ? Uint128{0xffffffffu} : ~Uint128{0};
    const Uint128 host = cidr.length == 0 ? all : (Uint128{1} << (bits - cidr.length)) - 1;
    const Uint128 first = (v4 ? Uint128{cidr.address.v4Value()} : cidr.address.v6Value()) & ~host;
    const Uint128 last = first | host;
    // For IPv6 also the same low bits in the neighbouring /64s, which a shortcut filed under the
    // wrong /64 would answer.
    const Uint128 next64 = v4 ? 0 : Uint128{1} << 64;
    for (const Uint128 edge : {first - 1, first, first + 1, last - 1, last, last + 1}) {
      for (const Uint128 key : {edge, edge + next64, edge - next64, edge ^ next64}) {
        const Uint128 wrapped = key & all;
        const IpAddress address =
            v4 ? IpAddress::v4(static_cast<uint32_t>(wrapped)) : IpAddress::v6(wrapped);
        ASSERT_EQ(set.lookup(address), set.lookupByBinarySearch(address)) << address.toString();
        ++checked;
      }
    }
  }
  EXPECT_EQ(checked, entries.size() * 24);
}

// Sets on either side of the small-root threshold (a 256-entry root up to 256 intervals per
// family, 2^16 above), drawn from the real file: every prefix edge agrees with brute force, and
// so do random addresses.
TEST(CidrSetTest, SmallAndLargeRootsAgreeWithBruteForce) {
  const std::vector<CidrSet::Entry> all = realFileEntries();
  std::mt19937_64 random(11);
  for (const size_t size : {0, 1, 2, 40, 120, 127, 128, 129, 130, 200, 400}) {
    std::vector<CidrSet::Entry> entries;
    for (size_t i = 0; i < size; ++i) {
      entries.push_back({all[random() % all.size()].cidr, static_cast<uint32_t>(i)});
    }
    // A default route in some sets, so that whole root slots carry a value.
    if (size % 2 == 1) {
      entries.push_back({cidr("0.0.0.0/0"), 999});
      entries.push_back({cidr("::/0"), 998});
    }
    const CidrSet set(entries);
    std::vector<IpAddress> probes;
    for (const auto& entry : entries) {
      const IpAddress& a = entry.cidr.address;
      probes.push_back(a);
      if (a.isV4()) {
        const uint32_t host =
            entry.cidr.length == 0 ? 0xffffffffu : (1u << (32 - entry.cidr.length)) - 1;
        probes.push_back(IpAddress::v4(a.v4Value() | host));
        probes.push_back(IpAddress::v4((a.v4Value() | host) + 1));
        probes.push_back(IpAddress::v4(a.v4Value() - 1));
      } else {
        const Uint128 host =
            entry.cidr.length == 0 ? ~Uint128{0} : (Uint128{1} << (128 - entry.cidr.length)) - 1;
        probes.push_back(IpAddress::v6(a.v6Value() | host));
        probes.push_back(IpAddress::v6((a.v6Value() | host) + 1));
        probes.push_back(IpAddress::v6(a.v6Value() - 1));
      }
    }
    for (int i = 0; i < 2000; ++i) {
      probes.push_back(IpAddress::v4(static_cast<uint32_t>(random())));
      probes.push_back(IpAddress::v6((Uint128{random()} << 64) | random()));
    }
    for (const IpAddress& address : probes) {
      ASSERT_EQ(set.lookup(address), bruteForce(entries, address))
          << "set of " << size << ": " << address.toString();
    }
  }
}

}  // namespace
}  // namespace acr
