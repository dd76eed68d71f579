#include "proxy/local_addresses.h"

#include <ifaddrs.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <bit>
#include <cstring>

#include "proxy/socket_options.h"

namespace acr {
namespace {

// ::ffff:a.b.c.d -> a.b.c.d; every other address unchanged.
IpAddress unmapped(const IpAddress& address) noexcept {
  if (!address.isV4() && (address.v6Value() >> 32) == 0xffff) {
    return IpAddress::v4(static_cast<uint32_t>(address.v6Value()));
  }
  return address;
}

bool isUnspecified(const IpAddress& address) noexcept {
  return address.isV4() ? address.v4Value() == 0 : address.v6Value() == 0;
}

uint8_t prefixLength(const sockaddr* netmask) noexcept {
  if (netmask == nullptr) {
    return 0;
  }
  uint8_t length = 0;
  if (netmask->sa_family == AF_INET) {
    length = static_cast<uint8_t>(
        std::popcount(reinterpret_cast<const sockaddr_in*>(netmask)->sin_addr.s_addr));
  } else if (netmask->sa_family == AF_INET6) {
    for (const uint8_t byte : reinterpret_cast<const sockaddr_in6*>(netmask)->sin6_addr.s6_addr) {
      length = static_cast<uint8_t>(length + std::popcount(byte));
    }
  }
  return length;
}

// The network of `address`/`length` (host bits cleared).
Cidr networkOf(const IpAddress& address, uint8_t length) noexcept {
  if (address.isV4()) {
    const uint32_t mask = length == 0 ? 0 : ~uint32_t{0} << (32 - length);
    return {IpAddress::v4(address.v4Value() & mask), length};
  }
  const Uint128 mask = length == 0 ? 0 : ~Uint128{0} << (128 - length);
  return {IpAddress::v6(address.v6Value() & mask), length};
}

constexpr timeval kRefreshPeriod{30, 0};

}  // namespace

LocalAddresses::LocalAddresses(const std::vector<SocketAddress>& listeners, std::vector<Cidr> local)
    : local_(std::move(local)) {
  local_.push_back({IpAddress::v4(0), 32});
  local_.push_back({IpAddress::v6(0), 128});
  for (const SocketAddress& listener : listeners) {
    const IpAddress address = unmapped(toIpAddress(listener));
    listeners_.push_back({address, listener.port(), isUnspecified(address)});
  }
}

bool LocalAddresses::isLocal(const IpAddress& address) const noexcept {
  const IpAddress plain = unmapped(address);
  for (const Cidr& cidr : local_) {
    if (cidr.contains(plain)) {
      return true;
    }
  }
  return false;
}

bool LocalAddresses::contains(const IpAddress& address, uint16_t port) const noexcept {
  const IpAddress plain = unmapped(address);
  bool local_known = false;
  bool local = false;
  for (const Listening& listener : listeners_) {
    if (listener.port != port) {
      continue;
    }
    if (listener.address == plain) {
      return true;
    }
    // A wildcard listener takes every local address; a connect() to 0.0.0.0 or :: reaches any
    // listener of the host on that port.
    if (listener.wildcard || isUnspecified(plain)) {
      if (!local_known) {
        local = isLocal(plain);
        local_known = true;
      }
      if (local) {
        return true;
      }
    }
  }
  return false;
}

std::vector<Cidr> LocalAddresses::interfaceAddresses() {
  std::vector<Cidr> out;
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) {
    return out;
  }
  for (const ifaddrs* entry = list; entry != nullptr; entry = entry->ifa_next) {
    if (entry->ifa_addr == nullptr ||
        (entry->ifa_addr->sa_family != AF_INET && entry->ifa_addr->sa_family != AF_INET6)) {
      continue;
    }
    SocketAddress socket_address;
    const size_t size =
        entry->ifa_addr->sa_family == AF_INET ? sizeof(sockaddr_in) : sizeof(sockaddr_in6);
    std::memcpy(&socket_address.storage, entry->ifa_addr, size);
    socket_address.length = static_cast<socklen_t>(size);
    const IpAddress address = toIpAddress(socket_address);
    const uint8_t host = address.isV4() ? 32 : 128;
    out.push_back({address, host});
    if ((entry->ifa_flags & IFF_LOOPBACK) != 0) {
      // Linux answers for the whole loopback prefix (127.0.0.0/8), not only the address on lo.
      out.push_back(networkOf(address, prefixLength(entry->ifa_netmask)));
    }
  }
  freeifaddrs(list);
  return out;
}

LocalAddressMonitor::LocalAddressMonitor(event_base* base, std::vector<SocketAddress> listeners,
                                         Publish publish)
    : listeners_(std::move(listeners)), publish_(std::move(publish)) {
  netlink_ = socket(AF_NETLINK, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, NETLINK_ROUTE);
  if (netlink_ >= 0) {
    sockaddr_nl local{};
    local.nl_family = AF_NETLINK;
    local.nl_groups = RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR;
    if (bind(netlink_, reinterpret_cast<const sockaddr*>(&local), sizeof(local)) != 0) {
      close(netlink_);
      netlink_ = -1;
    }
  }
  if (netlink_ >= 0) {
    netlink_event_ =
        event_new(base, netlink_, EV_READ | EV_PERSIST, &LocalAddressMonitor::onNetlink, this);
    event_add(netlink_event_, nullptr);
  }
  timer_ = event_new(base, -1, EV_PERSIST, &LocalAddressMonitor::onTimer, this);
  event_add(timer_, &kRefreshPeriod);
  refresh();
}

LocalAddressMonitor::~LocalAddressMonitor() {
  if (netlink_event_ != nullptr) {
    event_free(netlink_event_);
  }
  if (timer_ != nullptr) {
    event_free(timer_);
  }
  if (netlink_ >= 0) {
    close(netlink_);
  }
}

void LocalAddressMonitor::refresh() {
  publish_(
      std::make_shared<const LocalAddresses>(listeners_, LocalAddresses::interfaceAddresses()));
}

void LocalAddressMonitor::onNetlink(evutil_socket_t fd, short, void* self) {
  // The messages only say that something changed; getifaddrs() reads the whole new state.
  std::array<char, 8192> buffer;
  for (int i = 0; i < 64 && recv(fd, buffer.data(), buffer.size(), MSG_DONTWAIT) != -1; ++i) {
  }
  static_cast<LocalAddressMonitor*>(self)->refresh();
}

void LocalAddressMonitor::onTimer(evutil_socket_t, short, void* self) {
  static_cast<LocalAddressMonitor*>(self)->refresh();
}

}  // namespace acr
