#pragma once

#include <event2/event.h>
#include <event2/listener.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <thread>
#include <unordered_map>
#include <vector>

#include "dns/resolver.h"
#include "proxy/close_reason.h"
#include "proxy/happy_eyeballs_dialer.h"
#include "proxy/pipe_pool.h"
#include "proxy/proxy_context.h"
#include "proxy/slab.h"
#include "proxy/upstream_proxy_dialer.h"

namespace acr {

class Connection;

// One event loop on one thread: its own SO_REUSEPORT listeners, its own resolver and cache, and
// the connections it accepted. Nothing is shared with other workers but the ProxyContext.
class Worker {
 public:
  // `max_pipes`: the PipePool's limit (ProxyServer::pipesPerWorker).
  Worker(ProxyContext& context, size_t max_pipes);
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Binds every listener; throws std::runtime_error naming the address on failure. A listener
  // whose address matches a listening socket in `inherited` (systemd socket activation) listens
  // on a duplicate of it instead of a new socket, and marks it in `used`.
  void bindListeners(const std::vector<int>& inherited, std::vector<bool>& used);
  // One transparentWarning() per transparent listener whose socket has no IP_TRANSPARENT.
  std::vector<std::string> transparentWarnings() const;
  void start(unsigned index);  // runs the loop on a new thread named acr-worker-<index>
  void join();
  // True once the loop has ended (after a drain); safe from any thread.
  bool stopped() const noexcept { return stopped_.load(std::memory_order_acquire); }
  // Thread-safe: answer new clients 503 draining (connect) or a reset (others), let tunnels
  // finish until `deadline`, then abort the rest, close the listeners and end the loop.
  void drain(std::chrono::milliseconds deadline);
  // Thread-safe: after a reload whose policy has revokeOnReload(), judge every open connection
  // again by the current policy (Connection::rejudge; README "Reload").
  void revokeDenied();
  // Thread-safe: after a reload, gives this loop's resolver the current DNS settings
  // (Resolver::reconfigure); lookups in flight go on within their deadline.
  void applyDnsSettings();

  event_base* base() noexcept { return base_; }
  // Steady-clock milliseconds of this loop's last heartbeat (a timer every second); the main
  // thread feeds systemd's watchdog only while every loop's heartbeat is fresh.
  int64_t lastHeartbeatMs() const noexcept { return heartbeat_ms_.load(std::memory_order_relaxed); }
  Resolver& resolver() noexcept { return *resolver_; }
  // The pipes this loop's relays splice bulk through.
  PipePool& pipes() noexcept { return pipes_; }
  ProxyContext& context() noexcept { return context_; }
  // Called by a connection that has finished; deletes it from the loop, after the callback
  // that finished it has returned.
  void release(Connection* connection);
  // Called by a connection whose dial has ended, from inside the dialer's callback (which must
  // not destroy it): frees the dialer on the loop's next pass, so that an open tunnel keeps
  // neither the dialer nor its timers and attempts.
  void retire(std::unique_ptr<HappyEyeballsDialer> dialer);
  // A connection's handshake (accept to relay or close) began or ended. When a burst of them
  // (kTrimBurst or more at once) is over, the heap's free pages and the slabs' spare spans go
  // back to the kernel (malloc_trim and Slab::trimAllSpares, at most once a second): what 500
  // handshakes at once held (their input buffers, dialers and DNS state) would otherwise stay
  // resident while their tunnels idle.
  void handshakeStarted() noexcept;
  void handshakeEnded() noexcept;
  static constexpr size_t kTrimBurst = 64;
  void retire(std::unique_ptr<UpstreamProxyDialer> dialer);

 private:
  struct Listener {
    Worker* worker;
    ListenerKind kind;
    size_t index;  // in settings()->listeners: the same listener in every worker (its limit)
    SocketAddress address;
    evconnlistener* listener = nullptr;
    event* resume = nullptr;  // re-enables accepting after EMFILE backoff
    bool inherited = false;   // passed by systemd (socket activation): the socket outlives us
    // The TCP keepalive idle set on the listening socket (unset if that failed): accepted
    // sockets inherit SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL and TCP_KEEPCNT from it.
    std::optional<std::chrono::seconds> keepalive;
  };

  static void onAccept(evconnlistener*, evutil_socket_t fd, sockaddr* peer, int length, void* arg);
  static void onAcceptError(evconnlistener* listener, void* arg);
  static void onResume(evutil_socket_t, short, void* arg);
  // What another thread asks of this loop (drain(), revokeDenied(), applyDnsSettings()): it sets
  // the request's bit and writes the eventfd, and onRequests() runs what is set. This is the only
  // way another thread reaches the loop, so its event_base runs without libevent's locks
  // (EVENT_BASE_FLAG_NOLOCK): about 30 lock and unlock pairs per tunnel fewer.
  enum Request : uint32_t { kDrainRequest = 1, kRevokeRequest = 2, kDnsRequest = 4 };
  void request(Request request);
  static void onRequests(evutil_socket_t fd, short, void* arg);
  // What each request does, on the loop.
  void startDrain();
  void revokeDeniedNow();
  void applyDnsSettingsNow();
  static void onDrainTick(evutil_socket_t, short, void* arg);
  static void onReap(evutil_socket_t, short, void* arg);
  static void onHeartbeat(evutil_socket_t, short, void* arg);

  void accept(Listener& listener, int fd, const sockaddr* peer, int length);
  // Closes a connection before a Connection exists (draining, a connection limit): connect
  // listener the reason's 503 with `sentence`, others a reset; logged and counted like any other.
  void refuseAtAccept(const Listener& listener, int fd, const SocketAddress& peer,
                      CloseReason reason, const std::string& sentence);
  void closeListeners();

  ProxyContext& context_;
  event_base* base_ = nullptr;
  std::unique_ptr<Resolver> resolver_;
  PipePool pipes_;
  std::vector<std::unique_ptr<Listener>> listeners_;
  // Entries in Slab::tunnels(), with the connections they own.
  std::unordered_map<Connection*, std::unique_ptr<Connection>, std::hash<Connection*>,
                     std::equal_to<Connection*>,
                     SlabAllocator<std::pair<Connection* const, std::unique_ptr<Connection>>>>
      connections_;
  std::vector<Connection*> finished_;
  size_t handshakes_ = 0;       // connections between accept and relay (or close)
  size_t handshakes_peak_ = 0;  // the most since the last trim
  std::chrono::steady_clock::time_point last_trim_{};
  bool trim_due_ = false;  // onReap trims (handshakeEnded)
  std::vector<std::unique_ptr<HappyEyeballsDialer>> retired_dialers_;
  std::vector<std::unique_ptr<UpstreamProxyDialer>> retired_proxy_dialers_;
  event* reaper_ = nullptr;
  event* heartbeat_ = nullptr;
  std::atomic<int64_t> heartbeat_ms_{0};
  event* drain_tick_ = nullptr;
  std::chrono::steady_clock::time_point drain_deadline_;
  bool draining_ = false;
  std::chrono::milliseconds drain_timeout_{0};  // written before kDrainRequest is set
  std::atomic<uint32_t> requests_{0};           // Request bits not run yet
  int requests_fd_ = -1;                        // eventfd: a request is waiting
  event* requests_event_ = nullptr;
  std::atomic<bool> stopped_{false};
  std::thread thread_;
};

}  // namespace acr
