#include "proxy/client_counts.h"

#include <algorithm>
#include <bit>
#include <cassert>

namespace acr {
namespace {

constexpr size_t kMinimumSlots = 16;

// splitmix64's finaliser: a bijection that spreads every input bit over the output.
constexpr uint64_t mix(uint64_t x) noexcept {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

}  // namespace

ClientCounts::ClientCounts(size_t clients, uint64_t seed) : seed_(seed) {
  const size_t slots = std::bit_ceil(std::max(kMinimumSlots, clients * 2));
  slots_.resize(slots);
  mask_ = slots - 1;
}

ClientCounts::Key ClientCounts::keyOf(const IpAddress& client) noexcept {
  if (client.isV4()) {
    return {0, (uint64_t{0xffff} << 32) | client.v4Value()};
  }
  const Uint128 value = client.v6Value();
  return {static_cast<uint64_t>(value >> 64), static_cast<uint64_t>(value)};
}

size_t ClientCounts::home(const Key& key) const noexcept {
  return static_cast<size_t>(mix(mix(key.high ^ seed_) ^ key.low)) & mask_;
}

size_t ClientCounts::find(const Key& key) const noexcept {
  // The load stays at most 1/2, so an empty slot ends every probe.
  size_t at = home(key);
  while (slots_[at].count != 0 && (slots_[at].high != key.high || slots_[at].low != key.low)) {
    at = (at + 1) & mask_;
  }
  return at;
}

bool ClientCounts::tryAdd(const IpAddress& client, size_t limit) {
  const Key key = keyOf(client);
  size_t at = find(key);
  Slot* slot = &slots_[at];
  if (slot->count != 0) {
    if (limit != 0 && slot->count >= limit) {
      return false;
    }
    ++slot->count;
    return true;
  }
  if ((used_ + 1) * 2 > slots_.size()) {
    grow();
    at = find(key);
    slot = &slots_[at];
  }
  *slot = {key.high, key.low, 1};
  ++used_;
  return true;
}

void ClientCounts::remove(const IpAddress& client) noexcept {
  const Key key = keyOf(client);
  size_t hole = find(key);
  if (slots_[hole].count == 0) {
    assert(false && "ClientCounts::remove of a client without a connection");
    return;
  }
  if (--slots_[hole].count != 0) {
    return;
  }
  --used_;
  // Backward-shift deletion: move later entries of the run into the hole when the hole lies on
  // their probe path (between their home slot and where they sit), so that no probe ever stops
  // early at it; no tombstones, so a long-running proxy's table never degrades.
  for (size_t next = (hole + 1) & mask_; slots_[next].count != 0; next = (next + 1) & mask_) {
    const size_t wanted = home({slots_[next].high, slots_[next].low});
    // Distances along the ring from the entry's home slot.
    if (((hole - wanted) & mask_) < ((next - wanted) & mask_)) {
      slots_[hole] = slots_[next];
      slots_[next].count = 0;
      hole = next;
    }
  }
}

size_t ClientCounts::count(const IpAddress& client) const noexcept {
  return slots_[find(keyOf(client))].count;
}

void ClientCounts::grow() {
  std::vector<Slot> old(slots_.size() * 2);
  old.swap(slots_);
  mask_ = slots_.size() - 1;
  for (const Slot& slot : old) {
    if (slot.count != 0) {
      slots_[find({slot.high, slot.low})] = slot;
    }
  }
}

}  // namespace acr
