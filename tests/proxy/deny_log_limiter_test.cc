#include "proxy/deny_log_limiter.h"

#include <gtest/gtest.h>

namespace acr {
namespace {

using std::chrono::milliseconds;

// Within one second at most `rate` refusals are admitted; the rest are counted, reported once by
// takeSuppressed, and the next second admits `rate` again.
TEST(DenyLogLimiterTest, AdmitsRatePerSecondAndCountsTheRest) {
  DenyLogLimiter limiter(3);
  const auto start = DenyLogLimiter::Clock::now();
  int admitted = 0;
  for (int i = 0; i < 10; ++i) {
    admitted += limiter.admit(start + milliseconds(i * 10)) ? 1 : 0;
  }
  EXPECT_EQ(admitted, 3);
  EXPECT_EQ(limiter.takeSuppressed(), 7u);
  EXPECT_EQ(limiter.takeSuppressed(), 0u);
  EXPECT_FALSE(limiter.admit(start + milliseconds(999)));
  EXPECT_TRUE(limiter.admit(start + milliseconds(1000)));
  EXPECT_TRUE(limiter.admit(start + milliseconds(1001)));
  EXPECT_TRUE(limiter.admit(start + milliseconds(1002)));
  EXPECT_FALSE(limiter.admit(start + milliseconds(1003)));
  EXPECT_EQ(limiter.takeSuppressed(), 2u);
}

// Rate 0 means no cap.
TEST(DenyLogLimiterTest, ZeroRateAdmitsEverything) {
  DenyLogLimiter limiter(0);
  const auto now = DenyLogLimiter::Clock::now();
  for (int i = 0; i < 100000; ++i) {
    ASSERT_TRUE(limiter.admit(now));
  }
  EXPECT_EQ(limiter.takeSuppressed(), 0u);
}

// A reload's new rate (log.deny_rate) applies from the next refusal, within the same second.
TEST(DenyLogLimiterTest, SetRateAppliesAtOnce) {
  DenyLogLimiter limiter(1);
  const auto start = DenyLogLimiter::Clock::now();
  EXPECT_TRUE(limiter.admit(start));
  EXPECT_FALSE(limiter.admit(start + milliseconds(1)));
  limiter.setRate(3);
  EXPECT_EQ(limiter.rate(), 3u);
  EXPECT_TRUE(limiter.admit(start + milliseconds(2)));
  EXPECT_TRUE(limiter.admit(start + milliseconds(3)));
  EXPECT_FALSE(limiter.admit(start + milliseconds(4)));
  limiter.setRate(0);
  EXPECT_TRUE(limiter.admit(start + milliseconds(5)));
  EXPECT_EQ(limiter.takeSuppressed(), 2u);
}

}  // namespace
}  // namespace acr
