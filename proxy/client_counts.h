#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "filters/ip_address.h"

namespace acr {

// How many connections each client address has open, for --max-connections-per-client (THREATS
// R4). An open-addressing table (linear probing, backward-shift deletion) of {address, count} in
// one array reserved up front: an accept or a close neither allocates nor frees while the number
// of distinct clients stays within what was reserved (it grows, rarely, past that). An entry
// exists only while its count is above 0, so the table holds at most one entry per open
// connection.
//
// Keys are 128-bit addresses, an IPv4 address as its IPv4-mapped IPv6 form (::ffff:a.b.c.d): a
// client reaching a dual-stack listener as ::ffff:a.b.c.d is the same client as a.b.c.d.
// The slot index comes from a hash keyed with `seed` (a per-process random number), so that a
// client cannot pick source addresses that pile up in one probe chain without knowing it.
//
// Not thread-safe: ConnectionLimits holds its lock around every call.
class ClientCounts {
 public:
  // Room for `clients` distinct addresses (at a load of at most 1/2) before the first growth.
  ClientCounts(size_t clients, uint64_t seed);

  // Counts one more connection of `client` and returns true, unless it has `limit` open already
  // (then false, nothing changed). `limit` 0: no limit.
  bool tryAdd(const IpAddress& client, size_t limit);
  // Counts one connection of `client` less; its entry goes when that was its last. A client with
  // no entry is left alone (a caller bug; checked in debug builds).
  void remove(const IpAddress& client) noexcept;
  // Connections of `client` open now (0 if none).
  size_t count(const IpAddress& client) const noexcept;
  // Distinct clients with a connection open, and the slots reserved for them.
  size_t clients() const noexcept { return used_; }
  size_t capacity() const noexcept { return slots_.size(); }

 private:
  struct Slot {
    uint64_t high = 0;
    uint64_t low = 0;
    uint32_t count = 0;  // 0: empty
  };
  struct Key {
    uint64_t high;
    uint64_t low;
  };

  static Key keyOf(const IpAddress& client) noexcept;
  size_t home(const Key& key) const noexcept;
  // The slot holding `key`, or the empty slot where it would go.
  size_t find(const Key& key) const noexcept;
  void grow();

  uint64_t seed_;
  size_t mask_ = 0;
  size_t used_ = 0;
  std::vector<Slot> slots_;
};

}  // namespace acr
