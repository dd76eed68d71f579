#include "dns/resolver.h"

#include <gtest/gtest.h>
#include <time.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <ostream>
#include <stdexcept>
#include <string>
#include <vector>

#include "tests/dns/dns_test_support.h"

namespace acr {
namespace {

using dnstest::Clock;
using dnstest::Dnsmasq;
using dnstest::FakeDnsServer;
using dnstest::runFor;
using dnstest::runUntil;
using namespace std::chrono_literals;

// What the test dnsmasq knows. Names under .test that it does not list are NXDOMAIN (--local);
// other names are REFUSED (no upstream). Records without a TTL of their own use --local-ttl.
const std::vector<std::string> kRecords = {
    "--local=/test/",
    "--local-ttl=600",
    "--host-record=v4.test,192.0.2.1",
    "--host-record=v6.test,2001:db8::1",
    "--host-record=both.test,192.0.2.2,2001:db8::2",
    "--txt-record=txt.test,only text here",
    "--host-record=short.test,192.0.2.5,1",
    "--host-record=zero.test,192.0.2.6,0",
    "--host-record=long.test,192.0.2.3,86400",
    "--host-record=mix.test,192.0.2.4,100",
    "--host-record=mix.test,2001:db8::4,50",
    "--cname=alias.test,both.test,77",
    "--address=/lru.test/192.0.2.50",
    "--host-record=myreg.azurecr.io,192.0.2.10",
};

std::vector<std::string> texts(const DnsAnswer& answer) {
  std::vector<std::string> out;
  for (const IpAddress& address : answer.addresses) {
    out.push_back(address.toString());
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::chrono::nanoseconds cpuTime() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec);
}

// Writes `text` to `path` the way resolv.conf managers do: a new file renamed over the old one.
void replaceFile(const std::string& path, const std::string& text) {
  const std::string temporary = path + ".new";
  std::ofstream(temporary) << text;
  std::rename(temporary.c_str(), path.c_str());
}

class ResolverTest : public ::testing::Test {
 protected:
  void SetUp() override { base_ = event_base_new(); }
  void TearDown() override { event_base_free(base_); }

  static ResolverOptions optionsFor(const std::string& server) {
    ResolverOptions options;
    options.servers = {server};
    options.timeout = 2000ms;
    return options;
  }

  std::unique_ptr<Resolver> makeResolver(ResolverOptions options) {
    return std::make_unique<Resolver>(base_, std::move(options));
  }

  // Resolves `name` and runs the loop until its answer arrived or `limit` passed.
  std::optional<DnsAnswer> resolveNow(Resolver& resolver, std::string_view name,
                                      std::chrono::milliseconds limit = 3s) {
    std::optional<DnsAnswer> answer;
    resolver.resolve(name, [&answer](const DnsAnswer& result) { answer = result; });
    runUntil(
        base_, [&answer] { return answer.has_value(); }, limit);
    return answer;
  }

  // A dnsmasq serving kRecords plus `extra` on 127.0.0.1 and a free port.
  void startDnsmasq(Dnsmasq& dnsmasq, const std::vector<std::string>& extra = {}) {
    std::vector<std::string> records = kRecords;
    records.insert(records.end(), extra.begin(), extra.end());
    std::string error;
    ASSERT_TRUE(dnsmasq.start("127.0.0.1", 0, records, error)) << error;
  }

