#pragma once

#include <ares.h>
#include <event2/event.h>

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "dns/dns_server.h"

namespace acr {

// What an AresChannel is made from. Either explicit servers (DNS only: no hosts file, and no
// resolv.conf is read at all), or a resolv.conf whose nameservers, sortlist and lookup order
// (hosts file, then DNS) are honoured. In both modes the search list is disabled and
// HOSTALIASES is ignored: an egress proxy must resolve exactly the name its policy checked, never
// "name.corp.example" after an NXDOMAIN.
struct AresChannelConfig {
  std::vector<DnsServer> servers;
  std::string resolv_conf_path;
  // Total time one query may take. c-ares makes two rounds over the servers, the second with twice
  // the per-try timeout, so the per-try timeout is budget / (3 * servers).
  std::chrono::milliseconds budget{5000};
};

// One c-ares channel driven by a libevent loop: one persistent event per c-ares socket, watching
// what c-ares asks for (ARES_OPT_SOCK_STATE_CB), ares_process_fd on activity, and one timer
// re-armed from ares_timeout after every operation. No thread, no blocking call (reading
// resolv.conf at creation aside).
class AresChannel {
 public:
  // Returns null and sets `error` when c-ares cannot create the channel.
  static std::unique_ptr<AresChannel> create(event_base* base, const AresChannelConfig& config,
                                             std::string& error);
  // ares_destroy: every outstanding query's callback has run with ARES_EDESTRUCTION before it
  // returns. Must not run while processing() (from inside one of this channel's callbacks).
  ~AresChannel();
  AresChannel(const AresChannel&) = delete;
  AresChannel& operator=(const AresChannel&) = delete;

  // ares_getaddrinfo(name, family): AF_INET6 (AAAA), AF_INET (A) or AF_UNSPEC (both). `callback`
  // runs exactly once, either before this returns (hosts file hit, bad name, out of memory) or
  // later from the event loop, and owns the ares_addrinfo it is given.
  void getAddrInfo(const char* name, int family, ares_addrinfo_callback callback, void* arg);

  // True while c-ares runs inside ares_process_fd, i.e. while query callbacks may be running.
  bool processing() const noexcept { return processing_ > 0; }
  size_t serverCount() const noexcept { return server_count_; }
  size_t socketCount() const noexcept { return sockets_.size(); }

 private:
  explicit AresChannel(event_base* base) : base_(base) {}
  int init(const AresChannelConfig& config, size_t server_guess);

  static void onSocketState(void* data, ares_socket_t fd, int readable, int writable);
  static void onSocketEvent(evutil_socket_t fd, short what, void* arg);
  static void onTimer(evutil_socket_t fd, short what, void* arg);
  void process(ares_socket_t read_fd, ares_socket_t write_fd);
  void armTimer();

  event_base* base_;
  ares_channel channel_ = nullptr;
  event* timer_ = nullptr;
  std::unordered_map<ares_socket_t, event*> sockets_;
  size_t server_count_ = 0;
  int processing_ = 0;
};

}  // namespace acr
