#include "proxy/relay.h"

#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <memory>

#include "proxy/proxy_context.h"

namespace acr {
namespace {

constexpr auto kRelaxed = std::memory_order_relaxed;

// One read buffer per event-loop thread, shared by all its tunnels: bytes pass through it on
// their way from one socket to the other, so a tunnel owns no read buffer of its own.
char* scratch() {
  thread_local std::unique_ptr<char[]> buffer(new char[Relay::kMaxRead]);
  return buffer.get();
}

std::string_view sideName(bool client) { return client ? "client" : "upstream"; }

}  // namespace

Relay::Relay(bufferevent* client, bufferevent* upstream, ProxyStats& stats,
             size_t max_buffer_memory, Observer& observer) noexcept
    : client_(client),
      upstream_(upstream),
      stats_(stats),
      max_buffer_memory_(static_cast<int64_t>(max_buffer_memory)),
      observer_(observer),
      up_{client, upstream, HalfClose::kOpen, false},
      down_{upstream, client, HalfClose::kOpen, true},
      last_activity_(std::chrono::steady_clock::now()) {}

Relay::~Relay() { stop(); }

void Relay::start() {
  started_ = true;
  stats_.active_tunnels.fetch_add(1, kRelaxed);
  for (bufferevent* bev : {client_, upstream_}) {
    // Their events must not stay registered: epoll cannot mix level- and edge-triggered
    // interest in one descriptor, and from here on the relay does the I/O.
    bufferevent_setcb(bev, nullptr, nullptr, nullptr, nullptr);
    bufferevent_disable(bev, EV_READ | EV_WRITE);
    // A socket bufferevent keeps its output's front frozen (only its own write callback drains
    // it); the relay writes that queue itself now. stop() freezes it again.
    evbuffer_unfreeze(bufferevent_get_output(bev), 1);
  }
  evbuffer* client_output = bufferevent_get_output(client_);
  evbuffer* upstream_output = bufferevent_get_output(upstream_);
  buffered_ = static_cast<int64_t>(evbuffer_get_length(client_output) +
                                   evbuffer_get_length(upstream_output));
  stats_.relay_buffered.fetch_add(buffered_, kRelaxed);
  client_output_cb_ = evbuffer_add_cb(client_output, &Relay::onOutputChanged, this);
  upstream_output_cb_ = evbuffer_add_cb(upstream_output, &Relay::onOutputChanged, this);
  // Bytes read before the relay began (the head's early bytes, the ClientHello) go behind what
  // the outputs still queue (a 200 not yet written), byte-exact.
  for (Direction* direction : {&up_, &down_}) {
    evbuffer* input = bufferevent_get_input(direction->source);
    if (const size_t length = evbuffer_get_length(input); length > 0) {
      count(*direction, length);
      evbuffer_add_buffer(bufferevent_get_output(direction->sink), input);
    }
  }
  event_base* base = bufferevent_get_base(client_);
  // EV_CLOSED (EPOLLRDHUP): a FIN that arrives with the last bytes leaves nothing to wake us once
  // those bytes are read, so the edge that brought it must say so.
  constexpr short kWhat = EV_READ | EV_WRITE | EV_CLOSED | EV_ET | EV_PERSIST;
  client_event_ = event_new(base, bufferevent_getfd(client_), kWhat, &Relay::onClientSocket, this);
  upstream_event_ =
      event_new(base, bufferevent_getfd(upstream_), kWhat, &Relay::onUpstreamSocket, this);
  event_add(client_event_, nullptr);
  event_add(upstream_event_, nullptr);
  last_activity_ = std::chrono::steady_clock::now();
  pump(up_);
  pump(down_);
}

void Relay::stop() noexcept {
  if (!started_) {
    return;
  }
  started_ = false;
  for (event** ev : {&client_event_, &upstream_event_}) {
    if (*ev != nullptr) {
      event_free(*ev);  // also deletes it if pending
      *ev = nullptr;
    }
  }
  evbuffer_freeze(bufferevent_get_output(client_), 1);
  evbuffer_freeze(bufferevent_get_output(upstream_), 1);
  if (client_output_cb_ != nullptr) {
    evbuffer_remove_cb_entry(bufferevent_get_output(client_), client_output_cb_);
    client_output_cb_ = nullptr;
  }
  if (upstream_output_cb_ != nullptr) {
    evbuffer_remove_cb_entry(bufferevent_get_output(upstream_), upstream_output_cb_);
    upstream_output_cb_ = nullptr;
  }
  stats_.relay_buffered.fetch_sub(buffered_, kRelaxed);
  buffered_ = 0;
  stats_.active_tunnels.fetch_sub(1, kRelaxed);
}

void Relay::count(const Direction& direction, size_t length) noexcept {
  (direction.down ? bytes_down_ : bytes_up_) += length;
  (direction.down ? stats_.bytes_down : stats_.bytes_up).fetch_add(length, kRelaxed);
  last_activity_ = std::chrono::steady_clock::now();
}

void Relay::pump(Direction& direction) {
  const evutil_socket_t source = bufferevent_getfd(direction.source);
  const evutil_socket_t sink = bufferevent_getfd(direction.sink);
  evbuffer* queue = bufferevent_get_output(direction.sink);
  char* buffer = scratch();
  for (int i = 0; i < kMaxReadsPerWake; ++i) {
    if (ended_) {
      return;
    }
    if (evbuffer_get_length(queue) > 0) {
      if (!direction.sink_ready) {
        return;  // the sink's next write edge comes back here
      }
      if (evbuffer_write(queue, sink) < 0 && errno != EAGAIN && errno != EWOULDBLOCK &&
          errno != EINTR) {
        end(sideName(direction.down), true);
        return;
      }
      if (evbuffer_get_length(queue) > 0) {
        direction.sink_ready = false;  // its send buffer is full
        return;
      }
      last_activity_ = std::chrono::steady_clock::now();
    }
    if (direction.half_close == HalfClose::kFinPending) {
      onFin(direction);  // everything before the FIN is out: pass it on
      return;
    }
    if (direction.half_close != HalfClose::kOpen || !direction.source_ready) {
      return;
    }
    const size_t want = readSize();
    const ssize_t n = ::recv(source, buffer, want, 0);
    if (n > 0) {
      count(direction, static_cast<size_t>(n));
      if (!pass(direction, buffer, static_cast<size_t>(n))) {
        return;
      }
      if (static_cast<size_t>(n) < want && !direction.source_closed) {
        // A short read of a stream socket emptied its receive queue: new bytes (or a FIN) bring
        // a new edge. With a FIN seen, the next read returns it.
        direction.source_ready = false;
        return;
      }
      continue;
    }
    if (n == 0) {
      direction.source_ready = false;
      onFin(direction);
      return;
    }
    if (errno == EINTR) {
      continue;
    }
    direction.source_ready = false;
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
      end(sideName(!direction.down), true);  // a reset reaches the other side as a reset
    }
    return;
  }
  // Still more to read, but other tunnels get their turn first: back on the loop's next pass
  // (no edge will come for bytes already there).
  if (event* source_event = direction.down ? upstream_event_ : client_event_) {
    event_active(source_event, EV_READ, 0);
  }
}