  event_base* base_ = nullptr;
};

// An A-only, an AAAA-only and a dual-stack name each yield exactly their addresses.
TEST_F(ResolverTest, ResolvesAAndAaaa) {
  Dnsmasq dnsmasq;
  ASSERT_NO_FATAL_FAILURE(startDnsmasq(dnsmasq));
  auto resolver = makeResolver(optionsFor(dnsmasq.server()));

  const auto v4 = resolveNow(*resolver, "v4.test");
  ASSERT_TRUE(v4);
  EXPECT_EQ(v4->status, DnsStatus::kOk);
  EXPECT_EQ(texts(*v4), (std::vector<std::string>{"192.0.2.1"}));
  EXPECT_FALSE(v4->from_cache);

  const auto v6 = resolveNow(*resolver, "v6.test");
  ASSERT_TRUE(v6);
  EXPECT_EQ(v6->status, DnsStatus::kOk);
  EXPECT_EQ(texts(*v6), (std::vector<std::string>{"2001:db8::1"}));

  const auto both = resolveNow(*resolver, "both.test");
  ASSERT_TRUE(both);
  EXPECT_EQ(both->status, DnsStatus::kOk);
  EXPECT_EQ(texts(*both), (std::vector<std::string>{"192.0.2.2", "2001:db8::2"}));

  const auto acr = resolveNow(*resolver, "myreg.azurecr.io");
  ASSERT_TRUE(acr);
  EXPECT_EQ(texts(*acr), (std::vector<std::string>{"192.0.2.10"}));
  EXPECT_EQ(resolver->stats().queries, 4u);
}

// A reload's new DNS settings (Resolver::reconfigure): the next lookup asks the new server, not
// the cache filled by the old one; options that do not validate throw and change nothing.
TEST_F(ResolverTest, ReconfigureSwitchesServersAndEmptiesTheCache) {
  Dnsmasq first;
  ASSERT_NO_FATAL_FAILURE(startDnsmasq(first, {"--host-record=moved.test,198.51.100.1"}));
  Dnsmasq second;
  ASSERT_NO_FATAL_FAILURE(startDnsmasq(second, {"--host-record=moved.test,198.51.100.2"}));
  auto resolver = makeResolver(optionsFor(first.server()));
  ASSERT_EQ(texts(*resolveNow(*resolver, "moved.test")),
            (std::vector<std::string>{"198.51.100.1"}));
  EXPECT_TRUE(resolveNow(*resolver, "moved.test")->from_cache);

  ResolverOptions bad = optionsFor("not a server");
  EXPECT_THROW(resolver->reconfigure(bad), std::invalid_argument);
  EXPECT_TRUE(resolveNow(*resolver, "moved.test")->from_cache);

  resolver->reconfigure(optionsFor(second.server()));
  const auto moved = resolveNow(*resolver, "moved.test");
  ASSERT_TRUE(moved);
  EXPECT_FALSE(moved->from_cache);
  EXPECT_EQ(texts(*moved), (std::vector<std::string>{"198.51.100.2"}));
  EXPECT_EQ(resolver->stats().channel_resets, 1u);

  // Same options again: nothing to redo, the cache stays.
  resolver->reconfigure(optionsFor(second.server()));
  EXPECT_TRUE(resolveNow(*resolver, "moved.test")->from_cache);
  EXPECT_EQ(resolver->stats().channel_resets, 1u);
}

// Mixed case and a trailing dot name the same cache entry: one query reaches the server.
TEST_F(ResolverTest, NameSpellingsShareOneCacheEntry) {
  Dnsmasq dnsmasq;
  ASSERT_NO_FATAL_FAILURE(startDnsmasq(dnsmasq));
  auto resolver = makeResolver(optionsFor(dnsmasq.server()));

  const auto first = resolveNow(*resolver, "Both.TEST.");
  ASSERT_TRUE(first);
  EXPECT_EQ(first->status, DnsStatus::kOk);
  EXPECT_FALSE(first->from_cache);
  for (const char* spelling : {"both.test", "BOTH.test.", "bOtH.TeSt"}) {
    const auto again = resolveNow(*resolver, spelling);
    ASSERT_TRUE(again) << spelling;
    EXPECT_TRUE(again->from_cache) << spelling;
    EXPECT_EQ(texts(*again), texts(*first)) << spelling;
  }
  EXPECT_EQ(resolver->cacheSize(), 1u);
  EXPECT_EQ(resolver->stats().cache_hits, 3u);
  EXPECT_EQ(resolver->stats().cache_misses, 1u);
  EXPECT_EQ(dnsmasq.countQueries("A", "both.test"), 1);
}

// The observer hears every cache hit and miss and one resolution per name in flight, with its
// status and a duration within the budget.
TEST_F(ResolverTest, ObserverHearsHitsMissesAndResolutions) {
  struct Recorder final : DnsObserver {
    void onCacheHit() noexcept override { ++hits; }
    void onCacheMiss() noexcept override { ++misses; }
    void onResolution(DnsStatus status, std::chrono::nanoseconds elapsed) noexcept override {
      statuses.push_back(status);
      durations.push_back(elapsed);
    }
    void onChannelReset() noexcept override { ++resets; }
    int hits = 0;
    int resets = 0;
    int misses = 0;
    std::vector<DnsStatus> statuses;
    std::vector<std::chrono::nanoseconds> durations;
  } recorder;
  Dnsmasq dnsmasq;
  ASSERT_NO_FATAL_FAILURE(startDnsmasq(dnsmasq));
  ResolverOptions options = optionsFor(dnsmasq.server());
  options.observer = &recorder;
  auto resolver = makeResolver(std::move(options));

  ASSERT_TRUE(resolveNow(*resolver, "v4.test"));
  ASSERT_TRUE(resolveNow(*resolver, "v4.test"));
  ASSERT_TRUE(resolveNow(*resolver, "missing.test"));
  ASSERT_TRUE(resolveNow(*resolver, "192.0.2.7"));  // a literal is no lookup at all
  EXPECT_EQ(recorder.hits, 1);
  EXPECT_EQ(recorder.misses, 2);
  EXPECT_EQ(recorder.statuses, (std::vector<DnsStatus>{DnsStatus::kOk, DnsStatus::kNxDomain}));
  EXPECT_EQ(recorder.resets, 0);
  for (const auto elapsed : recorder.durations) {
    EXPECT_GE(elapsed.count(), 0);
    EXPECT_LT(elapsed, 2s);
  }
}

// NXDOMAIN is reported as such and cached for negative_ttl: the second ask never reaches dnsmasq.
TEST_F(ResolverTest, NxDomainIsCachedNegatively) {
  Dnsmasq dnsmasq;
  ASSERT_NO_FATAL_FAILURE(startDnsmasq(dnsmasq));
  ResolverOptions options = optionsFor(dnsmasq.server());
  options.negative_ttl = 42s;
  auto resolver = makeResolver(options);

  const auto first = resolveNow(*resolver, "missing.test");
  ASSERT_TRUE(first);
  EXPECT_EQ(first->status, DnsStatus::kNxDomain);
  EXPECT_EQ(first->ttl, 42s);
  EXPECT_TRUE(first->addresses.empty());
  const auto second = resolveNow(*resolver, "missing.test");
  ASSERT_TRUE(second);
  EXPECT_EQ(second->status, DnsStatus::kNxDomain);
  EXPECT_TRUE(second->from_cache);
  EXPECT_EQ(dnsmasq.countQueries("A", "missing.test"), 1);
  EXPECT_EQ(resolver->stats().nxdomain, 1u);
  EXPECT_EQ(resolver->stats().cache_hits, 1u);
}

// A name that exists with only a TXT record is kNoAddresses, also cached negatively.
TEST_F(ResolverTest, NameWithoutAddressRecordsIsNoAddresses) {
  Dnsmasq dnsmasq;
  ASSERT_NO_FATAL_FAILURE(startDnsmasq(dnsmasq));
  auto resolver = makeResolver(optionsFor(dnsmasq.server()));

  const auto first = resolveNow(*resolver, "txt.test");
  ASSERT_TRUE(first);
  EXPECT_EQ(first->status, DnsStatus::kNoAddresses);
  const auto second = resolveNow(*resolver, "txt.test");
  ASSERT_TRUE(second);
  EXPECT_EQ(second->status, DnsStatus::kNoAddresses);
  EXPECT_TRUE(second->from_cache);
  EXPECT_EQ(dnsmasq.countQueries("A", "txt.test"), 1);
}

// A server that refuses the name gives kFailure, which is not cached.
TEST_F(ResolverTest, RefusedIsFailureAndNotCached) {
  Dnsmasq dnsmasq;
  ASSERT_NO_FATAL_FAILURE(startDnsmasq(dnsmasq));
  auto resolver = makeResolver(optionsFor(dnsmasq.server()));

  for (int i = 0; i < 2; ++i) {
    const auto answer = resolveNow(*resolver, "unknown.example");
    ASSERT_TRUE(answer);
    EXPECT_EQ(answer->status, DnsStatus::kFailure);
    EXPECT_FALSE(answer->from_cache);
  }
  EXPECT_EQ(resolver->stats().queries, 2u);
  EXPECT_EQ(resolver->stats().failures, 2u);
  EXPECT_EQ(resolver->cacheSize(), 0u);
}

// A TTL of 1 s (min_ttl 1) expires: after ~1 s the next ask is a new query, not a stale hit.
TEST_F(ResolverTest, ShortTtlExpires) {
  Dnsmasq dnsmasq;
  ASSERT_NO_FATAL_FAILURE(startDnsmasq(dnsmasq));
  ResolverOptions options = optionsFor(dnsmasq.server());
  options.min_ttl = 1s;
  auto resolver = makeResolver(options);

  const auto first = resolveNow(*resolver, "short.test");
  ASSERT_TRUE(first);
  EXPECT_EQ(first->ttl, 1s);
  const auto cached = resolveNow(*resolver, "short.test");
  ASSERT_TRUE(cached);
  EXPECT_TRUE(cached->from_cache);
  runFor(base_, 1100ms);
  const auto fresh = resolveNow(*resolver, "short.test");
  ASSERT_TRUE(fresh);
  EXPECT_EQ(fresh->status, DnsStatus::kOk);
  EXPECT_FALSE(fresh->from_cache);
  EXPECT_EQ(dnsmasq.countQueries("A", "short.test"), 2);
}

// TTLs are clamped to [min_ttl, max_ttl], and an answer lives as long as its shortest record.
TEST_F(ResolverTest, TtlIsClampedAndTheSmallestOfTheAnswer) {
  Dnsmasq dnsmasq;
  ASSERT_NO_FATAL_FAILURE(startDnsmasq(dnsmasq));
  ResolverOptions options = optionsFor(dnsmasq.server());
  options.min_ttl = 5s;
  options.max_ttl = 300s;
  auto resolver = makeResolver(options);

  struct Case {
    const char* name;
    std::chrono::seconds ttl;
  };
  for (const Case& c : {Case{"long.test", 300s},   // 86400 clamped down to max_ttl
                        Case{"zero.test", 5s},     // 0 clamped up to min_ttl
                        Case{"mix.test", 50s},     // A 100, AAAA 50
                        Case{"alias.test", 77s},   // CNAME 77, addresses 600
                        Case{"v4.test", 300s}}) {  // --local-ttl 600
    const auto answer = resolveNow(*resolver, c.name);
    ASSERT_TRUE(answer) << c.name;
    EXPECT_EQ(answer->status, DnsStatus::kOk) << c.name;
    EXPECT_EQ(answer->ttl, c.ttl) << c.name;
  }
}

// 50 concurrent asks for one name share one query: 50 callbacks, 49 coalesced, 1 query seen.
TEST_F(ResolverTest, ConcurrentRequestsAreCoalesced) {
  Dnsmasq dnsmasq;
  ASSERT_NO_FATAL_FAILURE(startDnsmasq(dnsmasq));
  auto resolver = makeResolver(optionsFor(dnsmasq.server()));

  std::vector<DnsAnswer> answers;
  for (int i = 0; i < 50; ++i) {
    const uint64_t ticket =
        resolver->resolve(i % 2 == 0 ? "both.test" : "BOTH.test.",
                          [&answers](const DnsAnswer& answer) { answers.push_back(answer); });
    EXPECT_NE(ticket, 0u);
  }
  EXPECT_TRUE(answers.empty());
  runUntil(
      base_, [&answers] { return answers.size() == 50; }, 3s);
  ASSERT_EQ(answers.size(), 50u);
  for (const DnsAnswer& answer : answers) {
    EXPECT_EQ(answer.status, DnsStatus::kOk);
    EXPECT_EQ(texts(answer), (std::vector<std::string>{"192.0.2.2", "2001:db8::2"}));
  }
  EXPECT_EQ(resolver->stats().coalesced, 49u);
  EXPECT_EQ(resolver->stats().queries, 1u);
  EXPECT_EQ(dnsmasq.countQueries("A", "both.test"), 1);
  EXPECT_EQ(dnsmasq.countQueries("AAAA", "both.test"), 1);
}

// A server that never answers gives kTimeout after `timeout` (c-ares having retried within the
// budget), with the loop asleep in between: few passes, little CPU.
TEST_F(ResolverTest, SilentServerTimesOutWithoutSpinning) {
  FakeDnsServer silent(base_, [](std::string_view) { return std::nullopt; });
  ASSERT_TRUE(silent.ok());
  ResolverOptions options = optionsFor(silent.server());
  options.timeout = 1000ms;
  auto resolver = makeResolver(options);

  std::optional<DnsAnswer> answer;
  const auto started = Clock::now();
  const auto cpu_started = cpuTime();
  resolver->resolve("myreg.azurecr.io", [&answer](const DnsAnswer& result) { answer = result; });
  const int passes = runUntil(
      base_, [&answer] { return answer.has_value(); }, 3s);
  const auto elapsed = Clock::now() - started;
  const auto cpu = cpuTime() - cpu_started;

  ASSERT_TRUE(answer);
  EXPECT_EQ(answer->status, DnsStatus::kTimeout);
  EXPECT_GE(elapsed, 950ms);
  EXPECT_LE(elapsed, 1500ms);
  EXPECT_LT(passes, 15);
  EXPECT_LT(cpu, 250ms);
  EXPECT_GE(silent.received(), 4);  // A and AAAA, each sent and retried
  EXPECT_EQ(resolver->stats().timeouts, 1u);
  EXPECT_EQ(resolver->cacheSize(), 0u);
}

// Nothing listening fails fast; once dnsmasq listens there, the same Resolver recovers, and the
// observer hears the channel it replaced.
TEST_F(ResolverTest, ServerThatComesBackIsUsed) {
  struct ResetCounter final : DnsObserver {
    void onCacheHit() noexcept override {}
    void onCacheMiss() noexcept override {}
    void onResolution(DnsStatus, std::chrono::nanoseconds) noexcept override {}
    void onChannelReset() noexcept override { ++resets; }
    int resets = 0;
  } observer;
  const uint16_t port = dnstest::freePort();
  ASSERT_NE(port, 0);
  ResolverOptions options = optionsFor("127.0.0.1:" + std::to_string(port));
  options.timeout = 2000ms;
  options.observer = &observer;
  auto resolver = makeResolver(options);

  const auto started = Clock::now();
  const auto down = resolveNow(*resolver, "v4.test");
  ASSERT_TRUE(down);
  EXPECT_TRUE(down->status == DnsStatus::kFailure || down->status == DnsStatus::kTimeout)
      << dnsStatusName(down->status);
  EXPECT_LT(Clock::now() - started, 500ms);

  Dnsmasq dnsmasq;
  std::string error;
  ASSERT_TRUE(dnsmasq.start("127.0.0.1", port, kRecords, error)) << error;
  const auto up = resolveNow(*resolver, "v4.test");
  ASSERT_TRUE(up);
  EXPECT_EQ(up->status, DnsStatus::kOk);
  EXPECT_EQ(texts(*up), (std::vector<std::string>{"192.0.2.1"}));
  EXPECT_EQ(resolver->stats().channel_resets, 1u);
  EXPECT_EQ(observer.resets, 1);
}

// A resolution started from inside a failure callback (inside c-ares) renews the channel from
// the loop right after, moves itself to the new channel, and ends; renewals stay at one a second.
TEST_F(ResolverTest, RenewRequestedInsideCallbackIsDeferred) {
  const uint16_t port = dnstest::freePort();
  ASSERT_NE(port, 0);
  auto resolver = makeResolver(optionsFor("127.0.0.1:" + std::to_string(port)));

  std::optional<DnsAnswer> first;
  std::optional<DnsAnswer> second;
  resolver->resolve("a.test", [&](const DnsAnswer& answer) {
    first = answer;
    resolver->resolve("b.test", [&second](const DnsAnswer& result) { second = result; });
  });
  runUntil(
      base_, [&second] { return second.has_value(); }, 3s);
  ASSERT_TRUE(first);
  ASSERT_TRUE(second);
  EXPECT_EQ(first->status, DnsStatus::kFailure);
  EXPECT_EQ(second->status, DnsStatus::kFailure);
  EXPECT_EQ(resolver->stats().channel_resets, 1u);
  EXPECT_EQ(resolver->stats().queries, 3u);  // b.test started on the old channel, then the new

  const auto third = resolveNow(*resolver, "c.test");
  ASSERT_TRUE(third);
  EXPECT_EQ(third->status, DnsStatus::kFailure);
  EXPECT_EQ(resolver->stats().channel_resets, 1u);  // less than a second after the last one
}

// A server given as "[::1]:PORT" is reached over IPv6.
TEST_F(ResolverTest, Ipv6ServerIsUsed) {
  Dnsmasq dnsmasq;
  std::string error;
  if (!dnsmasq.start("::1", 0, kRecords, error)) {
    GTEST_SKIP() << "no IPv6 loopback: " << error;
  }
  auto resolver = makeResolver(optionsFor(dnsmasq.server()));
  const auto answer = resolveNow(*resolver, "both.test");
  ASSERT_TRUE(answer);
  EXPECT_EQ(answer->status, DnsStatus::kOk);
  EXPECT_EQ(texts(*answer), (std::vector<std::string>{"192.0.2.2", "2001:db8::2"}));
}

// 40 names through a cache of 16 entries: it never holds more, and the oldest were evicted.
TEST_F(ResolverTest, CacheIsBoundedLru) {
  Dnsmasq dnsmasq;
  ASSERT_NO_FATAL_FAILURE(startDnsmasq(dnsmasq));
  ResolverOptions options = optionsFor(dnsmasq.server());
  options.max_cache_entries = 16;
  auto resolver = makeResolver(options);

  for (int i = 0; i < 40; ++i) {
    const auto answer = resolveNow(*resolver, "n" + std::to_string(i) + ".lru.test");
    ASSERT_TRUE(answer);
    ASSERT_EQ(answer->status, DnsStatus::kOk);
    EXPECT_LE(resolver->cacheSize(), 16u);
  }
  EXPECT_EQ(resolver->cacheSize(), 16u);
  EXPECT_TRUE(resolveNow(*resolver, "n39.lru.test")->from_cache);
  EXPECT_FALSE(resolveNow(*resolver, "n0.lru.test")->from_cache);
}

// With max_pending names in flight a new name fails at once; joining a name in flight still works.
TEST_F(ResolverTest, MaxPendingRefusesNewNames) {
  FakeDnsServer silent(base_, [](std::string_view) { return std::nullopt; });
  ASSERT_TRUE(silent.ok());
  ResolverOptions options = optionsFor(silent.server());
  options.max_pending = 2;
  auto resolver = makeResolver(options);

  int called = 0;
  const auto count = [&called](const DnsAnswer&) { ++called; };
  EXPECT_NE(resolver->resolve("a.test", count), 0u);
  EXPECT_NE(resolver->resolve("b.test", count), 0u);
  std::optional<DnsAnswer> third;
  EXPECT_EQ(resolver->resolve("c.test", [&third](const DnsAnswer& answer) { third = answer; }), 0u);
  ASSERT_TRUE(third);
  EXPECT_EQ(third->status, DnsStatus::kFailure);
  EXPECT_NE(resolver->resolve("a.test", count), 0u);
  EXPECT_EQ(resolver->pendingCount(), 2u);
  EXPECT_EQ(called, 0);
  EXPECT_EQ(resolver->stats().coalesced, 1u);
}

// A cancelled callback never runs; the other waiters of that name get the answer, and the answer
// is cached even when every waiter cancelled.
TEST_F(ResolverTest, CancelledCallbackNeverRuns) {
  Dnsmasq dnsmasq;
  ASSERT_NO_FATAL_FAILURE(startDnsmasq(dnsmasq));
  auto resolver = makeResolver(optionsFor(dnsmasq.server()));

  bool cancelled_ran = false;
  std::optional<DnsAnswer> kept;
  const uint64_t ticket =
      resolver->resolve("both.test", [&cancelled_ran](const DnsAnswer&) { cancelled_ran = true; });
  resolver->resolve("both.test", [&kept](const DnsAnswer& answer) { kept = answer; });
  resolver->cancel(ticket);
  resolver->cancel(ticket);  // twice: ignored
  resolver->cancel(0);
  resolver->cancel(987654);
  runUntil(
      base_, [&kept] { return kept.has_value(); }, 3s);
  ASSERT_TRUE(kept);
  EXPECT_EQ(kept->status, DnsStatus::kOk);
  runFor(base_, 50ms);
  EXPECT_FALSE(cancelled_ran);

  bool lone_ran = false;
  resolver->cancel(
      resolver->resolve("v4.test", [&lone_ran](const DnsAnswer&) { lone_ran = true; }));
  runUntil(
      base_, [&resolver] { return resolver->pendingCount() == 0; }, 3s);
  EXPECT_FALSE(lone_ran);
  const auto cached = resolveNow(*resolver, "v4.test");
  ASSERT_TRUE(cached);
  EXPECT_TRUE(cached->from_cache);
}

// Destroying the Resolver with requests in flight calls none of them and leaks nothing (ASan).
TEST_F(ResolverTest, DestroyWithPendingRequests) {
  FakeDnsServer silent(base_, [](std::string_view) { return std::nullopt; });
  ASSERT_TRUE(silent.ok());
  auto resolver = makeResolver(optionsFor(silent.server()));
  int called = 0;
  for (int i = 0; i < 10; ++i) {
    resolver->resolve("n" + std::to_string(i % 5) + ".test",
                      [&called](const DnsAnswer&) { ++called; });
  }
  runUntil(
      base_, [&silent] { return silent.received() >= 10; }, 2s);
  EXPECT_EQ(resolver->pendingCount(), 5u);
  resolver.reset();
  runFor(base_, 50ms);
  EXPECT_EQ(called, 0);
}

// A callback may cancel a sibling waiter and start another resolution from inside the dispatch.
TEST_F(ResolverTest, CallbacksMayCancelAndResolve) {
  Dnsmasq dnsmasq;
  ASSERT_NO_FATAL_FAILURE(startDnsmasq(dnsmasq));
  auto resolver = makeResolver(optionsFor(dnsmasq.server()));

  uint64_t sibling = 0;
  bool sibling_ran = false;
  std::optional<DnsAnswer> nested;
  resolver->resolve("both.test", [&](const DnsAnswer&) {
    resolver->cancel(sibling);
    resolver->resolve("v6.test", [&nested](const DnsAnswer& answer) { nested = answer; });
  });
  sibling =
      resolver->resolve("both.test", [&sibling_ran](const DnsAnswer&) { sibling_ran = true; });
  runUntil(
      base_, [&nested] { return nested.has_value(); }, 3s);
  ASSERT_TRUE(nested);
  EXPECT_EQ(texts(*nested), (std::vector<std::string>{"2001:db8::1"}));
  EXPECT_FALSE(sibling_ran);
}

// Names that are not host names fail at once; IP literals resolve to themselves; neither queries.
TEST_F(ResolverTest, LiteralsAndInvalidNamesAnswerAtOnce) {
  FakeDnsServer silent(base_, [](std::string_view) { return std::nullopt; });
  ASSERT_TRUE(silent.ok());
  auto resolver = makeResolver(optionsFor(silent.server()));

  for (const char* name : {"", ".", "a..b", "bad name.test", "x.123", "exa$mple.test"}) {
    std::optional<DnsAnswer> answer;
    EXPECT_EQ(resolver->resolve(name, [&answer](const DnsAnswer& a) { answer = a; }), 0u) << name;
    ASSERT_TRUE(answer) << name;
    EXPECT_EQ(answer->status, DnsStatus::kFailure) << name;
  }
  for (const char* literal : {"192.0.2.7", "2001:db8::7"}) {
    std::optional<DnsAnswer> answer;
    EXPECT_EQ(resolver->resolve(literal, [&answer](const DnsAnswer& a) { answer = a; }), 0u);
    ASSERT_TRUE(answer);
    EXPECT_EQ(answer->status, DnsStatus::kOk);
    EXPECT_EQ(texts(*answer), (std::vector<std::string>{literal}));
  }
  EXPECT_EQ(resolver->stats().queries, 0u);
}

// Invalid options are refused at construction with a message naming what is wrong.
TEST_F(ResolverTest, InvalidOptionsThrow) {
  const auto message = [this](ResolverOptions options) -> std::string {
    try {
      Resolver resolver(base_, std::move(options));
    } catch (const std::invalid_argument& e) {
      return e.what();
    }
    return "";
  };
  ResolverOptions bad_server;
  bad_server.servers = {"127.0.0.1", "10.0.0.300:53"};
  EXPECT_NE(message(bad_server).find("10.0.0.300:53"), std::string::npos) << message(bad_server);
  ResolverOptions bad_port;
  bad_port.servers = {"[::1]:99999"};
  EXPECT_NE(message(bad_port).find("port"), std::string::npos);
  ResolverOptions bad_timeout = optionsFor("127.0.0.1");
  bad_timeout.timeout = 0ms;
  EXPECT_NE(message(bad_timeout).find("timeout"), std::string::npos);
  ResolverOptions bad_ttls = optionsFor("127.0.0.1");
  bad_ttls.min_ttl = 10s;
  bad_ttls.max_ttl = 5s;
  EXPECT_NE(message(bad_ttls).find("max_ttl"), std::string::npos);
  ResolverOptions bad_pending = optionsFor("127.0.0.1");
  bad_pending.max_pending = 0;
  EXPECT_NE(message(bad_pending).find("max_pending"), std::string::npos);
}

// ---- resolv.conf: servers on loopback port 53 (c-ares 1.18 reads no port from resolv.conf), each
// test on addresses of its own in 127.0.53.0/24 so that ctest -j runs them side by side ----

class ResolvConfTest : public ResolverTest {
 protected:
  void SetUp() override {
    ResolverTest::SetUp();
    char templ[] = "/tmp/acr-dns-resolvconf-XXXXXX";
    ASSERT_NE(mkdtemp(templ), nullptr);
    dir_ = templ;
    path_ = dir_ + "/resolv.conf";
  }
  void TearDown() override {
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
    ResolverTest::TearDown();
  }

