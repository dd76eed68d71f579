#include "dns/ares_channel.h"

#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>
#include <mutex>

namespace acr {
namespace {

// Rounds over the servers. The second round waits twice as long per server (c-ares doubles the
// timeout each round), so both rounds fit a budget of 3 per-try timeouts per server.
constexpr int kTries = 2;
constexpr std::chrono::milliseconds kMinTryTimeout{20};
// Read instead of resolv.conf with explicit servers, so that nothing of the host's DNS
// configuration (nameservers, options, sortlist) leaks into a configuration that names servers.
constexpr char kNoResolvConf[] = "/dev/null";
constexpr char kDnsOnly[] = "b";

int initLibrary() {
  // ares_library_init is not thread-safe and needed once per process.
  static std::once_flag once;
  static int status = ARES_SUCCESS;
  std::call_once(once, [] { status = ares_library_init(ARES_LIB_INIT_ALL); });
  return status;
}

int tryTimeoutMs(std::chrono::milliseconds budget, size_t servers) {
  const auto per_try = budget / static_cast<int64_t>(3 * std::max<size_t>(servers, 1));
  return static_cast<int>(std::max(per_try, kMinTryTimeout).count());
}

int setServers(ares_channel channel, const std::vector<DnsServer>& servers) {
  std::vector<ares_addr_port_node> nodes(servers.size());
  for (size_t i = 0; i < servers.size(); ++i) {
    ares_addr_port_node& node = nodes[i];
    std::memset(&node, 0, sizeof(node));
    const IpAddress& address = servers[i].address;
    if (address.isV4()) {
      node.family = AF_INET;
      node.addr.addr4.s_addr = htonl(address.v4Value());
    } else {
      node.family = AF_INET6;
      const std::array<uint8_t, 16> bytes = address.v6Bytes();
      std::memcpy(&node.addr.addr6, bytes.data(), bytes.size());
    }
    node.udp_port = servers[i].port;
    node.tcp_port = servers[i].port;
    node.next = i + 1 < nodes.size() ? &nodes[i + 1] : nullptr;
  }
  return ares_set_servers_ports(channel, nodes.empty() ? nullptr : nodes.data());
}

size_t countServers(ares_channel channel) {
  ares_addr_port_node* list = nullptr;
  if (ares_get_servers_ports(channel, &list) != ARES_SUCCESS) {
    return 0;
  }
  size_t count = 0;
  for (const ares_addr_port_node* node = list; node != nullptr; node = node->next) {
    ++count;
  }
  ares_free_data(list);
  return count;
}

}  // namespace

std::unique_ptr<AresChannel> AresChannel::create(event_base* base, const AresChannelConfig& config,
                                                 std::string& error) {
  int status = initLibrary();
  if (status != ARES_SUCCESS) {
    error = std::string("c-ares library: ") + ares_strerror(status);
    return nullptr;
  }
  std::unique_ptr<AresChannel> channel(new AresChannel(base));
  channel->timer_ = evtimer_new(base, &AresChannel::onTimer, channel.get());
  if (channel->timer_ == nullptr) {
    error = "cannot create the c-ares timer";
    return nullptr;
  }
  const size_t guess = config.servers.empty() ? 1 : config.servers.size();
  status = channel->init(config, guess);
  if (status == ARES_SUCCESS && config.servers.empty() && channel->server_count_ > 1) {
    // resolv.conf named several servers: split the budget over them. The channel has no query
    // and no socket yet, so it is simply made again.
    ares_destroy(channel->channel_);
    channel->channel_ = nullptr;
    status = channel->init(config, channel->server_count_);
  }
  if (status != ARES_SUCCESS) {
    error = std::string("c-ares channel: ") + ares_strerror(status);
    return nullptr;
  }
  return channel;
}

int AresChannel::init(const AresChannelConfig& config, size_t server_guess) {
  ares_options options;
  std::memset(&options, 0, sizeof(options));
  int mask = ARES_OPT_FLAGS | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES | ARES_OPT_DOMAINS |
             ARES_OPT_SOCK_STATE_CB | ARES_OPT_RESOLVCONF;
  options.flags = ARES_FLAG_NOALIASES;
  options.timeout = tryTimeoutMs(config.budget, server_guess);
  options.tries = kTries;
  options.domains = nullptr;
  options.ndomains = 0;
  options.sock_state_cb = &AresChannel::onSocketState;
  options.sock_state_cb_data = this;
  // c-ares copies every string option, so pointers to constants and to `config` are fine.
  if (config.servers.empty()) {
    options.resolvconf_path = const_cast<char*>(config.resolv_conf_path.c_str());
  } else {
    options.resolvconf_path = const_cast<char*>(kNoResolvConf);
    options.lookups = const_cast<char*>(kDnsOnly);
    mask |= ARES_OPT_LOOKUPS;
  }
  int status = ares_init_options(&channel_, &options, mask);
  if (status != ARES_SUCCESS) {
    channel_ = nullptr;
    return status;
  }
  if (!config.servers.empty()) {
    status = setServers(channel_, config.servers);
    if (status != ARES_SUCCESS) {
      ares_destroy(channel_);
      channel_ = nullptr;
      return status;
    }
  }
  server_count_ = countServers(channel_);
  return ARES_SUCCESS;
}

AresChannel::~AresChannel() {
  if (channel_ != nullptr) {
    // Closes every socket (onSocketState frees its event) and fails every outstanding query with
    // ARES_EDESTRUCTION.
    ares_destroy(channel_);
  }
  for (auto& [fd, ev] : sockets_) {
    event_free(ev);
  }
  if (timer_ != nullptr) {
    event_free(timer_);
  }
}

void AresChannel::getAddrInfo(const char* name, int family, ares_addrinfo_callback callback,
                              void* arg) {
  ares_addrinfo_hints hints;
  std::memset(&hints, 0, sizeof(hints));
  hints.ai_family = family;
  ares_getaddrinfo(channel_, name, nullptr, &hints, callback, arg);
  armTimer();
}

void AresChannel::onSocketState(void* data, ares_socket_t fd, int readable, int writable) {
  auto* self = static_cast<AresChannel*>(data);
  if (const auto it = self->sockets_.find(fd); it != self->sockets_.end()) {
    // Freeing the event whose callback is running is allowed: libevent copies what it needs
    // before calling it.
    event_free(it->second);
    self->sockets_.erase(it);
  }
  if (readable == 0 && writable == 0) {
    return;
  }
  const short what = static_cast<short>(EV_PERSIST | (readable != 0 ? EV_READ : 0) |
                                        (writable != 0 ? EV_WRITE : 0));
  event* ev = event_new(self->base_, fd, what, &AresChannel::onSocketEvent, self);
  // Without an event the socket is only served by the timer; the query then ends by timeout.
  if (ev != nullptr && event_add(ev, nullptr) == 0) {
    self->sockets_.emplace(fd, ev);
  } else if (ev != nullptr) {
    event_free(ev);
  }
}

void AresChannel::onSocketEvent(evutil_socket_t fd, short what, void* arg) {
  auto* self = static_cast<AresChannel*>(arg);
  self->process((what & EV_READ) != 0 ? fd : ARES_SOCKET_BAD,
                (what & EV_WRITE) != 0 ? fd : ARES_SOCKET_BAD);
}

void AresChannel::onTimer(evutil_socket_t, short, void* arg) {
  static_cast<AresChannel*>(arg)->process(ARES_SOCKET_BAD, ARES_SOCKET_BAD);
}

void AresChannel::process(ares_socket_t read_fd, ares_socket_t write_fd) {
  ++processing_;
  ares_process_fd(channel_, read_fd, write_fd);
  --processing_;
  armTimer();
}

void AresChannel::armTimer() {
  timeval tv;
  if (ares_timeout(channel_, nullptr, &tv) != nullptr) {
    // c-ares truncates the time left to whole milliseconds: with under 1 ms left it says 0, and a
    // timer armed with 0 finds nothing timed out yet and is re-armed with 0 again, spinning for
    // up to a millisecond. One extra millisecond makes every wake-up find its timeout expired.
    tv.tv_usec += 1000;
    if (tv.tv_usec >= 1'000'000) {
      tv.tv_sec += 1;
      tv.tv_usec -= 1'000'000;
    }
    evtimer_add(timer_, &tv);
  } else {
    evtimer_del(timer_);
  }
}

}  // namespace acr
