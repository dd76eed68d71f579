#pragma once

#include <netinet/in.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <mutex>
#include <unordered_map>
#include <unordered_set>

#include "conf/proxy_settings.h"
#include "proxy/slab.h"

namespace acr {

// The proxy's own open upstream sockets, each as (local endpoint, remote endpoint). A connection
// arriving on any listener whose peer is such a local endpoint and whose original destination
// (SO_ORIGINAL_DST after a REDIRECT, else its local address) is that socket's remote endpoint is
// the proxy's own traffic handed back to itself (a firewall rule without the `--mark` exclusion):
// it is refused at once, so a missing rule costs one refused connection instead of a loop that
// eats every descriptor. The remote is part of the key because Linux lets sockets to different
// destinations share a local address and port: a client may legitimately come from the same
// 127.0.0.1:port as an upstream socket to elsewhere. Shared by all workers (a redirected
// connection may land on any of them).
class OwnUpstreams {
 public:
  void add(const SocketAddress& local, const SocketAddress& remote) {
    std::lock_guard lock(mutex_);
    if (endpoints_.insert(keyOf(local, remote)).second) {
      ++locals_[endpointOf(local)];
    }
  }
  void remove(const SocketAddress& local, const SocketAddress& remote) {
    std::lock_guard lock(mutex_);
    if (endpoints_.erase(keyOf(local, remote)) > 0) {
      const auto it = locals_.find(endpointOf(local));
      if (it != locals_.end() && --it->second == 0) {
        locals_.erase(it);
      }
    }
  }
  // True when an open upstream socket has `peer` as its local endpoint. Only then may a
  // connection from `peer` be a loop, and only then is its destination worth the getsockname and
  // getsockopt calls it costs: Connection asks this first, for every accepted connection.
  bool hasLocal(const SocketAddress& peer) const {
    std::lock_guard lock(mutex_);
    return locals_.contains(endpointOf(peer));
  }
  bool contains(const SocketAddress& peer, const SocketAddress& destination) const {
    std::lock_guard lock(mutex_);
    return endpoints_.contains(keyOf(peer, destination));
  }

 private:
  struct Endpoint {
    uint8_t address[16];
    uint16_t port;
    bool operator==(const Endpoint& other) const noexcept {
      return port == other.port && std::memcmp(address, other.address, 16) == 0;
    }
  };
  struct EndpointHash {
    size_t operator()(const Endpoint& endpoint) const noexcept {
      uint64_t words[2];
      std::memcpy(words, endpoint.address, 16);
      return std::hash<uint64_t>()(((words[0] ^ endpoint.port) * 0x9E3779B97F4A7C15ULL) ^ words[1]);
    }
  };
  struct Key {
    Endpoint local;
    Endpoint remote;
    bool operator==(const Key& other) const noexcept {
      return local == other.local && remote == other.remote;
    }
  };
  struct KeyHash {
    size_t operator()(const Key& key) const noexcept {
      uint64_t words[4];
      std::memcpy(&words[0], key.local.address, 8);
      std::memcpy(&words[1], key.local.address + 8, 8);
      std::memcpy(&words[2], key.remote.address, 8);
      std::memcpy(&words[3], key.remote.address + 8, 8);
      uint64_t hash = (uint64_t{key.local.port} << 16) | key.remote.port;
      for (const uint64_t word : words) {
        hash = (hash ^ word) * 0x9E3779B97F4A7C15ULL;
      }
      return std::hash<uint64_t>()(hash);
    }
  };
  // IPv4 is keyed as IPv4-mapped IPv6, so both families share one table (a dial to
  // [::ffff:a.b.c.d] arrives from and at IPv4 endpoints).
  static Endpoint endpointOf(const SocketAddress& endpoint) noexcept {
    Endpoint out{};
    if (endpoint.family() == AF_INET) {
      const auto& v4 = reinterpret_cast<const sockaddr_in&>(endpoint.storage);
      out.address[10] = 0xff;
      out.address[11] = 0xff;
      std::memcpy(out.address + 12, &v4.sin_addr, 4);
      out.port = v4.sin_port;
    } else if (endpoint.family() == AF_INET6) {
      const auto& v6 = reinterpret_cast<const sockaddr_in6&>(endpoint.storage);
      std::memcpy(out.address, &v6.sin6_addr, 16);
      out.port = v6.sin6_port;
    }
    return out;
  }
  static Key keyOf(const SocketAddress& local, const SocketAddress& remote) noexcept {
    return {endpointOf(local), endpointOf(remote)};
  }

  mutable std::mutex mutex_;
  // Entries live as long as their tunnels: in Slab::tunnels(), with them.
  std::unordered_set<Key, KeyHash, std::equal_to<Key>, SlabAllocator<Key>> endpoints_;
  // endpoints_ per local endpoint
  std::unordered_map<Endpoint, uint32_t, EndpointHash, std::equal_to<Endpoint>,
                     SlabAllocator<std::pair<const Endpoint, uint32_t>>>
      locals_;
};

}  // namespace acr
