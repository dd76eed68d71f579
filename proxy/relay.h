#pragma once

#include <event2/buffer.h>
#include <event2/event.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "proxy/pipe_pool.h"
#include "proxy/stream.h"

namespace acr {

struct ProxyStats;

// The relay of one tunnel: bytes both ways between the client's and the upstream's connected
// sockets, with byte counters, half-close and the process-wide buffer budget (docs/operations.md
// "Relay", THREATS R8). From start() to stop() it is the handler of both Streams: their one
// edge-triggered event each, added when the socket was opened, now reports to the relay, so that
// taking the tunnel over costs no epoll_ctl. The streams stay owned by the caller, who closes
// them only after stop().
//
// Why not libevent's bufferevents: libevent 2.1 reads at most 4 KiB per call (EVBUFFER_MAX_READ)
// after a FIONREAD ioctl, and arms and disarms a write event around every queued chunk, so a
// 1 GiB layer cost 262,144 wake-ups, reads and ioctls and two epoll_ctl per chunk. Here reads of
// up to kMaxRead go into a per-thread scratch buffer and straight on to the other socket. Only
// what that socket does not take is queued (the sink stream's output), and while a direction has
// bytes queued its source is not read: the queue is at most one read (64 KiB; 16 KiB past
// --max-buffer-memory), and an idle tunnel holds no buffer at all.
//
// Bulk directions splice. A read that fills the whole scratch buffer says the direction is
// moving bulk (a layer, not a handshake or an API answer); from then on it moves its bytes with
// splice(2), socket -> pipe -> socket, through a pipe taken from the loop's PipePool, so that they
// are never copied into user space and back (those two copies were a quarter of the proxy's CPU
// per GiB: bench/e2e/PROFILE.md section 12). The pipe is the direction's queue then: while it
// holds bytes the source is not read, and it goes back to the pool once the sink took them all.
// A direction that stays small never splices: a short splice does not say the socket is drained
// (the pipe's slots may have run out first), so splicing costs a read that returns EAGAIN where
// a short recv ends the readiness, and the pipe costs two descriptors. Without a pipe to take
// (the pool at its limit, EMFILE) a direction copies as before.
class Relay final : private Stream::Handler {
 public:
  // The most one read(2) of a side takes: the per-thread scratch buffer (Stream::scratch()) it
  // reads into, bytes passing through it on their way from one socket to the other, so that a
  // tunnel owns no read buffer of its own.
  static constexpr size_t kMaxRead = Stream::kScratchSize;
  // A read's size while the process is past --max-buffer-memory.
  static constexpr size_t kBudgetRead = 16 * 1024;
  // Reads per wake-up and side at most, so that one busy tunnel cannot starve the loop's others
  // (the rest is picked up on the loop's next turn).
  static constexpr int kMaxReadsPerWake = 4;

  // Told once, when the tunnel is over: both directions have passed their FIN (`reset` false,
  // `closed_by` the side that sent the first FIN), or a side failed (`reset` true; `closed_by`
  // the side that sent the first FIN, else the failing side). It may call stop() but must not
  // destroy the Relay.
  class Observer {
   public:
    virtual ~Observer() = default;
    virtual void onRelayEnded(std::string_view closed_by, bool reset) = 0;
  };

  Relay(Stream& client, Stream& upstream, ProxyStats& stats, size_t max_buffer_memory,
        PipePool& pipes, Observer& observer) noexcept;
  ~Relay() override;
  Relay(const Relay&) = delete;
  Relay& operator=(const Relay&) = delete;

  // Counts the tunnel as active, passes on the bytes both inputs hold already (the head's early
  // bytes, the ClientHello) and both outputs still queue, byte-exact, then a FIN or an error a
  // stream has met already, and starts relaying.
  void start();
  // Stops handling the streams' edges and returns this tunnel's share of the buffer budget and
  // of the active tunnels, and its pipes (closing one that still holds bytes: the tunnel was
  // reset). Idempotent; the destructor calls it.
  void stop() noexcept;

  uint64_t bytesUp() const noexcept { return bytes_up_; }      // client -> upstream
  uint64_t bytesDown() const noexcept { return bytes_down_; }  // upstream -> client
  std::chrono::steady_clock::time_point lastActivity() const noexcept { return last_activity_; }
  // "client" or "upstream": the side whose FIN came first; empty before one.
  std::string_view closedBy() const noexcept { return closed_by_; }

 private:
  // One direction's half-close: its source has not sent FIN; has sent it but bytes before it
  // still wait in the sink's output; or the FIN has been passed on (shutdown(SHUT_WR) of the sink).
  enum class HalfClose : uint8_t { kOpen, kFinPending, kFinSent };
  struct Direction {
    Stream* source;
    Stream* sink;  // its output queues what the sink's socket did not take
    HalfClose half_close = HalfClose::kOpen;
    bool down;          // upstream -> client
    bool bulk = false;  // a read filled the scratch buffer: splice from now on
    Pipe pipe{};        // while splicing bytes not yet taken by the sink
    size_t piped = 0;   // bytes in `pipe`
    size_t queued() const noexcept { return sink->outputLength() + piped; }
  };

  void onStreamEvent(Stream& stream, short what) override;

  // Moves `direction`'s bytes as far as the sockets allow: the queue first, then reads.
  void pump(Direction& direction);
  // `length` bytes read from `direction`'s source: straight to the sink's socket when nothing is
  // queued ahead of them, the rest (or all) queued. False when the sink failed (relay ended).
  bool pass(Direction& direction, const char* data, size_t length);
  size_t readSize() const noexcept;
  // Writes the sink's queued output while it takes it and frees the emptied buffers. False when
  // the sink failed.
  bool flushOutput(Direction& direction) noexcept;
  // Splices up to `want` bytes from the source into the direction's pipe (taken from the pool
  // first). The read's result as recv(2) gives it, or kCopyInstead (relay.cc) when there is no
  // pipe to take or the sockets cannot splice.
  ssize_t spliceIn(Direction& direction, size_t want) noexcept;
  // Splices the pipe's bytes to the sink while it takes them; gives the pipe back once empty.
  // False when the sink failed.
  bool spliceOut(Direction& direction) noexcept;
  // Gives the direction's pipe back to the pool, or closes it if it still holds bytes.
  void releasePipe(Direction& direction) noexcept;
  void onFin(Direction& direction);
  void end(std::string_view failed_side, bool reset);
  void count(const Direction& direction, size_t length) noexcept;
  // Brings this tunnel's share of ProxyStats::relay_buffered to what both outputs queue now.
  void recount() noexcept;

  Stream& client_;
  Stream& upstream_;
  ProxyStats& stats_;
  const int64_t max_buffer_memory_;
  PipePool& pipes_;
  Observer& observer_;
  Direction up_;
  Direction down_;
  int64_t buffered_ = 0;  // this tunnel's share of ProxyStats::relay_buffered
  bool started_ = false;
  bool ended_ = false;
  std::string_view closed_by_;  // the side whose FIN came first
  uint64_t bytes_up_ = 0;
  uint64_t bytes_down_ = 0;
  std::chrono::steady_clock::time_point last_activity_;
};

}  // namespace acr
