#include "proxy/relay.h"

#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <memory>

#include "proxy/proxy_context.h"

namespace acr {
namespace {

constexpr auto kRelaxed = std::memory_order_relaxed;

std::string_view sideName(bool client) { return client ? "client" : "upstream"; }

}  // namespace

Relay::Relay(Stream& client, Stream& upstream, ProxyStats& stats, size_t max_buffer_memory,
             Observer& observer) noexcept
    : client_(client),
      upstream_(upstream),
      stats_(stats),
      max_buffer_memory_(static_cast<int64_t>(max_buffer_memory)),
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
  stats_.relay_buffered.fetch_sub(buffered_, kRelaxed);
  buffered_ = 0;
  stats_.active_tunnels.fetch_sub(1, kRelaxed);
}

void Relay::recount() noexcept {
  const auto queued = static_cast<int64_t>(client_.outputLength() + upstream_.outputLength());
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
    if (sink.outputLength() > 0) {
      if (!sink.writable()) {
        return;  // the sink's next write edge comes back here
      }
      const bool written = sink.flush();
      recount();
      if (!written) {
        end(sideName(direction.down), true);
        return;
      }
      if (sink.outputLength() > 0) {
        return;  // its send buffer is full
      }
      sink.releaseBuffers();
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
    const ssize_t n = ::recv(source.fd(), buffer, want, 0);
    if (n > 0) {
      count(direction, static_cast<size_t>(n));
      if (!pass(direction, buffer, static_cast<size_t>(n))) {
        return;
      }
      if (static_cast<size_t>(n) < want && !source.finSeen()) {
        // A short read of a stream socket emptied its receive queue: new bytes (or a FIN) bring
        // a new edge. With a FIN seen, the next read returns it.
        source.setReadable(false);
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
  if (direction.half_close == HalfClose::kFinPending && direction.sink->outputLength() == 0) {
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
