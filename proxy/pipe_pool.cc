#include "proxy/pipe_pool.h"

#include <fcntl.h>
#include <unistd.h>

namespace acr {

PipePool::~PipePool() {
  for (const Pipe& pipe : spares_) {
    closePipe(pipe);
  }
}

Pipe PipePool::take() noexcept {
  taken_since_check_ = true;
  if (!spares_.empty()) {
    const Pipe pipe = spares_.back();
    spares_.pop_back();
    return pipe;
  }
  if (open_ >= max_pipes_) {
    return {};
  }
  int fds[2];
  // Non-blocking on both ends: splice(2) from a socket into a full pipe must return EAGAIN, not
  // wait (SPLICE_F_NONBLOCK covers the pipe only in the call that names it).
  if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) {
    return {};
  }
  ++open_;
  return Pipe{fds[0], fds[1]};
}

void PipePool::give(Pipe pipe) noexcept {
  if (!pipe.valid()) {
    return;
  }
  if (spares_.size() < kSparePipes) {
    spares_.push_back(pipe);  // within the capacity reserved by the constructor
    return;
  }
  discard(pipe);
}

void PipePool::discard(Pipe pipe) noexcept {
  if (!pipe.valid()) {
    return;
  }
  closePipe(pipe);
  --open_;
}

void PipePool::releaseIdleSpares() noexcept {
  if (!taken_since_check_) {
    for (const Pipe& pipe : spares_) {
      closePipe(pipe);
    }
    open_ -= spares_.size();
    spares_.clear();
  }
  taken_since_check_ = false;
}

void PipePool::closePipe(Pipe pipe) noexcept {
  close(pipe.read_fd);
  close(pipe.write_fd);
}

}  // namespace acr
