#include "proxy/connection.h"

#include <event2/buffer.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "filters/host_name.h"
#include "proxy/socket_options.h"
#include "proxy/worker.h"

namespace acr {
namespace {

using Clock = std::chrono::steady_clock;

// Relay flow control: stop reading a side once this much waits for the other side, resume at
// half (Envoy's watermark buffers). Bounds memory per tunnel at about 2 x (kHighWater + one read
// of at most 16 KiB, libevent's default); --max-buffer-memory bounds all tunnels together.
constexpr size_t kHighWater = 64 * 1024;
constexpr auto kRelaxed = std::memory_order_relaxed;
// How long a refused CONNECT client may keep sending before we close anyway.
constexpr std::chrono::milliseconds kRefuseLinger{2000};
// RFC 8305 §3 "Resolution Delay": when the A answer comes first, wait this long for the AAAA
// answer before dialling IPv4 (an AAAA answer that comes first is dialled at once).
constexpr std::chrono::milliseconds kResolutionDelay{50};

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
      peer_(peer),
      destination_(originalDestination(fd)),
      looped_(worker.context().guardsLoops() && destination_ &&
              worker.context().ownUpstreams().contains(peer, *destination_)),
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
  }
  if (looped_) {
    // On every listener kind: closed with a reset at once, before reading a byte.
    loop_rechecked_ = true;
    refusedAsLoop();
    return;
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

bool Connection::refusedAsLoop() {
  if (!loop_rechecked_) {
    loop_rechecked_ = true;
    if (!worker_.context().guardsLoops() || !destination_ ||
        !worker_.context().ownUpstreams().contains(peer_, *destination_)) {
      return false;
    }
  }
  record_.reason = "proxy_loop";
  record_.sentence =
      "denied: this is the proxy's own upstream connection redirected back to it; exclude the "
      "proxy's traffic from the redirect rule (--mark)";
  finish("proxy", true);
  return true;
}

void Connection::readHead() {
  if (!loop_rechecked_ && refusedAsLoop()) {
    return;
  }
  evbuffer* input = bufferevent_get_input(client_);
  const size_t length = evbuffer_get_length(input);
  if (!holdHandshake(length)) {
    refuse(503, "handshake_memory",
           "denied: the memory for unfinished requests (--max-handshake-memory) is used up");
    return;
  }
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
  holdHandshake(evbuffer_get_length(input));
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
  if (!loop_rechecked_ && refusedAsLoop()) {
    return;
  }
  evbuffer* input = bufferevent_get_input(client_);
  const size_t length = evbuffer_get_length(input);
  if (!holdHandshake(length)) {
    deny("handshake_memory",
         "denied: the memory for unfinished ClientHellos (--max-handshake-memory) is used up");
    return;
  }
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
  record_.ech = hello.ech_offered;
  if (!hello.has_sni && !hello.esni_offered && kind_ == ListenerKind::kTransparent &&
      settings.allow_no_sni) {
    // Without a name only the allowed set can vouch for the destination, on an allowed port.
    const IpAddress destination = toIpAddress(*original_dst_);
    const Decision decision = policy_->decideWithoutSni(destination, port_);
    record_.sentence = policy_->describe(decision, {"", destination, port_});
    if (!decision.allowed()) {
      deny(reasonName(decision.reason), record_.sentence,
           decision.rule != nullptr ? decision.rule->text : std::string());
      return;
    }
    record_.reason = reasonName(decision.reason);
    if (refusedAsSelf(destination)) {
      return;
    }
    candidates_ = {destination};
    dial(false);
    return;
  }
  const Decision name = policy_->decideSni(hello, port_);
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
      if (refusedAsSelf(destination)) {
        return;
      }
      candidates_ = {destination};
      dial(false);
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
  Resolver::Callback first_family;
  if (kind_ != ListenerKind::kTransparent) {
    // The transparent listener dials only the original destination: it needs the whole answer.
    first_family = [this](const DnsAnswer& answer) { onFirstFamily(answer); };
  }
  const uint64_t ticket = worker_.resolver().resolve(
      name,
      [this](const DnsAnswer& answer) {
        dns_ticket_ = 0;
        onResolved(answer);
      },
      std::move(first_family));
  if (state_ == State::kResolve) {
    dns_ticket_ = ticket;
  }
}

void Connection::onFirstFamily(const DnsAnswer& answer) {
  if (state_ != State::kResolve || answer.status != DnsStatus::kOk || answer.addresses.empty()) {
    return;
  }
  first_family_ = answer.addresses;
  if (answer.addresses.front().isV4()) {
    armTimer(kResolutionDelay);  // onTimer: dialFirstFamily()
    return;
  }
  dialFirstFamily();
}

void Connection::dialFirstFamily() {
  record_.dns_ms = msSince(dns_started_);
  chooseCandidates(first_family_, true);
}

void Connection::onResolved(const DnsAnswer& answer) {
  if (dialer_ != nullptr) {
    // Dialling started with the first family: the rest joins the attempts, judged the same way.
    // (A dial that has ended already ignores it; onDialed normally cancels the lookup.)
    if (state_ == State::kConnect) {
      chooseCandidates(
          answer.status == DnsStatus::kOk ? answer.addresses : std::vector<IpAddress>{}, false);
    }
    return;
  }
  evtimer_del(timer_);  // the resolution delay, if it ran
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
    if (refusedAsSelf(destination)) {
      return;
    }
    noteWouldDeny(decision, {host_, destination, port_});
    candidates_ = {destination};
    dial(false);
    return;
  }
  chooseCandidates(answer.addresses);
}

bool Connection::dialsSelf(const IpAddress& address) const {
  return worker_.context().localAddresses()->contains(address, port_);
}

std::string Connection::selfSentence(const IpAddress& address) const {
  return "denied: " + address.toString() + " port " + std::to_string(port_) +
         " is one of this proxy's own listeners";
}

bool Connection::refusedAsSelf(const IpAddress& address) {
  if (!dialsSelf(address)) {
    return false;
  }
  deny("self_connection", selfSentence(address));
  return true;
}

void Connection::chooseCandidates(const std::vector<IpAddress>& addresses, bool more_coming) {
  candidates_.clear();
  for (const IpAddress& address : addresses) {
    if (dialsSelf(address)) {
      if (!first_address_denial_) {
        first_address_denial_ = Decision{Verdict::kDeny, Reason::kAddressDenied, nullptr, 0};
        first_denied_address_ = address;
        first_denial_is_self_ = true;
      }
      continue;  // never dial ourselves
    }
    const Decision decision = policy_->decideAddress(address);
    if (decision.allowed()) {
      candidates_.push_back(address);
      noteWouldDeny(decision, {host_, address, port_});
    } else if (!first_address_denial_) {
      first_address_denial_ = decision;
      first_denied_address_ = address;
    }
  }
  if (candidates_.empty() && (more_coming || dialer_ != nullptr)) {
    if (dialer_ != nullptr) {
      dialer_->add({}, more_coming);  // nothing new; the dial may now end
    }
    return;
  }
  if (candidates_.empty()) {
    const Decision& denial = *first_address_denial_;
    const std::string sentence =
        first_denial_is_self_ ? selfSentence(first_denied_address_)
                              : policy_->describe(denial, {host_, first_denied_address_, port_});
    const std::string_view reason =
        first_denial_is_self_ ? "self_connection" : reasonName(denial.reason);
    if (kind_ == ListenerKind::kConnect) {
      record_.rule = denial.rule != nullptr ? denial.rule->text : std::string();
      refuse(403, reason, sentence);
    } else {
      deny(reason, sentence, denial.rule != nullptr ? denial.rule->text : std::string());
    }
    return;
  }
  dial(more_coming);
}

// ---- dialling ----

void Connection::dial(bool more_coming) {
  if (dialer_ == nullptr) {
    const ProxySettings& settings = worker_.context().settings();
    state_ = State::kConnect;
    evtimer_del(timer_);
    connect_started_ = Clock::now();
    DialOptions options;
    options.port = port_;
    options.attempt_delay = settings.happy_eyeballs_delay;
    options.deadline = connect_started_ + settings.connect_timeout;
    options.mark = settings.mark;
    options.keepalive_idle = settings.keepalive_idle;
    options.own_upstreams =
        worker_.context().guardsLoops() ? &worker_.context().ownUpstreams() : nullptr;
    dialer_ = std::make_unique<HappyEyeballsDialer>(
        worker_.base(), options, [this](DialResult result) { onDialed(std::move(result)); });
  }
  dialer_->add(candidates_, more_coming);
}

void Connection::onDialed(DialResult result) {
  record_.connect_ms = msSince(connect_started_);
  if (dns_ticket_ != 0) {
    // Dialling started before the whole answer: what is still to come no longer matters.
    worker_.resolver().cancel(dns_ticket_);
    dns_ticket_ = 0;
  }
  if (result.endpoint) {
    record_.dialled = result.endpoint->toString();
  }
  if (result.upstream != nullptr) {
    upstream_ = result.upstream;
    upstream_local_ = result.local;
    if (result.endpoint) {
      upstream_remote_ = *result.endpoint;
    }
    bufferevent_setcb(upstream_, &Connection::onUpstreamRead, &Connection::onUpstreamWrite,
                      &Connection::onUpstreamEvent, this);
    onUpstreamConnected();
    return;
  }
  const int error = result.error;
  const bool refused = error == ECONNREFUSED;
  const bool timed_out = result.timed_out || error == ETIMEDOUT;
  const std::string_view reason = timed_out && !refused ? "upstream_timeout"
                                  : refused             ? "upstream_refused"
                                                        : "upstream_unreachable";
  const std::string sentence =
      "upstream " + host_ + " port " + std::to_string(port_) + " failed: " + std::string(reason) +
      (error != 0 ? " (" + std::string(std::strerror(error)) + ")" : std::string());
  if (kind_ == ListenerKind::kConnect) {
    refuse(reason == "upstream_timeout" ? 504 : 502, reason, sentence);
  } else {
    deny(reason, sentence);
  }
}

void Connection::closeUpstream(bool reset) {
  if (dialer_ != nullptr) {
    dialer_->cancel();
  }
  if (upstream_local_) {
    worker_.context().ownUpstreams().remove(*upstream_local_, upstream_remote_);
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

void Connection::onUpstreamConnected() {
  evtimer_del(timer_);
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
  if (!holdHandshake(length)) {
    deny("handshake_memory",
         "denied: the memory for unfinished ClientHellos (--max-handshake-memory) is used up");
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
  record_.ech = hello.ech_offered;
  if (hello.esni_offered) {
    const Decision esni = policy_->decideSni(hello, port_);
    deny(reasonName(esni.reason), policy_->describe(esni, {hello.sni, std::nullopt, port_}));
    return;
  }
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
  // From here the buffered head bytes are relay data, counted by the output buffers.
  releaseHandshake();
  evbuffer* client_output = bufferevent_get_output(client_);
  evbuffer* upstream_output = bufferevent_get_output(upstream_);
  const auto already = static_cast<int64_t>(evbuffer_get_length(client_output) +
                                            evbuffer_get_length(upstream_output));
  relay_buffered_ = already;
  worker_.context().stats().relay_buffered.fetch_add(already, kRelaxed);
  client_output_cb_ = evbuffer_add_cb(client_output, &Connection::onOutputChanged, this);
  upstream_output_cb_ = evbuffer_add_cb(upstream_output, &Connection::onOutputChanged, this);
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
  const size_t queued = evbuffer_get_length(sink);
  if (queued >= kHighWater || (queued > 0 && overBufferBudget(queued))) {
    // Resumed by the sink's write callback once it has drained to the low watermark.
    bufferevent_disable(from, EV_READ);
    bufferevent_setwatermark(to, EV_WRITE, std::min(kHighWater / 2, queued / 2), 0);
  }
}

bool Connection::overBufferBudget(size_t queued) const noexcept {
  const ProxyStats& stats = worker_.context().stats();
  const auto limit = static_cast<int64_t>(worker_.context().settings().max_buffer_memory);
  const int64_t used = stats.relay_buffered.load(kRelaxed);
  if (used <= limit) {
    return false;
  }
  // Past the budget, the tunnels holding at least an equal share stop first; the ones holding
  // less (readers that keep up) go on until the budget is exceeded by a quarter, where every
  // side with bytes queued stops. Total: at most 1.25 x the budget plus one read per tunnel.
  const uint64_t tunnels = std::max<uint64_t>(1, stats.active_tunnels.load(kRelaxed));
  return queued >= static_cast<uint64_t>(limit) / tunnels || used > limit + limit / 4;
}

void Connection::onOutputChanged(evbuffer*, const evbuffer_cb_info* info, void* self) {
  auto* c = static_cast<Connection*>(self);
  const auto delta = static_cast<int64_t>(info->n_added) - static_cast<int64_t>(info->n_deleted);
  c->relay_buffered_ += delta;
  c->worker_.context().stats().relay_buffered.fetch_add(delta, kRelaxed);
}

void Connection::releaseRelayBuffers() {
  if (client_output_cb_ != nullptr) {
    evbuffer_remove_cb_entry(bufferevent_get_output(client_), client_output_cb_);
    client_output_cb_ = nullptr;
  }
  if (upstream_output_cb_ != nullptr) {
    evbuffer_remove_cb_entry(bufferevent_get_output(upstream_), upstream_output_cb_);
    upstream_output_cb_ = nullptr;
  }
  worker_.context().stats().relay_buffered.fetch_sub(relay_buffered_, kRelaxed);
  relay_buffered_ = 0;
}

bool Connection::holdHandshake(size_t length) {
  const int64_t delta = static_cast<int64_t>(length) - handshake_held_;
  handshake_held_ = static_cast<int64_t>(length);
  const int64_t used =
      worker_.context().stats().handshake_buffered.fetch_add(delta, kRelaxed) + delta;
  return delta <= 0 ||
         used <= static_cast<int64_t>(worker_.context().settings().max_handshake_memory);
}

void Connection::releaseHandshake() {
  worker_.context().stats().handshake_buffered.fetch_sub(handshake_held_, kRelaxed);
  handshake_held_ = 0;
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
  if (c->record_.reason.empty() || c->passedPolicy()) {
    c->record_.reason = "client_closed";
    c->markIncomplete("the client closed the connection before the tunnel started");
  }
  c->finish("client", (events & BEV_EVENT_ERROR) != 0 || c->state_ == State::kRelay);
}

void Connection::onUpstreamEvent(bufferevent*, short events, void* self) {
  auto* c = static_cast<Connection*>(self);
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
    case State::kResolve:
      c->dialFirstFamily();  // the resolution delay ran out
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
  releaseHandshake();  // the input is drained below and never read again
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
  if (passedPolicy()) {
    // The policy's reason would say "allowed" about a connection that never relayed.
    record_.reason = reason;
    markIncomplete("the proxy shut down before the tunnel started");
    finish("proxy", true);
    return;
  }
  record_.reason = record_.reason.empty() ? reason : record_.reason;
  record_.sentence += record_.sentence.empty() ? std::string(reason) : "; " + std::string(reason);
  finish("proxy", true);
}

bool Connection::passedPolicy() const noexcept {
  // Only an allowed decision leads into these states; every refusal leaves through kRefuse or
  // finish() at once.
  return state_ == State::kResolve || state_ == State::kConnect || state_ == State::kTunnelHello;
}

void Connection::markIncomplete(std::string_view what) {
  record_.incomplete = true;
  record_.sentence = record_.sentence.empty() ? std::string(what)
                                              : record_.sentence + "; but " + std::string(what);
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
  releaseHandshake();
  releaseRelayBuffers();
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
  if (dialer_ != nullptr) {
    for (const DialAttempt& attempt : dialer_->attempts()) {
      record_.attempts.push_back(attempt.toString());
      worker_.context().metrics().recordConnectAttempt(attempt.endpoint.family() == AF_INET6,
                                                       attempt.outcome);
    }
  }
  (record_.allowed ? stats.allowed : stats.denied).fetch_add(1, kRelaxed);
  worker_.context().logConnection(record_);
  worker_.context().metrics().recordConnection(record_);
  worker_.release(this);
}

// ---------------------------------------------------------------------------------------------
// Revoke on reload (THREATS F14). Kept apart from the state handlers: it only reads the state and
// ends through deny()/finish() like any other refusal.

void Connection::rejudge(std::shared_ptr<const Policy> policy) {
  if (state_ == State::kRefuse || state_ == State::kClosed || policy == policy_) {
    return;
  }
  if (state_ != State::kReadHead && state_ != State::kReadHello) {
    // Already let through: judged again by what it was let through for.
    const IpAddress client = toIpAddress(peer_);
    std::optional<IpAddress> dialled;
    if (state_ == State::kRelay || state_ == State::kTunnelHello) {
      dialled = toIpAddress(upstream_remote_);
    }
    Decision decision = policy->decideClient(client);
    DecisionSubject subject{"", client, 0};
    if (decision.allowed()) {
      if (!host_.empty()) {
        decision = policy->decide(host_, port_);
        subject = {host_, IpAddress::parse(host_), port_};
      } else if (original_dst_) {  // transparent, no SNI (--allow-no-sni)
        subject = {"", toIpAddress(*original_dst_), port_};
        decision = policy->decideWithoutSni(*subject.address, port_);
      }
    }
    if (state_ == State::kConnect) {  // the addresses being dialled
      for (auto it = candidates_.begin(); decision.allowed() && it != candidates_.end(); ++it) {
        decision = policy->decideAddress(*it);
        subject = {host_, *it, port_};
      }
    }
    if (decision.allowed() && dialled) {
      decision = policy->decideAddress(*dialled);
      subject = {host_, dialled, port_};
    }
    if (!decision.allowed()) {
      const std::string sentence = "revoked by a reload: " + policy->describe(decision, subject);
      std::string rule = decision.rule != nullptr ? decision.rule->text : std::string();
      if (state_ == State::kRelay) {
        // It did relay: the record keeps decision allow, and says why the proxy ended it.
        record_.reason = "revoked";
        record_.rule = std::move(rule);
        record_.sentence += "; " + sentence;
        finish("proxy", true);
      } else {
        deny("revoked", sentence, std::move(rule));
      }
      return;
    }
  }
  replaced_policy_ = std::exchange(policy_, std::move(policy));
}

}  // namespace acr
