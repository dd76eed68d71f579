#pragma once

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

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
#include "proxy/happy_eyeballs_dialer.h"

namespace acr {

class Worker;

// One client connection, from accept to close, as an explicit state machine. Each listener kind
// enters at its own first state; every later step is shared:
//
//   connect:      kReadHead -> kResolve -> kConnect -> kTunnelHello -> kRelay
//   sni:          kReadHello -> kResolve -> kConnect -> kRelay
//   transparent:  kReadHello -> [kResolve] -> kConnect -> kRelay
//
// A denial or failure in any state goes to kRefuse (connect: write the HTTP refusal, then close;
// others: close with RST, never dialling) or straight to close. Every connection ends in
// finish(), which writes its one access-log line.
class Connection {
 public:
  enum class State : uint8_t {
    kReadHead,     // connect: reading the CONNECT head (head timeout runs)
    kReadHello,    // transparent/sni: reading the ClientHello (head timeout runs)
    kResolve,      // waiting for the proxy's own DNS answer for an allowed name (when one family
                   // answered first: the resolution delay runs)
    kConnect,      // the dialer tries the allowed candidates (connect budget runs)
    kTunnelHello,  // connect: 200 sent; peeking the tunnel's first bytes for the SNI
    kRelay,        // relaying both ways (idle timeout runs)
    kRefuse,       // connect: flushing a refusal, then closing
    kClosed,       // finished; waiting for deferred deletion
  };

  Connection(Worker& worker, ListenerKind kind, const SocketAddress& listener_address, int fd,
             const SocketAddress& peer, std::shared_ptr<const Policy> policy);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  void start();
  // Instead of start(), for a client the client rules refuse (Policy::decideClient): connect
  // listener 403 with reason client_not_allowed, other listeners a reset; never reads a request.
  void refuseClient(const std::string& sentence);
  // Ends the connection now (shutdown): RST to both sides, log line written.
  void abort(std::string_view reason);
  // Revoke on reload (README "Reload", THREATS F14), called by Worker::revokeDenied after a
  // reload installed `policy` (one with revokeOnReload()). A connection not judged yet (reading
  // its head or hello) is judged by `policy` from now on; one already let through (dns, connect,
  // tunnel_hello, relay) is judged again by it (client, target, dialled address) and closed with
  // reason `revoked` if it now denies it (connect listener before the 200: 403), else continues
  // under `policy`.
  void rejudge(std::shared_ptr<const Policy> policy);
  State state() const noexcept { return state_; }

 private:
  static void onClientRead(bufferevent* bev, void* self);
  static void onClientWrite(bufferevent* bev, void* self);
  static void onClientEvent(bufferevent* bev, short events, void* self);
  static void onUpstreamRead(bufferevent* bev, void* self);
  static void onUpstreamWrite(bufferevent* bev, void* self);
  static void onUpstreamEvent(bufferevent* bev, short events, void* self);
  static void onTimer(evutil_socket_t, short, void* self);

