#include "proxy/relay.h"

#include <sys/socket.h>

#include <algorithm>

#include "proxy/proxy_context.h"

namespace acr {
namespace {

constexpr auto kRelaxed = std::memory_order_relaxed;

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
  evbuffer* client_output = bufferevent_get_output(client_);
  evbuffer* upstream_output = bufferevent_get_output(upstream_);
  buffered_ = static_cast<int64_t>(evbuffer_get_length(client_output) +
                                   evbuffer_get_length(upstream_output));
  stats_.relay_buffered.fetch_add(buffered_, kRelaxed);
  client_output_cb_ = evbuffer_add_cb(client_output, &Relay::onOutputChanged, this);
  upstream_output_cb_ = evbuffer_add_cb(upstream_output, &Relay::onOutputChanged, this);
  bufferevent_setcb(client_, &Relay::onClientRead, &Relay::onClientWrite, &Relay::onClientEvent,
                    this);
  bufferevent_setcb(upstream_, &Relay::onUpstreamRead, &Relay::onUpstreamWrite,
                    &Relay::onUpstreamEvent, this);
  bufferevent_setwatermark(client_, EV_READ, 0, 0);
  bufferevent_setwatermark(upstream_, EV_READ, 0, 0);
  bufferevent_enable(client_, EV_READ);
  bufferevent_enable(upstream_, EV_READ);
  forward(up_);  // the buffered head bytes / ClientHello, byte-exact, once
  forward(down_);
  last_activity_ = std::chrono::steady_clock::now();
}

void Relay::stop() noexcept {
  if (!started_) {
    return;
  }
  started_ = false;
  bufferevent_setcb(client_, nullptr, nullptr, nullptr, nullptr);
  bufferevent_setcb(upstream_, nullptr, nullptr, nullptr, nullptr);
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

void Relay::forward(Direction& direction) {
  evbuffer* source = bufferevent_get_input(direction.source);
  evbuffer* sink = bufferevent_get_output(direction.sink);
  const size_t length = evbuffer_get_length(source);
  if (length == 0) {
    return;
  }
  (direction.down ? bytes_down_ : bytes_up_) += length;
  (direction.down ? stats_.bytes_down : stats_.bytes_up).fetch_add(length, kRelaxed);
  evbuffer_add_buffer(sink, source);
  last_activity_ = std::chrono::steady_clock::now();
  const size_t queued = evbuffer_get_length(sink);
  if (queued >= kHighWater || (queued > 0 && overBufferBudget(queued))) {
    // Resumed by onDrained once the sink has drained to the low watermark.
    bufferevent_disable(direction.source, EV_READ);
    bufferevent_setwatermark(direction.sink, EV_WRITE, std::min(kHighWater / 2, queued / 2), 0);
  }
}

bool Relay::overBufferBudget(size_t queued) const noexcept {
  const int64_t limit = max_buffer_memory_;
  const int64_t used = stats_.relay_buffered.load(kRelaxed);
  if (used <= limit) {
    return false;
  }
  // Past the budget, the tunnels holding at least an equal share stop first; the ones holding
  // less (readers that keep up) go on until the budget is exceeded by a quarter, where every
  // side with bytes queued stops. Total: at most 1.25 x the budget plus one read per tunnel.
  const uint64_t tunnels = std::max<uint64_t>(1, stats_.active_tunnels.load(kRelaxed));
  return queued >= static_cast<uint64_t>(limit) / tunnels || used > limit + limit / 4;
}

void Relay::onOutputChanged(evbuffer*, const evbuffer_cb_info* info, void* self) {
  auto* relay = static_cast<Relay*>(self);
  const auto delta = static_cast<int64_t>(info->n_added) - static_cast<int64_t>(info->n_deleted);
  relay->buffered_ += delta;
  relay->stats_.relay_buffered.fetch_add(delta, kRelaxed);
}

void Relay::onDrained(Direction& direction) {
  bufferevent_setwatermark(direction.sink, EV_WRITE, 0, 0);
  if (direction.half_close == HalfClose::kOpen) {
    bufferevent_enable(direction.source, EV_READ);
  } else if (direction.half_close == HalfClose::kFinPending) {
    onFin(direction);
  }
}

void Relay::onFin(Direction& direction) {
  if (closed_by_.empty()) {
    closed_by_ = direction.down ? "upstream" : "client";
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

void Relay::onClientRead(bufferevent*, void* self) {
  auto* relay = static_cast<Relay*>(self);
  relay->forward(relay->up_);
}

void Relay::onUpstreamRead(bufferevent*, void* self) {
  auto* relay = static_cast<Relay*>(self);
  relay->forward(relay->down_);
}

// The client's output drained to its low watermark: the upstream -> client direction may go on.
void Relay::onClientWrite(bufferevent*, void* self) {
  auto* relay = static_cast<Relay*>(self);
  relay->onDrained(relay->down_);
}

void Relay::onUpstreamWrite(bufferevent*, void* self) {
  auto* relay = static_cast<Relay*>(self);
  relay->onDrained(relay->up_);
}

void Relay::onClientEvent(bufferevent*, short events, void* self) {
  auto* relay = static_cast<Relay*>(self);
  if ((events & BEV_EVENT_EOF) != 0) {
    relay->forward(relay->up_);
    relay->onFin(relay->up_);
    return;
  }
  relay->end("client", true);  // a client error reaches the upstream as a reset
}

void Relay::onUpstreamEvent(bufferevent*, short events, void* self) {
  auto* relay = static_cast<Relay*>(self);
  if ((events & BEV_EVENT_EOF) != 0 && (events & BEV_EVENT_ERROR) == 0) {
    relay->forward(relay->down_);
    relay->onFin(relay->down_);
    return;
  }
  relay->end("upstream", true);  // an upstream reset reaches the client as a reset
}

}  // namespace acr
