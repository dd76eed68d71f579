#include "proxy/relay.h"

#include <fcntl.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <memory>

#include "proxy/proxy_context.h"

namespace acr {
namespace {

constexpr auto kRelaxed = std::memory_order_relaxed;

std::string_view sideName(bool client) { return client ? "client" : "upstream"; }

// spliceIn()'s answer when this read must be copied (recv) instead.
constexpr ssize_t kCopyInstead = -2;

}  // namespace

Relay::Relay(Stream& client, Stream& upstream, ProxyStats& stats, size_t max_buffer_memory,
             PipePool& pipes, Observer& observer) noexcept
    : client_(client),
      upstream_(upstream),
      stats_(stats),
      max_buffer_memory_(static_cast<int64_t>(max_buffer_memory)),
      pipes_(pipes),
      observer_(observer),
      up_{&client, &upstream, HalfClose::kOpen, false},
      down_{&upstream, &client, HalfClose::kOpen, true},
      last_activity_(std::chrono::steady_clock::now()) {}

Relay::~Relay() { stop(); }

void Relay::start() {
  started_ = true;
  stats_.active_tunnels.fetch_add(1, kRelaxed);
  client_.setHandler(this);
  upstream_.setHandler(this);
  // Bytes read before the relay began (the head's early bytes, the ClientHello, what an upstream
  // proxy sent after its answer) go behind what the outputs still queue (a 200 not yet written),
  // byte-exact.
  for (Direction* direction : {&up_, &down_}) {
    if (const size_t length = direction->source->inputLength(); length > 0) {
      count(*direction, length);
      evbuffer_add_buffer(direction->sink->output(), direction->source->input());
    }
  }
  client_.releaseBuffers();
  upstream_.releaseBuffers();
  recount();
  last_activity_ = std::chrono::steady_clock::now();
  // A side that failed, or whose FIN was read, during the handshake has nothing more to say: its
  // error or FIN is passed on as soon as its queued bytes are.
  for (Direction* direction : {&up_, &down_}) {
    if (direction->source->error() != 0) {
      end(sideName(!direction->down), true);
      return;
    }
  }
  for (Direction* direction : {&up_, &down_}) {
    if (direction->source->eof()) {
      onFin(*direction);
    }
  }
  pump(up_);
  pump(down_);
}

void Relay::stop() noexcept {
  if (!started_) {
    return;
  }
  started_ = false;
  client_.setHandler(nullptr);
  upstream_.setHandler(nullptr);
  releasePipe(up_);
  releasePipe(down_);
  stats_.relay_buffered.fetch_sub(buffered_, kRelaxed);
  buffered_ = 0;
  stats_.active_tunnels.fetch_sub(1, kRelaxed);
}

void Relay::recount() noexcept {
  const auto queued = static_cast<int64_t>(up_.queued() + down_.queued());
  stats_.relay_buffered.fetch_add(queued - buffered_, kRelaxed);
  buffered_ = queued;
}

void Relay::count(const Direction& direction, size_t length) noexcept {
  (direction.down ? bytes_down_ : bytes_up_) += length;
  (direction.down ? stats_.bytes_down : stats_.bytes_up).fetch_add(length, kRelaxed);
  last_activity_ = std::chrono::steady_clock::now();
}

void Relay::pump(Direction& direction) {
  Stream& source = *direction.source;
  Stream& sink = *direction.sink;
  char* buffer = Stream::scratch();
  for (int i = 0; i < kMaxReadsPerWake; ++i) {
    if (ended_) {
      return;
    }
    if (direction.queued() > 0) {
      // At most one of the two queues holds bytes: a direction splices only while its output is
      // empty, and copies only while its pipe is.
      if (!sink.writable()) {
        return;  // the sink's next write edge comes back here
      }
      if (!(direction.piped > 0 ? spliceOut(direction) : flushOutput(direction))) {
        end(sideName(direction.down), true);
        return;
      }
      if (direction.queued() > 0) {
        return;  // its send buffer is full
      }
      last_activity_ = std::chrono::steady_clock::now();
    }
    if (direction.half_close == HalfClose::kFinPending) {
      onFin(direction);  // everything before the FIN is out: pass it on
      return;
    }
    if (direction.half_close != HalfClose::kOpen || !source.readable()) {
      return;
    }
    const size_t want = readSize();
    ssize_t n = direction.bulk ? spliceIn(direction, want) : kCopyInstead;
    if (n > 0) {
      // In the pipe: the loop's next pass hands it to the sink. A short splice does not say the
      // socket is drained (the pipe's slots may have run out first), so only EAGAIN ends it.
      count(direction, static_cast<size_t>(n));
      continue;
    }
    if (n == kCopyInstead) {
      n = ::recv(source.fd(), buffer, want, 0);
    }
    if (n > 0) {
      count(direction, static_cast<size_t>(n));
      if (!pass(direction, buffer, static_cast<size_t>(n))) {
        return;
      }
      if (static_cast<size_t>(n) == kMaxRead) {
        direction.bulk = true;
      }
      if (static_cast<size_t>(n) < want && source.shortReadDrained()) {
        // A short read of a stream socket emptied its receive queue: new bytes (or a FIN) bring
        // a new edge. Else a FIN or an error may wait behind the bytes: the next read tells.
        return;
      }
      continue;
    }
    if (n == 0) {
      source.setEof();
      onFin(direction);
      return;
    }
    if (errno == EINTR) {
      continue;
    }
    source.setReadable(false);
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
      source.setError(errno);
      end(sideName(!direction.down), true);  // a reset reaches the other side as a reset
    }
    return;
  }
  // Still more to read, but other tunnels get their turn first: back on the loop's next pass
  // (no edge will come for bytes already there).
  source.activate(EV_READ);
}