  // True (after refusing it: proxy_loop) when the peer is one of the proxy's own upstream
  // sockets. Checked at accept and again at the first bytes: on loopback the handshake completes
  // inside the dialler's connect(), so another loop may accept the copy before the dialler has
  // registered its endpoint, but never receive bytes before it.
  bool refusedAsLoop();
  void readHead();
  void readHello();
  void readTunnelHello();
  void decideHello(const ClientHello& hello);
  void resolve(std::string_view name);
  void onResolved(const DnsAnswer& answer);
  // One address family answered before the other (Resolver first_family): RFC 8305 §3.
  void onFirstFamily(const DnsAnswer& answer);
  // Dials the first family's allowed addresses while the other family is still resolving.
  void dialFirstFamily();
  // Keeps the allowed addresses of `addresses`, in order; remembers the first denial. Dials them;
  // refuses with the first denial when none is allowed and nothing else can come (`more_coming`
  // false and nothing dialled yet).
  void chooseCandidates(const std::vector<IpAddress>& addresses, bool more_coming = false);
  // Hands `candidates_` to the dialer, making it (and starting the connect budget) the first time.
  void dial(bool more_coming);
  // True when `address`:port_ is one of this process's listening endpoints (any listener, a
  // wildcard one by every local address; see LocalAddresses): dialling it would loop.
  bool dialsSelf(const IpAddress& address) const;
  // If dialsSelf(address), refuses the connection (self_connection) and returns true.
  bool refusedAsSelf(const IpAddress& address);
  std::string selfSentence(const IpAddress& address) const;
  void onDialed(DialResult result);
  // Frees the upstream socket (RST if `reset`) and forgets its local endpoint; closes every
  // connection attempt still in flight.
  void closeUpstream(bool reset);
  void onUpstreamConnected();
  void startRelay();
  void relay(bufferevent* from, bufferevent* to, bool upstream_to_client);
  // Memory accounting (README "Relay", THREATS R8). While relaying, every change of the two
  // output buffers is added to ProxyStats::relay_buffered; overBufferBudget() says whether a side
  // whose sink holds `queued` bytes must stop being read because the process is past
  // --max-buffer-memory and this tunnel holds at least its fair share.
  static void onOutputChanged(evbuffer* buffer, const evbuffer_cb_info* info, void* self);
  bool overBufferBudget(size_t queued) const noexcept;
  void releaseRelayBuffers();
  // Records that the unfinished head/ClientHello now holds `length` bytes; false when that
  // takes the process past --max-handshake-memory (the caller refuses: handshake_memory).
  bool holdHandshake(size_t length);
  void releaseHandshake();
  void onEof(bool from_client);
  void refuse(int status, std::string_view reason, const std::string& sentence);
  void deny(std::string_view reason, const std::string& sentence, std::string rule = {});
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
  std::string_view phaseName() const noexcept;
  double msSince(std::chrono::steady_clock::time_point start) const noexcept;

  Worker& worker_;
  const ListenerKind kind_;
  const SocketAddress listener_address_;
  // The snapshot this connection is judged by: the one it was accepted with, or, with revoke on
  // reload, the newest (rejudge). The replaced one stays alive in `replaced_policy_`: decisions
  // kept from it (first_address_denial_) point at its rules.
  std::shared_ptr<const Policy> policy_;
  std::shared_ptr<const Policy> replaced_policy_;
  State state_;
  bufferevent* client_ = nullptr;
  bufferevent* upstream_ = nullptr;
  event* timer_ = nullptr;
  uint64_t dns_ticket_ = 0;

  // Parsers live only while their phase does: an idle tunnel keeps neither.
  std::unique_ptr<ConnectRequestParser> connect_parser_;
  std::unique_ptr<ClientHelloParser> hello_parser_;
  std::string host_;  // CONNECT host or SNI (normalised when it is a name)
  bool host_is_literal_ = false;
  uint16_t port_ = 0;
  std::optional<SocketAddress> original_dst_;
  std::optional<SocketAddress> upstream_local_;  // registered in OwnUpstreams while open
  SocketAddress upstream_remote_;                // the endpoint upstream_local_ was dialling
  std::vector<IpAddress> candidates_;
  std::optional<Decision> first_address_denial_;
  IpAddress first_denied_address_;
  bool first_denial_is_self_ = false;    // the first denial is self_connection, not the policy's
  std::vector<IpAddress> first_family_;  // addresses of the family that answered first
  std::unique_ptr<HappyEyeballsDialer> dialer_;  // from the first dial to the end

  evbuffer_cb_entry* client_output_cb_ = nullptr;
  evbuffer_cb_entry* upstream_output_cb_ = nullptr;
  int64_t relay_buffered_ = 0;  // this tunnel's share of ProxyStats::relay_buffered
  int64_t handshake_held_ = 0;  // this connection's share of ProxyStats::handshake_buffered

  // Half-close bookkeeping for the relay.
  bool client_eof_ = false;
  bool upstream_eof_ = false;
  bool client_shut_ = false;    // FIN sent to the client
  bool upstream_shut_ = false;  // FIN sent upstream
  std::chrono::steady_clock::time_point last_activity_;

  // The peer is one of the proxy's own upstream sockets (see OwnUpstreams).
  const SocketAddress peer_;
  // Where the client's connection was headed: SO_ORIGINAL_DST after a REDIRECT, else the local
  // address (OwnUpstreams matches it with the dialled endpoint).
  const std::optional<SocketAddress> destination_;
  const bool looped_;
  bool loop_rechecked_ = false;
  const std::chrono::steady_clock::time_point started_;
  std::chrono::steady_clock::time_point dns_started_;
  std::chrono::steady_clock::time_point connect_started_;
  AccessRecord record_;
};

}  // namespace acr
