#include "proxy/relay.h"

#include <event2/event.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "proxy/pipe_pool.h"
#include "proxy/proxy_context.h"
#include "proxy/stream.h"
#include "tests/proxy/loopback_pair.h"

namespace acr {
namespace {

using Clock = std::chrono::steady_clock;
constexpr size_t kKiB = 1024;
constexpr size_t kMiB = 1024 * kKiB;

// Byte `i` of a test stream: no period a misplaced or repeated 64 KiB chunk could hide in.
uint8_t patternByte(uint64_t i, uint8_t seed) {
  return static_cast<uint8_t>(((i * 2654435761u) >> 11) ^ (i >> 16) ^ seed);
}

// Writes `bytes` of pattern `seed` to blocking `fd`, then shuts its write side (a FIN).
void writePattern(int fd, size_t bytes, uint8_t seed) {
  // Larger than one read, so that a read finds 64 KiB waiting and the direction turns bulk
  // however fast the relay keeps up; not a multiple of the relay's reads.
  std::vector<uint8_t> chunk(200 * kKiB);
  for (size_t sent = 0; sent < bytes;) {
    const size_t n = std::min(chunk.size(), bytes - sent);
    for (size_t i = 0; i < n; ++i) {
      chunk[i] = patternByte(sent + i, seed);
    }
    for (size_t done = 0; done < n;) {
      const ssize_t w = send(fd, chunk.data() + done, n - done, MSG_NOSIGNAL);
      if (w <= 0) {
        return;
      }
      done += static_cast<size_t>(w);
    }
    sent += n;
  }
  shutdown(fd, SHUT_WR);
}

// What a reader saw: bytes until EOF, and whether they all matched pattern `seed`.
struct ReadResult {
  size_t bytes = 0;
  bool matched = true;
  bool eof = false;
};

ReadResult readPattern(int fd, uint8_t seed) {
  ReadResult result;
  std::vector<uint8_t> chunk(100 * kKiB);
  for (;;) {
    const ssize_t n = recv(fd, chunk.data(), chunk.size(), 0);
    if (n <= 0) {
      result.eof = n == 0;
      return result;
    }
    for (ssize_t i = 0; i < n; ++i) {
      if (chunk[i] != patternByte(result.bytes + i, seed)) {
        result.matched = false;
      }
    }
    result.bytes += static_cast<size_t>(n);
  }
}

struct EndRecorder : Relay::Observer {
  bool ended = false;
  bool reset = false;
  std::string closed_by;
  void onRelayEnded(std::string_view by, bool was_reset) override {
    ended = true;
    reset = was_reset;
    closed_by = by;
  }
};

// client peer <-> [client Stream | Relay | upstream Stream] <-> upstream peer, each pair a real
// TCP connection on 127.0.0.1; the peers are blocking sockets driven by threads, the relay runs
// on this thread's loop.
class RelayTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { std::signal(SIGPIPE, SIG_IGN); }  // as ProxyServer does

  void SetUp() override {
    base_ = event_base_new();
    ASSERT_NE(base_, nullptr);
    const LoopbackPair client = connectedLoopbackPair();
    const LoopbackPair upstream = connectedLoopbackPair();
    client_peer_ = client.peer;
    upstream_peer_ = upstream.peer;
    ASSERT_GE(client.ours, 0);
    ASSERT_GE(upstream.ours, 0);
    client_ = std::make_unique<Stream>(base_, client.ours);
    upstream_ = std::make_unique<Stream>(base_, upstream.ours);
    ASSERT_TRUE(client_->open(nullptr));
    ASSERT_TRUE(upstream_->open(nullptr));
  }
  void TearDown() override {
    relay_.reset();
    client_.reset();
    upstream_.reset();
    for (int fd : {client_peer_, upstream_peer_}) {
      if (fd >= 0) {
        close(fd);
      }
    }
    event_base_free(base_);
  }

  void startRelay(PipePool& pipes, size_t max_buffer_memory = 64 * kMiB) {
    relay_.emplace(*client_, *upstream_, stats_, max_buffer_memory, pipes, ended_);
    relay_->start();
  }

