#pragma once

#include <event2/buffer.h>
#include <event2/event.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "conf/proxy_settings.h"
#include "dns/resolver.h"
#include "filters/client_hello_parser.h"
#include "filters/connect_request_parser.h"
#include "filters/policy.h"
#include "proxy/access_log.h"
#include "proxy/active_policy.h"
#include "proxy/close_reason.h"
#include "proxy/connection_limits.h"
#include "proxy/happy_eyeballs_dialer.h"
#include "proxy/relay.h"
#include "proxy/slab.h"
#include "proxy/stream.h"
#include "proxy/upstream_proxy_dialer.h"

namespace acr {

class Worker;

// One client connection, from accept to close, as an explicit state machine. Each listener kind
// enters at its own first state; every later step is shared:
//
//   connect:      kReadHead -> kResolve -> kConnect -> kTunnelHello -> kRelay
//   sni:          kReadHello -> kResolve -> kConnect -> kRelay
//   transparent:  kReadHello -> [kResolve] -> kConnect -> kRelay
//
// With --upstream-proxy a name is never resolved here: an allowed target goes from its policy
// decision straight to kConnect, which asks the upstream proxy for the tunnel (CONNECT
// name:port, UpstreamProxyDialer) instead of dialling candidates.
//
// A denial or failure in any state goes to kRefuse (connect: write the HTTP refusal, then close;
// others: close with RST, never dialling) or straight to close. Every connection ends in
// finish(), which writes its one access-log line.
//
// Each socket is a Stream: one edge-triggered event from accept (or connect) to close, handed from
// the dialer to this connection to the Relay without another epoll_ctl.
//
// The shape is Chromium's DoLoop (as ClientHelloParser::parse): libevent, DNS, dialer and relay
// callbacks only record what happened (an Event, and its data in a member) and call post();
// doLoop() hands the event to the current state's doX(), which either waits for the next event
// or names next_state_, entered at once with Event::kEnter. An event raised while the loop runs
// (a DNS answer or dial result known synchronously) waits in a small queue. Invariants are
// checked after every event in debug and sanitizer builds (checkInvariants()).
class Connection final : private Relay::Observer, private Stream::Handler {
 public:
  enum class State : uint8_t {
    kReadHead,     // connect: reading the CONNECT head (head timeout runs)
    kReadHello,    // transparent/sni: reading the ClientHello (head timeout runs)
    kResolve,      // waiting for the proxy's own DNS answer for an allowed name (when one family
                   // answered first: the resolution delay runs)
    kConnect,      // the dialer tries the allowed candidates, or the upstream proxy opens the
                   // tunnel (connect budget runs)
    kTunnelHello,  // connect: 200 sent; peeking the tunnel's first bytes for the SNI
    kRelay,        // relaying both ways (idle timeout runs)
    kRefuse,       // connect: flushing a refusal, then closing
    kClosed,       // finished; waiting for deferred deletion
  };

  // `slot`: the connection's share of the connection limits, given back in finish().
  Connection(Worker& worker, ListenerKind kind, const SocketAddress& listener_address, int fd,
             const SocketAddress& peer, std::shared_ptr<const Policy> policy, ConnectionSlot slot);
  ~Connection() override;
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;
  ACR_SLAB_ALLOCATED(Connection, tunnels)

  // `listener_keepalive`: the TCP keepalive idle the listening socket was given (Worker), which
  // the accepted socket inherits from it; when it is the settings' value, start() sets nothing
  // (4 setsockopt calls fewer per connection).
  void start(std::optional<std::chrono::seconds> listener_keepalive);
  // Instead of start(), for a client the client rules refuse (Policy::decideClient): connect
  // listener 403 with reason client_not_allowed, other listeners a reset; never reads a request.
  void refuseClient(const std::string& sentence);
  // Ends the connection now (shutdown): RST to both sides, log line written.
  void abort(CloseReason reason);
  // Revoke on reload (docs/operations.md "Reload", THREATS F14), called by Worker::revokeDenied
  // after a reload installed `active` (a policy with revokeOnReload()). The client's policy in it
  // is chosen again (Policy::chooseClient: a reload may move the client to another group); call
  // it `policy`. A client `active` no longer admits is closed with reason `revoked` in any state.
  // Otherwise a connection not judged yet (reading its head or hello) is judged by `policy` from
  // now on; one already let through (dns, connect, tunnel_hello, relay) is judged again by it
  // (target, dialled address) and closed with reason `revoked` if it now denies it (connect
  // listener before the 200: 403), else continues under `policy`, named by its new group.
  void rejudge(const std::shared_ptr<const ActivePolicy>& active);
  // Before start(): the client group `group` of `active` (Policy::kNoGroup: the top-level policy)
  // judges this connection; its log line and the group metrics name it.
  void setGroup(const ActivePolicy& active, uint32_t group);
  State state() const noexcept { return state_; }

