#pragma once

#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "filters/ip_address.h"

namespace acr {

// Longest-prefix lookup over a fixed set of IPv4 and IPv6 prefixes, each carrying a caller-chosen
// 32-bit value (a rule or service-tag id), so that a lookup also says *which* rule matched.
//
// Layout: the prefixes are flattened into sorted, disjoint elementary intervals, each labelled with
// the value of the most specific prefix covering it. A radix index finds the few intervals that can
// hold an address: a 2^16-entry root on the top 16 bits, then 256-entry tables on each following
// byte wherever more than kLeafIntervals intervals remain, each table skipping the bits its keys
// share (path compression). IPv6 /64 networks that hold longer prefixes are reached through a hash
// table on the top 64 bits rather than from the root. A lookup is one to a few table reads and a
// short branch-free scan, instead of a binary search over all intervals (see bench/).
class CidrSet {
 public:
  static constexpr uint32_t kNoMatch = UINT32_MAX;

  struct Entry {
    Cidr cidr;
    uint32_t value = 0;
  };

  CidrSet() : CidrSet(std::span<const Entry>{}) {}
  // Builds the set. When two entries have the same prefix, the one listed first wins.
  explicit CidrSet(std::span<const Entry> entries);

  // Value of the most specific prefix containing `address`, or kNoMatch.
  uint32_t lookup(const IpAddress& address) const noexcept {
    return address.isV4() ? v4_.lookup(address.v4Value()) : v6_.lookup(address.v6Value());
  }

  bool empty() const noexcept { return v4_.empty() && v6_.empty(); }
  // Number of elementary intervals (for statistics and the benchmark's baseline).
  size_t intervalCount() const noexcept { return v4_.starts().size() + v6_.starts().size(); }

  // Baseline used by the benchmark and the differential test: std::upper_bound over the same
  // elementary intervals.
  uint32_t lookupByBinarySearch(const IpAddress& address) const noexcept;

  template <class Key>
  class IntervalIndex {
   public:
    struct Prefix {
      Key first;
      Key last;
      uint32_t value;
      uint32_t order;
    };
    void build(std::vector<Prefix> prefixes);
    uint32_t lookup(Key key) const noexcept {
      uint32_t entry = root_[rootIndex(key)];
      if constexpr (kBits > 64) {
        if ((entry & kNodeFlag) != 0) {
          entry = shortcutFor(static_cast<uint64_t>(key >> 64), entry);
        }
      }
      while ((entry & kNodeFlag) != 0) {
        const uint32_t index = entry & kPayload;
        const Node& node = nodes_[index];
        // Every boundary below this node lies in one aligned block; outside it the answer is
        // fixed (path compression: no chain of one-way tables).
        if ((key & node.mask) != node.first) {
          return key < node.first ? node.below : node.above;
        }
        entry = tables_[(static_cast<size_t>(index) << 8) | window(key, node.shift)];
      }
      if ((entry & kValueFlag) != 0) {
        const uint32_t value = entry & kPayload;
        return value == kNoMatchPayload ? kNoMatch : value;
      }
      const uint32_t first = entry >> 8;
      const uint32_t extra = entry & 0xff;
      // Branch-free: count the following interval starts at or below the key.
      uint32_t index = first;
      for (uint32_t i = 1; i <= extra; ++i) {
        index += starts_[first + i] <= key ? 1 : 0;
      }
      return values_[index];
    }
    uint32_t lookupByBinarySearch(Key key) const noexcept;
    bool empty() const noexcept { return values_.size() <= 1 && values_[0] == kNoMatch; }
    const std::vector<Key>& starts() const noexcept { return starts_; }
    size_t memoryBytes() const noexcept {
      return starts_.size() * sizeof(Key) + values_.size() * 4 + root_.size() * 4 +
             nodes_.size() * sizeof(Node) + tables_.size() * 4 +
             shortcuts_.size() * sizeof(Shortcut);
    }

