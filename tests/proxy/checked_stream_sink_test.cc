#include "proxy/checked_stream_sink.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <spdlog/logger.h>
#include <unistd.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

namespace acr {
namespace {

struct Captured {
  std::vector<std::string> messages;
  CheckedStreamSink::Report report() {
    return [this](const std::string& message) { messages.push_back(message); };
  }
};

// Every line written to /dev/full is counted as lost; the first failure is reported at once with
// the errno text, and later ones only after the report interval.
TEST(CheckedStreamSinkTest, FullDeviceCountsLostLinesAndReportsOnce) {
  const int fd = ::open("/dev/full", O_WRONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  Captured captured;
  auto sink = std::make_shared<CheckedStreamSink>(fd, captured.report(), std::chrono::hours(1));
  spdlog::logger logger("test", sink);
  logger.set_pattern("%v");
  for (int i = 0; i < 5; ++i) {
    logger.info("line {}", i);
  }
  EXPECT_EQ(sink->lostLines(), 5u);
  ASSERT_EQ(captured.messages.size(), 1u);
  EXPECT_EQ(
      captured.messages[0],
      "access log write failed (No space left on device); still serving; 1 lines lost so far");
  ::close(fd);
}

// With a zero interval every failed line is reported, with the running count.
TEST(CheckedStreamSinkTest, ReportsAgainAfterTheInterval) {
  const int fd = ::open("/dev/full", O_WRONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  Captured captured;
  auto sink = std::make_shared<CheckedStreamSink>(fd, captured.report(), std::chrono::seconds(0));
  spdlog::logger logger("test", sink);
  logger.info("a");
  logger.info("b");
  ASSERT_EQ(captured.messages.size(), 2u);
  EXPECT_NE(captured.messages[1].find("2 lines lost so far"), std::string::npos);
  ::close(fd);
}

// Lines reach a working descriptor byte-exact; after a failure, the first line written again
// is preceded by a "writable again" report naming the lost count.
TEST(CheckedStreamSinkTest, RecoveryIsReportedAndLinesArriveIntact) {
  int pipe_fds[2];
  ASSERT_EQ(::pipe2(pipe_fds, O_CLOEXEC), 0);
  const int full = ::open("/dev/full", O_WRONLY | O_CLOEXEC);
  ASSERT_GE(full, 0);
  const int target = ::dup(full);  // the sink's descriptor: /dev/full first, then the pipe
  ASSERT_GE(target, 0);
  Captured captured;
  auto sink = std::make_shared<CheckedStreamSink>(target, captured.report());
  spdlog::logger logger("test", sink);
  logger.set_pattern("%v");
  logger.info("lost");
  ASSERT_EQ(::dup2(pipe_fds[1], target), target);
  logger.info("kept");
  char buffer[64] = {};
  ASSERT_EQ(::read(pipe_fds[0], buffer, sizeof(buffer)), 5);
  EXPECT_EQ(std::string(buffer, 5), "kept\n");
  ASSERT_EQ(captured.messages.size(), 2u);
  EXPECT_EQ(captured.messages[1], "access log writable again; 1 lines lost so far");
  EXPECT_EQ(sink->lostLines(), 1u);
  for (int fd : {pipe_fds[0], pipe_fds[1], full, target}) {
    ::close(fd);
  }
}

}  // namespace
}  // namespace acr