  // Starts `dnsmasq` on address:53, or says why not (not root, port taken) so the test can skip.
  static bool startOn53(Dnsmasq& dnsmasq, const std::string& address,
                        const std::vector<std::string>& records, std::string& error) {
    return dnsmasq.start(address, 53, records, error);
  }

  ResolverOptions options() const {
    ResolverOptions options;
    options.resolv_conf_path = path_;
    options.timeout = 5000ms;
    options.min_ttl = 0s;  // the records have TTL 0: nothing is cached, every ask is a query
    return options;
  }

  std::string dir_;
  std::string path_;
};

// Rewriting resolv.conf to name another server switches the answers without a new Resolver.
TEST_F(ResolvConfTest, ChangedFileSwitchesServers) {
  Dnsmasq a;
  Dnsmasq b;
  std::string error;
  if (!startOn53(a, "127.0.53.2", {"--host-record=switch.test,192.0.2.102"}, error) ||
      !startOn53(b, "127.0.53.3", {"--host-record=switch.test,192.0.2.103"}, error)) {
    GTEST_SKIP() << "needs dnsmasq on 127.0.53.2:53 and 127.0.53.3:53: " << error;
  }
  replaceFile(path_, "nameserver 127.0.53.2\n");
  auto resolver = makeResolver(options());

  const auto before = resolveNow(*resolver, "switch.test");
  ASSERT_TRUE(before);
  EXPECT_EQ(texts(*before), (std::vector<std::string>{"192.0.2.102"}));
  replaceFile(path_, "nameserver 127.0.53.3\n");
  runFor(base_, 1100ms);  // the file is looked at no more than once per second
  const auto after = resolveNow(*resolver, "switch.test");
  ASSERT_TRUE(after);
  EXPECT_EQ(texts(*after), (std::vector<std::string>{"192.0.2.103"}));
  EXPECT_EQ(resolver->stats().channel_resets, 1u);
  EXPECT_EQ(a.countQueries("A", "switch.test"), 1);
  EXPECT_EQ(b.countQueries("A", "switch.test"), 1);
}

// A resolution in flight to a dead server is started again on the new channel and succeeds
// well before its deadline.
TEST_F(ResolvConfTest, InFlightResolutionMovesToTheNewServer) {
  FakeDnsServer dead(
      base_, [](std::string_view) { return std::nullopt; }, "127.0.53.4", 53);
  Dnsmasq b;
  std::string error;
  if (!dead.ok() ||
      !startOn53(b, "127.0.53.5",
                 {"--host-record=switch.test,192.0.2.103", "--host-record=other.test,192.0.2.104"},
                 error)) {
    GTEST_SKIP() << "needs 127.0.53.4:53 and 127.0.53.5:53: " << error;
  }
  replaceFile(path_, "nameserver 127.0.53.4\n");
  auto resolver = makeResolver(options());

  std::optional<DnsAnswer> moved;
  const auto started = Clock::now();
  resolver->resolve("switch.test", [&moved](const DnsAnswer& answer) { moved = answer; });
  replaceFile(path_, "nameserver 127.0.53.5\n");
  runFor(base_, 1100ms);
  EXPECT_FALSE(moved);
  const auto other = resolveNow(*resolver, "other.test");  // notices the file, renews the channel
  runUntil(
      base_, [&moved] { return moved.has_value(); }, 3s);
  ASSERT_TRUE(moved);
  EXPECT_EQ(moved->status, DnsStatus::kOk);
  EXPECT_EQ(texts(*moved), (std::vector<std::string>{"192.0.2.103"}));
  EXPECT_LT(Clock::now() - started, 3s);
  ASSERT_TRUE(other);
  EXPECT_EQ(texts(*other), (std::vector<std::string>{"192.0.2.104"}));
  EXPECT_EQ(resolver->stats().channel_resets, 1u);
  EXPECT_EQ(resolver->stats().queries, 3u);  // switch.test twice, other.test once
}

// The search list of resolv.conf is not applied: a single label is looked up as it is.
TEST_F(ResolvConfTest, SearchDomainsAreNotApplied) {
  Dnsmasq a;
  std::string error;
  if (!startOn53(a, "127.0.53.6", {"--local=/test/", "--host-record=switch.test,192.0.2.102"},
                 error)) {
    GTEST_SKIP() << "needs dnsmasq on 127.0.53.6:53: " << error;
  }
  replaceFile(path_, "search test\nnameserver 127.0.53.6\n");
  auto resolver = makeResolver(options());

  const auto answer = resolveNow(*resolver, "switch");
  ASSERT_TRUE(answer);
  EXPECT_NE(answer->status, DnsStatus::kOk);
  EXPECT_GE(a.countQueries("A", "switch"), 1);  // REFUSED: c-ares asks again (tries)
  EXPECT_EQ(a.countQueries("A", "switch.test"), 0);
}

// A resolv.conf that appears only after start (no network yet: THREATS F3) is picked up.
TEST_F(ResolvConfTest, FileCreatedLaterIsUsed) {
  Dnsmasq a;
  std::string error;
  if (!startOn53(a, "127.0.53.7", {"--host-record=switch.test,192.0.2.102"}, error)) {
    GTEST_SKIP() << "needs dnsmasq on 127.0.53.7:53: " << error;
  }
  auto resolver = makeResolver(options());  // the file does not exist yet
  replaceFile(path_, "nameserver 127.0.53.7\n");
  runFor(base_, 1100ms);
  const auto answer = resolveNow(*resolver, "switch.test");
  ASSERT_TRUE(answer);
  EXPECT_EQ(texts(*answer), (std::vector<std::string>{"192.0.2.102"}));
  EXPECT_EQ(resolver->stats().channel_resets, 1u);
}

// With resolv.conf the hosts file is honoured; c-ares answers it from inside ares_getaddrinfo,
// yet the callback still runs from the loop, after resolve() returned a ticket.
TEST_F(ResolvConfTest, HostsFileAnswerArrivesFromTheLoop) {
  replaceFile(path_, "nameserver 127.0.53.8\n");
  auto resolver = makeResolver(options());

  std::optional<DnsAnswer> answer;
  const uint64_t ticket =
      resolver->resolve("localhost", [&answer](const DnsAnswer& result) { answer = result; });
  EXPECT_NE(ticket, 0u);
  EXPECT_FALSE(answer);
  runUntil(
      base_, [&answer] { return answer.has_value(); }, 1s);
  ASSERT_TRUE(answer);
  EXPECT_EQ(answer->status, DnsStatus::kOk);
  const std::vector<std::string> addresses = texts(*answer);
  EXPECT_TRUE(std::find(addresses.begin(), addresses.end(), "127.0.0.1") != addresses.end() ||
              std::find(addresses.begin(), addresses.end(), "::1") != addresses.end());
}

// ---- malformed replies (THREATS F4): each ends cleanly, in time, and leaks nothing ----

// A reply to `query` with the given flags and counts, echoing its id and question, then `rest`.
std::string reply(std::string_view query, uint16_t flags, uint16_t answers, std::string_view rest) {
  std::string out(query.substr(0, 2));
  out += {static_cast<char>(flags >> 8),
          static_cast<char>(flags & 0xff),
          0x00,
          0x01,
          static_cast<char>(answers >> 8),
          static_cast<char>(answers & 0xff),
          0x00,
          0x00,
          0x00,
          0x00};
  out.append(query.substr(12));
  out.append(rest);
  return out;
}

struct BadReplyCase {
  const char* name;
  FakeDnsServer::Responder responder;
  DnsStatus expected;
};

// gtest prints a case by its name (ctest's test names would otherwise hold raw bytes).
void PrintTo(const BadReplyCase& c, std::ostream* out) { *out << c.name; }

class BadReplyTest : public ResolverTest, public ::testing::WithParamInterface<BadReplyCase> {};

TEST_P(BadReplyTest, EndsCleanly) {
  FakeDnsServer server(base_, GetParam().responder);
  ASSERT_TRUE(server.ok());
  ResolverOptions options = optionsFor(server.server());
  options.timeout = 1000ms;
  auto resolver = makeResolver(options);

  const auto started = Clock::now();
  const auto answer = resolveNow(*resolver, "bad.test", 3s);
  ASSERT_TRUE(answer);
  EXPECT_EQ(answer->status, GetParam().expected) << dnsStatusName(answer->status);
  EXPECT_LE(Clock::now() - started, 1500ms);
  EXPECT_EQ(resolver->cacheSize(), 0u);
}

constexpr uint16_t kResponse = 0x8180;  // QR, RD, RA, NOERROR

INSTANTIATE_TEST_SUITE_P(
    Replies, BadReplyTest,
    ::testing::Values(
        // A 0-byte datagram (CVE-2023-32067) is not an answer: the query runs into its timeout.
        BadReplyCase{"empty", [](std::string_view) { return std::string(); }, DnsStatus::kTimeout},
        BadReplyCase{"shorter_than_a_header",
                     [](std::string_view) { return std::string("\x12\x34\x81", 3); },
                     DnsStatus::kTimeout},
        BadReplyCase{"wrong_id",
                     [](std::string_view query) {
                       std::string out = reply(query, kResponse, 0, "");
                       out[1] = static_cast<char>(out[1] ^ 0x5a);
                       return out;
                     },
                     DnsStatus::kTimeout},
        BadReplyCase{"servfail", [](std::string_view query) { return reply(query, 0x8182, 0, ""); },
                     DnsStatus::kFailure},
        // TC=1 makes c-ares retry over TCP, where nothing listens.
        BadReplyCase{"truncated_without_tcp",
                     [](std::string_view query) { return reply(query, 0x8380, 0, ""); },
                     DnsStatus::kFailure},
        // An answer whose owner name is a compression pointer to itself.
        BadReplyCase{"compression_loop",
                     [](std::string_view query) {
                       const auto self = static_cast<char>(query.size());
                       return reply(query, kResponse, 1,
                                    std::string{'\xc0', self, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, '\xc0',
                                                0, 2, 1});
                     },
                     DnsStatus::kFailure},
        // Claims 65535 answers and carries none.
        BadReplyCase{"huge_answer_count",
                     [](std::string_view query) { return reply(query, kResponse, 0xffff, ""); },
                     DnsStatus::kFailure}),
    [](const ::testing::TestParamInfo<BadReplyCase>& param_info) { return param_info.param.name; });

// A CNAME loop (THREATS F4): the name is an alias of itself (owner and target both point at the
// question's name). c-ares does not follow it around: the lookup ends at once as a name without
// addresses (cached like any other such answer, for its clamped TTL).
TEST_F(ResolverTest, CnameLoopEndsAtOnceWithoutAddresses) {
  FakeDnsServer server(base_, [](std::string_view query) {
    return reply(query, kResponse, 1,
                 std::string{'\xc0', 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 2, '\xc0', 12});
  });
  ASSERT_TRUE(server.ok());
  ResolverOptions options = optionsFor(server.server());
  options.timeout = 1000ms;
  auto resolver = makeResolver(options);
  const auto started = Clock::now();
  const auto answer = resolveNow(*resolver, "bad.test", 3s);
  ASSERT_TRUE(answer);
  EXPECT_EQ(answer->status, DnsStatus::kNoAddresses) << dnsStatusName(answer->status);
  EXPECT_LE(Clock::now() - started, 1500ms);
}

// ---- first family (RFC 8305 §3) ----

// QTYPE of a query (1 = A, 28 = AAAA), 0 if it does not parse.
uint16_t queryType(std::string_view query) {
  size_t i = 12;
  while (i < query.size() && query[i] != 0) {
    i += 1 + static_cast<uint8_t>(query[i]);
  }
  if (i + 3 > query.size()) {
    return 0;
  }
  return static_cast<uint16_t>(static_cast<uint8_t>(query[i + 1]) << 8 |
                               static_cast<uint8_t>(query[i + 2]));
}

// A reply with 192.0.2.1 to an A query and 2001:db8::1 to an AAAA query, TTL 60.
std::optional<std::string> dualStackReply(std::string_view query) {
  const uint16_t type = queryType(query);
  if (type == 1) {
    return reply(query, kResponse, 1,
                 std::string{'\xc0', 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, '\xc0', 0, 2, 1});
  }
  if (type == 28) {
    std::string rest{'\xc0', 12, 0, 28, 0, 1, 0, 0, 0, 60, 0, 16, 0x20, 0x01, 0x0d, '\xb8'};
    rest.append(11, '\0');
    rest.push_back(1);
    return reply(query, kResponse, 1, rest);
  }
  return reply(query, 0x8182, 0, "");
}

// The A answer arrives 400 ms before the AAAA answer: first_family gets the IPv4 address as soon
// as it is known, then the callback the whole answer, which alone is cached.
TEST_F(ResolverTest, FirstFamilyArrivesBeforeTheWholeAnswer) {
  FakeDnsServer server(base_, dualStackReply);
  ASSERT_TRUE(server.ok());
  server.setDelay([](std::string_view query) { return queryType(query) == 28 ? 400ms : 0ms; });
  auto resolver = makeResolver(optionsFor(server.server()));

  const auto started = Clock::now();
  std::optional<DnsAnswer> first;
  std::optional<DnsAnswer> whole;
  Clock::time_point first_at;
  Clock::time_point whole_at;
  int plain_calls = 0;
  resolver->resolve(
      "dual.test",
      [&](const DnsAnswer& answer) {
        whole = answer;
        whole_at = Clock::now();
      },
      [&](const DnsAnswer& answer) {
        EXPECT_FALSE(whole) << "first_family after the whole answer";
        first = answer;
        first_at = Clock::now();
      });
  resolver->resolve("dual.test", [&](const DnsAnswer&) { ++plain_calls; });  // no first_family
  runUntil(
      base_, [&] { return whole.has_value(); }, 3s);
  ASSERT_TRUE(first);
  ASSERT_TRUE(whole);
  EXPECT_EQ(first->status, DnsStatus::kOk);
  EXPECT_EQ(texts(*first), (std::vector<std::string>{"192.0.2.1"}));
  EXPECT_EQ(first->ttl, 0s);
  EXPECT_LT(first_at - started, 300ms);
  EXPECT_GE(whole_at - started, 350ms);
  EXPECT_EQ(whole->status, DnsStatus::kOk);
  EXPECT_EQ(texts(*whole), (std::vector<std::string>{"192.0.2.1", "2001:db8::1"}));
  EXPECT_EQ(whole->addresses.front().toString(), "2001:db8::1");  // IPv6 first
  EXPECT_EQ(plain_calls, 1);
  EXPECT_EQ(resolver->stats().queries, 1u);

  const auto cached = resolveNow(*resolver, "dual.test");
  ASSERT_TRUE(cached);
  EXPECT_TRUE(cached->from_cache);
  EXPECT_EQ(texts(*cached), (std::vector<std::string>{"192.0.2.1", "2001:db8::1"}));
}

// A cancelled waiter hears neither its first family nor the whole answer.
TEST_F(ResolverTest, CancelledWaiterHearsNoFirstFamily) {
  FakeDnsServer server(base_, dualStackReply);
  ASSERT_TRUE(server.ok());
  server.setDelay([](std::string_view query) { return queryType(query) == 28 ? 200ms : 0ms; });
  auto resolver = makeResolver(optionsFor(server.server()));
  int calls = 0;
  const uint64_t ticket = resolver->resolve(
      "dual.test", [&](const DnsAnswer&) { ++calls; }, [&](const DnsAnswer&) { ++calls; });
  ASSERT_NE(ticket, 0u);
  resolver->cancel(ticket);
  const auto other = resolveNow(*resolver, "dual.test");
  ASSERT_TRUE(other);
  EXPECT_EQ(calls, 0);
}

// AAAA never answers: at the resolution deadline the A half is delivered (usable), but not
// cached, since it is not the whole answer.
TEST_F(ResolverTest, DeadlineWithOneFamilyDeliversItUncached) {
  FakeDnsServer server(base_, [](std::string_view query) -> std::optional<std::string> {
    if (queryType(query) == 28) {
      return std::nullopt;
    }
    return dualStackReply(query);
  });
  ASSERT_TRUE(server.ok());
  ResolverOptions options = optionsFor(server.server());
  options.timeout = 500ms;
  auto resolver = makeResolver(options);
  const auto answer = resolveNow(*resolver, "dual.test", 2s);
  ASSERT_TRUE(answer);
  EXPECT_EQ(answer->status, DnsStatus::kOk);
  EXPECT_EQ(texts(*answer), (std::vector<std::string>{"192.0.2.1"}));
  EXPECT_EQ(resolver->cacheSize(), 0u);
}

TEST(DnsStatusTest, NamesAreStable) {
  EXPECT_EQ(dnsStatusName(DnsStatus::kOk), "ok");
  EXPECT_EQ(dnsStatusName(DnsStatus::kNxDomain), "nxdomain");
  EXPECT_EQ(dnsStatusName(DnsStatus::kNoAddresses), "no_addresses");
  EXPECT_EQ(dnsStatusName(DnsStatus::kTimeout), "timeout");
  EXPECT_EQ(dnsStatusName(DnsStatus::kFailure), "failure");
  EXPECT_EQ(dnsStatusName(DnsStatus::kCancelled), "cancelled");
}

}  // namespace
}  // namespace acr
