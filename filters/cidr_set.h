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
// byte wherever more than kLeafIntervals intervals remain. A lookup is one to a few table reads and
// a short branch-free scan, instead of a binary search over all intervals (see bench/).
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
      uint32_t entry = root_[static_cast<size_t>(key >> (kBits - kRootBits))];
      while ((entry & kNodeFlag) != 0) {
        const uint32_t* node = &tables_[entry & kPayload];
        Key block;
        std::memcpy(&block, node, sizeof(Key));
        const uint32_t shift = node[kShiftWord];
        // Every boundary below this node lies in one aligned block; outside it the answer is
        // fixed (path compression: no chain of one-way tables).
        const Key high = key >> (shift + 8);
        if (high != block) {
          return node[high < block ? kBelowWord : kAboveWord];
        }
        entry = node[kHeaderWords + static_cast<uint32_t>((key >> shift) & 0xff)];
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
             tables_.size() * 4;
    }

   private:
    static constexpr int kBits = sizeof(Key) * 8;
    static constexpr int kRootBits = 16;
    // Entry encodings: kNodeFlag | offset of a node in tables_; kValueFlag | the value itself
    // (one interval); otherwise a leaf: first interval << 8 | number of following intervals that
    // may also hold the key.
    static constexpr uint32_t kNodeFlag = 0x80000000u;
    static constexpr uint32_t kValueFlag = 0x40000000u;
    static constexpr uint32_t kPayload = 0x3fffffffu;
    static constexpr uint32_t kNoMatchPayload = kPayload;
    // A leaf scans at most this many interval starts (one cache line of IPv4 keys).
    static constexpr uint32_t kLeafIntervals = sizeof(Key) == 4 ? 15 : 7;
    // A node in tables_: the block (key >> (shift + 8) of every key it covers), the values for
    // keys below and above the block, the shift, then 256 entries indexed by bits
    // [shift, shift + 8) of the key.
    static constexpr uint32_t kKeyWords = sizeof(Key) / 4;
    static constexpr uint32_t kBelowWord = kKeyWords;
    static constexpr uint32_t kAboveWord = kKeyWords + 1;
    static constexpr uint32_t kShiftWord = kKeyWords + 2;
    static constexpr uint32_t kHeaderWords = kKeyWords + 3;

    uint32_t intervalOf(Key key) const noexcept;
    // The entry for keys [first, last]: a leaf, or a node over the block holding its boundaries.
    uint32_t makeEntry(Key first, Key last);

    // starts_[i] is the first key of interval i; interval i ends where interval i+1 starts.
    std::vector<Key> starts_{Key{0}};
    std::vector<uint32_t> values_{kNoMatch};
    std::vector<uint32_t> root_;
    std::vector<uint32_t> tables_;
  };

  size_t memoryBytes() const noexcept { return v4_.memoryBytes() + v6_.memoryBytes(); }

 private:
  IntervalIndex<uint32_t> v4_;
  IntervalIndex<Uint128> v6_;
};

}  // namespace acr
