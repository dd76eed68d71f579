#include "proxy/happy_eyeballs_dialer.h"

#include <event2/event.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "proxy/own_upstreams.h"
#include "proxy/socket_options.h"

namespace acr {
namespace {

using namespace std::chrono_literals;

std::vector<IpAddress> addresses(const std::vector<std::string>& texts) {
  std::vector<IpAddress> out;
  for (const std::string& text : texts) {
    out.push_back(*IpAddress::parse(text));
  }
  return out;
}

std::vector<std::string> texts(const std::vector<IpAddress>& list) {
  std::vector<std::string> out;
  for (const IpAddress& address : list) {
    out.push_back(address.toString());
  }
  return out;
}

struct OrderCase {
  const char* name;
  std::vector<std::string> given;
  bool first_v6;
  std::vector<std::string> expected;
};

// The families alternate, IPv6 first, each keeping the resolver's order; a family that runs out
// leaves the rest of the other in order.
TEST(HappyEyeballsOrderTest, AlternatesFamiliesKeepingOrderWithin) {
  const std::vector<OrderCase> cases = {
      {"empty", {}, true, {}},
      {"v4_only", {"192.0.2.2", "192.0.2.1"}, true, {"192.0.2.2", "192.0.2.1"}},
      {"v6_only", {"2001:db8::2", "2001:db8::1"}, true, {"2001:db8::2", "2001:db8::1"}},
      {"v4_listed_first",
       {"192.0.2.1", "192.0.2.2", "2001:db8::1", "2001:db8::2"},
       true,
       {"2001:db8::1", "192.0.2.1", "2001:db8::2", "192.0.2.2"}},
      {"more_v4",
       {"2001:db8::1", "192.0.2.1", "192.0.2.2", "192.0.2.3"},
       true,
       {"2001:db8::1", "192.0.2.1", "192.0.2.2", "192.0.2.3"}},
      {"more_v6",
       {"2001:db8::3", "2001:db8::1", "2001:db8::2", "192.0.2.9"},
       true,
       {"2001:db8::3", "192.0.2.9", "2001:db8::1", "2001:db8::2"}},
      {"ipv4_first_when_asked",
       {"2001:db8::1", "192.0.2.1", "2001:db8::2"},
       false,
       {"192.0.2.1", "2001:db8::1", "2001:db8::2"}},
  };
  for (const OrderCase& c : cases) {
    EXPECT_EQ(texts(happyEyeballsOrder(addresses(c.given), c.first_v6)), c.expected) << c.name;
  }
}

// Outcome names are stable: the access log and the metric labels use them.
TEST(HappyEyeballsOrderTest, OutcomeNamesAreStable) {
  EXPECT_EQ(attemptOutcomeName(AttemptOutcome::kConnected), "connected");
  EXPECT_EQ(attemptOutcomeName(AttemptOutcome::kRefused), "refused");
  EXPECT_EQ(attemptOutcomeName(AttemptOutcome::kUnreachable), "unreachable");
  EXPECT_EQ(attemptOutcomeName(AttemptOutcome::kTimeout), "timeout");
  EXPECT_EQ(attemptOutcomeName(AttemptOutcome::kCancelled), "cancelled");
  EXPECT_EQ(attemptOutcomeName(AttemptOutcome::kError), "error");
  const DialAttempt attempt{toSocketAddress(*IpAddress::parse("2001:db8::1"), 443),
                            AttemptOutcome::kTimeout, 0};
  EXPECT_EQ(attempt.toString(), "[2001:db8::1]:443 timeout");
}

class HappyEyeballsDialerTest : public ::testing::Test {
 protected:
  void SetUp() override { base_ = event_base_new(); }
  void TearDown() override {
    if (listener_ >= 0) {
      close(listener_);
    }
    event_base_free(base_);
  }

  // A listener on 127.0.0.1 and a port on which nothing listens on [::1] (skips without IPv6).
  uint16_t listenV4Only() {
    listener_ = socket(AF_INET, SOCK_STREAM, 0);
    // Port 0 (any free port) is for bind() only: no configured address may name it.
    const SocketAddress any = SocketAddress::from(*IpAddress::parse("127.0.0.1"), 0);
    EXPECT_EQ(bind(listener_, any.get(), any.length), 0);
    EXPECT_EQ(listen(listener_, 8), 0);
    return localAddress(listener_)->port();
  }

  // Runs the loop until the dial ended (bounded); returns its result.
  std::optional<DialResult> run(std::optional<DialResult>& result) {
    for (int i = 0; i < 500 && !result; ++i) {
      event_base_loop(base_, EVLOOP_ONCE);
    }
    return std::move(result);
  }