bool Relay::flushOutput(Direction& direction) noexcept {
  const bool written = direction.sink->flush();
  recount();
  direction.sink->releaseBuffers();
  return written;
}

ssize_t Relay::spliceIn(Direction& direction, size_t want) noexcept {
  if (!direction.pipe.valid()) {
    direction.pipe = pipes_.take();
    if (!direction.pipe.valid()) {
      return kCopyInstead;  // the next read asks the pool again
    }
  }
  const ssize_t n = splice(direction.source->fd(), nullptr, direction.pipe.write_fd, nullptr, want,
                           SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
  if (n > 0) {
    direction.piped = static_cast<size_t>(n);
    stats_.bytes_spliced.fetch_add(static_cast<uint64_t>(n), kRelaxed);
    recount();
    return n;
  }
  // The pipe is empty (a direction only splices into an empty one): give it back, so that a bulk
  // direction that waits for its source holds no pipe.
  const int error = errno;  // the caller reads it; give() may close(2)
  releasePipe(direction);
  if (n < 0 && (error == EINVAL || error == ENOSYS || error == EOPNOTSUPP)) {
    direction.bulk = false;  // not a socket the kernel splices from: copy from now on
    return kCopyInstead;
  }
  errno = error;
  return n;
}

bool Relay::spliceOut(Direction& direction) noexcept {
  Stream& sink = *direction.sink;
  while (direction.piped > 0 && sink.writable()) {
    const ssize_t n = splice(direction.pipe.read_fd, nullptr, sink.fd(), nullptr, direction.piped,
                             SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n > 0) {
      direction.piped -= static_cast<size_t>(n);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      sink.setWritable(false);
    } else {
      sink.setError(n < 0 ? errno : EPIPE);
      recount();
      return false;
    }
  }
  recount();
  if (direction.piped == 0) {
    releasePipe(direction);
  }
  return true;
}

void Relay::releasePipe(Direction& direction) noexcept {
  if (direction.piped > 0) {
    pipes_.discard(direction.pipe);  // bytes still in it: the tunnel is over
  } else {
    pipes_.give(direction.pipe);
  }
  direction.pipe = {};
  direction.piped = 0;
}

bool Relay::pass(Direction& direction, const char* data, size_t length) {
  Stream& sink = *direction.sink;
  const bool queued_before = sink.outputLength() > 0;
  if (!sink.write(data, length)) {
    recount();
    end(sideName(direction.down), true);
    return false;
  }
  if (queued_before || sink.outputLength() > 0) {
    recount();
  }
  return true;
}

// Past --max-buffer-memory every read is small, so that tunnels whose readers stall (each may
// queue one read) hold at most kBudgetRead each beyond the budget, while readers that keep up
// still get their bytes.
size_t Relay::readSize() const noexcept {
  return stats_.relay_buffered.load(kRelaxed) > max_buffer_memory_ ? kBudgetRead : kMaxRead;
}

void Relay::onFin(Direction& direction) {
  if (closed_by_.empty()) {
    closed_by_ = sideName(!direction.down);
  }
  if (direction.half_close == HalfClose::kOpen) {
    direction.half_close = HalfClose::kFinPending;
  }
  if (direction.half_close == HalfClose::kFinPending && direction.queued() == 0) {
    direction.half_close = HalfClose::kFinSent;
    const Direction& other = direction.down ? up_ : down_;
    if (other.half_close != HalfClose::kFinSent) {
      shutdown(direction.sink->fd(), SHUT_WR);
    }
    // else the tunnel ends here and the observer closes both sockets: the sink has sent its own
    // FIN and every byte of it was read, so its close(2) sends this FIN (not a reset) and a
    // shutdown(2) first would only cost one more system call per tunnel.
  }
  if (up_.half_close == HalfClose::kFinSent && down_.half_close == HalfClose::kFinSent) {
    end(closed_by_, false);
  }
}

void Relay::end(std::string_view failed_side, bool reset) {
  if (ended_) {
    return;
  }
  ended_ = true;
  observer_.onRelayEnded(closed_by_.empty() ? failed_side : closed_by_, reset);
}

void Relay::onStreamEvent(Stream& stream, short /*what*/) {
  // The stream has recorded what the edge said (readable, writable, FIN seen).
  if (&stream == &client_) {
    pump(up_);
    pump(down_);
  } else {
    pump(down_);
    pump(up_);
  }
}

}  // namespace acr
