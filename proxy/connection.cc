#include "proxy/connection.h"

#include <event2/buffer.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>

#include "filters/host_name.h"
#include "proxy/socket_options.h"
#include "proxy/worker.h"

namespace acr {
namespace {

using Clock = std::chrono::steady_clock;

// Relay flow control: stop reading a side once this much waits for the other side, resume at
// half (Envoy's watermark buffers). Bounds memory per tunnel at about 2 x kHighWater.
constexpr size_t kHighWater = 256 * 1024;
constexpr auto kRelaxed = std::memory_order_relaxed;
// How long a refused CONNECT client may keep sending before we close anyway.
constexpr std::chrono::milliseconds kRefuseLinger{2000};

std::string_view statusText(int status) {
  switch (status) {
    case 400:
      return "Bad Request";
    case 403:
      return "Forbidden";
    case 405:
      return "Method Not Allowed";
    case 408:
      return "Request Timeout";
    case 431:
      return "Request Header Fields Too Large";
    case 502:
      return "Bad Gateway";
    case 503:
      return "Service Unavailable";
    case 504:
      return "Gateway Timeout";
  }
  return "Error";
}

std::string normalizedName(std::string_view text) {
  HostName name;
  if (HostName::normalize(text, name) != HostName::Status::kOk) {
    return {};
  }
  return std::string(name.view());
}

bool sameEndpoint(const SocketAddress& a, const SocketAddress& b) {
  return a.family() == b.family() && a.port() == b.port() && toIpAddress(a) == toIpAddress(b);
}

bool isWildcard(const SocketAddress& address) {
  const IpAddress ip = toIpAddress(address);
  return ip.isV4() ? ip.v4Value() == 0 : ip.v6Value() == 0;
}

}  // namespace

Connection::Connection(Worker& worker, ListenerKind kind, const SocketAddress& listener_address,
                       int fd, const SocketAddress& peer, std::shared_ptr<const Policy> policy)
    : worker_(worker),
      kind_(kind),
      listener_address_(listener_address),
      policy_(std::move(policy)),
      state_(kind == ListenerKind::kConnect ? State::kReadHead : State::kReadHello),
      last_activity_(Clock::now()),
      looped_(kind == ListenerKind::kTransparent && worker.context().guardsLoops() &&
              worker.context().ownUpstreams().contains(peer)),
      started_(Clock::now()) {
  record_.listener = listenerKindName(kind);
  record_.client = peer.toString();
  record_.reason = "";
  client_ = bufferevent_socket_new(worker.base(), fd, BEV_OPT_CLOSE_ON_FREE);
  timer_ = evtimer_new(worker.base(), &Connection::onTimer, this);
}

Connection::~Connection() {
  if (client_ != nullptr) {
    bufferevent_free(client_);
  }
  closeUpstream(false);
  if (timer_ != nullptr) {
    event_free(timer_);
  }
}

void Connection::start() {
  const ProxySettings& settings = worker_.context().settings();
  if (client_ == nullptr || timer_ == nullptr) {
    finish("proxy", true);
    return;
  }
  const int fd = bufferevent_getfd(client_);
  setKeepalive(fd, settings.keepalive_idle);
  if (kind_ == ListenerKind::kTransparent) {
    original_dst_ = originalDestination(fd);
    if (original_dst_) {
      // Known before the first byte: every log line, early denials included, names it.
      record_.original_dst = original_dst_->toString();
      port_ = original_dst_->port();
      record_.port = port_;
    }
    if (looped_) {
      deny("proxy_loop",
           "denied: this is the proxy's own upstream connection redirected back to it; exclude "
           "the proxy's traffic from the redirect rule (--mark)");
      return;
    }
  }
  bufferevent_setcb(client_, &Connection::onClientRead, &Connection::onClientWrite,
                    &Connection::onClientEvent, this);
  if (kind_ == ListenerKind::kConnect) {
    connect_parser_ = std::make_unique<ConnectRequestParser>(settings.max_head_size);
    bufferevent_setwatermark(client_, EV_READ, 0, settings.max_head_size + 1);
  } else {
    hello_parser_ = std::make_unique<ClientHelloParser>(settings.max_client_hello_size);
    bufferevent_setwatermark(client_, EV_READ, 0, 2 * settings.max_client_hello_size + 1024);
  }
  bufferevent_enable(client_, EV_READ);
  armTimer(settings.head_timeout);
}

void Connection::refuseClient(const std::string& sentence) {
  if (client_ == nullptr || timer_ == nullptr) {
    finish("proxy", true);
    return;
  }
  bufferevent_setcb(client_, &Connection::onClientRead, &Connection::onClientWrite,
                    &Connection::onClientEvent, this);
  deny("client_not_allowed", sentence);  // connect: 403 (refuse), others: reset
}

void Connection::armTimer(std::chrono::milliseconds timeout) {
  const timeval tv{static_cast<time_t>(timeout.count() / 1000),
                   static_cast<suseconds_t>((timeout.count() % 1000) * 1000)};
  evtimer_add(timer_, &tv);
}

double Connection::msSince(Clock::time_point start) const noexcept {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

std::string_view Connection::phaseName() const noexcept {
  switch (state_) {
    case State::kReadHead:
      return "head";
    case State::kReadHello:
      return "hello";
    case State::kResolve:
      return "dns";
    case State::kConnect:
      return "connect";
    case State::kTunnelHello:
      return "tunnel_hello";
    case State::kRelay:
      return "relay";
    case State::kRefuse:
      return "refuse";
    case State::kClosed:
      return "closed";
  }
  return "unknown";
}

// ---- reading the request ----

void Connection::onClientRead(bufferevent*, void* self) {
  auto* c = static_cast<Connection*>(self);
  switch (c->state_) {
    case State::kReadHead:
      c->readHead();
      break;
    case State::kReadHello:
      c->readHello();
      break;
    case State::kTunnelHello:
      c->readTunnelHello();
      break;
    case State::kRelay:
      c->relay(c->client_, c->upstream_, false);
      break;
    case State::kRefuse: {
      evbuffer* input = bufferevent_get_input(c->client_);
      evbuffer_drain(input, evbuffer_get_length(input));  // never parsed: RFC 9931
      break;
    }
    default:
      break;
  }
}

void Connection::readHead() {
  evbuffer* input = bufferevent_get_input(client_);
  const size_t length = evbuffer_get_length(input);
  const auto* data = reinterpret_cast<const char*>(evbuffer_pullup(input, -1));
  const ConnectStatus status = connect_parser_->parse(std::string_view(data, length));
  switch (status) {
    case ConnectStatus::kNeedMore:
      return;
    case ConnectStatus::kMalformed: {
      const ConnectError error = connect_parser_->error();
      std::string sentence =
          "denied: malformed CONNECT request (" + std::string(connectErrorName(error)) + ")";
      if (error == ConnectError::kTlsOnProxyPort) {
        sentence = "denied: the client sent TLS to the proxy port; use an http:// proxy URL";
      }
      refuse(400, connectErrorName(error), sentence);
      return;
    }
    case ConnectStatus::kMethodNotAllowed:
      refuse(405, "connect_only",
             "denied: method " + std::string(connect_parser_->request().method) +
                 " is not supported; this proxy only tunnels with CONNECT");
      return;
    case ConnectStatus::kTooLarge:
      refuse(431, "head_too_large", "denied: the CONNECT request head is too large");
      return;
    case ConnectStatus::kDone:
      break;
  }
  const ConnectRequest& request = connect_parser_->request();
  host_ = std::string(request.host);
  port_ = request.port;
  record_.target = host_;
  record_.port = port_;
  evbuffer_drain(input, request.head_length);  // what is left is early tunnel data
  connect_parser_.reset();
  bufferevent_disable(client_, EV_READ);
  evtimer_del(timer_);

  const Decision decision = policy_->decide(host_, port_);
  const auto literal = IpAddress::parse(host_);
  host_is_literal_ = literal.has_value();
  if (decision.rule != nullptr) {
    record_.rule = decision.rule->text;
  }
  record_.reason = reasonName(decision.reason);
  record_.sentence = policy_->describe(decision, {host_, literal, port_});
  if (!decision.allowed()) {
    refuse(403, reasonName(decision.reason), record_.sentence);
    return;
  }
  noteWouldDeny(decision, {host_, literal, port_});
  if (literal) {
    chooseCandidates({*literal});
    return;
  }
  host_ = normalizedName(host_);
  resolve(host_);
}

void Connection::readHello() {
  evbuffer* input = bufferevent_get_input(client_);
  const size_t length = evbuffer_get_length(input);
  const auto* data = evbuffer_pullup(input, -1);
  const ClientHelloStatus status = hello_parser_->parse(std::span<const uint8_t>(data, length));
  if (status == ClientHelloStatus::kNeedMore) {
    if (length > 2 * worker_.context().settings().max_client_hello_size + 1024) {
      deny("clienthello_too_large", "denied: the ClientHello is larger than allowed");
    }
    return;
  }
  if (status != ClientHelloStatus::kDone) {
    const std::string_view reason = clientHelloErrorName(hello_parser_->error());
    deny(reason, "denied: not an acceptable TLS ClientHello (" + std::string(reason) + ")");
    return;
  }
  bufferevent_disable(client_, EV_READ);
  evtimer_del(timer_);
  decideHello(hello_parser_->hello());
}

void Connection::decideHello(const ClientHello& hello) {
  const ProxySettings& settings = worker_.context().settings();
  record_.target = std::string(hello.sni);
  if (kind_ == ListenerKind::kSni) {
    port_ = settings.sni_upstream_port.value_or(listener_address_.port());
  } else {
    if (!original_dst_) {
      deny("not_redirected", "denied: no original destination on a transparent connection");
      return;
    }
    // port_ and record_.original_dst were set in start().
    if (original_dst_->port() == listener_address_.port() &&
        (isWildcard(listener_address_) || sameEndpoint(*original_dst_, listener_address_))) {
      deny("not_redirected",
           "denied: the connection was made to the transparent listener itself, not redirected");
      return;
    }
  }
  record_.port = port_;
  if (!hello.has_sni) {
    if (kind_ == ListenerKind::kTransparent && settings.allow_no_sni) {
      // Without a name only the allowed set can vouch for the destination.
      const IpAddress destination = toIpAddress(*original_dst_);
      const Decision decision = policy_->decideAddress(destination);
      record_.sentence = policy_->describe(decision, {"", destination, port_});
      if (decision.reason != Reason::kAddressAllowed) {
        deny("no_sni", "denied: no SNI, and " + record_.sentence.substr(0));
        return;
      }
      record_.reason = reasonName(decision.reason);
      candidates_ = {destination};
      dialNext();
      return;
    }
    deny("no_sni", "denied: the ClientHello carries no SNI");
    return;
  }
  const Decision name = policy_->decideName(hello.sni, port_);
  record_.reason = reasonName(name.reason);
  record_.rule = name.rule != nullptr ? name.rule->text : std::string();
  record_.sentence = policy_->describe(name, {hello.sni, std::nullopt, port_});
  if (!name.allowed()) {
    deny(reasonName(name.reason), record_.sentence, record_.rule);
    return;
  }
  noteWouldDeny(name, {hello.sni, std::nullopt, port_});
  host_ = normalizedName(hello.sni);
  if (kind_ == ListenerKind::kTransparent) {
    const IpAddress destination = toIpAddress(*original_dst_);
    const Decision address = policy_->decideAddress(destination);
    if (!address.allowed()) {
      deny(reasonName(address.reason), policy_->describe(address, {"", destination, port_}),
           address.rule != nullptr ? address.rule->text : std::string());
      return;
    }
    if (address.reason == Reason::kAddressAllowed) {
      record_.sentence += "; " + policy_->describe(address, {"", destination, port_});
      candidates_ = {destination};
      dialNext();
      return;
    }
    // Public but not in the allowed set: the SNI's own DNS answers must include it.
  }
  resolve(host_);
}

// ---- DNS ----

void Connection::resolve(std::string_view name) {
  state_ = State::kResolve;
  dns_started_ = Clock::now();
  const uint64_t ticket = worker_.resolver().resolve(name, [this](const DnsAnswer& answer) {
    dns_ticket_ = 0;
    onResolved(answer);
  });
  if (state_ == State::kResolve) {
    dns_ticket_ = ticket;
  }
}

void Connection::onResolved(const DnsAnswer& answer) {
  record_.dns_ms = msSince(dns_started_);
  if (answer.status != DnsStatus::kOk) {
    const bool timeout = answer.status == DnsStatus::kTimeout;
    const std::string_view reason = answer.status == DnsStatus::kTimeout       ? "dns_timeout"
                                    : answer.status == DnsStatus::kNxDomain    ? "dns_nxdomain"
                                    : answer.status == DnsStatus::kNoAddresses ? "dns_no_addresses"
                                                                               : "dns_failure";
    const std::string sentence = "denied: DNS lookup of " + host_ + " failed (" +
                                 std::string(dnsStatusName(answer.status)) + ")";
    if (kind_ == ListenerKind::kConnect) {
      refuse(timeout ? 504 : 502, reason, sentence);
    } else {
      deny(reason, sentence);
    }
    return;
  }
  if (kind_ == ListenerKind::kTransparent) {
    const IpAddress destination = toIpAddress(*original_dst_);
    const Decision decision = policy_->decideOriginalDestination(destination, answer.addresses);
    if (!decision.allowed()) {
      deny(reasonName(decision.reason), policy_->describe(decision, {host_, destination, port_}),
           decision.rule != nullptr ? decision.rule->text : std::string());
      return;
    }
    noteWouldDeny(decision, {host_, destination, port_});
    candidates_ = {destination};
    dialNext();
    return;
  }
  chooseCandidates(answer.addresses);
}

void Connection::chooseCandidates(const std::vector<IpAddress>& addresses) {
  candidates_.clear();
  for (const IpAddress& address : addresses) {
    const Decision decision = policy_->decideAddress(address);
    const SocketAddress endpoint = toSocketAddress(address, port_);
    if (sameEndpoint(endpoint, listener_address_)) {
      if (!first_address_denial_) {
        first_address_denial_ = Decision{Verdict::kDeny, Reason::kAddressDenied, nullptr, 0};
        first_denied_address_ = address;
      }
      continue;  // never dial ourselves
    }
    if (decision.allowed()) {
      candidates_.push_back(address);
      noteWouldDeny(decision, {host_, address, port_});
    } else if (!first_address_denial_) {
      first_address_denial_ = decision;
      first_denied_address_ = address;
    }
  }
  if (candidates_.empty()) {
    const Decision& denial = *first_address_denial_;
    std::string sentence =
        denial.rule == nullptr && denial.reason == Reason::kAddressDenied
            ? "denied: " + first_denied_address_.toString() + " is this proxy's own listener"
            : policy_->describe(denial, {host_, first_denied_address_, port_});
    const std::string_view reason =
        denial.rule == nullptr && denial.reason == Reason::kAddressDenied
            ? "self_connection"
            : reasonName(denial.reason);
    if (kind_ == ListenerKind::kConnect) {
      record_.rule = denial.rule != nullptr ? denial.rule->text : std::string();
      refuse(403, reason, sentence);
    } else {
      deny(reason, sentence, denial.rule != nullptr ? denial.rule->text : std::string());
    }
    return;
  }
  dialNext();
}

// ---- dialling ----

void Connection::dialNext() {
  const ProxySettings& settings = worker_.context().settings();
  closeUpstream(false);
  if (state_ != State::kConnect) {
    state_ = State::kConnect;
    connect_started_ = Clock::now();
    connect_deadline_ = connect_started_ + settings.connect_timeout;
  }
  if (next_candidate_ >= candidates_.size() || Clock::now() >= connect_deadline_) {
    record_.connect_ms = msSince(connect_started_);
    const bool refused = last_connect_error_ == ECONNREFUSED;
    const std::string_view reason = connect_timed_out_ && !refused ? "upstream_timeout"
                                    : refused                      ? "upstream_refused"
                                                                   : "upstream_unreachable";
    const std::string sentence =
        "upstream " + host_ + " port " + std::to_string(port_) + " failed: " + std::string(reason) +
        (last_connect_error_ != 0 ? " (" + std::string(std::strerror(last_connect_error_)) + ")"
                                  : std::string());
    if (kind_ == ListenerKind::kConnect) {
      refuse(reason == "upstream_timeout" ? 504 : 502, reason, sentence);
    } else {
      deny(reason, sentence);
    }
    return;
  }
  const IpAddress address = candidates_[next_candidate_++];
  const size_t remaining = candidates_.size() - next_candidate_ + 1;
  const SocketAddress endpoint = toSocketAddress(address, port_);
  record_.dialled = endpoint.toString();
  const int fd = socket(endpoint.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    last_connect_error_ = errno;
    dialNext();
    return;
  }
  if (settings.mark && !setMark(fd, *settings.mark)) {
    // Without its mark the upstream socket could be redirected back to us: fail closed.
    last_connect_error_ = errno;
    close(fd);
    candidates_.clear();
    dialNext();
    return;
  }
  setKeepalive(fd, settings.keepalive_idle);
  upstream_ = bufferevent_socket_new(worker_.base(), fd, BEV_OPT_CLOSE_ON_FREE);
  bufferevent_setcb(upstream_, &Connection::onUpstreamRead, &Connection::onUpstreamWrite,
                    &Connection::onUpstreamEvent, this);
  const auto budget = std::chrono::duration_cast<std::chrono::milliseconds>(
      (connect_deadline_ - Clock::now()) / remaining);
  armTimer(std::max(budget, std::chrono::milliseconds(1)));
  if (bufferevent_socket_connect(upstream_, endpoint.get(), static_cast<int>(endpoint.length)) !=
      0) {
    onUpstreamFailed(EVUTIL_SOCKET_ERROR());
    return;
  }
  if (worker_.context().guardsLoops()) {
    // connect() has bound the local port already: register it before the kernel can deliver a
    // redirected copy of this connection to our own transparent listener.
    upstream_local_ = localAddress(fd);
    if (upstream_local_) {
      worker_.context().ownUpstreams().add(*upstream_local_);
    }
  }
}

void Connection::closeUpstream(bool reset) {
  if (upstream_local_) {
    worker_.context().ownUpstreams().remove(*upstream_local_);
    upstream_local_.reset();
  }
  if (upstream_ != nullptr) {
    if (reset) {
      setResetOnClose(bufferevent_getfd(upstream_));
    }
    bufferevent_free(upstream_);
    upstream_ = nullptr;
  }
}

void Connection::onUpstreamFailed(int error) {
  last_connect_error_ = error;
  evtimer_del(timer_);
  dialNext();
}

void Connection::onUpstreamConnected() {
  evtimer_del(timer_);
  record_.connect_ms = msSince(connect_started_);
  if (kind_ != ListenerKind::kConnect) {
    startRelay();
    return;
  }
  static constexpr char kEstablished[] = "HTTP/1.1 200 Connection established\r\n\r\n";
  bufferevent_write(client_, kEstablished, sizeof(kEstablished) - 1);
  state_ = State::kTunnelHello;
  hello_parser_ =
      std::make_unique<ClientHelloParser>(worker_.context().settings().max_client_hello_size);
  bufferevent_setwatermark(client_, EV_READ, 0,
                           2 * worker_.context().settings().max_client_hello_size + 1024);
  bufferevent_enable(client_, EV_READ);
  armTimer(worker_.context().settings().head_timeout);
  if (evbuffer_get_length(bufferevent_get_input(client_)) > 0) {
    readTunnelHello();  // early bytes sent with the head
  }
}

void Connection::readTunnelHello() {
  evbuffer* input = bufferevent_get_input(client_);
  const size_t length = evbuffer_get_length(input);
  if (length == 0) {
    return;
  }
  const auto* data = evbuffer_pullup(input, -1);
  const ClientHelloStatus status = hello_parser_->parse(std::span<const uint8_t>(data, length));
  if (status == ClientHelloStatus::kNeedMore) {
    if (length > 2 * worker_.context().settings().max_client_hello_size + 1024) {
      deny("clienthello_too_large", "denied: the tunnel's ClientHello is larger than allowed");
    }
    return;
  }
  if (status == ClientHelloStatus::kNotTls) {
    if (worker_.context().settings().allow_non_tls) {
      startRelay();
    } else {
      deny("not_tls", "denied: the tunnel does not start with a TLS ClientHello");
    }
    return;
  }
  if (status != ClientHelloStatus::kDone) {
    const std::string_view reason = clientHelloErrorName(hello_parser_->error());
    deny(reason,
         "denied: the tunnel's ClientHello is not acceptable (" + std::string(reason) + ")");
    return;
  }
  const ClientHello& hello = hello_parser_->hello();
  if (hello.has_sni && normalizedName(hello.sni) != host_) {
    deny("sni_mismatch", "denied: the tunnel's SNI names another host than the CONNECT target");
    return;
  }
  if (!hello.has_sni && !host_is_literal_) {
    deny("sni_mismatch", "denied: the tunnel's ClientHello has no SNI but CONNECT named a host");
    return;
  }
  startRelay();
}

// ---- relaying ----

void Connection::startRelay() {
  state_ = State::kRelay;
  worker_.context().stats().active_tunnels.fetch_add(1, kRelaxed);
  evtimer_del(timer_);
  hello_parser_.reset();
  record_.allowed = true;
  record_.decision_ms = msSince(started_);
  bufferevent_setwatermark(client_, EV_READ, 0, 0);
  relay(client_, upstream_, false);  // the buffered head bytes / ClientHello, byte-exact, once
  bufferevent_enable(client_, EV_READ);
  bufferevent_enable(upstream_, EV_READ);
  last_activity_ = Clock::now();
  const auto idle = worker_.context().settings().idle_timeout;
  armTimer(std::min<std::chrono::milliseconds>(idle, std::chrono::milliseconds(10'000)));
}

void Connection::relay(bufferevent* from, bufferevent* to, bool upstream_to_client) {
  evbuffer* source = bufferevent_get_input(from);
  evbuffer* sink = bufferevent_get_output(to);
  const size_t length = evbuffer_get_length(source);
  if (length == 0) {
    return;
  }
  (upstream_to_client ? record_.bytes_down : record_.bytes_up) += length;
  ProxyStats& stats = worker_.context().stats();
  (upstream_to_client ? stats.bytes_down : stats.bytes_up).fetch_add(length, kRelaxed);
  evbuffer_add_buffer(sink, source);
  last_activity_ = Clock::now();
  if (evbuffer_get_length(sink) >= kHighWater) {
    bufferevent_disable(from, EV_READ);
    bufferevent_setwatermark(to, EV_WRITE, kHighWater / 2, 0);
  }
}

void Connection::onUpstreamRead(bufferevent*, void* self) {
  auto* c = static_cast<Connection*>(self);
  if (c->state_ == State::kRelay) {
    c->relay(c->upstream_, c->client_, true);
  }
}

// Called when a side's output drained to its low watermark: resume the other side's reading, and
// pass on a pending FIN once everything before it is out.
void Connection::onClientWrite(bufferevent*, void* self) {
  auto* c = static_cast<Connection*>(self);
  if (c->state_ == State::kRefuse) {
    if (!c->client_shut_) {
      c->client_shut_ = true;
      shutdown(bufferevent_getfd(c->client_), SHUT_WR);
    }
    return;
  }
  if (c->state_ != State::kRelay) {
    return;
  }
  bufferevent_setwatermark(c->client_, EV_WRITE, 0, 0);
  if (!c->upstream_eof_) {
    bufferevent_enable(c->upstream_, EV_READ);
  } else if (!c->client_shut_ && evbuffer_get_length(bufferevent_get_output(c->client_)) == 0) {
    c->onEof(false);
  }
}

void Connection::onUpstreamWrite(bufferevent*, void* self) {
  auto* c = static_cast<Connection*>(self);
  if (c->state_ != State::kRelay) {
    return;
  }
  bufferevent_setwatermark(c->upstream_, EV_WRITE, 0, 0);
  if (!c->client_eof_) {
    bufferevent_enable(c->client_, EV_READ);
  } else if (!c->upstream_shut_ && evbuffer_get_length(bufferevent_get_output(c->upstream_)) == 0) {
    c->onEof(true);
  }
}

// A side sent FIN: forward it once its data is flushed; close when both directions are done.
void Connection::onEof(bool from_client) {
  if (record_.closed_by.empty()) {
    record_.closed_by = from_client ? "client" : "upstream";
  }
  bufferevent* to = from_client ? upstream_ : client_;
  bool& shut = from_client ? upstream_shut_ : client_shut_;
  (from_client ? client_eof_ : upstream_eof_) = true;
  if (!shut && evbuffer_get_length(bufferevent_get_output(to)) == 0) {
    shut = true;
    shutdown(bufferevent_getfd(to), SHUT_WR);
  }
  if (client_eof_ && upstream_eof_ && client_shut_ && upstream_shut_) {
    finish(record_.closed_by, false);
  }
}

void Connection::onClientEvent(bufferevent*, short events, void* self) {
  auto* c = static_cast<Connection*>(self);
  if (c->state_ == State::kRelay && (events & BEV_EVENT_EOF) != 0) {
    c->relay(c->client_, c->upstream_, false);
    c->onEof(true);
    return;
  }
  if (c->state_ == State::kRefuse) {
    c->finish("client", false);
    return;
  }
  // EOF or error before the tunnel, or an error while relaying: the client went away.
  if (c->record_.reason.empty()) {
    c->record_.reason = "client_closed";
  }
  c->finish("client", (events & BEV_EVENT_ERROR) != 0 || c->state_ == State::kRelay);
}

void Connection::onUpstreamEvent(bufferevent*, short events, void* self) {
  auto* c = static_cast<Connection*>(self);
  if (c->state_ == State::kConnect) {
    if ((events & BEV_EVENT_CONNECTED) != 0) {
      c->onUpstreamConnected();
    } else {
      c->onUpstreamFailed(EVUTIL_SOCKET_ERROR());
    }
    return;
  }
  if (c->state_ == State::kRelay && (events & BEV_EVENT_EOF) != 0 &&
      (events & BEV_EVENT_ERROR) == 0) {
    c->relay(c->upstream_, c->client_, true);
    c->onEof(false);
    return;
  }
  // An upstream reset (or error) reaches the client as a reset.
  c->finish("upstream", true);
}

void Connection::onTimer(evutil_socket_t, short, void* self) {
  auto* c = static_cast<Connection*>(self);
  switch (c->state_) {
    case State::kReadHead:
      c->refuse(408, "head_timeout", "denied: the CONNECT head did not arrive in time");
      break;
    case State::kReadHello:
    case State::kTunnelHello:
      c->deny("hello_timeout", "denied: the ClientHello did not arrive in time");
      break;
    case State::kConnect:
      c->connect_timed_out_ = true;
      c->last_connect_error_ = ETIMEDOUT;
      c->dialNext();
      break;
    case State::kRelay: {
      const auto idle = c->worker_.context().settings().idle_timeout;
      if (Clock::now() - c->last_activity_ >= idle) {
        c->record_.closed_by = "proxy";
        c->finish("proxy", false);
      } else {
        c->armTimer(std::min<std::chrono::milliseconds>(idle, std::chrono::milliseconds(10'000)));
      }
      break;
    }
    case State::kRefuse:
      c->finish("proxy", false);
      break;
    default:
      break;
  }
}

// ---- endings ----

void Connection::refuse(int status, std::string_view reason, const std::string& sentence) {
  if (kind_ != ListenerKind::kConnect || state_ == State::kTunnelHello || state_ == State::kRelay) {
    deny(reason, sentence);
    return;
  }
  record_.allowed = false;
  record_.reason = reason;
  record_.sentence = sentence;
  if (dns_ticket_ != 0) {
    worker_.resolver().cancel(dns_ticket_);
    dns_ticket_ = 0;
  }
  closeUpstream(false);
  const std::string body = "acr-egress: " + sentence + "\n";
  // The reason is in the status line too: Go clients (docker, skopeo) report only that.
  const std::string response =
      "HTTP/1.1 " + std::to_string(status) + " " + std::string(statusText(status)) +
      " (acr-egress: " + std::string(reason) + ")\r\nX-Acr-Egress-Reason: " + std::string(reason) +
      "\r\nContent-Type: text/plain\r\nContent-Length: " + std::to_string(body.size()) +
      "\r\nConnection: close\r\n\r\n" + body;
  state_ = State::kRefuse;
  evbuffer_drain(bufferevent_get_input(client_),
                 evbuffer_get_length(bufferevent_get_input(client_)));
  bufferevent_setwatermark(client_, EV_READ, 0, 0);
  bufferevent_write(client_, response.data(), response.size());
  bufferevent_enable(client_, EV_READ | EV_WRITE);
  armTimer(kRefuseLinger);
}

void Connection::deny(std::string_view reason, const std::string& sentence, std::string rule) {
  if (kind_ == ListenerKind::kConnect &&
      (state_ == State::kReadHead || state_ == State::kResolve || state_ == State::kConnect)) {
    refuse(403, reason, sentence);
    return;
  }
  record_.allowed = false;
  record_.reason = reason;
  record_.sentence = sentence;
  if (!rule.empty()) {
    record_.rule = std::move(rule);
  }
  finish("proxy", true);
}

void Connection::noteWouldDeny(const Decision& decision, const DecisionSubject& subject) {
  if (!decision.would_deny || record_.would_deny) {
    return;
  }
  record_.would_deny = true;
  record_.reason = reasonName(decision.reason);
  record_.rule = decision.rule != nullptr ? decision.rule->text : std::string();
  record_.sentence = policy_->describe(decision, subject);
}

void Connection::abort(std::string_view reason) {
  if (state_ == State::kClosed) {
    return;
  }
  if (state_ != State::kRelay) {
    record_.allowed = false;
  }
  record_.reason = record_.reason.empty() ? reason : record_.reason;
  record_.sentence += record_.sentence.empty() ? std::string(reason) : "; " + std::string(reason);
  finish("proxy", true);
}

void Connection::finish(std::string_view closed_by, bool reset) {
  if (state_ == State::kClosed) {
    return;
  }
  if (dns_ticket_ != 0) {
    worker_.resolver().cancel(dns_ticket_);
    dns_ticket_ = 0;
  }
  record_.phase = phaseName();
  record_.closed_by = record_.closed_by.empty() ? closed_by : record_.closed_by;
  record_.total_ms = msSince(started_);
  if (client_ != nullptr) {
    if (reset) {
      setResetOnClose(bufferevent_getfd(client_));
    }
    bufferevent_free(client_);
    client_ = nullptr;
  }
  closeUpstream(reset);
  evtimer_del(timer_);
  ProxyStats& stats = worker_.context().stats();
  if (state_ == State::kRelay) {
    stats.active_tunnels.fetch_sub(1, kRelaxed);
  }
  state_ = State::kClosed;
  (record_.allowed ? stats.allowed : stats.denied).fetch_add(1, kRelaxed);
  worker_.context().logConnection(record_);
  worker_.context().metrics().recordConnection(record_);
  worker_.release(this);
}

}  // namespace acr
