#include "proxy/socket_options.h"

#include <arpa/inet.h>
#include <linux/netfilter_ipv4.h>
#include <linux/netfilter_ipv6/ip6_tables.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

namespace acr {

bool setKeepalive(int fd, std::chrono::seconds idle) noexcept {
  const int on = 1;
  const int idle_seconds = static_cast<int>(idle.count());
  const int interval = 30;
  const int count = 4;
  return setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof(on)) == 0 &&
         setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle_seconds, sizeof(idle_seconds)) == 0 &&
         setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof(interval)) == 0 &&
         setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof(count)) == 0;
}

bool setNoDelay(int fd) noexcept {
  const int on = 1;
  return setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on)) == 0;
}

bool setTransparent(int fd, int family) noexcept {
  const int on = 1;
  return family == AF_INET6 ? setsockopt(fd, SOL_IPV6, IPV6_TRANSPARENT, &on, sizeof(on)) == 0
                            : setsockopt(fd, SOL_IP, IP_TRANSPARENT, &on, sizeof(on)) == 0;
}

bool isTransparent(int fd, int family) noexcept {
  int value = 0;
  socklen_t length = sizeof(value);
  const int rc = family == AF_INET6 ? getsockopt(fd, SOL_IPV6, IPV6_TRANSPARENT, &value, &length)
                                    : getsockopt(fd, SOL_IP, IP_TRANSPARENT, &value, &length);
  return rc == 0 && value != 0;
}

bool canSetTransparent(int family) noexcept {
  const int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    return false;
  }
  const bool ok = setTransparent(fd, family);
  close(fd);
  return ok;
}

std::string transparentWarning(const std::string& listener) {
  return "transparent listener " + listener +
         " cannot set IP_TRANSPARENT: the process lacks CAP_NET_ADMIN, so TPROXY traffic to it "
         "is dropped; REDIRECT still works";
}

bool setMark(int fd, uint32_t mark) noexcept {
  return setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) == 0;
}

void setResetOnClose(int fd) noexcept {
  const linger option{1, 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &option, sizeof(option));
}

std::optional<SocketAddress> localAddress(int fd) noexcept {
  SocketAddress address;
  address.length = sizeof(address.storage);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&address.storage), &address.length) != 0) {
    return std::nullopt;
  }
  return address;
}

std::optional<SocketAddress> peerAddress(int fd) noexcept {
  SocketAddress address;
  address.length = sizeof(address.storage);
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&address.storage), &address.length) != 0) {
    return std::nullopt;
  }
  return address;
}

std::optional<SocketAddress> originalDestination(int fd) noexcept {
  const auto local = localAddress(fd);
  if (!local) {
    return std::nullopt;
  }
  SocketAddress original;
  original.length = sizeof(original.storage);
  const int level = local->family() == AF_INET6 ? SOL_IPV6 : SOL_IP;
  const int option = local->family() == AF_INET6 ? IP6T_SO_ORIGINAL_DST : SO_ORIGINAL_DST;
  if (getsockopt(fd, level, option, &original.storage, &original.length) == 0) {
    return original;
  }
  return local;  // not NATed: TPROXY, or a direct connection to the listener
}

IpAddress toIpAddress(const SocketAddress& address) noexcept { return address.ip(); }

SocketAddress toSocketAddress(const IpAddress& address, uint16_t port) noexcept {
  return SocketAddress::from(address, port);
}

}  // namespace acr