bool Relay::pass(Direction& direction, const char* data, size_t length) {
  evbuffer* queue = bufferevent_get_output(direction.sink);
  if (direction.sink_ready && evbuffer_get_length(queue) == 0) {
    const evutil_socket_t fd = bufferevent_getfd(direction.sink);
    while (length > 0) {
      const ssize_t n = ::send(fd, data, length, MSG_NOSIGNAL);
      if (n > 0) {
        data += n;
        length -= static_cast<size_t>(n);
      } else if (n < 0 && errno == EINTR) {
        continue;
      } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        direction.sink_ready = false;
        break;
      } else {
        end(sideName(direction.down), true);
        return false;
      }
    }
  }
  if (length > 0) {
    direction.sink_ready = false;  // a short send: the sink's buffer is full
    evbuffer_add(queue, data, length);
  }
  return true;
}

// Past --max-buffer-memory every read is small, so that tunnels whose readers stall (each may
// queue one read) hold at most kBudgetRead each beyond the budget, while readers that keep up
// still get their bytes.
size_t Relay::readSize() const noexcept {
  return stats_.relay_buffered.load(kRelaxed) > max_buffer_memory_ ? kBudgetRead : kMaxRead;
}

void Relay::onOutputChanged(evbuffer*, const evbuffer_cb_info* info, void* self) {
  auto* relay = static_cast<Relay*>(self);
  const auto delta = static_cast<int64_t>(info->n_added) - static_cast<int64_t>(info->n_deleted);
  relay->buffered_ += delta;
  relay->stats_.relay_buffered.fetch_add(delta, kRelaxed);
}

void Relay::onFin(Direction& direction) {
  if (closed_by_.empty()) {
    closed_by_ = sideName(!direction.down);
  }
  if (direction.half_close == HalfClose::kOpen) {
    direction.half_close = HalfClose::kFinPending;
  }
  if (direction.half_close == HalfClose::kFinPending &&
      evbuffer_get_length(bufferevent_get_output(direction.sink)) == 0) {
    direction.half_close = HalfClose::kFinSent;
    shutdown(bufferevent_getfd(direction.sink), SHUT_WR);
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

void Relay::onClientSocket(evutil_socket_t, short what, void* self) {
  auto* relay = static_cast<Relay*>(self);
  if ((what & (EV_READ | EV_CLOSED)) != 0) {
    relay->up_.source_ready = true;
    relay->up_.source_closed = relay->up_.source_closed || (what & EV_CLOSED) != 0;
  }
  if ((what & EV_WRITE) != 0) {
    relay->down_.sink_ready = true;
  }
  relay->pump(relay->up_);
  relay->pump(relay->down_);
}

void Relay::onUpstreamSocket(evutil_socket_t, short what, void* self) {
  auto* relay = static_cast<Relay*>(self);
  if ((what & (EV_READ | EV_CLOSED)) != 0) {
    relay->down_.source_ready = true;
    relay->down_.source_closed = relay->down_.source_closed || (what & EV_CLOSED) != 0;
  }
  if ((what & EV_WRITE) != 0) {
    relay->up_.sink_ready = true;
  }
  relay->pump(relay->down_);
  relay->pump(relay->up_);
}

}  // namespace acr
