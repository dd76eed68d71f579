#pragma once

#include <event2/event.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "conf/proxy_settings.h"
#include "filters/ip_address.h"

namespace acr {

// Every address:port a connection could reach this process on: its listeners (all kinds, and
// the admin endpoint), with a wildcard listener (0.0.0.0, [::]) standing for every local address
// of the host. A dial to one of them would loop back into the proxy, so it is refused
// (self_connection). An immutable snapshot: LocalAddressMonitor builds a new one when the host's
// addresses change, and ProxyContext swaps it in atomically.
class LocalAddresses {
 public:
  // `listeners`: the listening endpoints. `local`: the host's own addresses (see
  // interfaceAddresses()); the unspecified addresses 0.0.0.0 and :: are always local (Linux
  // delivers a connect() to them to the host itself).
  LocalAddresses(const std::vector<SocketAddress>& listeners, std::vector<Cidr> local);

  // True when a connection to `address`:`port` would reach one of the listeners. An
  // IPv4-mapped IPv6 address (::ffff:a.b.c.d) is judged as the IPv4 address it carries (the
  // kernel delivers it there). A wildcard listener of either family matches every local
  // address of both families on its port (conservative: a [::] socket may accept IPv4 too).
  bool contains(const IpAddress& address, uint16_t port) const noexcept;
  // True when `address` is one of the host's own addresses (or unspecified).
  bool isLocal(const IpAddress& address) const noexcept;
  size_t localCount() const noexcept { return local_.size(); }

  // The host's interface addresses from getifaddrs(): each address as a host route, and a
  // loopback interface's whole prefix (127.0.0.0/8 is local, not only 127.0.0.1). Empty on
  // failure.
  static std::vector<Cidr> interfaceAddresses();

 private:
  struct Listening {
    IpAddress address;
    uint16_t port;
    bool wildcard;
  };
  std::vector<Listening> listeners_;
  std::vector<Cidr> local_;
};

// Keeps a LocalAddresses snapshot current on an event loop (the main thread's). It listens on a
// netlink route socket for address changes (RTM_NEWADDR/RTM_DELADDR), so that an address added to
// the host is known at once, and re-reads getifaddrs() on every change; a timer re-reads it every
// 30 s as well, in case netlink is unavailable or dropped a message (ENOBUFS).
class LocalAddressMonitor {
 public:
  using Publish = std::function<void(std::shared_ptr<const LocalAddresses>)>;

  // Publishes a first snapshot before returning.
  LocalAddressMonitor(event_base* base, std::vector<SocketAddress> listeners, Publish publish);
  ~LocalAddressMonitor();
  LocalAddressMonitor(const LocalAddressMonitor&) = delete;
  LocalAddressMonitor& operator=(const LocalAddressMonitor&) = delete;

  void refresh();

 private:
  static void onNetlink(evutil_socket_t fd, short, void* self);
  static void onTimer(evutil_socket_t, short, void* self);

  std::vector<SocketAddress> listeners_;
  Publish publish_;
  int netlink_ = -1;
  event* netlink_event_ = nullptr;
  event* timer_ = nullptr;
};

}  // namespace acr
