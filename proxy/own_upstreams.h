#pragma once

#include <netinet/in.h>

#include <cstdint>
#include <cstring>
#include <mutex>
#include <unordered_set>

#include "conf/proxy_settings.h"

namespace acr {

// The local endpoints (address and port) of the proxy's own open upstream sockets. A connection
// arriving on a transparent listener from one of them is the proxy's own traffic redirected back
// to itself (a firewall rule without the `--mark` exclusion): it is refused at once, so a missing
// rule costs one refused connection instead of a loop that eats every descriptor. Shared by all
// workers (a redirected connection may land on any of them); used only when a transparent
// listener exists.
class OwnUpstreams {
 public:
  void add(const SocketAddress& local) {
    std::lock_guard lock(mutex_);
    endpoints_.insert(keyOf(local));
  }
  void remove(const SocketAddress& local) {
    std::lock_guard lock(mutex_);
    endpoints_.erase(keyOf(local));
  }
  bool contains(const SocketAddress& peer) const {
    std::lock_guard lock(mutex_);
    return endpoints_.contains(keyOf(peer));
  }

 private:
  struct Key {
    uint8_t address[16];
    uint16_t port;
    bool operator==(const Key& other) const noexcept {
      return port == other.port && std::memcmp(address, other.address, 16) == 0;
    }
  };
  struct KeyHash {
    size_t operator()(const Key& key) const noexcept {
      uint64_t high;
      uint64_t low;
      std::memcpy(&high, key.address, 8);
      std::memcpy(&low, key.address + 8, 8);
      return std::hash<uint64_t>()(high * 0x9E3779B97F4A7C15ULL ^ low ^ key.port);
    }
  };
  // IPv4 is keyed as IPv4-mapped IPv6, so both families share one table.
  static Key keyOf(const SocketAddress& endpoint) noexcept {
    Key key{};
    if (endpoint.family() == AF_INET) {
      const auto& v4 = reinterpret_cast<const sockaddr_in&>(endpoint.storage);
      key.address[10] = 0xff;
      key.address[11] = 0xff;
      std::memcpy(key.address + 12, &v4.sin_addr, 4);
      key.port = v4.sin_port;
    } else if (endpoint.family() == AF_INET6) {
      const auto& v6 = reinterpret_cast<const sockaddr_in6&>(endpoint.storage);
      std::memcpy(key.address, &v6.sin6_addr, 16);
      key.port = v6.sin6_port;
    }
    return key;
  }

  mutable std::mutex mutex_;
  std::unordered_set<Key, KeyHash> endpoints_;
};

}  // namespace acr