 private:
  // What woke the state machine.
  enum class Event : uint8_t {
    kEnter,          // the state was just entered: its setup runs
    kClientData,     // the client's input grew
    kClientDrained,  // the client's output drained (kRefuse: the refusal is out)
    kClientClosed,   // the client sent FIN or failed (client_failed_ says which)
    kTimer,          // the current state's timer ran out
    kFirstFamily,    // first_family_ holds the addresses of the family that answered first
    kResolved,       // answer_ holds the whole DNS answer
    kDialed,         // dial_result_ holds the dialer's result
    kRelayEnded,     // relay_closed_by_ / relay_reset_ say how the tunnel ended
  };
  // What a doX() asks of the loop: wait for the next event, or enter next_state_ now.
  enum class Step : uint8_t { kWait, kNext };

  // The client's edges (the upstream's before the relay are only recorded by its stream): flush
  // what the client has not taken yet (kClientDrained once it has), read while the state reads.
  void onStreamEvent(Stream& stream, short what) override;
  // The current state reads the client into client_.input(), up to `limit` bytes (the rest
  // waits in the socket); kClientData tells it of new bytes, kClientClosed of a FIN or error.
  void startReading(size_t limit);
  void readClient();
  static void onTimer(evutil_socket_t, short, void* self);
  void onRelayEnded(std::string_view closed_by, bool reset) override;

  // Feeds `event` to the state machine (queued if the loop is running already), then checks the
  // invariants.
  void post(Event event);
  void doLoop(Event event);
  Step next(State state) noexcept {
    next_state_ = state;
    return Step::kNext;
  }
  Step doReadHead(Event event);
  Step doReadHello(Event event);
  Step doResolve(Event event);
  Step doConnect(Event event);
  Step doTunnelHello(Event event);
  Step doRelay(Event event);
  Step doRefuse(Event event);
  // kRelay: TCP keepalive on the upstream socket (--keepalive-idle; the client's is inherited from
  // the listening socket), once; at the relay's first tick, or at its start when the idle time is
  // shorter than a tick.
  void setUpstreamKeepalive();
  // Aborts (in debug and sanitizer builds) when a member outlives the states that own it.
  void checkInvariants() const;

