#include "proxy/connection_limits.h"

#include <gtest/gtest.h>

#include <thread>
#include <vector>

namespace acr {
namespace {

IpAddress ip(std::string_view text) { return *IpAddress::parse(text); }

ProxySettings settingsWith(size_t all, size_t per_client, size_t per_listener) {
  ProxySettings settings;
  settings.max_connections = all;
  settings.max_connections_per_client = per_client;
  settings.max_connections_per_listener = per_listener;
  return settings;
}

// Each limit refuses with its own reason and value, the narrowest first, and a refusal takes
// nothing: the counts stay those of the admitted connections.
TEST(ConnectionLimitsTest, RefusesWithTheReasonOfTheLimitReached) {
  std::atomic<uint64_t> active{0};
  ConnectionLimits limits(2, 16, active);
  const ProxySettings settings = settingsWith(4, 2, 3);
  std::vector<ConnectionSlot> held;
  for (int i = 0; i < 2; ++i) {
    held.push_back(limits.admit(0, ip("192.0.2.1"), settings).slot);
  }
  ConnectionLimits::Admission refused = limits.admit(0, ip("192.0.2.1"), settings);
  EXPECT_FALSE(refused.slot.held());
  EXPECT_EQ(refused.refusal, CloseReason::kClientOverloaded);
  EXPECT_EQ(refused.limit, 2u);

  held.push_back(limits.admit(0, ip("192.0.2.2"), settings).slot);
  refused = limits.admit(0, ip("192.0.2.3"), settings);
  EXPECT_EQ(refused.refusal, CloseReason::kListenerOverloaded);
  EXPECT_EQ(refused.limit, 3u);

  held.push_back(limits.admit(1, ip("192.0.2.3"), settings).slot);  // listener 1 has room
  refused = limits.admit(1, ip("192.0.2.4"), settings);
  EXPECT_EQ(refused.refusal, CloseReason::kOverloaded);
  EXPECT_EQ(refused.limit, 4u);

  for (const ConnectionSlot& slot : held) {
    EXPECT_TRUE(slot.held());
  }
  EXPECT_EQ(active.load(), 4u);
  EXPECT_EQ(limits.listenerCount(0), 3u);
  EXPECT_EQ(limits.listenerCount(1), 1u);
  EXPECT_EQ(limits.clientCount(ip("192.0.2.1")), 2u);
  EXPECT_EQ(limits.clientCount(ip("192.0.2.4")), 0u);
  EXPECT_EQ(limits.clients(), 3u);
}

// 0 turns the per-client and per-listener limits off; the global one still holds.
TEST(ConnectionLimitsTest, ZeroIsOff) {
  std::atomic<uint64_t> active{0};
  ConnectionLimits limits(1, 16, active);
  const ProxySettings settings = settingsWith(5, 0, 0);
  std::vector<ConnectionSlot> held;
  for (int i = 0; i < 5; ++i) {
    ConnectionLimits::Admission admission = limits.admit(0, ip("2001:db8::1"), settings);
    ASSERT_TRUE(admission.slot.held());
    held.push_back(std::move(admission.slot));
  }
  EXPECT_EQ(limits.admit(0, ip("2001:db8::1"), settings).refusal, CloseReason::kOverloaded);
}

// A slot is given back exactly once: release() then the destructor, a move, a move-assignment
// over a held slot; afterwards every count is back to 0 and a refused client is admitted again.
TEST(ConnectionLimitsTest, ReleasesExactlyOnce) {
  std::atomic<uint64_t> active{0};
  ConnectionLimits limits(1, 16, active);
  const ProxySettings settings = settingsWith(10, 1, 0);
  {
    ConnectionSlot first = limits.admit(0, ip("192.0.2.1"), settings).slot;
    EXPECT_FALSE(limits.admit(0, ip("::ffff:192.0.2.1"), settings).slot.held());
    first.release();
    first.release();
    EXPECT_EQ(active.load(), 0u);
    ConnectionSlot second = limits.admit(0, ip("192.0.2.1"), settings).slot;
    ConnectionSlot moved(std::move(second));
    EXPECT_FALSE(second.held());  // NOLINT(bugprone-use-after-move): the contract under test
    ConnectionSlot other = limits.admit(0, ip("192.0.2.2"), settings).slot;
    EXPECT_EQ(active.load(), 2u);
    other = std::move(moved);  // releases 192.0.2.2's slot, takes 192.0.2.1's
    EXPECT_EQ(active.load(), 1u);
    EXPECT_EQ(limits.clientCount(ip("192.0.2.2")), 0u);
    EXPECT_EQ(limits.clientCount(ip("192.0.2.1")), 1u);
  }
  EXPECT_EQ(active.load(), 0u);
  EXPECT_EQ(limits.listenerCount(0), 0u);
  EXPECT_EQ(limits.clients(), 0u);
}

// Four threads admitting and releasing at once from 8 clients (as the workers do) never exceed
// a limit and leave every count at 0.
TEST(ConnectionLimitsTest, ConcurrentAdmissionsBalance) {
  std::atomic<uint64_t> active{0};
  ConnectionLimits limits(2, 16, active);
  const ProxySettings settings = settingsWith(40, 6, 30);
  std::atomic<bool> exceeded{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::vector<ConnectionSlot> held;
      for (int i = 0; i < 20'000; ++i) {
        const IpAddress client = IpAddress::v4(0xc0000201u + static_cast<uint32_t>(i % 8));
        ConnectionLimits::Admission admission = limits.admit(i % 2, client, settings);
        // Client counts are exact; the others may show, for a moment, one tentative count per
        // thread being refused.
        if (active.load() > 40 + 4 || limits.listenerCount(i % 2) > 30 + 4 ||
            limits.clientCount(client) > 6) {
          exceeded = true;
        }
        if (admission.slot.held()) {
          held.push_back(std::move(admission.slot));
        }
        if (held.size() > static_cast<size_t>(5 + t) || (i % 7 == 0 && !held.empty())) {
          held.erase(held.begin());
        }
      }
    });
  }
  for (std::thread& thread : threads) {
    thread.join();
  }
  EXPECT_FALSE(exceeded.load());
  EXPECT_EQ(active.load(), 0u);
  EXPECT_EQ(limits.listenerCount(0), 0u);
  EXPECT_EQ(limits.listenerCount(1), 0u);
  EXPECT_EQ(limits.clients(), 0u);
}

}  // namespace
}  // namespace acr
