#include "proxy/access_log.h"

#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

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

}  // namespace
}  // namespace acr
