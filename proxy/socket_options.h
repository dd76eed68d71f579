#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

#include "conf/proxy_settings.h"
#include "filters/ip_address.h"

namespace acr {

// Small, explicit wrappers around the socket options the proxy relies on. Each returns false and
// leaves errno set when the kernel refuses.

// TCP keepalive with `idle` before the first probe, then 4 probes 30 s apart.
bool setKeepalive(int fd, std::chrono::seconds idle) noexcept;
// TCP_NODELAY: a relayed chunk leaves at once, not when the ACK of the previous small segment
// comes back (Nagle). Clients such as curl and Go's net/http turn Nagle off on their own sockets;
// a proxy that kept it would bring it back: a request written as two small writes would wait for
// the upstream's delayed ACK (200 such round trips: 2.64 s through the proxy with Nagle, 0.031 s
// without; bench/e2e/PROFILE.md section 11). Set on the listening socket (accepted sockets
// inherit it) and on every upstream socket.
bool setNoDelay(int fd) noexcept;
// SO_MARK (needs CAP_NET_ADMIN): lets firewall rules exclude the proxy's own upstream sockets.
bool setMark(int fd, uint32_t mark) noexcept;
// Makes the next close() send RST instead of FIN (SO_LINGER 0), to propagate an abort.
void setResetOnClose(int fd) noexcept;
// IP_TRANSPARENT / IPV6_TRANSPARENT for a `family` socket (needs CAP_NET_ADMIN): without it TPROXY
// cannot deliver connections for foreign destinations to the socket.
bool setTransparent(int fd, int family) noexcept;
// Whether the option is set on `fd` (also for a socket systemd passed with Transparent=yes).
bool isTransparent(int fd, int family) noexcept;
// Whether this process may set the option on a `family` socket (tried on a throwaway socket).
bool canSetTransparent(int family) noexcept;
// What an operator reads when the transparent listener `listener` ("ADDR:PORT") has no
// IP_TRANSPARENT: the missing capability and what still works.
std::string transparentWarning(const std::string& listener);

// The destination the client really asked for on a transparent listener: SO_ORIGINAL_DST /
// IP6T_SO_ORIGINAL_DST after an iptables/nftables REDIRECT, otherwise the socket's own local
// address (TPROXY delivers with the original destination as the local address).
std::optional<SocketAddress> originalDestination(int fd) noexcept;
std::optional<SocketAddress> localAddress(int fd) noexcept;
std::optional<SocketAddress> peerAddress(int fd) noexcept;

IpAddress toIpAddress(const SocketAddress& address) noexcept;
SocketAddress toSocketAddress(const IpAddress& address, uint16_t port) noexcept;

}  // namespace acr
