#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>

#include "conf/proxy_settings.h"
#include "filters/ip_address.h"
#include "proxy/client_counts.h"
#include "proxy/close_reason.h"

namespace acr {

class ConnectionLimits;

// One admitted connection's share of the limits: one of max_connections, one of its listener's
// max_connections_per_listener and one of its client's max_connections_per_client. Released
// exactly once: by release() (Connection::finish) or, failing that, by the destructor, so that
// no exit path can keep a slot. Move-only; a default or moved-from slot holds nothing.
class ConnectionSlot {
 public:
  ConnectionSlot() = default;
  ConnectionSlot(ConnectionSlot&& other) noexcept { *this = std::move(other); }
  ConnectionSlot& operator=(ConnectionSlot&& other) noexcept;
  ConnectionSlot(const ConnectionSlot&) = delete;
  ConnectionSlot& operator=(const ConnectionSlot&) = delete;
  ~ConnectionSlot() { release(); }

  bool held() const noexcept { return limits_ != nullptr; }
  // Gives the slot back; a no-op when it holds nothing (already released).
  void release() noexcept;

 private:
  friend class ConnectionLimits;
  ConnectionLimits* limits_ = nullptr;
  size_t listener_ = 0;
  IpAddress client_;
};

// Admission at accept for the three concurrent-connection limits of THREATS R4, shared by every
// worker (a client's connections land on any worker's listening socket):
//   max_connections               all listeners together      refusal `overloaded`
//   max_connections_per_listener  each listener (0: off)       refusal `listener_overloaded`
//   max_connections_per_client    each source address (0: off) refusal `client_overloaded`
// The limits are read from the settings passed to each admit() (the current ones: a reload
// applies to the next accept); the counts are always kept, whether a limit is on or not, so that
// a reload turning one on finds them right. Listener counts are atomics; client counts are a
// ClientCounts under a mutex held for one probe.
class ConnectionLimits {
 public:
  struct Admission {
    ConnectionSlot slot;  // held: admitted
    // Not admitted: which limit refused (kClientOverloaded, kListenerOverloaded, kOverloaded)
    // and its value, for the refusal's sentence.
    CloseReason refusal = CloseReason::kOverloaded;
    size_t limit = 0;
  };

  // `listeners`: how many listeners (indices 0..listeners-1; each worker's listener i is the
  // same one); `expected_clients`: distinct clients to reserve room for; `active` counts every
  // admitted connection (the /metrics gauge).
  ConnectionLimits(size_t listeners, size_t expected_clients, std::atomic<uint64_t>& active);
  ConnectionLimits(const ConnectionLimits&) = delete;
  ConnectionLimits& operator=(const ConnectionLimits&) = delete;

  // Takes a slot for a connection from `client` on listener `listener`, unless a limit of
  // `settings` is reached: the narrowest first (client, listener, then all), so that the one
  // source flooding is told about its own limit. Thread-safe.
  Admission admit(size_t listener, const IpAddress& client, const ProxySettings& settings);

  uint64_t active() const noexcept { return active_.load(std::memory_order_relaxed); }
  uint64_t listenerCount(size_t listener) const noexcept {
    return listeners_[listener].load(std::memory_order_relaxed);
  }
  size_t clientCount(const IpAddress& client) const;
  size_t clients() const;
  // How many listeners the counts are kept for (indices 0..listeners()-1).
  size_t listeners() const noexcept { return listener_count_; }

 private:
  friend class ConnectionSlot;
  void release(size_t listener, const IpAddress& client) noexcept;

  const size_t listener_count_;
  std::unique_ptr<std::atomic<uint64_t>[]> listeners_;
  std::atomic<uint64_t>& active_;
  mutable std::mutex mutex_;
  ClientCounts clients_;  // guarded by mutex_
};

}  // namespace acr
