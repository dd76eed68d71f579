#include "proxy/stream.h"

#include <event2/event.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <string>
#include <vector>

#include "tests/proxy/loopback_pair.h"

namespace acr {
namespace {

using Clock = std::chrono::steady_clock;

// Records every edge a stream hands it.
struct Recorder : Stream::Handler {
  std::vector<short> edges;
  void onStreamEvent(Stream&, short what) override { edges.push_back(what); }
};

// A connected TCP pair on 127.0.0.1: `ours` non-blocking (the stream's), `peer` blocking.
class StreamTest : public ::testing::Test {
 protected:
  void SetUp() override {
    base_ = event_base_new();
    ASSERT_NE(base_, nullptr);
    const LoopbackPair pair = connectedLoopbackPair();
    peer_ = pair.peer;
    ours_ = pair.ours;
    ASSERT_GE(ours_, 0);
  }
  void TearDown() override {
    if (peer_ >= 0) {
      close(peer_);
    }
    event_base_free(base_);
  }

  // Runs the loop until `done` holds, at most 2 s.
  template <typename Done>
  bool runUntil(Done done) {
    const auto deadline = Clock::now() + std::chrono::seconds(2);
    while (!done() && Clock::now() < deadline) {
      const timeval tick{0, 10'000};
      event_base_loopexit(base_, &tick);
      event_base_dispatch(base_);
    }
    return done();
  }

  void sendAll(const std::string& bytes) {
    ASSERT_EQ(send(peer_, bytes.data(), bytes.size(), 0), static_cast<ssize_t>(bytes.size()));
  }

  event_base* base_ = nullptr;
  int ours_ = -1;
  int peer_ = -1;
};

// Reads stop at the limit with the readiness kept (no new edge would come for those bytes); a
// read shorter than asked ends it (the read after it, when the edge may have been an error's);
// the FIN is reported once its edge came, then eof() holds.
TEST_F(StreamTest, ReadsToTheLimitKeepsReadinessAndReportsTheFin) {
  Recorder recorder;
  Stream stream(base_, ours_);
  ASSERT_TRUE(stream.open(&recorder));
  const std::string bytes(10'000, 'x');
  sendAll(bytes);
  ASSERT_TRUE(runUntil([&] { return stream.readable(); }));
  ASSERT_TRUE(runUntil([&] {  // all 10,000 bytes queued at our end
    int queued = 0;
    return ioctl(ours_, FIONREAD, &queued) == 0 && queued == 10'000;
  }));
  EXPECT_EQ(stream.readToInput(4'000), Stream::ReadEnd::kLimit);
  EXPECT_EQ(stream.inputLength(), 4'000u);
  EXPECT_TRUE(stream.readable());
  EXPECT_EQ(stream.readToInput(64 * 1024), Stream::ReadEnd::kDrained);
  EXPECT_EQ(stream.inputLength(), 10'000u);
  EXPECT_FALSE(stream.readable());
  EXPECT_FALSE(stream.eof());

  shutdown(peer_, SHUT_WR);
  ASSERT_TRUE(runUntil([&] { return stream.finSeen(); }));
  EXPECT_EQ(stream.readToInput(64 * 1024), Stream::ReadEnd::kEof);
  EXPECT_TRUE(stream.eof());
  EXPECT_FALSE(stream.readable());
  EXPECT_EQ(stream.readToInput(64 * 1024), Stream::ReadEnd::kEof);  // and stays there
  EXPECT_EQ(stream.inputLength(), 10'000u);
  EXPECT_FALSE(recorder.edges.empty());
}

// What the socket does not take is queued and written, byte-exact and in order, after the
// write edge that follows the peer's reading.
TEST_F(StreamTest, QueuesWhatTheSocketDoesNotTakeAndFlushesItInOrder) {
  Recorder recorder;
  Stream stream(base_, ours_);
  ASSERT_TRUE(stream.open(&recorder));
  ASSERT_TRUE(runUntil([&] { return stream.writable(); }));
  std::string sent;
  for (int i = 0; sent.size() < 32 * 1024 * 1024; ++i) {
    sent += std::to_string(i) + ",";
  }
  ASSERT_TRUE(stream.write(sent.data(), sent.size()));
  ASSERT_GT(stream.outputLength(), 0u);
  EXPECT_FALSE(stream.writable());

  std::string received;
  const auto deadline = Clock::now() + std::chrono::seconds(20);
  while (received.size() < sent.size() && Clock::now() < deadline) {
    pollfd readable{peer_, POLLIN, 0};
    if (poll(&readable, 1, 10) == 1) {
      char buffer[65536];
      const ssize_t n = recv(peer_, buffer, sizeof(buffer), 0);
      ASSERT_GT(n, 0);
      received.append(buffer, static_cast<size_t>(n));
    }
    const timeval tick{0, 0};
    event_base_loopexit(base_, &tick);
    event_base_dispatch(base_);
    if (stream.writable()) {
      ASSERT_TRUE(stream.flush());
    }
  }
  EXPECT_EQ(stream.outputLength(), 0u) << "edges " << recorder.edges.size() << " writable "
                                       << stream.writable() << " err " << stream.error();
  EXPECT_TRUE(received == sent) << received.size() << " of " << sent.size() << " bytes";
}

// A new handler receives the edges from then on (the relay taking a socket over), the old one
// none; with none set the edges are still recorded.
TEST_F(StreamTest, EdgesGoToTheCurrentHandler) {
  Recorder first;
  Recorder second;
  Stream stream(base_, ours_);
  ASSERT_TRUE(stream.open(&first));
  ASSERT_TRUE(runUntil([&] { return !first.edges.empty(); }));  // writable at registration
  stream.setHandler(nullptr);
  sendAll("a");
  ASSERT_TRUE(runUntil([&] { return stream.readable(); }));
  const size_t first_count = first.edges.size();
  stream.setHandler(&second);
  EXPECT_EQ(stream.readToInput(16), Stream::ReadEnd::kDrained);
  sendAll("b");
  ASSERT_TRUE(runUntil([&] { return !second.edges.empty(); }));
  EXPECT_NE(second.edges.back() & EV_READ, 0);
  EXPECT_EQ(first.edges.size(), first_count);
  stream.activate(EV_READ);  // an edge seen before, handed on again on the loop's next pass
  const size_t before = second.edges.size();
  ASSERT_TRUE(runUntil([&] { return second.edges.size() > before; }));
}

// A reset that arrives right behind the peer's last bytes comes on the same edge, which libevent
// reports as plain read and write readiness (EPOLLERR drops EV_CLOSED) and no later edge repeats:
// the read after the bytes must find the reset, not take the short read as "drained".
TEST_F(StreamTest, AResetBehindTheLastBytesIsReadOnTheSameEdge) {
  Recorder recorder;
  Stream stream(base_, ours_);
  ASSERT_TRUE(stream.open(&recorder));
  sendAll("hello");
  const linger reset_on_close{1, 0};
  ASSERT_EQ(setsockopt(peer_, SOL_SOCKET, SO_LINGER, &reset_on_close, sizeof(reset_on_close)), 0);
  close(peer_);  // loopback: bytes and reset are both in our socket before the loop runs
  peer_ = -1;
  ASSERT_TRUE(runUntil([&] { return !recorder.edges.empty(); }));
  EXPECT_EQ(recorder.edges.front() & (EV_READ | EV_WRITE | EV_CLOSED), EV_READ | EV_WRITE)
      << "one edge, an error's";
  EXPECT_EQ(stream.readToInput(4096), Stream::ReadEnd::kError);
  EXPECT_EQ(stream.error(), ECONNRESET);
  EXPECT_EQ(stream.inputLength(), 5u);  // the bytes before the reset are kept
}

// Which short reads end the readiness: after an edge of read and write readiness alone (an
// error's shape) the first one does not, the next does; an activate() handing the edge on again
// keeps that; a read that returned EAGAIN has told; after the FIN's edge none does (the next
// read returns the FIN). The bytes are read here with recv(2), as the relay does.
TEST_F(StreamTest, AShortReadEndsReadinessOnlyWhenNoErrorOrFinMayWait) {
  Recorder recorder;
  Stream stream(base_, ours_);
  ASSERT_TRUE(stream.open(&recorder));
  char buffer[16];
  sendAll("hello");
  ASSERT_TRUE(runUntil([&] { return stream.readable(); }));
  ASSERT_EQ(recorder.edges.back() & (EV_READ | EV_WRITE | EV_CLOSED), EV_READ | EV_WRITE);
  EXPECT_EQ(recv(ours_, buffer, sizeof(buffer), 0), 5);
  EXPECT_FALSE(stream.shortReadDrained()) << "the edge may have been an error's";
  EXPECT_TRUE(stream.readable());
  EXPECT_TRUE(stream.shortReadDrained());
  EXPECT_FALSE(stream.readable());

  sendAll("more");
  ASSERT_TRUE(runUntil([&] { return stream.readable(); }));
  EXPECT_EQ(recv(ours_, buffer, sizeof(buffer), 0), 4);
  const size_t edges = recorder.edges.size();
  stream.activate(EV_READ);
  ASSERT_TRUE(runUntil([&] { return recorder.edges.size() > edges; }));
  EXPECT_FALSE(stream.shortReadDrained()) << "activate() cleared what the edge said";
  EXPECT_TRUE(stream.shortReadDrained());

  sendAll("again");
  ASSERT_TRUE(runUntil([&] { return stream.readable(); }));
  EXPECT_EQ(recv(ours_, buffer, sizeof(buffer), 0), 5);
  EXPECT_EQ(recv(ours_, buffer, sizeof(buffer), 0), -1);
  EXPECT_EQ(errno, EAGAIN);
  stream.setReadable(false);
  EXPECT_TRUE(stream.shortReadDrained()) << "the EAGAIN has told already";

  ASSERT_EQ(shutdown(peer_, SHUT_WR), 0);
  ASSERT_TRUE(runUntil([&] { return stream.finSeen(); }));
  EXPECT_FALSE(stream.shortReadDrained());
  EXPECT_FALSE(stream.shortReadDrained()) << "a FIN waits: the next read returns it";
  EXPECT_EQ(stream.readToInput(4096), Stream::ReadEnd::kEof);
  EXPECT_EQ(stream.inputLength(), 0u);
}

// close(true) resets the connection; close(false) sends a FIN after the bytes before it.
TEST_F(StreamTest, ClosesWithAResetOrAFin) {
  {
    Stream stream(base_, ours_);
    ASSERT_TRUE(stream.open(nullptr));
    stream.close(true);
    EXPECT_FALSE(stream.isOpen());
    stream.close(true);  // idempotent
  }
  char byte = 0;
  errno = 0;
  EXPECT_EQ(recv(peer_, &byte, 1, 0), -1);
  EXPECT_EQ(errno, ECONNRESET);
}

TEST_F(StreamTest, CloseWithoutResetSendsTheBytesThenAFin) {
  Stream stream(base_, ours_);
  ASSERT_TRUE(stream.open(nullptr));
  ASSERT_TRUE(runUntil([&] { return stream.writable(); }));
  ASSERT_TRUE(stream.write("bye", 3));
  stream.close(false);
  char buffer[8];
  std::string got;
  for (int i = 0; i < 10; ++i) {
    const ssize_t n = recv(peer_, buffer, sizeof(buffer), 0);
    if (n <= 0) {
      EXPECT_EQ(n, 0);  // the FIN, not a reset
      break;
    }
    got.append(buffer, static_cast<size_t>(n));
  }
  EXPECT_EQ(got, "bye");
}

}  // namespace
}  // namespace acr