  event_base* base_ = nullptr;
  int listener_ = -1;
};

// A refused IPv6 attempt moves on to IPv4 at once (long before a 5 s delay); the winner's local
// endpoint stays registered for the receiver, every attempt is on record.
TEST_F(HappyEyeballsDialerTest, RefusedMovesOnAtOnceAndWinnerIsHandedOver) {
  const int probe = socket(AF_INET6, SOCK_STREAM, 0);
  const SocketAddress loopback6 = SocketAddress::from(*IpAddress::parse("::1"), 0);
  if (probe < 0 || bind(probe, loopback6.get(), loopback6.length) != 0) {
    close(probe);
    GTEST_SKIP() << "no IPv6 loopback";
  }
  close(probe);
  const uint16_t port = listenV4Only();
  OwnUpstreams own;
  DialOptions options;
  options.port = port;
  options.attempt_delay = 5000ms;
  options.deadline = std::chrono::steady_clock::now() + 10s;
  options.own_upstreams = &own;
  std::optional<DialResult> result;
  HappyEyeballsDialer dialer(base_, options, [&](DialResult r) { result = std::move(r); });
  const auto started = std::chrono::steady_clock::now();
  dialer.add(addresses({"127.0.0.1", "::1"}), false);
  std::optional<DialResult> done = run(result);
  ASSERT_TRUE(done);
  EXPECT_LT(std::chrono::steady_clock::now() - started, 2s);
  ASSERT_NE(done->upstream, nullptr);
  ASSERT_TRUE(done->local);
  EXPECT_TRUE(own.contains(*done->local, *done->endpoint));
  EXPECT_EQ(done->endpoint->toString(), "127.0.0.1:" + std::to_string(port));
  ASSERT_EQ(dialer.attempts().size(), 2u);
  EXPECT_EQ(dialer.attempts()[0].toString(), "[::1]:" + std::to_string(port) + " refused");
  EXPECT_EQ(dialer.attempts()[1].toString(), "127.0.0.1:" + std::to_string(port) + " connected");
  EXPECT_TRUE(dialer.finished());
  EXPECT_TRUE(own.hasLocal(*done->local));  // the loop guard's first, cheap question
  own.remove(*done->local, *done->endpoint);
  EXPECT_FALSE(own.hasLocal(*done->local));
  done->upstream.reset();  // closes it
}

// Every address refused: the dial fails with ECONNREFUSED, nothing stays registered.
TEST_F(HappyEyeballsDialerTest, AllRefusedFails) {
  const uint16_t port = listenV4Only();
  close(listener_);
  listener_ = -1;
  OwnUpstreams own;
  DialOptions options;
  options.port = port;
  options.deadline = std::chrono::steady_clock::now() + 10s;
  options.own_upstreams = &own;
  std::optional<DialResult> result;
  HappyEyeballsDialer dialer(base_, options, [&](DialResult r) { result = std::move(r); });
  dialer.add(addresses({"127.0.0.1"}), false);
  std::optional<DialResult> done = run(result);
  ASSERT_TRUE(done);
  EXPECT_EQ(done->upstream, nullptr);
  EXPECT_EQ(done->error, ECONNREFUSED);
  EXPECT_FALSE(done->timed_out);
  ASSERT_EQ(dialer.attempts().size(), 1u);
  EXPECT_EQ(dialer.attempts()[0].outcome, AttemptOutcome::kRefused);
}

// Addresses already attempted are not dialled twice when the full answer repeats them, and a
// dial waiting for more addresses does not fail while more are coming.
TEST_F(HappyEyeballsDialerTest, WaitsForMoreAndSkipsRepeats) {
  const uint16_t port = listenV4Only();
  DialOptions options;
  options.port = port;
  options.deadline = std::chrono::steady_clock::now() + 10s;
  std::optional<DialResult> result;
  HappyEyeballsDialer dialer(base_, options, [&](DialResult r) { result = std::move(r); });
  dialer.add({}, true);
  event_base_loop(base_, EVLOOP_NONBLOCK);
  EXPECT_FALSE(result);
  dialer.add(addresses({"127.0.0.1"}), true);
  std::optional<DialResult> done = run(result);
  ASSERT_TRUE(done);
  ASSERT_NE(done->upstream, nullptr);
  dialer.add(addresses({"127.0.0.1"}), false);  // finished: ignored
  EXPECT_EQ(dialer.attempts().size(), 1u);
  done->upstream.reset();  // closes it
}

}  // namespace
}  // namespace acr