  // True (after refusing it: proxy_loop) when the peer is one of the proxy's own upstream
  // sockets. Checked at accept and again at the first bytes: on loopback the handshake completes
  // inside the dialler's connect(), so another loop may accept the copy before the dialler has
  // registered its endpoint, but never receive bytes before it.
  bool refusedAsLoop();
  // True when the peer is one of the proxy's own upstream sockets and the connection was headed
  // where that socket dialled: SO_ORIGINAL_DST after a REDIRECT, else the local address
  // (OwnUpstreams). The destination costs a getsockname and a getsockopt, so it is looked up only
  // for a peer that is an own upstream's local endpoint (the transparent listener knows it).
  bool isOwnUpstream(int fd) const;
  Step readHead();
  Step readHello();
  Step readTunnelHello();
  // Parses `data`, the ClientHello bytes so far (the whole stream from its first byte). A hello
  // that arrives in one piece (almost all) is parsed by a per-thread parser: its 24 KiB, mostly
  // untouched but each one's first page written, never sit on the heap of a connection waiting
  // for its hello (500 connections accepted at once held 4 MB that way). Only a hello that needs
  // more bytes gets a parser of the connection's own, which resumes (the first call's work done
  // once more). The parser returned holds the result (hello(), error()) until the next call.
  const ClientHelloParser& parseHello(std::span<const uint8_t> data, ClientHelloStatus& status);
  Step decideHello(const ClientHello& hello);
  Step onResolved();
  // Dials the first family's allowed addresses while the other family is still resolving.
  Step dialFirstFamily();
  // Keeps the allowed addresses of `addresses`, in order; remembers the first denial. Moves to
  // kConnect (or hands them to the running dialer); refuses with the first denial when none is
  // allowed and nothing else can come (`more_coming` false and nothing dialled yet).
  Step chooseCandidates(const std::vector<IpAddress>& addresses, bool more_coming = false);
  Step onDialed();
  // The dial has ended (or the connection does, first): its attempts go into the log line and
  // the metrics, and the dialer to Worker::retire. Once; no-op without a dialer.
  void recordAttempts();
  // True when tunnels go through --upstream-proxy (names are resolved by it, not here).
  bool viaUpstreamProxy() const noexcept;
  // kConnect with an upstream proxy: asks it for the tunnel; its result ends the dial.
  void dialUpstreamProxy();
  Step onUpstreamProxyDialed();
  // Before the relay: the client went away (EOF or error).
  Step clientGone();
  // True when `address`:port_ is one of this process's listening endpoints (any listener, a
  // wildcard one by every local address; see LocalAddresses): dialling it would loop.
  bool dialsSelf(const IpAddress& address) const;
  std::string selfSentence(const IpAddress& address) const;
  // Frees the upstream socket (RST if `reset`) and forgets its local endpoint; closes every
  // connection attempt still in flight.
  void closeUpstream(bool reset);
  // Records that the unfinished head/ClientHello now holds `length` bytes; false when that
  // takes the process past --max-handshake-memory (the caller refuses: handshake_memory).
  bool holdHandshake(size_t length);
  void releaseHandshake();
  // The handshake is over (relay or close): Worker::handshakeEnded, once.
  void endHandshake();
  // Ends a connection that is refused or failed, with `reason`: the connect listener before its
  // 200 answers the reason's HTTP status (closeReasonInfo) from kRefuse, which closes after the
  // client has read it; everything else is closed with a reset at once.
  Step end(CloseReason reason, const std::string& sentence, std::string rule = {});
  void setReason(CloseReason reason) noexcept;
  // Report-only: the first waived denial (Decision::would_deny) becomes the log line's reason,
  // rule and sentence, and marks it would_deny. No-op for any other decision.
  void noteWouldDeny(const Decision& decision, const DecisionSubject& subject);
  void finish(std::string_view closed_by, bool reset);
  // True in the states an allowed decision leads to before the relay (dns, connect,
  // tunnel_hello): ending there is "incomplete", not a refusal (README "Logs").
  bool passedPolicy() const noexcept;
  // Records that the connection passed the policy but ends before relaying, because of `what`.
  void markIncomplete(std::string_view what);
  void armTimer(std::chrono::milliseconds timeout);
  // Stops the state's timer if it runs. Every state change and every end call it: a flag instead
  // of libevent's event_del on a timer that is not pending (about 100 instructions each, five
  // times per tunnel).
  void disarmTimer() noexcept;
  std::string_view phaseName() const noexcept;
  double msSince(std::chrono::steady_clock::time_point start) const noexcept;

  // What only the handshake needs, from accept to the relay's start (or to the end, for a
  // connection that never relays): freed when the relay starts, so that an idle relaying tunnel
  // keeps its Connection and its packed log record and nothing else (memory per idle tunnel,
  // issue 9 section 2: 1,664 bytes of Connection before, most of them dead once relaying).
  struct Handshake {
    explicit Handshake(const SocketAddress& listener) : listener_address(listener) {}
    ACR_SLAB_ALLOCATED(Handshake, handshakes)

