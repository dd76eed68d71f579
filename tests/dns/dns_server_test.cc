#include "dns/dns_server.h"

#include <gtest/gtest.h>

#include <string>

namespace acr {
namespace {

struct ServerCase {
  const char* text;
  const char* expected;  // toString() of the parse, or null when it must be rejected
};

// Every accepted spelling, and the near misses that must be refused.
TEST(DnsServerTest, ParsesTheAcceptedSpellings) {
  const ServerCase cases[] = {
      {"127.0.0.1", "127.0.0.1:53"},
      {"127.0.0.1:5353", "127.0.0.1:5353"},
      {"::1", "[::1]:53"},
      {"[::1]", "[::1]:53"},
      {"[2001:db8::53]:5300", "[2001:db8::53]:5300"},
      {"10.0.0.1:65535", "10.0.0.1:65535"},
      {"", nullptr},
      {"localhost", nullptr},
      {"127.0.0.1:", nullptr},
      {"127.0.0.1:0", nullptr},
      {"127.0.0.1:053", nullptr},
      {"127.0.0.1:65536", nullptr},
      {"127.0.0.1:53x", nullptr},
      {"[127.0.0.1]:53", nullptr},
      {"[::1", nullptr},
      {"[::1]53", nullptr},
      {"::1:53:", nullptr},
      {"300.0.0.1", nullptr},
  };
  for (const ServerCase& c : cases) {
    std::string error;
    const std::optional<DnsServer> server = DnsServer::parse(c.text, &error);
    if (c.expected == nullptr) {
      EXPECT_FALSE(server) << c.text;
      EXPECT_FALSE(error.empty()) << c.text;
    } else {
      ASSERT_TRUE(server) << c.text << ": " << error;
      EXPECT_EQ(server->toString(), c.expected);
    }
  }
}

}  // namespace
}  // namespace acr
