#include "proxy/connection.h"

#include <event2/buffer.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "filters/host_name.h"
#include "proxy/close_reason.h"
#include "proxy/socket_options.h"
#include "proxy/worker.h"

namespace acr {
namespace {

using Clock = std::chrono::steady_clock;

// How long a refused CONNECT client may keep sending before we close anyway.
constexpr std::chrono::milliseconds kRefuseLinger{2000};
// What kRefuse reads of a refused client's further bytes at a time, before dropping them.
constexpr size_t kRefuseRead = 16 * 1024;
// RFC 8305 §3 "Resolution Delay": when the A answer comes first, wait this long for the AAAA
// answer before dialling IPv4 (an AAAA answer that comes first is dialled at once).
constexpr std::chrono::milliseconds kResolutionDelay{50};
// The relay's idle check runs at least this often.
constexpr std::chrono::milliseconds kIdleCheck{10'000};

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
                       int fd, const SocketAddress& peer, std::shared_ptr<const Policy> policy,
                       ConnectionSlot slot)
    : worker_(worker),
      kind_(kind),
      state_(kind == ListenerKind::kConnect ? State::kReadHead : State::kReadHello),
      next_state_(state_),
      policy_(std::move(policy)),
      settings_(worker.context().settings()),
      slot_(std::move(slot)),
      client_(worker.base(), fd),
      handshake_(std::make_unique<Handshake>(listener_address)),
      peer_(peer),
      started_(Clock::now()) {
  record().listener = listenerKindName(kind);
  record().client = peer.toString();
  if (kind_ == ListenerKind::kTransparent) {
    original_dst_ = originalDestination(fd);
  }
  looped_ = isOwnUpstream(fd);
  client_open_ = client_.open(this);
  worker_.handshakeStarted();
  evtimer_assign(&timer_, worker.base(), &Connection::onTimer, this);
}

Connection::~Connection() {
  endHandshake();
  relay_.reset();
  client_.close(false);
  closeUpstream(false);
  disarmTimer();
}

AccessRecord& Connection::record() {
  if (handshake_ != nullptr) {
    return handshake_->record;
  }
  if (thawed_ == nullptr) {
    thawed_ = std::make_unique<AccessRecord>(packed_record_.unpack());
  }
  return *thawed_;
}

void Connection::start(std::optional<std::chrono::seconds> listener_keepalive) {
  const ProxySettings& settings = *settings_;
  if (!client_open_) {
    finish("proxy", true);
    return;
  }
  const int fd = client_.fd();
  if (listener_keepalive != settings.keepalive_idle) {
    setKeepalive(fd, settings.keepalive_idle);  // a reload changed it since the listener's bind
  }
  if (original_dst_) {
    // Known before the first byte: every log line, early denials included, names it.
    record().original_dst = original_dst_->toString();
    port_ = original_dst_->port();
    record().port = port_;
  }
  if (looped_) {
    // On every listener kind: closed with a reset at once, before reading a byte.
    loop_rechecked_ = true;
    refusedAsLoop();
    return;
  }
  post(Event::kEnter);
}

void Connection::refuseClient(const std::string& sentence) {
  if (!client_open_) {
    finish("proxy", true);
    return;
  }
  // connect: 403 from kRefuse; others: reset.
  if (end(CloseReason::kClientNotAllowed, sentence) == Step::kNext) {
    state_ = next_state_;
    post(Event::kEnter);
  }
}

// ---- the loop ----

void Connection::onStreamEvent(Stream& stream, short what) {
  if (&stream != &client_) {
    return;  // the upstream before the relay: the stream records its edges for the relay
  }
  if ((what & EV_WRITE) != 0 && client_.outputLength() > 0) {
    if (!client_.flush()) {
      client_failed_ = true;
      post(Event::kClientClosed);
      return;
    }
    if (client_.outputLength() == 0) {
      post(Event::kClientDrained);
    }
  }
  if (reading_ && state_ != State::kClosed) {
    readClient();
  }
}

void Connection::startReading(size_t limit) {
  reading_ = true;
  handshake_->read_limit = limit;
  if (client_.readable() || client_.eof() || client_.error() != 0) {
    // An edge came while nothing read (or the FIN was read already): no new one will come.
    // On the loop's next pass, not from inside the state machine.
    client_.activate(EV_READ);
  }
}

void Connection::readClient() {
  // A few reads per wake-up at most (a state that consumes its input, kRefuse, makes room for
  // more); the rest on the loop's next pass.
  for (int i = 0; i < 4; ++i) {
    if (!reading_ || state_ == State::kClosed) {
      return;
    }
    const size_t before = client_.inputLength();
    const Stream::ReadEnd end = client_.readToInput(handshake_->read_limit);
    if (client_.inputLength() > before) {
      post(Event::kClientData);
    }
    if (end == Stream::ReadEnd::kEof || end == Stream::ReadEnd::kError) {
      // While the state still reads, the handshake ends here. A state that stopped reading (the
      // head or hello is complete) leaves the FIN to the relay, which passes it on.
      if (reading_ && state_ != State::kClosed) {
        client_failed_ = end == Stream::ReadEnd::kError;
        post(Event::kClientClosed);
      }
      return;
    }
    // (The event may have ended the reading, and with the relay's start the handshake.)
    if (end != Stream::ReadEnd::kLimit || !reading_ ||
        client_.inputLength() >= handshake_->read_limit) {
      return;  // drained, or full until the state decides
    }
  }
  client_.activate(EV_READ);
}

void Connection::onTimer(evutil_socket_t, short, void* self) {
  auto* connection = static_cast<Connection*>(self);
  connection->timer_armed_ = false;
  connection->post(Event::kTimer);
}

void Connection::onRelayEnded(std::string_view closed_by, bool reset) {
  relay_closed_by_ = closed_by;
  relay_reset_ = reset;
  post(Event::kRelayEnded);
}

void Connection::post(Event event) {
  if (state_ == State::kClosed) {
    return;
  }
  if (looping_) {
    if (queued_count_ < queued_.size()) {
      queued_[queued_count_++] = event;
    }
    return;
  }
  looping_ = true;
  doLoop(event);
  for (size_t i = 0; i < queued_count_ && state_ != State::kClosed; ++i) {
    doLoop(queued_[i]);
  }
  queued_count_ = 0;
  looping_ = false;
  checkInvariants();
}

void Connection::doLoop(Event event) {
  while (state_ != State::kClosed) {
    Step step = Step::kWait;
    switch (state_) {
      case State::kReadHead:
        step = doReadHead(event);
        break;
      case State::kReadHello:
        step = doReadHello(event);
        break;
      case State::kResolve:
        step = doResolve(event);
        break;
      case State::kConnect:
        step = doConnect(event);
        break;
      case State::kTunnelHello:
        step = doTunnelHello(event);
        break;
      case State::kRelay:
        step = doRelay(event);
        break;
      case State::kRefuse:
        step = doRefuse(event);
        break;
      case State::kClosed:
        break;
    }
    if (step == Step::kWait || state_ == State::kClosed) {
      return;
    }
    // A state's timer and parser do not outlive it.
    disarmTimer();
    if (handshake_ != nullptr) {
      if (next_state_ != State::kReadHead) {
        handshake_->connect_parser.reset();
      }
      if (next_state_ != State::kReadHello && next_state_ != State::kTunnelHello) {
        handshake_->hello_parser.reset();
      }
    }
    state_ = next_state_;
    event = Event::kEnter;
  }
}

void Connection::checkInvariants() const {
#if !defined(NDEBUG) || defined(__SANITIZE_ADDRESS__)
  const auto require = [this](bool holds, const char* what) {
    if (!holds) {
      std::fprintf(stderr, "Connection invariant broken in phase %s: %s\n",
                   std::string(phaseName()).c_str(), what);
      std::abort();
    }
  };
  const State s = state_;
  require(upstream_ == nullptr || s == State::kConnect || s == State::kTunnelHello ||
              s == State::kRelay,
          "upstream_ is set only while connecting, peeking or relaying");
  require((handshake_ == nullptr) == (s == State::kRelay) || s == State::kClosed,
          "the handshake's state lives until the relay starts, and no longer");
  const Handshake* h = handshake_.get();
  require(h == nullptr || h->dns_ticket == 0 || s == State::kResolve ||
              (s == State::kConnect && h->dialer),
          "a DNS ticket is held only while resolving (or dialling the first family)");
  require(h == nullptr || h->connect_parser == nullptr || s == State::kReadHead,
          "the CONNECT parser lives only while the head is read");
  require(h == nullptr || h->hello_parser == nullptr || s == State::kReadHello ||
              s == State::kTunnelHello,
          "the ClientHello parser lives only while the hello is read");
  require(relay_.has_value() == (s == State::kRelay) || s == State::kClosed,
          "the relay exists exactly in kRelay");
  require(client_.isOpen() == (s != State::kClosed) || !client_open_,
          "the client is open until kClosed");
  require(!reading_ || s == State::kReadHead || s == State::kReadHello ||
              s == State::kTunnelHello || s == State::kRefuse,
          "the client is read only while a head, a hello or a refused client's bytes are");
  require(queued_count_ == 0, "no event left queued");
#endif
}

// ---- reading the CONNECT head ----

Connection::Step Connection::doReadHead(Event event) {
  const ProxySettings& settings = *settings_;
  switch (event) {
    case Event::kEnter:
      handshake_->connect_parser = std::make_unique<ConnectRequestParser>(settings.max_head_size);
      startReading(settings.max_head_size + 1);
      armTimer(settings.head_timeout);
      return Step::kWait;
    case Event::kClientData:
      return readHead();
    case Event::kTimer:
      return end(CloseReason::kHeadTimeout, "denied: the CONNECT head did not arrive in time");
    case Event::kClientClosed:
      return clientGone();
    default:
      return Step::kWait;
  }
}

bool Connection::isOwnUpstream(int fd) const {
  ProxyContext& context = worker_.context();
  if (!context.guardsLoops() || !context.ownUpstreams().hasLocal(peer_)) {
    return false;
  }
  const std::optional<SocketAddress> destination =
      original_dst_ ? original_dst_ : originalDestination(fd);
  return destination && context.ownUpstreams().contains(peer_, *destination);
}

bool Connection::refusedAsLoop() {
  if (!loop_rechecked_) {
    loop_rechecked_ = true;
    if (!isOwnUpstream(client_.fd())) {
      return false;
    }
  }
  end(CloseReason::kProxyLoop,
      "denied: this is the proxy's own upstream connection redirected back to it; exclude the "
      "proxy's traffic from the redirect rule (--mark)");
  return true;
}

Connection::Step Connection::readHead() {
  if (!loop_rechecked_ && refusedAsLoop()) {
    return Step::kWait;
  }
  evbuffer* input = client_.input();
  const size_t length = evbuffer_get_length(input);
  if (!holdHandshake(length)) {
    return end(CloseReason::kHandshakeMemory,
               "denied: the memory for unfinished requests (--max-handshake-memory) is used up");
  }
  const auto* data = reinterpret_cast<const char*>(evbuffer_pullup(input, -1));
  const ConnectStatus status = handshake_->connect_parser->parse(std::string_view(data, length));
  switch (status) {
    case ConnectStatus::kNeedMore:
      return Step::kWait;
    case ConnectStatus::kMalformed: {
      const ConnectError error = handshake_->connect_parser->error();
      std::string sentence =
          "denied: malformed CONNECT request (" + std::string(connectErrorName(error)) + ")";
      if (error == ConnectError::kTlsOnProxyPort) {
        sentence = "denied: the client sent TLS to the proxy port; use an http:// proxy URL";
      }
      return end(closeReasonOf(error), sentence);
    }
    case ConnectStatus::kMethodNotAllowed:
      return end(CloseReason::kConnectOnly,
                 "denied: method " + std::string(handshake_->connect_parser->request().method) +
                     " is not supported; this proxy only tunnels with CONNECT");
    case ConnectStatus::kTooLarge:
      return end(CloseReason::kHeadTooLarge, "denied: the CONNECT request head is too large");
    case ConnectStatus::kDone:
      break;
  }
  const ConnectRequest& request = handshake_->connect_parser->request();
  host_ = std::string(request.host);
  port_ = request.port;
  record().target = host_;
  record().port = port_;
  evbuffer_drain(input, request.head_length);  // what is left is early tunnel data
  holdHandshake(evbuffer_get_length(input));
  reading_ = false;

  const Decision decision = policy_->decide(host_, port_);
  const auto literal = IpAddress::parse(host_);
  handshake_->host_is_literal = literal.has_value();
  if (decision.rule != nullptr) {
    record().rule = decision.rule->text;
  }
  setReason(closeReasonOf(decision.reason));
  record().sentence = policy_->describe(decision, {host_, literal, port_});
  if (!decision.allowed()) {
    return end(closeReasonOf(decision.reason), record().sentence);
  }
  noteWouldDeny(decision, {host_, literal, port_});
  if (literal) {
    return chooseCandidates({*literal});
  }
  host_ = normalizedName(host_);
  // Through an upstream proxy the name is resolved there, not here.
  return next(viaUpstreamProxy() ? State::kConnect : State::kResolve);
}

// ---- reading the ClientHello (sni, transparent) ----

Connection::Step Connection::doReadHello(Event event) {
  const ProxySettings& settings = *settings_;
  switch (event) {
    case Event::kEnter:
      startReading(2 * settings.max_client_hello_size + 1024);
      armTimer(settings.head_timeout);
      return Step::kWait;
    case Event::kClientData:
      return readHello();
    case Event::kTimer:
      return end(CloseReason::kHelloTimeout, "denied: the ClientHello did not arrive in time");
    case Event::kClientClosed:
      return clientGone();
    default:
      return Step::kWait;
  }
}

Connection::Step Connection::readHello() {
  if (!loop_rechecked_ && refusedAsLoop()) {
    return Step::kWait;
  }
  evbuffer* input = client_.input();
  const size_t length = evbuffer_get_length(input);
  if (!holdHandshake(length)) {
    return end(CloseReason::kHandshakeMemory,
               "denied: the memory for unfinished ClientHellos (--max-handshake-memory) is used "
               "up");
  }
  const auto* data = evbuffer_pullup(input, -1);
  ClientHelloStatus status = ClientHelloStatus::kNeedMore;
  const ClientHelloParser& parser = parseHello(std::span<const uint8_t>(data, length), status);
  if (status == ClientHelloStatus::kNeedMore) {
    if (length > 2 * settings_->max_client_hello_size + 1024) {
      return end(CloseReason::kClientHelloTooLarge,
                 "denied: the ClientHello is larger than allowed");
    }
    return Step::kWait;
  }
  if (status != ClientHelloStatus::kDone) {
    const CloseReason reason = closeReasonOf(parser.error());
    return end(reason, "denied: not an acceptable TLS ClientHello (" +
                           std::string(closeReasonName(reason)) + ")");
  }
  reading_ = false;
  return decideHello(parser.hello());
}

const ClientHelloParser& Connection::parseHello(std::span<const uint8_t> data,
                                                ClientHelloStatus& status) {
  if (handshake_->hello_parser == nullptr) {
    thread_local std::optional<ClientHelloParser> shared;
    shared.emplace(settings_->max_client_hello_size);
    status = shared->parse(data);
    if (status != ClientHelloStatus::kNeedMore) {
      return *shared;
    }
    handshake_->hello_parser =
        std::make_unique<ClientHelloParser>(settings_->max_client_hello_size);
  }
  status = handshake_->hello_parser->parse(data);
  return *handshake_->hello_parser;
}

Connection::Step Connection::decideHello(const ClientHello& hello) {
  const ProxySettings& settings = *settings_;
  record().target = std::string(hello.sni);
  if (kind_ == ListenerKind::kSni) {
    port_ = settings.sni_upstream_port.value_or(handshake_->listener_address.port());
  } else {
    if (!original_dst_) {
      return end(CloseReason::kNotRedirected,
                 "denied: no original destination on a transparent connection");
    }
    // port_ and record().original_dst were set in start().
    if (original_dst_->port() == handshake_->listener_address.port() &&
        (isWildcard(handshake_->listener_address) ||
         sameEndpoint(*original_dst_, handshake_->listener_address))) {
      return end(
          CloseReason::kNotRedirected,
          "denied: the connection was made to the transparent listener itself, not redirected");
    }
  }
  record().port = port_;
  record().ech = hello.ech_offered;
  if (!hello.has_sni && !hello.esni_offered && kind_ == ListenerKind::kTransparent &&
      settings.allow_no_sni) {
    // Without a name only the allowed set can vouch for the destination, on an allowed port.
    const IpAddress destination = toIpAddress(*original_dst_);
    const Decision decision = policy_->decideWithoutSni(destination, port_);
    record().sentence = policy_->describe(decision, {"", destination, port_});
    if (!decision.allowed()) {
      return end(closeReasonOf(decision.reason), record().sentence,
                 decision.rule != nullptr ? decision.rule->text : std::string());
    }
    setReason(closeReasonOf(decision.reason));
    if (dialsSelf(destination)) {
      return end(CloseReason::kSelfConnection, selfSentence(destination));
    }
    handshake_->candidates = {destination};
    handshake_->more_coming = false;
    return next(State::kConnect);
  }
  HostName sni;  // normalized once, by the policy's match, and kept as host_
  const Decision name = policy_->decideSni(hello, port_, &sni);
  setReason(closeReasonOf(name.reason));
  record().rule = name.rule != nullptr ? name.rule->text : std::string();
  record().sentence = policy_->describe(name, {hello.sni, std::nullopt, port_});
  if (!name.allowed()) {
    return end(closeReasonOf(name.reason), record().sentence, record().rule);
  }
  noteWouldDeny(name, {hello.sni, std::nullopt, port_});
  // (Only a hello the policy did not judge by its name, passed by report-only, is normalized here.)
  host_ = !sni.view().empty() ? std::string(sni.view()) : normalizedName(hello.sni);
  if (kind_ == ListenerKind::kTransparent) {
    const IpAddress destination = toIpAddress(*original_dst_);
    const Decision address = policy_->decideDialled(host_, destination);
    if (!address.allowed()) {
      // The name only where the sentence is about it (the binding); a view of host_ itself.
      std::string_view named;
      if (address.reason == Reason::kAddressNotBound) {
        named = host_;
      }
      return end(closeReasonOf(address.reason),
                 policy_->describe(address, {named, destination, port_}),
                 address.rule != nullptr ? address.rule->text : std::string());
    }
    noteWouldDeny(address, {host_, destination, port_});  // report-only: a waived binding
    if (address.reason == Reason::kAddressAllowed) {
      record().sentence += "; " + policy_->describe(address, {"", destination, port_});
      if (dialsSelf(destination)) {
        return end(CloseReason::kSelfConnection, selfSentence(destination));
      }
      handshake_->candidates = {destination};
      handshake_->more_coming = false;
      return next(State::kConnect);
    }
    // Public but not in the allowed set: the SNI's own DNS answers must include it (unless an
    // upstream proxy resolves the name: then only the address rules above judge it).
  }
  return next(viaUpstreamProxy() ? State::kConnect : State::kResolve);
}

// ---- DNS ----

Connection::Step Connection::doResolve(Event event) {
  switch (event) {
    case Event::kEnter: {
      handshake_->dns_started = Clock::now();
      Resolver::Callback first_family;
      if (kind_ != ListenerKind::kTransparent) {
        // The transparent listener dials only the original destination: it needs the whole
        // answer.
        first_family = [this](const DnsAnswer& answer) {
          if (answer.status == DnsStatus::kOk && !answer.addresses.empty()) {
            handshake_->first_family = answer.addresses;
            post(Event::kFirstFamily);
          }
        };
      }
      handshake_->dns_done = false;
      const uint64_t ticket = worker_.resolver().resolve(
          host_,
          [this](const DnsAnswer& answer) {
            handshake_->dns_ticket = 0;
            handshake_->dns_done = true;
            handshake_->answer = answer;
            post(Event::kResolved);
          },
          std::move(first_family));
      if (!handshake_->dns_done) {
        handshake_->dns_ticket = ticket;
      }
      return Step::kWait;
    }
    case Event::kFirstFamily:
      if (handshake_->first_family.front().isV4()) {
        armTimer(kResolutionDelay);  // kTimer: dialFirstFamily()
        return Step::kWait;
      }
      return dialFirstFamily();
    case Event::kTimer:
      return dialFirstFamily();  // the resolution delay ran out
    case Event::kResolved:
      return onResolved();
    case Event::kClientClosed:
      return clientGone();
    default:
      return Step::kWait;
  }
}

Connection::Step Connection::dialFirstFamily() {
  record().dns_ms = msSince(handshake_->dns_started);
  return chooseCandidates(handshake_->first_family, true);
}

Connection::Step Connection::onResolved() {
  handshake_->dns_ticket = 0;
  disarmTimer();  // the resolution delay, if it ran
  record().dns_ms = msSince(handshake_->dns_started);
  const DnsAnswer answer = std::move(handshake_->answer);
  handshake_->answer = {};
  if (answer.status != DnsStatus::kOk) {
    return end(closeReasonOf(answer.status), "denied: DNS lookup of " + host_ + " failed (" +
                                                 std::string(dnsStatusName(answer.status)) + ")");
  }
  if (kind_ == ListenerKind::kTransparent) {
    const IpAddress destination = toIpAddress(*original_dst_);
    const Decision decision = policy_->decideOriginalDestination(destination, answer.addresses);
    if (!decision.allowed()) {
      return end(closeReasonOf(decision.reason),
                 policy_->describe(decision, {host_, destination, port_}),
                 decision.rule != nullptr ? decision.rule->text : std::string());
    }
    if (dialsSelf(destination)) {
      return end(CloseReason::kSelfConnection, selfSentence(destination));
    }
    noteWouldDeny(decision, {host_, destination, port_});
    handshake_->candidates = {destination};
    handshake_->more_coming = false;
    return next(State::kConnect);
  }
  return chooseCandidates(answer.addresses);
}

bool Connection::dialsSelf(const IpAddress& address) const {
  return worker_.context().localAddresses()->contains(address, port_);
}

std::string Connection::selfSentence(const IpAddress& address) const {
  return "denied: " + address.toString() + " port " + std::to_string(port_) +
         " is one of this proxy's own listeners";
}

Connection::Step Connection::chooseCandidates(const std::vector<IpAddress>& addresses,
                                              bool more_coming) {
  handshake_->candidates.clear();
  for (const IpAddress& address : addresses) {
    if (dialsSelf(address)) {
      if (!handshake_->first_address_denial) {
        handshake_->first_address_denial =
            Decision{Verdict::kDeny, Reason::kAddressDenied, nullptr, 0};
        handshake_->first_denied_address = address;
        handshake_->first_denial_is_self = true;
      }
      continue;  // never dial ourselves
    }
    const Decision decision = policy_->decideDialled(host_, address);
    if (decision.allowed()) {
      handshake_->candidates.push_back(address);
      noteWouldDeny(decision, {host_, address, port_});
    } else if (!handshake_->first_address_denial) {
      handshake_->first_address_denial = decision;
      handshake_->first_denied_address = address;
    }
  }
  if (handshake_->candidates.empty() && (more_coming || handshake_->dialer != nullptr)) {
    if (handshake_->dialer != nullptr) {
      handshake_->dialer->add({}, more_coming);  // nothing new; the dial may now end
    }
    return Step::kWait;
  }
  if (handshake_->candidates.empty()) {
    const Decision& denial = *handshake_->first_address_denial;
    const std::string sentence =
        handshake_->first_denial_is_self
            ? selfSentence(handshake_->first_denied_address)
            : policy_->describe(denial, {host_, handshake_->first_denied_address, port_});
    const CloseReason reason = handshake_->first_denial_is_self ? CloseReason::kSelfConnection
                                                                : closeReasonOf(denial.reason);
    return end(reason, sentence, denial.rule != nullptr ? denial.rule->text : std::string());
  }
  if (handshake_->dialer != nullptr) {
    // Dialling started with the first family: the rest joins the attempts.
    handshake_->dialer->add(handshake_->candidates, more_coming);
    return Step::kWait;
  }
  handshake_->more_coming = more_coming;
  return next(State::kConnect);
}

// ---- dialling ----

Connection::Step Connection::doConnect(Event event) {
  switch (event) {
    case Event::kEnter: {
      const ProxySettings& settings = *settings_;
      handshake_->connect_started = Clock::now();
      if (viaUpstreamProxy()) {
        dialUpstreamProxy();
        return Step::kWait;
      }
      DialOptions options;
      options.port = port_;
      options.attempt_delay = settings.happy_eyeballs_delay;
      options.deadline = handshake_->connect_started + settings.connect_timeout;
      options.mark = settings.mark;
      options.own_upstreams =
          worker_.context().guardsLoops() ? &worker_.context().ownUpstreams() : nullptr;
      handshake_->dialer =
          std::make_unique<HappyEyeballsDialer>(worker_.base(), options, [this](DialResult result) {
            // Adopted at once, so that finish() frees it whatever happens before kDialed runs.
            if (result.upstream != nullptr && result.endpoint) {
              upstream_remote_ = *result.endpoint;
            }
            upstream_ = std::move(result.upstream);
            upstream_local_ = result.local;
            handshake_->dial_result = std::move(result);
            post(Event::kDialed);
          });
      handshake_->dialer->add(handshake_->candidates, handshake_->more_coming);
      return Step::kWait;
    }
    case Event::kResolved: {
      // The rest of the answer, after dialling started with the first family: judged the same
      // way. (A dial that has ended already ignores it; onDialed normally cancels the lookup.)
      handshake_->dns_ticket = 0;
      const DnsAnswer answer = std::move(handshake_->answer);
      handshake_->answer = {};
      return chooseCandidates(
          answer.status == DnsStatus::kOk ? answer.addresses : std::vector<IpAddress>{}, false);
    }
    case Event::kDialed:
      return onDialed();
    case Event::kClientClosed:
      return clientGone();
    default:
      return Step::kWait;
  }
}

bool Connection::viaUpstreamProxy() const noexcept { return settings_->upstream_proxy.has_value(); }

void Connection::dialUpstreamProxy() {
  const ProxySettings& settings = *settings_;
  DialOptions options;
  options.attempt_delay = settings.happy_eyeballs_delay;
  options.deadline = handshake_->connect_started + settings.connect_timeout;
  options.mark = settings.mark;
  options.own_upstreams =
      worker_.context().guardsLoops() ? &worker_.context().ownUpstreams() : nullptr;
  handshake_->proxy_dialer = std::make_unique<UpstreamProxyDialer>(
      worker_.base(), worker_.resolver(), *settings.upstream_proxy, options,
      [this](UpstreamProxyResult result) {
        // Adopted at once, so that finish() frees it whatever happens before kDialed runs.
        if (result.dial.upstream != nullptr && result.dial.endpoint) {
          upstream_ = std::move(result.dial.upstream);
          upstream_local_ = result.dial.local;
          upstream_remote_ = *result.dial.endpoint;
        }
        handshake_->proxy_result = std::move(result);
        post(Event::kDialed);
      });
  // The name as judged; an IP literal (CONNECT's, or a transparent destination without SNI) as
  // the authority form spells it. A normalised name holds only letters, digits, '-' and '.', so
  // nothing a client sent can break the request line or add a header.
  std::string target = host_;
  if (target.empty() || handshake_->host_is_literal) {
    const IpAddress& address = handshake_->candidates.front();
    target = address.isV4() ? address.toString() : "[" + address.toString() + "]";
  }
  handshake_->proxy_dialer->start(target + ":" + std::to_string(port_));
}

Connection::Step Connection::onUpstreamProxyDialed() {
  record().connect_ms = msSince(handshake_->connect_started);
  const UpstreamProxyResult result = std::move(handshake_->proxy_result);
  handshake_->proxy_result = {};
  const std::string& proxy = settings_->upstream_proxy->text;
  if (result.dial.endpoint) {
    record().dialled = result.dial.endpoint->toString();
  }
  using ProxyOutcome = UpstreamProxyResult::Outcome;
  switch (result.outcome) {
    case ProxyOutcome::kTunnel:
      record().sentence += "; through upstream proxy " + proxy;
      return next(kind_ == ListenerKind::kConnect ? State::kTunnelHello : State::kRelay);
    case ProxyOutcome::kRefused:
      return end(CloseReason::kUpstreamProxyRefused,
                 "upstream proxy " + proxy + " refused the tunnel to " + host_ + " port " +
                     std::to_string(port_) + " with " + std::to_string(result.status) + " (" +
                     result.status_line + ")");
    case ProxyOutcome::kMalformed:
      return end(CloseReason::kUpstreamProxyRefused,
                 "upstream proxy " + proxy +
                     " answered the CONNECT with something that is not "
                     "an HTTP status line ('" +
                     result.status_line + "')");
    case ProxyOutcome::kTimeout:
      return end(CloseReason::kUpstreamTimeout,
                 "upstream proxy " + proxy + " did not answer the CONNECT in time");
    case ProxyOutcome::kClosed:
      return end(
          CloseReason::kUpstreamUnreachable,
          "upstream proxy " + proxy + " closed the connection before answering the " + "CONNECT" +
              (result.dial.error != 0 ? " (" + std::string(std::strerror(result.dial.error)) + ")"
                                      : std::string()));
    case ProxyOutcome::kDialFailed:
      break;
  }
  const int error = result.dial.error;
  const bool refused = error == ECONNREFUSED;
  const bool timed_out = result.dial.timed_out || error == ETIMEDOUT;
  const CloseReason reason = timed_out && !refused ? CloseReason::kUpstreamTimeout
                             : refused             ? CloseReason::kUpstreamRefused
                                                   : CloseReason::kUpstreamUnreachable;
  std::string why = !result.detail.empty() ? result.detail
                    : error != 0           ? std::string(std::strerror(error))
                                           : std::string(closeReasonName(reason));
  return end(reason, "upstream proxy " + proxy +
                         " failed: " + std::string(closeReasonName(reason)) + " (" + why + ")");
}

void Connection::recordAttempts() {
  if (handshake_ == nullptr ||
      (handshake_->dialer == nullptr && handshake_->proxy_dialer == nullptr)) {
    return;
  }
  for (const DialAttempt& attempt : handshake_->dialer != nullptr
                                        ? handshake_->dialer->attempts()
                                        : handshake_->proxy_dialer->attempts()) {
    record().attempts.push_back(attempt.toString());
    worker_.context().metrics().recordConnectAttempt(attempt.endpoint.family() == AF_INET6,
                                                     attempt.outcome);
  }
  if (handshake_->dialer != nullptr) {
    worker_.retire(std::move(handshake_->dialer));
  } else {
    worker_.retire(std::move(handshake_->proxy_dialer));
  }
}

Connection::Step Connection::onDialed() {
  if (handshake_->proxy_dialer != nullptr) {
    recordAttempts();
    return onUpstreamProxyDialed();
  }
  recordAttempts();
  record().connect_ms = msSince(handshake_->connect_started);
  if (handshake_->dns_ticket != 0) {
    // Dialling started before the whole answer: what is still to come no longer matters.
    worker_.resolver().cancel(handshake_->dns_ticket);
    handshake_->dns_ticket = 0;
  }
  const DialResult result = std::move(handshake_->dial_result);
  handshake_->dial_result = {};
  if (result.endpoint) {
    record().dialled = result.endpoint->toString();
  }
  if (upstream_ != nullptr) {
    return next(kind_ == ListenerKind::kConnect ? State::kTunnelHello : State::kRelay);
  }
  const int error = result.error;
  const bool refused = error == ECONNREFUSED;
  const bool timed_out = result.timed_out || error == ETIMEDOUT;
  const CloseReason reason = timed_out && !refused ? CloseReason::kUpstreamTimeout
                             : refused             ? CloseReason::kUpstreamRefused
                                                   : CloseReason::kUpstreamUnreachable;
  const std::string sentence =
      "upstream " + host_ + " port " + std::to_string(port_) +
      " failed: " + std::string(closeReasonName(reason)) +
      (error != 0 ? " (" + std::string(std::strerror(error)) + ")" : std::string());
  return end(reason, sentence);
}

void Connection::closeUpstream(bool reset) {
  if (handshake_ != nullptr && handshake_->dialer != nullptr) {
    handshake_->dialer->cancel();
  }
  if (handshake_ != nullptr && handshake_->proxy_dialer != nullptr) {
    handshake_->proxy_dialer->cancel();
  }
  if (upstream_local_) {
    worker_.context().ownUpstreams().remove(*upstream_local_, upstream_remote_);
    upstream_local_.reset();
  }
  if (upstream_ != nullptr) {
    upstream_->close(reset);
    upstream_.reset();
  }
}

// ---- connect: peeking at the tunnel's ClientHello ----

Connection::Step Connection::doTunnelHello(Event event) {
  switch (event) {
    case Event::kEnter: {
      const ProxySettings& settings = *settings_;
      static constexpr char kEstablished[] = "HTTP/1.1 200 Connection established\r\n\r\n";
      if (!client_.write(kEstablished, sizeof(kEstablished) - 1)) {
        client_failed_ = true;
        return clientGone();
      }
      startReading(2 * settings.max_client_hello_size + 1024);
      armTimer(settings.head_timeout);
      if (client_.inputLength() > 0) {
        return readTunnelHello();  // early bytes sent with the head
      }
      return Step::kWait;
    }
    case Event::kClientData:
      return readTunnelHello();
    case Event::kTimer:
      return end(CloseReason::kHelloTimeout, "denied: the ClientHello did not arrive in time");
    case Event::kClientClosed:
      return clientGone();
    default:
      return Step::kWait;
  }
}

Connection::Step Connection::readTunnelHello() {
  evbuffer* input = client_.input();
  const size_t length = evbuffer_get_length(input);
  if (length == 0) {
    return Step::kWait;
  }
  if (!holdHandshake(length)) {
    return end(CloseReason::kHandshakeMemory,
               "denied: the memory for unfinished ClientHellos (--max-handshake-memory) is used "
               "up");
  }
  const auto* data = evbuffer_pullup(input, -1);
  ClientHelloStatus status = ClientHelloStatus::kNeedMore;
  const ClientHelloParser& parser = parseHello(std::span<const uint8_t>(data, length), status);
  if (status == ClientHelloStatus::kNeedMore) {
    if (length > 2 * settings_->max_client_hello_size + 1024) {
      return end(CloseReason::kClientHelloTooLarge,
                 "denied: the tunnel's ClientHello is larger than allowed");
    }
    return Step::kWait;
  }
  if (status == ClientHelloStatus::kNotTls) {
    if (settings_->allow_non_tls) {
      return next(State::kRelay);
    }
    return end(CloseReason::kNotTls, "denied: the tunnel does not start with a TLS ClientHello");
  }
  if (status != ClientHelloStatus::kDone) {
    const CloseReason reason = closeReasonOf(parser.error());
    return end(reason, "denied: the tunnel's ClientHello is not acceptable (" +
                           std::string(closeReasonName(reason)) + ")");
  }
  const ClientHello& hello = parser.hello();
  record().ech = hello.ech_offered;
  if (hello.esni_offered) {
    const Decision esni = policy_->decideSni(hello, port_);
    return end(closeReasonOf(esni.reason),
               policy_->describe(esni, {hello.sni, std::nullopt, port_}));
  }
  if (hello.has_sni && normalizedName(hello.sni) != host_) {
    return end(CloseReason::kSniMismatch,
               "denied: the tunnel's SNI names another host than the CONNECT target");
  }
  if (!hello.has_sni && !handshake_->host_is_literal) {
    return end(CloseReason::kSniMismatch,
               "denied: the tunnel's ClientHello has no SNI but CONNECT named a host");
  }
  return next(State::kRelay);
}

// ---- relaying ----

Connection::Step Connection::doRelay(Event event) {
  const auto idle = settings_->idle_timeout;
  switch (event) {
    case Event::kEnter:
      record().allowed = true;
      record().decision_ms = msSince(started_);
      // From here the buffered head bytes are relay data, counted by the output buffers.
      releaseHandshake();
      reading_ = false;
      endHandshake();
      if (handshake_->dns_ticket != 0) {
        worker_.resolver().cancel(handshake_->dns_ticket);
      }
      // What an idle tunnel keeps of its handshake: the log record, packed.
      packed_record_ = PackedAccessRecord(handshake_->record);
      handshake_.reset();
      relay_.emplace(client_, *upstream_, worker_.context().stats(), settings_->max_buffer_memory,
                     worker_.pipes(), static_cast<Relay::Observer&>(*this));
      relay_->start();
      // The upstream's TCP keepalive waits for the first tick (unless its idle time is shorter):
      // most tunnels end before it and never pay its 4 setsockopt calls, and none gets a later
      // probe, as the kernel counts the keepalive idle time from the last segment received.
      if (settings_->keepalive_idle <= std::min<std::chrono::milliseconds>(idle, kIdleCheck)) {
        setUpstreamKeepalive();
      }
      armTimer(std::min<std::chrono::milliseconds>(idle, kIdleCheck));
      return Step::kWait;
    case Event::kTimer:
      setUpstreamKeepalive();
      if (Clock::now() - relay_->lastActivity() >= idle) {
        record().closed_by = "proxy";
        finish("proxy", false);
      } else {
        armTimer(std::min<std::chrono::milliseconds>(idle, kIdleCheck));
      }
      return Step::kWait;
    case Event::kRelayEnded:
      finish(relay_closed_by_, relay_reset_);
      return Step::kWait;
    default:
      return Step::kWait;
  }
}

void Connection::setUpstreamKeepalive() {
  if (!upstream_keepalive_ && upstream_ != nullptr && upstream_->isOpen()) {
    upstream_keepalive_ = true;
    setKeepalive(upstream_->fd(), settings_->keepalive_idle);
  }
}

// ---- connect: flushing a refusal ----

Connection::Step Connection::doRefuse(Event event) {
  switch (event) {
    case Event::kEnter: {
      releaseHandshake();  // the input is drained below and never read again
      if (handshake_->dns_ticket != 0) {
        worker_.resolver().cancel(handshake_->dns_ticket);
        handshake_->dns_ticket = 0;
      }
      closeUpstream(false);
      const std::string response = httpRefusal(reason_, record().sentence);
      evbuffer_drain(client_.input(), client_.inputLength());
      if (!client_.write(response.data(), response.size())) {
        finish("client", false);
        return Step::kWait;
      }
      if (client_.outputLength() == 0) {
        shutdown(client_.fd(), SHUT_WR);  // the refusal is out
      }
      // Whatever else the client sends is read and dropped until it closes (or the linger ends).
      startReading(kRefuseRead);
      armTimer(kRefuseLinger);
      return Step::kWait;
    }
    case Event::kClientData:
      evbuffer_drain(client_.input(), client_.inputLength());  // never parsed: RFC 9931
      return Step::kWait;
    case Event::kClientDrained:
      shutdown(client_.fd(), SHUT_WR);  // the refusal is out
      return Step::kWait;
    case Event::kClientClosed:
      finish("client", false);
      return Step::kWait;
    case Event::kTimer:
      finish("proxy", false);
      return Step::kWait;
    default:
      return Step::kWait;
  }
}

// ---- endings ----

bool Connection::holdHandshake(size_t length) {
  const int64_t delta = static_cast<int64_t>(length) - handshake_->held;
  handshake_->held = static_cast<int64_t>(length);
  const int64_t used =
      worker_.context().stats().handshake_buffered.fetch_add(delta, std::memory_order_relaxed) +
      delta;
  return delta <= 0 || used <= static_cast<int64_t>(settings_->max_handshake_memory);
}

void Connection::endHandshake() {
  if (handshaking_) {
    handshaking_ = false;
    worker_.handshakeEnded();
  }
}

void Connection::releaseHandshake() {
  if (handshake_ == nullptr) {
    return;
  }
  worker_.context().stats().handshake_buffered.fetch_sub(handshake_->held,
                                                         std::memory_order_relaxed);
  handshake_->held = 0;
}

Connection::Step Connection::clientGone() {
  // EOF or error before the tunnel: the client went away.
  if (record().reason.empty() || passedPolicy()) {
    setReason(CloseReason::kClientClosed);
    markIncomplete("the client closed the connection before the tunnel started");
  }
  finish("client", client_failed_);
  return Step::kWait;
}

void Connection::setReason(CloseReason reason) noexcept {
  reason_ = reason;
  record().reason = closeReasonName(reason);
}

Connection::Step Connection::end(CloseReason reason, const std::string& sentence,
                                 std::string rule) {
  record().allowed = false;
  setReason(reason);
  record().sentence = sentence;
  if (!rule.empty()) {
    record().rule = std::move(rule);
  }
  const uint16_t status = closeReasonInfo(reason).http_status;
  const bool answers =
      kind_ == ListenerKind::kConnect && status != 0 && status != 200 &&
      (state_ == State::kReadHead || state_ == State::kResolve || state_ == State::kConnect);
  if (!answers) {
    // No HTTP answer: the sni and transparent listeners, and a connect tunnel after its 200.
    finish("proxy", true);
    return Step::kWait;
  }
  return next(State::kRefuse);
}

void Connection::noteWouldDeny(const Decision& decision, const DecisionSubject& subject) {
  if (!decision.would_deny || record().would_deny) {
    return;
  }
  record().would_deny = true;
  setReason(closeReasonOf(decision.reason));
  record().rule = decision.rule != nullptr ? decision.rule->text : std::string();
  record().sentence = policy_->describe(decision, subject);
}

void Connection::abort(CloseReason reason) {
  if (state_ == State::kClosed) {
    return;
  }
  if (state_ != State::kRelay) {
    record().allowed = false;
  }
  if (passedPolicy()) {
    // The policy's reason would say "allowed" about a connection that never relayed.
    setReason(reason);
    markIncomplete("the proxy shut down before the tunnel started");
    finish("proxy", true);
    return;
  }
  if (record().reason.empty()) {
    setReason(reason);
  }
  const std::string_view name = closeReasonName(reason);
  record().sentence += record().sentence.empty() ? std::string(name) : "; " + std::string(name);
  finish("proxy", true);
}

bool Connection::passedPolicy() const noexcept {
  // Only an allowed decision leads into these states; every refusal leaves through kRefuse or
  // finish() at once.
  return state_ == State::kResolve || state_ == State::kConnect || state_ == State::kTunnelHello;
}

void Connection::markIncomplete(std::string_view what) {
  record().incomplete = true;
  record().sentence = record().sentence.empty() ? std::string(what)
                                                : record().sentence + "; but " + std::string(what);
}

void Connection::armTimer(std::chrono::milliseconds timeout) {
  const timeval tv{static_cast<time_t>(timeout.count() / 1000),
                   static_cast<suseconds_t>((timeout.count() % 1000) * 1000)};
  evtimer_add(&timer_, &tv);
  timer_armed_ = true;
}

void Connection::disarmTimer() noexcept {
  if (timer_armed_) {
    evtimer_del(&timer_);
    timer_armed_ = false;
  }
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

void Connection::finish(std::string_view closed_by, bool reset) {
  if (state_ == State::kClosed) {
    return;
  }
  if (handshake_ != nullptr && handshake_->dns_ticket != 0) {
    worker_.resolver().cancel(handshake_->dns_ticket);
    handshake_->dns_ticket = 0;
  }
  // A relayed tunnel's record is unpacked here, into the loop's record for that (its strings
  // keep their capacity from line to line), unless it was amended (thawed_).
  thread_local AccessRecord unpacked;
  if (handshake_ == nullptr && thawed_ == nullptr) {
    packed_record_.unpackInto(unpacked);
  }
  AccessRecord& record = handshake_ != nullptr ? handshake_->record
                         : thawed_ != nullptr  ? *thawed_
                                               : unpacked;
  record.phase = phaseName();
  if (relay_) {
    record.bytes_up = relay_->bytesUp();
    record.bytes_down = relay_->bytesDown();
    if (record.closed_by.empty()) {
      record.closed_by = relay_->closedBy();
    }
    relay_->stop();  // before the streams close; the Relay itself may be on the stack
  }
  record.closed_by = record.closed_by.empty() ? closed_by : record.closed_by;
  record.total_ms = msSince(started_);
  releaseHandshake();
  endHandshake();
  reading_ = false;
  client_.close(reset);
  closeUpstream(reset);
  disarmTimer();
  if (handshake_ != nullptr) {
    handshake_->connect_parser.reset();
    handshake_->hello_parser.reset();
  }
  state_ = State::kClosed;
  recordAttempts();  // into handshake_->record: there is a dialer only while handshake_ lives
  if (record.reason.empty()) {
    reason_ = CloseReason::kInternalError;  // never set up (start() failed)
    record.reason = closeReasonName(reason_);
  }
  // Before the log line: whoever sees the line may count on the slot being free.
  slot_.release();
  ProxyStats& stats = worker_.context().stats();
  (record.allowed ? stats.allowed : stats.denied).fetch_add(1, std::memory_order_relaxed);
  worker_.context().logConnection(record);
  worker_.context().metrics().recordConnection(kind_, reason_, record);
  worker_.release(this);
}

// ---------------------------------------------------------------------------------------------
// Revoke on reload (THREATS F14). Kept apart from the state handlers: it only reads the state and
// ends through end()/finish() like any other refusal.

void Connection::setGroup(const ActivePolicy& active, uint32_t group) {
  record().group = group == Policy::kNoGroup
                       ? std::string_view()
                       : std::string_view(active.policy->groups()[group].name);
  record().group_series = active.seriesOf(group);
}

void Connection::rejudge(const std::shared_ptr<const ActivePolicy>& active) {
  const IpAddress client = toIpAddress(peer_);
  const Policy::ClientChoice choice = active->policy->chooseClient(client);
  // The new snapshot's policy for this client: its group's, or the top-level one.
  std::shared_ptr<const Policy> policy = active->judging(choice);
  if (state_ == State::kRefuse || state_ == State::kClosed || policy == policy_) {
    return;
  }
  // A client the new policy no longer admits is refused in any state (whichever policy it had, a
  // group's may be gone); one already let through is judged again by what it was let through for.
  Decision decision = choice.decision;
  DecisionSubject subject{"", client, 0};
  if (decision.allowed() && state_ != State::kReadHead && state_ != State::kReadHello) {
    std::optional<IpAddress> dialled;
    if (viaUpstreamProxy()) {
      // upstream_remote_ is the upstream proxy: only a transparent destination was judged.
      if (original_dst_) {
        dialled = toIpAddress(*original_dst_);
      }
    } else if (state_ == State::kRelay || state_ == State::kTunnelHello) {
      dialled = toIpAddress(upstream_remote_);
    }
    if (!host_.empty()) {
      decision = policy->decide(host_, port_);
      subject = {host_, IpAddress::parse(host_), port_};
    } else if (original_dst_) {  // transparent, no SNI (--allow-no-sni)
      subject = {"", toIpAddress(*original_dst_), port_};
      decision = policy->decideWithoutSni(*subject.address, port_);
    }
    if (state_ == State::kConnect) {  // the addresses being dialled
      for (auto it = handshake_->candidates.begin();
           decision.allowed() && it != handshake_->candidates.end(); ++it) {
        decision = policy->decideDialled(host_, *it);
        subject = {host_, *it, port_};
      }
    }
    if (decision.allowed() && dialled) {
      decision = policy->decideDialled(host_, *dialled);
      subject = {host_, dialled, port_};
    }
  }
  if (!decision.allowed()) {
    const std::string sentence = "revoked by a reload: " + policy->describe(decision, subject);
    std::string rule = decision.rule != nullptr ? decision.rule->text : std::string();
    if (state_ == State::kRelay) {
      // It did relay: the record keeps decision allow, and says why the proxy ended it.
      setReason(CloseReason::kRevoked);
      record().rule = std::move(rule);
      record().sentence += "; " + sentence;
      finish("proxy", true);
    } else if (end(CloseReason::kRevoked, sentence, std::move(rule)) == Step::kNext) {
      // Outside the loop (a worker's reload hook): enter kRefuse as doLoop would.
      disarmTimer();
      handshake_->connect_parser.reset();  // a refused client may still be reading its head
      handshake_->hello_parser.reset();    // (not in kRelay: handshake_ lives)
      state_ = next_state_;
      post(Event::kEnter);
    }
    return;
  }
  replaced_policy_ = std::exchange(policy_, std::move(policy));
  setGroup(*active, choice.group);
  if (thawed_ != nullptr) {  // a relaying tunnel's record goes back into its packed form
    packed_record_ = PackedAccessRecord(*thawed_);
    thawed_.reset();
  }
}

}  // namespace acr