  // Runs the loop until `done` holds or 20 s pass.
  template <typename Done>
  bool runUntil(Done done) {
    const auto deadline = Clock::now() + std::chrono::seconds(20);
    const timeval tick{0, 10'000};
    while (!done()) {
      if (Clock::now() > deadline) {
        return false;
      }
      event_base_loopexit(base_, &tick);
      event_base_loop(base_, EVLOOP_ONCE);
    }
    return true;
  }

  // Both ways at once: `up` bytes client -> upstream and `down` bytes upstream -> client, each
  // peer closing its write side when done; runs until the relay has passed both FINs.
  void exchange(size_t up, size_t down, ReadResult& got_up, ReadResult& got_down) {
    std::thread client_writer(writePattern, client_peer_, up, uint8_t{1});
    std::thread upstream_writer(writePattern, upstream_peer_, down, uint8_t{2});
    std::thread upstream_reader([&] { got_up = readPattern(upstream_peer_, 1); });
    std::thread client_reader([&] { got_down = readPattern(client_peer_, 2); });
    EXPECT_TRUE(runUntil([&] { return ended_.ended; }));
    relay_->stop();
    client_->close(false);
    upstream_->close(false);
    for (std::thread* t : {&client_writer, &upstream_writer, &upstream_reader, &client_reader}) {
      t->join();
    }
  }

  event_base* base_ = nullptr;
  int client_peer_ = -1;
  int upstream_peer_ = -1;
  std::unique_ptr<Stream> client_;
  std::unique_ptr<Stream> upstream_;
  ProxyStats stats_;
  EndRecorder ended_;
  std::optional<Relay> relay_;
};

TEST_F(RelayTest, BulkBothWaysIsSplicedByteExactAndGivesEveryPipeBack) {
  PipePool pipes;
  startRelay(pipes);
  ReadResult up, down;
  exchange(8 * kMiB, 16 * kMiB, up, down);
  EXPECT_EQ(up.bytes, 8 * kMiB);
  EXPECT_TRUE(up.matched);
  EXPECT_TRUE(up.eof);
  EXPECT_EQ(down.bytes, 16 * kMiB);
  EXPECT_TRUE(down.matched);
  EXPECT_TRUE(down.eof);
  EXPECT_FALSE(ended_.reset);
  EXPECT_EQ(relay_->bytesUp(), 8 * kMiB);
  EXPECT_EQ(relay_->bytesDown(), 16 * kMiB);
  // Only the reads before a direction turned bulk were copied: at least one full 64 KiB read
  // each, a few more while the peers' first bytes trickled in.
  EXPECT_GE(stats_.bytes_spliced.load(), 24 * kMiB - 2 * kMiB);
  EXPECT_EQ(stats_.relay_buffered.load(), 0);
  // Every pipe came back, and the pool keeps at most its spares open.
  EXPECT_EQ(pipes.open(), pipes.spare());
  EXPECT_LE(pipes.open(), PipePool::kSparePipes);
  EXPECT_GE(pipes.open(), 1u);
}

TEST_F(RelayTest, SmallExchangeNeverSplices) {
  PipePool pipes;
  startRelay(pipes);
  ReadResult up, down;
  exchange(517, 1024, up, down);  // a ClientHello's size, a small answer
  EXPECT_EQ(up.bytes, 517u);
  EXPECT_EQ(down.bytes, 1024u);
  EXPECT_TRUE(up.matched && down.matched && up.eof && down.eof);
  EXPECT_EQ(stats_.bytes_spliced.load(), 0u);
  EXPECT_EQ(pipes.open(), 0u);  // no pipe was ever made
}

TEST_F(RelayTest, WithoutPipesBulkIsCopiedByteExact) {
  PipePool pipes(0);  // at its limit from the start: what EMFILE or a low descriptor limit gives
  startRelay(pipes);
  ReadResult up, down;
  exchange(4 * kMiB, 8 * kMiB, up, down);
  EXPECT_EQ(up.bytes, 4 * kMiB);
  EXPECT_EQ(down.bytes, 8 * kMiB);
  EXPECT_TRUE(up.matched && down.matched && up.eof && down.eof);
  EXPECT_EQ(stats_.bytes_spliced.load(), 0u);
  EXPECT_EQ(pipes.open(), 0u);
}

TEST_F(RelayTest, HalfCloseWaitsForThePipedBytesThenTheOtherWayGoesOn) {
  // The upstream sends 4 MiB and its FIN while the client keeps sending: the client gets every
  // byte before the FIN, and its own bytes still reach the upstream after it.
  PipePool pipes;
  startRelay(pipes);
  std::thread upstream_writer(writePattern, upstream_peer_, 4 * kMiB, uint8_t{2});
  ReadResult down;
  std::atomic<bool> down_done{false};
  std::thread client_reader([&] {
    down = readPattern(client_peer_, 2);
    down_done = true;
  });
  const bool got_fin = runUntil([&] { return down_done.load(); });
  if (!got_fin) {
    client_->close(true);  // unblocks the reader
  }
  client_reader.join();
  ASSERT_TRUE(got_fin);
  upstream_writer.join();
  EXPECT_EQ(down.bytes, 4 * kMiB);
  EXPECT_TRUE(down.matched);
  EXPECT_FALSE(ended_.ended);  // half open: the client's direction still runs
  EXPECT_EQ(relay_->closedBy(), "upstream");
  ReadResult up;
  std::thread upstream_reader([&] { up = readPattern(upstream_peer_, 1); });
  std::thread client_writer(writePattern, client_peer_, 2 * kMiB, uint8_t{1});
  EXPECT_TRUE(runUntil([&] { return ended_.ended; }));
  relay_->stop();
  upstream_->close(false);
  client_writer.join();
  upstream_reader.join();
  EXPECT_EQ(up.bytes, 2 * kMiB);
  EXPECT_TRUE(up.matched && up.eof);
  EXPECT_FALSE(ended_.reset);
  EXPECT_GT(stats_.bytes_spliced.load(), 0u);
}

TEST_F(RelayTest, StalledReaderHoldsOneReadInThePipeAndStopDiscardsIt) {
  // The client reads nothing: the upstream's bytes fill the client's socket buffers, then one
  // read waits in the pipe (counted as buffered, at most 64 KiB), and the upstream is not read
  // further. A tunnel stopped then (a reset) closes that pipe instead of giving it back.
  PipePool pipes;
  startRelay(pipes);
  std::thread upstream_writer([&] {
    std::vector<uint8_t> chunk(64 * kKiB, 0x5a);
    for (int i = 0; i < 1024; ++i) {  // 64 MiB at most; send fails once the test closes
      if (send(upstream_peer_, chunk.data(), chunk.size(), MSG_NOSIGNAL) <= 0) {
        return;
      }
    }
  });
  // Settled: the buffered count stays put for 300 ms.
  int64_t last = -1;
  auto since = Clock::now();
  EXPECT_TRUE(runUntil([&] {
    const int64_t now = stats_.relay_buffered.load();
    if (now != last) {
      last = now;
      since = Clock::now();
    }
    return now > 0 && Clock::now() - since > std::chrono::milliseconds(300);
  }));
  EXPECT_GT(stats_.relay_buffered.load(), 0);
  EXPECT_LE(stats_.relay_buffered.load(), static_cast<int64_t>(Relay::kMaxRead));
  EXPECT_GT(stats_.bytes_spliced.load(), 0u);
  EXPECT_EQ(pipes.open() - pipes.spare(), 1u);  // the stalled direction's pipe
  const size_t open_before = pipes.open();
  relay_->stop();
  EXPECT_EQ(stats_.relay_buffered.load(), 0);
  EXPECT_EQ(pipes.open(), open_before - 1);  // closed, not kept as a spare with bytes in it
  upstream_->close(true);
  shutdown(upstream_peer_, SHUT_RDWR);
  upstream_writer.join();
}

// An upstream that writes its last bytes and resets at once: both are in the relay's socket when
// its edge comes, as one edge that libevent reports as plain read and write readiness. The client
// gets the bytes and the tunnel ends as a reset then, not at the idle timeout.
TEST_F(RelayTest, AResetRightBehindTheLastBytesEndsTheTunnelAsAReset) {
  PipePool pipes;
  startRelay(pipes);
  std::vector<uint8_t> answer(1000);
  for (size_t i = 0; i < answer.size(); ++i) {
    answer[i] = patternByte(i, 4);
  }
  ASSERT_EQ(send(upstream_peer_, answer.data(), answer.size(), 0), 1000);
  const linger abort{1, 0};
  ASSERT_EQ(setsockopt(upstream_peer_, SOL_SOCKET, SO_LINGER, &abort, sizeof(abort)), 0);
  close(upstream_peer_);  // loopback: the reset is in the relay's socket behind the bytes
  upstream_peer_ = -1;
  ASSERT_TRUE(runUntil([&] { return ended_.ended; })) << "the reset was never read";
  EXPECT_TRUE(ended_.reset);
  EXPECT_EQ(ended_.closed_by, "upstream");
  EXPECT_EQ(relay_->bytesDown(), 1000u);
  std::vector<uint8_t> got(2000);
  const ssize_t n = recv(client_peer_, got.data(), got.size(), MSG_DONTWAIT);
  ASSERT_EQ(n, 1000) << "the bytes before the reset";
  got.resize(1000);
  EXPECT_EQ(got, answer);
}

// The client's side the same way, while the upstream is silent.
TEST_F(RelayTest, AClientResetRightBehindItsBytesEndsTheTunnel) {
  PipePool pipes;
  startRelay(pipes);
  ASSERT_EQ(send(client_peer_, "request", 7, 0), 7);
  const linger abort{1, 0};
  ASSERT_EQ(setsockopt(client_peer_, SOL_SOCKET, SO_LINGER, &abort, sizeof(abort)), 0);
  close(client_peer_);
  client_peer_ = -1;
  ASSERT_TRUE(runUntil([&] { return ended_.ended; })) << "the reset was never read";
  EXPECT_TRUE(ended_.reset);
  EXPECT_EQ(ended_.closed_by, "client");
  EXPECT_EQ(relay_->bytesUp(), 7u);
}

TEST(PipePoolTest, TakesUpToItsLimitKeepsSparesAndClosesTheRest) {
  PipePool pool(6);
  std::vector<Pipe> taken;
  for (int i = 0; i < 6; ++i) {
    taken.push_back(pool.take());
    ASSERT_TRUE(taken.back().valid());
  }
  EXPECT_FALSE(pool.take().valid());  // at the limit
  EXPECT_EQ(pool.open(), 6u);
  // A pipe works: bytes written come back out.
  ASSERT_EQ(write(taken[0].write_fd, "abc", 3), 3);
  char got[3];
  ASSERT_EQ(read(taken[0].read_fd, got, 3), 3);
  EXPECT_EQ(std::string(got, 3), "abc");
  for (const Pipe& pipe : taken) {
    pool.give(pipe);
  }
  EXPECT_EQ(pool.spare(), PipePool::kSparePipes);
  EXPECT_EQ(pool.open(), PipePool::kSparePipes);  // the rest closed
  const Pipe again = pool.take();                 // a spare, no pipe2
  EXPECT_TRUE(again.valid());
  EXPECT_EQ(pool.open(), PipePool::kSparePipes);
  pool.discard(again);
  EXPECT_EQ(pool.open(), PipePool::kSparePipes - 1);
}

TEST(PipePoolTest, SparesAreClosedAfterACheckWithoutATake) {
  PipePool pool;
  const Pipe a = pool.take();
  const Pipe b = pool.take();
  pool.give(a);
  pool.give(b);
  EXPECT_EQ(pool.open(), 2u);
  pool.releaseIdleSpares();  // taken since the last check: kept
  EXPECT_EQ(pool.open(), 2u);
  pool.releaseIdleSpares();  // a whole interval without a take: closed
  EXPECT_EQ(pool.open(), 0u);
  EXPECT_EQ(pool.spare(), 0u);
  // A pipe in use is never closed by the check.
  const Pipe c = pool.take();
  pool.releaseIdleSpares();
  pool.releaseIdleSpares();
  EXPECT_EQ(pool.open(), 1u);
  ASSERT_EQ(write(c.write_fd, "x", 1), 1);
  pool.discard(c);
  EXPECT_EQ(pool.open(), 0u);
}

}  // namespace
}  // namespace acr
