#include "proxy/checked_stream_sink.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <spdlog/logger.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <memory>
#include <string>
#include <thread>
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
    logger.flush();  // one batch per line
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
  logger.flush();
  logger.info("b");
  logger.flush();
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
  logger.flush();
  ASSERT_EQ(::dup2(pipe_fds[1], target), target);
  logger.info("kept");
  logger.flush();
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

// Lines logged in a burst share write(2) calls: on a SOCK_SEQPACKET socket each write is one
// message, so the messages received count the writes. 2,000 lines from two threads arrive
// complete and in order per thread, in far fewer writes than lines.
TEST(CheckedStreamSinkTest, BurstsShareWritesAndKeepEveryLine) {
  int fds[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds), 0);
  int buffer_size = 4 * 1024 * 1024;
  ::setsockopt(fds[1], SOL_SOCKET, SO_SNDBUF, &buffer_size, sizeof(buffer_size));
  ::setsockopt(fds[0], SOL_SOCKET, SO_RCVBUF, &buffer_size, sizeof(buffer_size));
  Captured captured;
  auto sink = std::make_shared<CheckedStreamSink>(fds[1], captured.report());
  auto logger = std::make_shared<spdlog::logger>("test", sink);
  logger->set_pattern("%v");
  auto burst = [&](char thread) {
    for (int i = 0; i < 1000; ++i) {
      logger->info("{}{:04d}", thread, i);
    }
  };
  std::thread a(burst, 'a');
  std::thread b(burst, 'b');
  a.join();
  b.join();
  logger->flush();
  std::string received;
  int writes = 0;
  std::vector<char> message(4 * 1024 * 1024);
  while (true) {
    pollfd readable{fds[0], POLLIN, 0};
    if (::poll(&readable, 1, 0) != 1) {
      break;
    }
    const ssize_t n = ::recv(fds[0], message.data(), message.size(), 0);
    ASSERT_GT(n, 0);
    received.append(message.data(), static_cast<size_t>(n));
    ++writes;
  }
  EXPECT_EQ(received.size(), 2000u * 6);
  size_t next_a = 0;
  size_t next_b = 0;
  for (size_t at = 0; at + 6 <= received.size(); at += 6) {
    const std::string line = received.substr(at, 6);
    ASSERT_EQ(line[5], '\n') << at;
    char expected[8];
    size_t& next = line[0] == 'a' ? next_a : next_b;
    std::snprintf(expected, sizeof(expected), "%c%04zu\n", line[0], next++);
    ASSERT_EQ(line, expected);
  }
  EXPECT_EQ(next_a, 1000u);
  EXPECT_EQ(next_b, 1000u);
  EXPECT_LT(writes, 200) << "one write(2) per line would be 2000";
  EXPECT_EQ(sink->lostLines(), 0u);
  ::close(fds[0]);
  ::close(fds[1]);
}

// Without a flush, a line reaches the descriptor within the batching window (20 ms; 5 s allowed).
TEST(CheckedStreamSinkTest, LineArrivesWithoutFlush) {
  int pipe_fds[2];
  ASSERT_EQ(::pipe2(pipe_fds, O_CLOEXEC), 0);
  Captured captured;
  auto sink = std::make_shared<CheckedStreamSink>(pipe_fds[1], captured.report());
  spdlog::logger logger("test", sink);
  logger.set_pattern("%v");
  // Let the writer thread go to sleep first: the line must wake it.
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  logger.info("soon");
  pollfd readable{pipe_fds[0], POLLIN, 0};
  ASSERT_EQ(::poll(&readable, 1, 5000), 1);
  char buffer[16] = {};
  ASSERT_EQ(::read(pipe_fds[0], buffer, sizeof(buffer)), 5);
  EXPECT_EQ(std::string(buffer, 5), "soon\n");
  ::close(pipe_fds[0]);
  ::close(pipe_fds[1]);
}

// A reader that stops reading never blocks the logging thread: once the queue holds max_queued
// bytes, lines are dropped and counted, and reported once the writer gets through again.
TEST(CheckedStreamSinkTest, StalledReaderDropsAndCountsInsteadOfBlocking) {
  int pipe_fds[2];
  ASSERT_EQ(::pipe2(pipe_fds, O_CLOEXEC), 0);
  Captured captured;
  CheckedStreamSink::Batching batching;
  batching.max_queued = 4096;
  auto sink = std::make_shared<CheckedStreamSink>(pipe_fds[1], captured.report(),
                                                  std::chrono::seconds(0), batching);
  spdlog::logger logger("test", sink);
  logger.set_pattern("%v");
  const std::string line(99, 'x');  // 100 bytes with the newline
  // The pipe holds 64 KiB, the queue 4 KiB: 2,000 lines (200 KB) cannot all be kept.
  for (int i = 0; i < 2000; ++i) {
    logger.info(line);
  }
  EXPECT_GT(sink->lostLines(), 0u);
  // Drain the pipe (bounded) so the writer finishes; the destructor flushes the rest.
  std::thread reader([&] {
    char buffer[65536];
    for (int i = 0; i < 10000; ++i) {
      pollfd readable{pipe_fds[0], POLLIN, 0};
      if (::poll(&readable, 1, 500) != 1) {
        break;
      }
      if (::read(pipe_fds[0], buffer, sizeof(buffer)) <= 0) {
        break;
      }
    }
  });
  sink.reset();
  logger.sinks().clear();
  reader.join();
  ASSERT_FALSE(captured.messages.empty());
  EXPECT_NE(captured.messages[0].find("access log queue full"), std::string::npos)
      << captured.messages[0];
  ::close(pipe_fds[0]);
  ::close(pipe_fds[1]);
}

}  // namespace
}  // namespace acr