   private:
    static constexpr int kBits = sizeof(Key) * 8;
    // The root indexes the top 16 bits of a key when the family has more than kSmallIntervals
    // intervals, else the top 8: a 2^16-entry root is 256 KiB to build and keep per family and
    // set, which for the small sets (the embedded policy, special ranges, deny and client ranges)
    // was most of an idle proxy's heap and most of its start-up time, while a 256-entry root
    // costs those sets at most a step or two more (bench/: BM_CidrLookup_*Small*).
    static constexpr int kRootBits = 16;
    static constexpr int kSmallRootBits = 8;
    static constexpr size_t kSmallIntervals = 256;
    // ... and a 2^16-entry root only when the interval starts also spread over more than this many
    // top-16-bit blocks: every IPv6 prefix of AzureContainerRegistry + Storage lies in 2603::/16,
    // so that root was 256 KiB repeating one entry, 64 page faults at start-up, while an 8-bit
    // root leads to the same node (the smallest block holding the boundaries under it) with no
    // step more (bench/: BM_CidrLookup_V6*).
    static constexpr size_t kWideRootBlocks = 16;
    bool wantsWideRoot() const;
    // The root index from the key's top bits. An IPv6 key is shifted as its high 64-bit half (a
    // variable 128-bit shift is several dependent instructions; this is one).
    size_t rootIndex(Key key) const noexcept {
      if constexpr (kBits > 64) {
        return static_cast<size_t>(static_cast<uint64_t>(key >> 64) >> root_shift_);
      } else {
        return static_cast<size_t>(key >> root_shift_);
      }
    }
    // Entry encodings: kNodeFlag | offset of a node in tables_; kValueFlag | the value itself
    // (one interval); otherwise a leaf: first interval << 8 | number of following intervals that
    // may also hold the key.
    static constexpr uint32_t kNodeFlag = 0x80000000u;
    static constexpr uint32_t kValueFlag = 0x40000000u;
    static constexpr uint32_t kPayload = 0x3fffffffu;
    static constexpr uint32_t kNoMatchPayload = kPayload;
    // A leaf scans at most this many interval starts (one cache line of IPv4 keys).
    static constexpr uint32_t kLeafIntervals = sizeof(Key) == 4 ? 15 : 7;
    // A radix node: the block holding every key it covers (first = the block's first key, mask =
    // the bits that name the block) and the values for keys below and above the block. Its 256
    // entries, indexed by bits [shift, shift + 8) of the key, are tables_[index * 256 ...]. The
    // headers are kept apart from the entries so that they stay small and hot: a step down the
    // tree then costs one cold cache line, the entry. The block test is a masked compare rather
    // than a shift, and for IPv6 the 8-bit window never straddles the two 64-bit halves, so a step
    // needs no 128-bit shift (those cost several dependent instructions each).
    struct Node {
      Key first;
      Key mask;
      uint32_t below;
      uint32_t above;
      uint32_t shift;
    };
    static uint32_t window(Key key, uint32_t shift) noexcept {
      if constexpr (sizeof(Key) <= 8) {
        return static_cast<uint32_t>((key >> shift) & 0xff);
      } else {
        const uint64_t half = static_cast<uint64_t>(shift >= 64 ? key >> 64 : key);
        return static_cast<uint32_t>((half >> (shift & 63)) & 0xff);
      }
    }

    // IPv6 only. Service-tag prefixes longer than /64 (a third of Azure's, mostly /117-/128) sit
    // in about 1,400 /64 networks, at the bottom of 5-6 radix steps. For each /64 holding such a
    // boundary an open-addressing table keyed by the top 64 bits gives the entry for that /64
    // directly, so a lookup there is one probe plus one or two steps.
    struct Shortcut {
      uint64_t high = 0;
      uint32_t entry = 0;  // 0 marks an empty slot (no real entry encodes as 0: see makeEntry)
    };
    static size_t shortcutHash(uint64_t high, size_t mask) noexcept {
      return static_cast<size_t>((high * 0x9e3779b97f4a7c15ull) >> 32) & mask;
    }
    uint32_t shortcutFor(uint64_t high, uint32_t fallback) const noexcept {
      const size_t mask = shortcuts_.size() - 1;
      for (size_t i = shortcutHash(high, mask);; i = (i + 1) & mask) {
        const Shortcut& slot = shortcuts_[i];
        if (slot.entry == 0) {
          return fallback;
        }
        if (slot.high == high) {
          return slot.entry;
        }
      }
    }
    void buildShortcuts();

    uint32_t intervalOf(Key key) const noexcept;
    // The entry for keys [first, last]: a leaf, or a node over the block holding its boundaries.
    uint32_t makeEntry(Key first, Key last);
    // The same for the keys from the start of interval lo to the end of interval hi's part of it.
    uint32_t entryForIntervals(uint32_t lo, uint32_t hi);
    // table[offset + j] = the entry for the j-th of `count` aligned blocks of 2^shift keys from
    // `first`.
    void fillTable(std::vector<uint32_t>& table, size_t offset, size_t count, Key first,
                   uint32_t shift);

    // starts_[i] is the first key of interval i; interval i ends where interval i+1 starts.
    std::vector<Key> starts_{Key{0}};
    std::vector<uint32_t> values_{kNoMatch};
    std::vector<uint32_t> root_;
    uint32_t root_shift_ = 0;  // (kBits, or 64 for IPv6) - the root's bits
    std::vector<Node> nodes_;
    std::vector<uint32_t> tables_;
    // Power-of-two size, at most half full, so that a probe always ends at an empty slot.
    std::vector<Shortcut> shortcuts_{1};
  };

  size_t memoryBytes() const noexcept { return v4_.memoryBytes() + v6_.memoryBytes(); }

 private:
  IntervalIndex<uint32_t> v4_;
  IntervalIndex<Uint128> v6_;
};

}  // namespace acr
