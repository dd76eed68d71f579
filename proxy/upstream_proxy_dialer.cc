#include "proxy/upstream_proxy_dialer.h"

#include <event2/buffer.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "dns/resolver.h"
#include "proxy/own_upstreams.h"

namespace acr {
namespace {

using Outcome = UpstreamProxyResult::Outcome;
constexpr size_t kMaxStatusLine = 200;

// "HTTP/1.x NNN" at the start of `head`: the status, or 0 when it is not one.
uint16_t statusOf(std::string_view head) noexcept {
  if (head.size() < 12 || !head.starts_with("HTTP/1.") || head[7] < '0' || head[7] > '9' ||
      head[8] != ' ') {
    return 0;
  }
  uint16_t status = 0;
  for (size_t i = 9; i < 12; ++i) {
    if (head[i] < '0' || head[i] > '9') {
      return 0;
    }
    status = static_cast<uint16_t>(status * 10 + (head[i] - '0'));
  }
  if (head.size() > 12 && head[12] != ' ' && head[12] != '\r') {
    return 0;
  }
  return status >= 100 ? status : 0;
}

std::string printableLine(std::string_view head) {
  const size_t end = std::min({head.find('\r'), head.find('\n'), kMaxStatusLine, head.size()});
  std::string line;
  for (const char c : head.substr(0, end)) {
    line += static_cast<unsigned char>(c) >= 0x20 && c != 0x7f ? c : '?';
  }
  return line;
}

}  // namespace

UpstreamProxyDialer::UpstreamProxyDialer(event_base* base, Resolver& resolver,
                                         const UpstreamProxySettings& proxy, DialOptions options,
                                         Callback done)
    : base_(base),
      resolver_(resolver),
      proxy_(proxy),
      options_(std::move(options)),
      done_(std::move(done)),
      timer_(evtimer_new(base, &UpstreamProxyDialer::onTimer, this)) {
  options_.port = proxy.port;
}

UpstreamProxyDialer::~UpstreamProxyDialer() {
  cancel();
  if (timer_ != nullptr) {
    event_free(timer_);
  }
}

const std::vector<DialAttempt>& UpstreamProxyDialer::attempts() const noexcept {
  static const std::vector<DialAttempt> kNone;
  return dialer_ != nullptr ? dialer_->attempts() : kNone;
}

void UpstreamProxyDialer::start(const std::string& target) {
  if (state_ != State::kIdle) {
    return;
  }
  request_ = "CONNECT " + target + " HTTP/1.1\r\nHost: " + target + "\r\n";
  if (!proxy_.authorization.empty()) {
    request_ += "Proxy-Authorization: " + proxy_.authorization + "\r\n";
  }
  request_ += "\r\n";
  state_ = State::kResolve;
  armDeadline();
  const uint64_t ticket = resolver_.resolve(proxy_.host, [this](const DnsAnswer& answer) {
    dns_ticket_ = 0;
    if (answer.status != DnsStatus::kOk || answer.addresses.empty()) {
      onResolved({}, dnsStatusName(answer.status));
    } else {
      onResolved(answer.addresses, {});
    }
  });
  if (state_ == State::kResolve) {  // not answered at once (a cache hit or a literal is)
    dns_ticket_ = ticket;
  }
}

void UpstreamProxyDialer::armDeadline() {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
      options_.deadline - std::chrono::steady_clock::now());
  const int64_t ms = std::max<int64_t>(left.count(), 0);
  const timeval tv{static_cast<time_t>(ms / 1000), static_cast<suseconds_t>((ms % 1000) * 1000)};
  evtimer_add(timer_, &tv);
}

void UpstreamProxyDialer::onResolved(const std::vector<IpAddress>& addresses,
                                     std::string_view failure) {
  if (state_ != State::kResolve) {
    return;
  }
  evtimer_del(timer_);
  if (addresses.empty()) {
    result_.detail = "its name " + proxy_.host + " did not resolve (" + std::string(failure) + ")";
    finish(Outcome::kDialFailed);
    return;
  }
  state_ = State::kDial;
  dialer_ = std::make_unique<HappyEyeballsDialer>(
      base_, options_, [this](DialResult result) { onDialed(std::move(result)); });
  dialer_->add(addresses, false);
}

