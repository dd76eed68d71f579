#include "dns/dns_cache.h"

#include <gtest/gtest.h>

#include <string>

namespace acr {
namespace {

using namespace std::chrono_literals;
using Clock = DnsCache::Clock;

DnsAnswer answerWithTtl(std::chrono::seconds ttl, uint32_t address = 0xc0000201) {
  DnsAnswer answer;
  answer.status = DnsStatus::kOk;
  answer.addresses.push_back(IpAddress::v4(address));
  answer.ttl = ttl;
  return answer;
}

// An entry is served strictly before its expiry and never at or after it.
TEST(DnsCacheTest, EntryExpiresAtItsTtl) {
  DnsCache cache(4);
  const Clock::time_point t0 = Clock::now();
  cache.insert("a.test", answerWithTtl(10s), t0);
  ASSERT_NE(cache.find("a.test", t0 + 9999ms), nullptr);
  EXPECT_EQ(cache.find("a.test", t0 + 10s), nullptr);
  EXPECT_EQ(cache.size(), 0u);  // the expired entry was dropped
}

// Beyond max_entries the least recently used entry goes; a lookup counts as a use.
TEST(DnsCacheTest, EvictsLeastRecentlyUsed) {
  DnsCache cache(2);
  const Clock::time_point now = Clock::now();
  cache.insert("a.test", answerWithTtl(60s), now);
  cache.insert("b.test", answerWithTtl(60s), now);
  ASSERT_NE(cache.find("a.test", now), nullptr);
  cache.insert("c.test", answerWithTtl(60s), now);
  EXPECT_EQ(cache.size(), 2u);
  EXPECT_NE(cache.find("a.test", now), nullptr);
  EXPECT_EQ(cache.find("b.test", now), nullptr);
  EXPECT_NE(cache.find("c.test", now), nullptr);
}

// Inserting a name again replaces its entry, including its expiry.
TEST(DnsCacheTest, InsertReplaces) {
  DnsCache cache(2);
  const Clock::time_point t0 = Clock::now();
  cache.insert("a.test", answerWithTtl(60s, 1), t0);
  cache.insert("a.test", answerWithTtl(5s, 2), t0);
  EXPECT_EQ(cache.size(), 1u);
  const DnsAnswer* found = cache.find("a.test", t0);
  ASSERT_NE(found, nullptr);
  EXPECT_EQ(found->addresses.front(), IpAddress::v4(2));
  EXPECT_TRUE(found->from_cache) << "what the cache hands out is a cache hit";
  EXPECT_EQ(cache.find("a.test", t0 + 5s), nullptr);
}

// A TTL of 0 stores nothing and removes what was there; a capacity of 0 stores nothing.
TEST(DnsCacheTest, ZeroTtlAndZeroCapacityStoreNothing) {
  DnsCache cache(2);
  const Clock::time_point now = Clock::now();
  cache.insert("a.test", answerWithTtl(60s), now);
  cache.insert("a.test", answerWithTtl(0s), now);
  EXPECT_EQ(cache.find("a.test", now), nullptr);
  EXPECT_EQ(cache.size(), 0u);

  DnsCache disabled(0);
  disabled.insert("a.test", answerWithTtl(60s), now);
  EXPECT_EQ(disabled.size(), 0u);
  EXPECT_EQ(disabled.find("a.test", now), nullptr);
}

// Many distinct names keep the cache at its bound (THREATS R9).
TEST(DnsCacheTest, StaysBoundedUnderManyNames) {
  DnsCache cache(100);
  const Clock::time_point now = Clock::now();
  for (int i = 0; i < 10000; ++i) {
    cache.insert("n" + std::to_string(i) + ".blob.core.windows.net", answerWithTtl(60s), now);
    ASSERT_LE(cache.size(), 100u);
  }
  EXPECT_NE(cache.find("n9999.blob.core.windows.net", now), nullptr);
  EXPECT_EQ(cache.find("n0.blob.core.windows.net", now), nullptr);
}

}  // namespace
}  // namespace acr