    AccessRecord record;  // the log line's record, until packed at the relay's start
    const SocketAddress listener_address;
    size_t read_limit = 0;  // startReading's limit
    uint64_t dns_ticket = 0;
    // Parsers live only while their state does. hello_parser only for a hello that came in
    // pieces (parseHello).
    std::unique_ptr<ConnectRequestParser> connect_parser;
    std::unique_ptr<ClientHelloParser> hello_parser;
    bool host_is_literal = false;
    std::vector<IpAddress> candidates;
    bool more_coming = false;  // kConnect's first dial: the other family is still resolving
    std::optional<Decision> first_address_denial;
    IpAddress first_denied_address;
    bool first_denial_is_self = false;    // the first denial is self_connection, not the policy's
    std::vector<IpAddress> first_family;  // addresses of the family that answered first
    std::unique_ptr<HappyEyeballsDialer> dialer;        // from the first dial to its end
    std::unique_ptr<UpstreamProxyDialer> proxy_dialer;  // the same, through --upstream-proxy
    // Event data.
    DnsAnswer answer;
    bool dns_done = false;
    DialResult dial_result;
    UpstreamProxyResult proxy_result;
    int64_t held = 0;  // this connection's share of ProxyStats::handshake_buffered
    std::chrono::steady_clock::time_point dns_started;
    std::chrono::steady_clock::time_point connect_started;
  };

  // The log line's record: the handshake's while it lasts; from the relay on it is packed
  // (packed_record_), and unpacked into thawed_ only when something amends it (an abort, a
  // revocation). finish() unpacks it otherwise, into a per-thread record that keeps its strings'
  // capacity from one line to the next.
  AccessRecord& record();

  Worker& worker_;
  const ListenerKind kind_;
  State state_;
  State next_state_;
  bool looping_ = false;
  uint8_t queued_count_ = 0;
  std::array<Event, 4> queued_{};  // events raised while the loop ran, in order
  bool client_open_ = false;       // its event is registered (a failure ends the connection)
  bool reading_ = false;           // the state reads the client (startReading)
  bool client_failed_ = false;
  bool relay_reset_ = false;
  bool handshaking_ = true;          // counted in Worker::handshakeStarted until endHandshake()
  bool upstream_keepalive_ = false;  // setUpstreamKeepalive() has set it
  bool timer_armed_ = false;         // timer_ is pending (armTimer, until it fires or is disarmed)
  // The peer is one of the proxy's own upstream sockets (see OwnUpstreams).
  bool looped_ = false;  // the peer is an own upstream socket (isOwnUpstream) at accept
  bool loop_rechecked_ = false;
  CloseReason reason_ = CloseReason::kInternalError;  // record().reason's enum, once set
  uint16_t port_ = 0;
  // The snapshot this connection is judged by: the one it was accepted with, or, with revoke on
  // reload, the newest (rejudge). The replaced one stays alive in `replaced_policy_`: decisions
  // kept from it (first_address_denial) point at its rules.
  std::shared_ptr<const Policy> policy_;
  std::shared_ptr<const Policy> replaced_policy_;
  // The settings current when this connection was accepted: a reload's new limits and timeouts
  // apply to the connections accepted after it.
  const std::shared_ptr<const ProxySettings> settings_;
  // Released in finish(), so that the slot is free again as soon as the connection has ended;
  // its destructor releases it on any path that never finishes (a worker torn down).
  ConnectionSlot slot_;
  Stream client_;
  std::unique_ptr<Stream> upstream_;  // from the dial's end
  event timer_{};  // the current state's timeout (evtimer_assign'ed); cleared on every state change
  std::unique_ptr<Handshake> handshake_;  // from accept to the relay's start
  std::string host_;                      // CONNECT host or SNI (normalised when it is a name)
  std::optional<SocketAddress> original_dst_;
  std::optional<SocketAddress> upstream_local_;  // registered in OwnUpstreams while open
  SocketAddress upstream_remote_;                // the endpoint upstream_local_ was dialling
  std::string_view relay_closed_by_;             // event data of kRelayEnded
  std::optional<Relay> relay_;                   // from kRelay on (stopped in finish())
  const SocketAddress peer_;
  const std::chrono::steady_clock::time_point started_;
  PackedAccessRecord packed_record_;      // from the relay's start
  std::unique_ptr<AccessRecord> thawed_;  // packed_record_ unpacked to be amended (rare)
};

}  // namespace acr