void UpstreamProxyDialer::onDialed(DialResult result) {
  result_.dial = std::move(result);
  if (result_.dial.upstream == nullptr) {
    finish(Outcome::kDialFailed);
    return;
  }
  state_ = State::kAnswer;
  Stream& upstream = *result_.dial.upstream;
  upstream.setHandler(this);
  if (!upstream.write(request_.data(), request_.size())) {
    result_.dial.error = upstream.error();
    finish(Outcome::kClosed);
    return;
  }
  armDeadline();
  if (upstream.readable()) {
    upstream.activate(EV_READ);  // the answer came with the connect's edge
  }
}

void UpstreamProxyDialer::onStreamEvent(Stream& upstream, short /*what*/) {
  if (state_ != State::kAnswer) {
    return;
  }
  if (!upstream.flush()) {
    result_.dial.error = upstream.error();
    finish(Outcome::kClosed);
    return;
  }
  const Stream::ReadEnd end = upstream.readToInput(kMaxHead + 1);
  if (upstream.inputLength() > 0) {
    readAnswer();
  }
  if (state_ == State::kAnswer &&
      (end == Stream::ReadEnd::kEof || end == Stream::ReadEnd::kError)) {
    result_.dial.error = upstream.error();
    finish(Outcome::kClosed);
  }
}

void UpstreamProxyDialer::onTimer(evutil_socket_t, short, void* self) {
  auto* dialer = static_cast<UpstreamProxyDialer*>(self);
  if (dialer->state_ == State::kResolve) {
    dialer->resolver_.cancel(dialer->dns_ticket_);
    dialer->dns_ticket_ = 0;
    dialer->result_.dial.timed_out = true;
    dialer->result_.dial.error = ETIMEDOUT;
    dialer->result_.detail = "its name " + dialer->proxy_.host + " did not resolve in time";
    dialer->finish(Outcome::kDialFailed);
  } else if (dialer->state_ == State::kAnswer) {
    dialer->finish(Outcome::kTimeout);
  }
}

void UpstreamProxyDialer::readAnswer() {
  evbuffer* input = result_.dial.upstream->input();
  const evbuffer_ptr end = evbuffer_search(input, "\r\n\r\n", 4, nullptr);
  const size_t length = evbuffer_get_length(input);
  if (end.pos < 0) {
    if (length > kMaxHead) {
      result_.status_line = printableLine(
          std::string_view(reinterpret_cast<const char*>(evbuffer_pullup(input, -1)), length));
      finish(Outcome::kMalformed);
    }
    return;
  }
  const size_t head_length = static_cast<size_t>(end.pos) + 4;
  const std::string_view head(reinterpret_cast<const char*>(evbuffer_pullup(input, head_length)),
                              head_length);
  result_.status = statusOf(head);
  result_.status_line = printableLine(head);
  if (result_.status == 0) {
    finish(Outcome::kMalformed);
    return;
  }
  if (result_.status < 200 || result_.status > 299) {
    finish(Outcome::kRefused);
    return;
  }
  // What follows the head is the tunnel's first bytes: left in the input for the relay.
  evbuffer_drain(input, head_length);
  finish(Outcome::kTunnel);
}

void UpstreamProxyDialer::finish(Outcome outcome) {
  if (state_ == State::kDone) {
    return;
  }
  state_ = State::kDone;
  evtimer_del(timer_);
  result_.outcome = outcome;
  if (outcome == Outcome::kTunnel) {
    result_.dial.upstream->setHandler(nullptr);
  } else {
    closeConnection();
  }
  UpstreamProxyResult result = std::move(result_);
  result_ = {};
  done_(std::move(result));
}

void UpstreamProxyDialer::closeConnection() noexcept {
  DialResult& dial = result_.dial;
  if (dial.upstream == nullptr) {
    return;
  }
  if (dial.local && dial.endpoint && options_.own_upstreams != nullptr) {
    options_.own_upstreams->remove(*dial.local, *dial.endpoint);
  }
  dial.local.reset();
  dial.upstream.reset();  // closes the socket
}

void UpstreamProxyDialer::cancel() noexcept {
  if (dns_ticket_ != 0) {
    resolver_.cancel(dns_ticket_);
    dns_ticket_ = 0;
  }
  if (dialer_ != nullptr) {
    dialer_->cancel();
  }
  if (timer_ != nullptr) {
    evtimer_del(timer_);
  }
  if (state_ != State::kDone) {
    closeConnection();  // a connection still awaiting the answer
  }
  state_ = State::kDone;
}

}  // namespace acr
