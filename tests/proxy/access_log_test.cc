#include "proxy/access_log.h"

#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <cctype>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <sstream>

namespace acr {
namespace {

// Writes `record` in one format and returns the line.
std::string lineOf(const AccessRecord& record, bool json) {
  std::ostringstream out;
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_st>(out);
  auto logger = std::make_shared<spdlog::logger>("access_log_test", sink);
  logger->set_pattern("%v");
  AccessLog(logger, json).write(record);
  return out.str();
}

AccessRecord grouped(std::string_view group) {
  AccessRecord r;
  r.listener = "connect";
  r.client = "10.20.1.2:40000";
  r.target = "buildreg.azurecr.io";
  r.port = 443;
  r.allowed = true;
  r.reason = "host_allowed";
  r.closed_by = "client";
  r.phase = "relay";
  r.group = group;
  return r;
}

// A grouped connection's line names its group in both formats (escaped in text like every other
// field); a connection of the top-level policy has no group field at all.
TEST(AccessLogTest, NamesTheClientGroup) {
  const std::string json = lineOf(grouped("build"), true);
  EXPECT_NE(json.find(R"("client":"10.20.1.2:40000","group":"build","target")"), std::string::npos)
      << json;
  const std::string text = lineOf(grouped("build"), false);
  EXPECT_NE(text.find(" phase=relay group=build "), std::string::npos) << text;
  const std::string odd = lineOf(grouped("a b"), false);
  EXPECT_EQ(odd.find("group=a b"), std::string::npos) << odd;
  const std::string top_json = lineOf(grouped(""), true);
  EXPECT_EQ(top_json.find("\"group\""), std::string::npos) << top_json;
  const std::string top_text = lineOf(grouped(""), false);
  EXPECT_EQ(top_text.find("group="), std::string::npos) << top_text;
}

// Every field a relaying tunnel keeps survives packing: texts of any length and bytes (NUL, quotes,
// control bytes), none or several attempts; the fields only the end sets come back empty.
TEST(PackedAccessRecordTest, UnpacksWhatWasPacked) {
  AccessRecord r = grouped("build");
  r.target = std::string("evil\0\"\n.example", 15);
  r.original_dst = "192.0.2.7:443";
  r.dialled = "[2001:db8::1]:443";
  r.rule = "*.azurecr.io";
  r.sentence = std::string(70'000, 's');
  r.would_deny = true;
  r.ech = true;
  r.incomplete = true;
  r.dns_ms = 1.5;
  r.connect_ms = 2.25;
  r.decision_ms = 3.125;
  r.group_series = 7;
  r.port = 8443;
  for (const std::vector<std::string>& attempts :
       {std::vector<std::string>{}, {"192.0.2.1:443 refused", "", "[2001:db8::1]:443 connected"}}) {
    r.attempts = attempts;
    r.bytes_up = 10;
    r.bytes_down = 20;
    r.total_ms = 9;
    // unpack(), and unpackInto() a record used before (Connection::finish reuses one per loop):
    // every field is overwritten, none carries over from the last line.
    AccessRecord reused = grouped("other");
    reused.attempts = {"a", "b", "c", "d", "e"};
    reused.original_dst = reused.dialled = reused.rule = reused.sentence = "old";
    reused.bytes_up = reused.bytes_down = 99;
    reused.total_ms = reused.dns_ms = reused.connect_ms = reused.decision_ms = 99;
    reused.allowed = !r.allowed;
    reused.would_deny = reused.ech = reused.incomplete = false;
    reused.group_series = 1;
    reused.port = 1;
    PackedAccessRecord(r).unpackInto(reused);
    for (const AccessRecord& u : {PackedAccessRecord(r).unpack(), reused}) {
      EXPECT_EQ(u.listener, r.listener);
      EXPECT_EQ(u.client, r.client);
      EXPECT_EQ(u.target, r.target);
      EXPECT_EQ(u.port, r.port);
      EXPECT_EQ(u.original_dst, r.original_dst);
      EXPECT_EQ(u.dialled, r.dialled);
      EXPECT_EQ(u.attempts, r.attempts);
      EXPECT_EQ(u.allowed, r.allowed);
      EXPECT_EQ(u.incomplete, r.incomplete);
      EXPECT_EQ(u.would_deny, r.would_deny);
      EXPECT_EQ(u.reason, r.reason);
      EXPECT_EQ(u.rule, r.rule);
      EXPECT_EQ(u.sentence, r.sentence);
      EXPECT_EQ(u.dns_ms, r.dns_ms);
      EXPECT_EQ(u.connect_ms, r.connect_ms);
      EXPECT_EQ(u.decision_ms, r.decision_ms);
      EXPECT_EQ(u.ech, r.ech);
      EXPECT_EQ(u.group, r.group);
      EXPECT_EQ(u.group_series, r.group_series);
      // Set only by the end of the connection.
      EXPECT_EQ(u.bytes_up, 0u);
      EXPECT_EQ(u.bytes_down, 0u);
      EXPECT_EQ(u.total_ms, 0);
      EXPECT_TRUE(u.closed_by.empty());
      EXPECT_TRUE(u.phase.empty());
    }
  }
  // A default (never packed) record unpacks to a default record.
  const AccessRecord empty = PackedAccessRecord().unpack();
  EXPECT_TRUE(empty.client.empty() && empty.sentence.empty() && empty.attempts.empty());
  EXPECT_FALSE(empty.allowed);
}

// The time is "YYYY-MM-DDTHH:MM:SS.mmmZ" (the part up to the seconds cached per second) and the
// millisecond fields are what printf's "%.3f" writes, in both formats.
TEST(AccessLogTest, FormatsTimeAndMillisecondsAsPrintf) {
  // "2026-12-06T04:20:31.123Z": digits where the shape has '9', the rest literally.
  const auto is_time = [](std::string_view text) {
    constexpr std::string_view kShape = "9999-99-99T99:99:99.999Z";
    if (text.size() != kShape.size()) {
      return false;
    }
    for (size_t i = 0; i < kShape.size(); ++i) {
      if (kShape[i] == '9' ? !std::isdigit(static_cast<unsigned char>(text[i]))
                           : text[i] != kShape[i]) {
        return false;
      }
    }
    return true;
  };
  std::mt19937 random(3);
  AccessRecord r = grouped("");
  for (int i = 0; i < 3000; ++i) {
    // Halfway cases: an odd multiple of 2^-k is exactly halfway between two thousandths when
    // 1000 * 2^-k leaves .5 (k = 4: 62.5), and printf rounds those to even.
    const double halfway = static_cast<double>(2 * (random() % 1000000) + 1) / 16;
    const double values[] = {
        0.0005,   0.0015,
        2.5e-4,   1e9 + 0.0625,
        123.4565, static_cast<double>(random()) / (1 + random() % 100000),
        halfway,  std::ldexp(static_cast<double>(random()), -(static_cast<int>(random() % 60))),
        -0.0,     1e15 - 0.0625,
        1e15,     std::nextafter(1e15, 0.0)};
    r.total_ms = values[i % std::size(values)];
    r.dns_ms = r.total_ms / 3;
    r.bytes_up = random();
    const std::string json = lineOf(r, true);
    ASSERT_TRUE(json.starts_with(R"({"time":")") && is_time(std::string_view(json).substr(9, 24)) &&
                json.substr(33, 2) == "\",")
        << json;
    char expected[128];
    std::snprintf(expected, sizeof(expected), R"("dns_ms":%.3f,)", r.dns_ms);
    ASSERT_NE(json.find(expected), std::string::npos) << json;
    std::snprintf(expected, sizeof(expected), R"("total_ms":%.3f,)", r.total_ms);
    ASSERT_NE(json.find(expected), std::string::npos) << json;
    ASSERT_NE(json.find("\"bytes_up\":" + std::to_string(r.bytes_up) + ","), std::string::npos);
    if (i % 100 == 0) {
      const std::string text = lineOf(r, false);
      ASSERT_TRUE(is_time(std::string_view(text).substr(0, 24)) &&
                  text.substr(24, 9) == " connect ")
          << text;
      ASSERT_NE(text.find(" up=" + std::to_string(r.bytes_up) + " "), std::string::npos) << text;
    }
  }
}

// A JSON line is written into memory sized beforehand for the worst case: every text byte escaped
// to six, the largest numbers. Fields made only of bytes written as \u00HH (the bound exactly)
// and the largest doubles come out whole and printable (AddressSanitizer sees a write past the
// memory sized for the line).
TEST(AccessLogTest, WorstCaseJsonLineIsWrittenWhole) {
  std::string every_byte;  // every byte written as \u00HH
  for (int b = 0; b < 256; ++b) {
    if (b < 0x20 || b >= 0x7f) {
      every_byte += static_cast<char>(b);
    }
  }
  const std::string escaped = [&] {
    std::string out;
    AccessLog::appendJsonString(out, every_byte);
    return out;
  }();
  ASSERT_EQ(escaped.size(), 6 * every_byte.size() + 2);
  AccessRecord r = grouped(every_byte);
  r.client = r.target = r.original_dst = r.dialled = r.rule = r.sentence = every_byte;
  r.listener = r.reason = r.closed_by = r.phase = every_byte;
  r.attempts.assign(8, every_byte);
  r.allowed = r.would_deny = r.ech = true;
  r.bytes_up = r.bytes_down = UINT64_MAX;
  r.dns_ms = DBL_MAX;
  r.connect_ms = 1e300;
  r.total_ms = DBL_MAX;
  const std::string line = lineOf(r, true);
  ASSERT_FALSE(line.empty());
  EXPECT_EQ(line.back(), '\n');
  for (size_t i = 0; i + 1 < line.size(); ++i) {
    ASSERT_TRUE(line[i] >= 0x20 && line[i] < 0x7f) << i;
  }
  for (const char* key : {"listener", "client", "group", "target", "original_dst", "dialled",
                          "reason", "rule", "message", "closed_by", "phase"}) {
    EXPECT_NE(line.find("\"" + std::string(key) + "\":" + escaped), std::string::npos) << key;
  }
  std::string attempts = "\"attempts\":[" + escaped;
  for (int i = 1; i < 8; ++i) {
    attempts += "," + escaped;
  }
  EXPECT_NE(line.find(attempts + "]"), std::string::npos);
  char expected[2048];
  std::snprintf(expected, sizeof(expected),
                R"("bytes_up":%llu,"bytes_down":%llu,"dns_ms":%.3f,"connect_ms":%.3f,)"
                R"("total_ms":%.3f,)",
                static_cast<unsigned long long>(UINT64_MAX),
                static_cast<unsigned long long>(UINT64_MAX), DBL_MAX, 1e300, DBL_MAX);
  EXPECT_NE(line.find(expected), std::string::npos);
  EXPECT_TRUE(line.ends_with(R"(,"ech":true})"
                             "\n"))
      << line.substr(line.size() - 40);
}

}  // namespace
}  // namespace acr
