#pragma once

#include <cstddef>
#include <vector>

namespace acr {

// One pipe(2): the kernel-side buffer a relay splice(2)s a bulk direction's bytes through
// (socket -> pipe -> socket), so that they are never copied into or out of user space.
struct Pipe {
  int read_fd = -1;
  int write_fd = -1;
  bool valid() const noexcept { return read_fd >= 0; }
};

// The pipes of one event loop: a relay direction takes one when it starts splicing a read and
// gives it back as soon as the pipe is empty again (the sink took every byte), so that an idle
// tunnel holds no pipe and a loop holds only as many as it has directions whose sink is full, at
// most kMaxPipes, each two descriptors. Past that a direction copies through user space instead
// (recv/send): the pool is what keeps splicing from costing descriptors that accept(2) and
// connect(2) need. ProxyServer gives each worker's pool only descriptors that max_connections
// tunnels do not need (ProxyServer::pipesPerWorker).
//
// A pipe given back empty is kept for the next direction (up to kSparePipes), so that a busy
// loop does not pay pipe2 and two close(2) calls per bulk burst; the spares are closed once a
// second has passed without a take, so that an idle proxy holds no pipe.
//
// Not thread-safe: one pool per event loop.
class PipePool {
 public:
  // Pipes open at once per pool (taken or spare). Default-sized pipes (16 slots, 64 KiB of pages
  // as Relay::kMaxRead reads at most).
  static constexpr size_t kMaxPipes = 32;
  static constexpr size_t kSparePipes = 4;

  // `max_pipes` below kMaxPipes (0: none; tests use it to take the copying path).
  explicit PipePool(size_t max_pipes = kMaxPipes) : max_pipes_(max_pipes) {
    spares_.reserve(kSparePipes);  // give() never allocates
  }
  ~PipePool();
  PipePool(const PipePool&) = delete;
  PipePool& operator=(const PipePool&) = delete;

  // A pipe, or an invalid one when the pool is at its limit or pipe2(2) failed (EMFILE): the
  // caller copies instead.
  Pipe take() noexcept;
  // Gives back a pipe the caller emptied; kept as a spare or closed.
  void give(Pipe pipe) noexcept;
  // Closes a pipe that may still hold bytes (a tunnel that ended with a reset).
  void discard(Pipe pipe) noexcept;
  // Closes the spares when nothing was taken since the previous call. The worker calls it every
  // second (its heartbeat): spares outlive a bulk burst by one to two seconds.
  void releaseIdleSpares() noexcept;

  size_t open() const noexcept { return open_; }  // taken + spare
  size_t spare() const noexcept { return spares_.size(); }

 private:
  static void closePipe(Pipe pipe) noexcept;

  const size_t max_pipes_;
  size_t open_ = 0;
  bool taken_since_check_ = false;  // a take() since the last releaseIdleSpares()
  std::vector<Pipe> spares_;
};

}  // namespace acr
