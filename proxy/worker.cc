#include "proxy/worker.h"

#include <event2/thread.h>
#include <fcntl.h>
#include <malloc.h>
#include <netinet/in.h>
#include <pthread.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>

#include "proxy/close_reason.h"
#include "proxy/connection.h"
#include "proxy/socket_options.h"

namespace acr {
namespace {

// After EMFILE/ENFILE the listener pauses this long instead of spinning on a readable socket it
// cannot accept from (libevent #71); it resumes by itself.
constexpr timeval kAcceptBackoff{0, 100'000};
constexpr timeval kDrainTick{0, 100'000};

ResolverOptions resolverOptions(const ProxySettings& settings) {
  ResolverOptions options;
  options.servers = settings.dns_servers;
  options.timeout = settings.dns_timeout;
  options.min_ttl = settings.dns_min_ttl;
  options.max_ttl = settings.dns_max_ttl;
  options.negative_ttl = settings.dns_negative_ttl;
  options.max_cache_entries = settings.dns_cache_size;
  return options;
}

// A duplicate of the socket-activated listening socket bound to `settings.address`, or -1.
int inheritedListener(const ListenerSettings& settings, const std::vector<int>& inherited,
                      std::vector<bool>& used) {
  for (size_t i = 0; i < inherited.size(); ++i) {
    if (sd_is_socket_sockaddr(inherited[i], SOCK_STREAM, settings.address.get(),
                              settings.address.length, 1) > 0) {
      const int fd = fcntl(inherited[i], F_DUPFD_CLOEXEC, 3);
      if (fd < 0) {
        throw std::runtime_error("cannot use the socket-activated " + settings.text + ": " +
                                 std::strerror(errno));
      }
      evutil_make_socket_nonblocking(fd);
      used[i] = true;
      return fd;
    }
  }
  return -1;
}

// A new non-blocking socket bound to `settings.address`, with the options its listener needs.
int boundSocket(const ListenerSettings& settings) {
  const int fd = socket(settings.address.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    throw std::runtime_error("cannot create a socket for " + settings.text + ": " +
                             std::strerror(errno));
  }
  const int on = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
  // One listening socket per worker on the same address; the kernel spreads connections.
  setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof(on));
  if (settings.address.family() == AF_INET6) {
    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof(on));
  }
  if (settings.kind == ListenerKind::kTransparent) {
    // TPROXY delivers foreign destinations only to IP_TRANSPARENT sockets. It needs
    // CAP_NET_ADMIN; without it, REDIRECT still works, so a refusal is not fatal.
    // The proxy server warns about it (Worker::transparentWarnings).
    setTransparent(fd, settings.address.family());
  }
  if (bind(fd, settings.address.get(), settings.address.length) != 0) {
    const int error = errno;
    close(fd);
    throw std::runtime_error("cannot listen on " + settings.text + ": " + std::strerror(error));
  }
  return fd;
}

// The sentence of a refusal at accept, naming the limit that refused.
std::string limitSentence(CloseReason reason, size_t limit) {
  switch (reason) {
    case CloseReason::kClientOverloaded:
      return "denied: this client address has " + std::to_string(limit) +
             " connections open, its limit (max_connections_per_client)";
    case CloseReason::kListenerOverloaded:
      return "denied: this listener has " + std::to_string(limit) +
             " connections open, its limit (max_connections_per_listener)";
    default:
      return "denied: the proxy is at its connection limit (" + std::to_string(limit) + ")";
  }
}

}  // namespace

Worker::Worker(ProxyContext& context, size_t max_pipes) : context_(context), pipes_(max_pipes) {
  // No locks: only this loop's thread touches the base once it runs (see request()).
  event_config* config = event_config_new();
  if (config != nullptr) {
    event_config_set_flag(config, EVENT_BASE_FLAG_NOLOCK);
    base_ = event_base_new_with_config(config);
    event_config_free(config);
  }
  requests_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (base_ == nullptr || requests_fd_ < 0) {
    if (base_ != nullptr) {
      event_base_free(base_);
    }
    if (requests_fd_ >= 0) {
      close(requests_fd_);
    }
    throw std::runtime_error("cannot create an event loop");
  }
  requests_event_ = event_new(base_, requests_fd_, EV_READ | EV_PERSIST, &Worker::onRequests, this);
  event_add(requests_event_, nullptr);
  ResolverOptions resolver_options = resolverOptions(*context.settings());
  resolver_options.observer = &context.metrics();
  resolver_ = std::make_unique<Resolver>(base_, std::move(resolver_options));
  reaper_ = event_new(base_, -1, 0, &Worker::onReap, this);
  drain_tick_ = event_new(base_, -1, EV_PERSIST, &Worker::onDrainTick, this);
  heartbeat_ = event_new(base_, -1, EV_PERSIST, &Worker::onHeartbeat, this);
  static constexpr timeval kHeartbeat{1, 0};
  event_add(heartbeat_, &kHeartbeat);
  onHeartbeat(-1, 0, this);
}

void Worker::onHeartbeat(evutil_socket_t, short, void* arg) {
  auto* worker = static_cast<Worker*>(arg);
  worker->heartbeat_ms_.store(std::chrono::duration_cast<std::chrono::milliseconds>(
                                  std::chrono::steady_clock::now().time_since_epoch())
                                  .count(),
                              std::memory_order_relaxed);
  worker->context_.flushSuppressedLog();
  worker->pipes_.releaseIdleSpares();
}

Worker::~Worker() {
  closeListeners();
  connections_.clear();
  finished_.clear();
  retired_dialers_.clear();  // their timers belong to base_
  retired_proxy_dialers_.clear();
  resolver_.reset();
  event_free(reaper_);
  event_free(drain_tick_);
  event_free(heartbeat_);
  event_free(requests_event_);
  event_base_free(base_);
  close(requests_fd_);
}

void Worker::bindListeners(const std::vector<int>& inherited, std::vector<bool>& used) {
  for (const ListenerSettings& settings : context_.settings()->listeners) {
    auto listener = std::make_unique<Listener>();
    listener->worker = this;
    listener->kind = settings.kind;
    listener->index = listeners_.size();
    listener->address = settings.address;
    // A socket-activated socket is listening already (backlog 0: libevent does not listen()).
    int fd = inheritedListener(settings, inherited, used);
    listener->inherited = fd >= 0;
    const int backlog = fd >= 0 ? 0 : 1024;
    if (fd < 0) {
      fd = boundSocket(settings);
    }
    // Once here rather than on every accepted socket, which inherits it (Connection::start).
    if (const std::chrono::seconds idle = context_.settings()->keepalive_idle;
        setKeepalive(fd, idle)) {
      listener->keepalive = idle;
    }
    // Inherited by every accepted socket too. Not fatal: Nagle only delays.
    setNoDelay(fd);
    listener->listener =
        evconnlistener_new(base_, &Worker::onAccept, listener.get(),
                           LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, backlog, fd);
    if (listener->listener == nullptr) {
      close(fd);
      throw std::runtime_error("cannot listen on " + settings.text);
    }
    evconnlistener_set_error_cb(listener->listener, &Worker::onAcceptError);
    listener->resume = evtimer_new(base_, &Worker::onResume, listener.get());
    listeners_.push_back(std::move(listener));
  }
}

std::vector<std::string> Worker::transparentWarnings() const {
  std::vector<std::string> warnings;
  for (size_t i = 0; i < listeners_.size(); ++i) {
    const Listener& listener = *listeners_[i];
    if (listener.kind == ListenerKind::kTransparent &&
        !isTransparent(evconnlistener_get_fd(listener.listener), listener.address.family())) {
      warnings.push_back(transparentWarning(listener.address.toString()));
    }
  }
  return warnings;
}

void Worker::start(unsigned index) {
  thread_ = std::thread([this, index] {
    // Named so that operators (top -H, /proc/PID/task/*/comm) and the watchdog test can tell the
    // loops apart; the kernel keeps 15 bytes.
    const std::string name = "acr-worker-" + std::to_string(index);
    pthread_setname_np(pthread_self(), name.substr(0, 15).c_str());
    event_base_dispatch(base_);
    stopped_.store(true, std::memory_order_release);
  });
}

void Worker::join() {
  if (thread_.joinable()) {
    thread_.join();
  }
}

void Worker::onAccept(evconnlistener*, evutil_socket_t fd, sockaddr* peer, int length, void* arg) {
  auto* listener = static_cast<Listener*>(arg);
  listener->worker->accept(*listener, fd, peer, length);
}

void Worker::accept(Listener& listener, int fd, const sockaddr* peer, int length) {
  ProxyStats& stats = context_.stats();
  stats.accepted.fetch_add(1, std::memory_order_relaxed);
  SocketAddress peer_address;
  // A TCP peer is an IPv4 or IPv6 address: it fits (anything longer is cut, never overrun).
  const size_t peer_length = std::min(static_cast<size_t>(length), sizeof(peer_address.storage));
  std::memcpy(&peer_address.storage, peer, peer_length);
  peer_address.length = static_cast<socklen_t>(peer_length);
  if (draining_) {
    refuseAtAccept(listener, fd, peer_address, CloseReason::kDraining,
                   "denied: the proxy is shutting down");
    return;
  }
  const IpAddress client = toIpAddress(peer_address);
  // The current limits, not a connection's snapshot: a reload's new limits apply at once.
  ConnectionLimits::Admission admission =
      context_.limits().admit(listener.index, client, *context_.settings());
  if (!admission.slot.held()) {
    // Refuse fast; existing connections keep their resources.
    stats.rejected_overload.fetch_add(1, std::memory_order_relaxed);
    refuseAtAccept(listener, fd, peer_address, admission.refusal,
                   limitSentence(admission.refusal, admission.limit));
    return;
  }
  // The client's group is chosen once, here: every later decision of the connection uses its
  // policy (docs/policy.md "Client groups").
  const std::shared_ptr<const ActivePolicy> active = context_.activePolicy();
  const Policy::ClientChoice choice = active->policy->chooseClient(client);
  auto connection =
      std::make_unique<Connection>(*this, listener.kind, listener.address, fd, peer_address,
                                   active->judging(choice), std::move(admission.slot));
  Connection* raw = connection.get();
  connections_.emplace(raw, std::move(connection));
  if (!choice.decision.allowed()) {
    // Refused before a byte is read; logged and counted like every refusal.
    raw->refuseClient(active->policy->describe(choice.decision, {"", client, 0}));
    return;
  }
  raw->setGroup(*active, choice.group);
  raw->start(listener.keepalive);
}

void Worker::refuseAtAccept(const Listener& listener, int fd, const SocketAddress& peer,
                            CloseReason reason, const std::string& sentence) {
  if (listener.kind == ListenerKind::kConnect) {
    const std::string response = httpRefusal(reason, sentence);
    [[maybe_unused]] const ssize_t sent =
        send(fd, response.data(), response.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
  } else {
    setResetOnClose(fd);
  }
  close(fd);
  // A refusal is a connection too: it gets its log line, so operators see the overload.
  AccessRecord record;
  record.listener = listenerKindName(listener.kind);
  record.client = peer.toString();
  record.reason = closeReasonName(reason);
  record.sentence = sentence;
  record.closed_by = "proxy";
  record.phase = "accept";
  // Counted like every other connection, from the same record as its log line.
  context_.stats().denied.fetch_add(1, std::memory_order_relaxed);
  context_.logConnection(record);
  context_.metrics().recordConnection(listener.kind, reason, record);
}

void Worker::onAcceptError(evconnlistener* evlistener, void* arg) {
  auto* listener = static_cast<Listener*>(arg);
  const int error = EVUTIL_SOCKET_ERROR();
  listener->worker->context_.stats().accept_errors.fetch_add(1, std::memory_order_relaxed);
  if (error == EMFILE || error == ENFILE || error == ENOBUFS || error == ENOMEM) {
    evconnlistener_disable(evlistener);
    evtimer_add(listener->resume, &kAcceptBackoff);
  }
}

void Worker::onResume(evutil_socket_t, short, void* arg) {
  auto* listener = static_cast<Listener*>(arg);
  if (listener->listener != nullptr && !(listener->inherited && listener->worker->draining_)) {
    evconnlistener_enable(listener->listener);
  }
}

void Worker::release(Connection* connection) {
  // Its connection slot (and so stats().active) was released by Connection::finish.
  finished_.push_back(connection);
  event_active(reaper_, 0, 0);
}

void Worker::handshakeStarted() noexcept {
  handshakes_peak_ = std::max(handshakes_peak_, ++handshakes_);
}

void Worker::handshakeEnded() noexcept {
  if (--handshakes_ != 0 || handshakes_peak_ < kTrimBurst) {
    return;
  }
  const auto now = std::chrono::steady_clock::now();
  if (now - last_trim_ >= std::chrono::seconds(1)) {
    last_trim_ = now;
    handshakes_peak_ = 0;
    // In onReap, once the last handshakes' dialers are freed too.
    trim_due_ = true;
    event_active(reaper_, 0, 0);
  }
}

void Worker::retire(std::unique_ptr<HappyEyeballsDialer> dialer) {
  retired_dialers_.push_back(std::move(dialer));
  event_active(reaper_, 0, 0);
}

void Worker::retire(std::unique_ptr<UpstreamProxyDialer> dialer) {
  retired_proxy_dialers_.push_back(std::move(dialer));
  event_active(reaper_, 0, 0);
}

void Worker::onReap(evutil_socket_t, short, void* arg) {
  auto* worker = static_cast<Worker*>(arg);
  worker->retired_dialers_.clear();
  worker->retired_proxy_dialers_.clear();
  std::vector<Connection*> finished;
  finished.swap(worker->finished_);
  for (Connection* connection : finished) {
    worker->connections_.erase(connection);
  }
  if (worker->trim_due_) {
    worker->trim_due_ = false;
    malloc_trim(0);
    Slab::trimAllSpares();
  }
}

void Worker::closeListeners() {
  for (auto& listener : listeners_) {
    if (listener->listener != nullptr) {
      evconnlistener_free(listener->listener);
      listener->listener = nullptr;
    }
    if (listener->resume != nullptr) {
      event_free(listener->resume);
      listener->resume = nullptr;
    }
  }
}

void Worker::drain(std::chrono::milliseconds deadline) {
  drain_timeout_ = deadline;  // published by request()'s release
  request(kDrainRequest);
}

void Worker::revokeDenied() {
  if (!stopped()) {
    request(kRevokeRequest);
  }
}

void Worker::applyDnsSettings() {
  if (!stopped()) {
    request(kDnsRequest);
  }
}

void Worker::request(Request request) {
  requests_.fetch_or(request, std::memory_order_release);
  const uint64_t one = 1;
  // Only fails when the counter is full (a wake-up is pending anyway).
  [[maybe_unused]] const ssize_t written = write(requests_fd_, &one, sizeof(one));
}

void Worker::onRequests(evutil_socket_t fd, short, void* arg) {
  auto* worker = static_cast<Worker*>(arg);
  uint64_t count;
  [[maybe_unused]] const ssize_t read_bytes = read(fd, &count, sizeof(count));
  const uint32_t requests = worker->requests_.exchange(0, std::memory_order_acquire);
  if ((requests & kDnsRequest) != 0) {
    worker->applyDnsSettingsNow();
  }
  if ((requests & kRevokeRequest) != 0) {
    worker->revokeDeniedNow();
  }
  if ((requests & kDrainRequest) != 0) {
    worker->startDrain();
  }
}

void Worker::applyDnsSettingsNow() {
  if (resolver_ == nullptr) {
    return;  // the drain has ended the resolver
  }
  // The settings now current, like revokeDeniedNow(): a later reload may have replaced them.
  ResolverOptions options = resolverOptions(*context_.settings());
  options.observer = &context_.metrics();
  try {
    resolver_->reconfigure(std::move(options));
  } catch (const std::exception& error) {
    // Validated by buildProxySettings already; the old options stay if c-ares refuses.
    spdlog::error("{}", std::string("DNS settings not applied: ") + error.what());
  }
}

void Worker::revokeDeniedNow() {
  // The policy now current, not the one of the reload that asked: a later reload may have
  // replaced it (and turned revoking off) before this loop got here.
  const std::shared_ptr<const ActivePolicy> active = context_.activePolicy();
  if (!active->policy->revokeOnReload()) {
    return;
  }
  // rejudge() may finish a connection; release() only queues it for deletion, so the map is
  // walked whole, but through a copy of its keys to stay independent of that.
  std::vector<Connection*> open;
  open.reserve(connections_.size());
  for (const auto& [connection, owner] : connections_) {
    open.push_back(connection);
  }
  for (Connection* connection : open) {
    connection->rejudge(active);
  }
}

void Worker::startDrain() {
  // Own listeners stay open until the drain ends, so that a new client is told (503 draining on
  // connect, a reset elsewhere; see accept()) rather than refused by the kernel. A socket-activated
  // listener stops accepting at once instead: systemd keeps the socket, and the connections that
  // queue in it during a restart are the next process's to serve.
  draining_ = true;
  for (const auto& listener : listeners_) {
    if (listener->inherited && listener->listener != nullptr) {
      evconnlistener_disable(listener->listener);
    }
  }
  drain_deadline_ = std::chrono::steady_clock::now() + drain_timeout_;
  event_add(drain_tick_, &kDrainTick);
  onDrainTick(-1, 0, this);
}

void Worker::onDrainTick(evutil_socket_t, short, void* arg) {
  auto* worker = static_cast<Worker*>(arg);
  if (!worker->connections_.empty() &&
      std::chrono::steady_clock::now() >= worker->drain_deadline_) {
    std::vector<Connection*> open;
    for (auto& [raw, owned] : worker->connections_) {
      open.push_back(raw);
    }
    for (Connection* connection : open) {
      connection->abort(CloseReason::kShutdown);
    }
    onReap(-1, 0, worker);
  }
  // Connections still waiting on the reaper count as open until it ran.
  if (worker->connections_.empty()) {
    worker->closeListeners();
    event_del(worker->drain_tick_);
    event_del(worker->heartbeat_);
    worker->resolver_.reset();
    event_base_loopexit(worker->base_, nullptr);
  }
}

}  // namespace acr
