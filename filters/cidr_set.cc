#include "filters/cidr_set.h"

#include <algorithm>
#include <cassert>
#include <limits>
#include <stdexcept>

namespace acr {

template <class Key>
void CidrSet::IntervalIndex<Key>::build(std::vector<Prefix> prefixes) {
  // Outer prefixes before inner ones; among equal prefixes the caller's order decides.
  std::sort(prefixes.begin(), prefixes.end(), [](const Prefix& a, const Prefix& b) {
    if (a.first != b.first) {
      return a.first < b.first;
    }
    if (a.last != b.last) {
      return a.last > b.last;
    }
    return a.order < b.order;
  });
  starts_.assign(1, Key{0});
  values_.assign(1, kNoMatch);
  // Labels [at, next interval) with `value`, merging neighbours that carry the same value.
  auto label = [&](Key at, uint32_t value) {
    if (starts_.back() == at) {
      values_.back() = value;
      if (values_.size() > 1 && values_[values_.size() - 2] == value) {
        starts_.pop_back();
        values_.pop_back();
      }
    } else if (values_.back() != value) {
      starts_.push_back(at);
      values_.push_back(value);
    }
  };
  // CIDR prefixes are either nested or disjoint, so the open ones form a stack.
  std::vector<Prefix> open;
  auto closeBefore = [&](const Prefix* next) {
    while (!open.empty() && (next == nullptr || open.back().last < next->first)) {
      const Key last = open.back().last;
      open.pop_back();
      if (last != std::numeric_limits<Key>::max()) {
        label(last + 1, open.empty() ? kNoMatch : open.back().value);
      }
    }
  };
  for (const Prefix& prefix : prefixes) {
    closeBefore(&prefix);
    if (!open.empty() && open.back().first == prefix.first && open.back().last == prefix.last) {
      continue;  // the same prefix again: the earlier entry keeps it
    }
    open.push_back(prefix);
    label(prefix.first, prefix.value);
  }
  closeBefore(nullptr);
  if (starts_.size() >= (1u << 23)) {
    throw std::length_error("CidrSet: too many intervals");
  }

  for (const uint32_t value : values_) {
    if (value != kNoMatch && value >= kNoMatchPayload) {
      throw std::length_error("CidrSet: values must be below 2^30 - 1");
    }
  }
  const int root_bits = wantsWideRoot() ? kRootBits : kSmallRootBits;
  root_shift_ = static_cast<uint32_t>(std::min(kBits, 64) - root_bits);
  root_.assign(size_t{1} << root_bits, 0);
  nodes_.clear();
  tables_.clear();
  fillTable(root_, 0, root_.size(), Key{0}, static_cast<uint32_t>(kBits - root_bits));
  buildShortcuts();
}

template <class Key>
bool CidrSet::IntervalIndex<Key>::wantsWideRoot() const {
  if (starts_.size() <= kSmallIntervals) {
    return false;
  }
  // Distinct top-16-bit blocks among the interval starts (sorted, so neighbours), up to the count
  // that decides.
  size_t blocks = 0;
  uint64_t last = ~uint64_t{0};
  for (const Key start : starts_) {
    const uint64_t block = static_cast<uint64_t>(start >> (kBits - kRootBits));
    if (block != last && ++blocks > kWideRootBlocks) {
      return true;
    }
    last = block;
  }
  return false;
}

template <class Key>
void CidrSet::IntervalIndex<Key>::buildShortcuts() {
  shortcuts_.assign(1, Shortcut{});
  if constexpr (kBits > 64) {
    std::vector<uint64_t> highs;
    for (const Key start : starts_) {
      if (static_cast<uint64_t>(start) != 0) {
        highs.push_back(static_cast<uint64_t>(start >> 64));
      }
    }
    highs.erase(std::unique(highs.begin(), highs.end()), highs.end());  // starts_ is sorted
    size_t size = 1;
    while (size < 2 * highs.size() + 1) {
      size *= 2;
    }
    shortcuts_.assign(size, Shortcut{});
    for (const uint64_t high : highs) {
      const Key first = static_cast<Key>(high) << 64;
      const uint32_t entry = makeEntry(first, first | std::numeric_limits<uint64_t>::max());
      size_t i = shortcutHash(high, size - 1);
      while (shortcuts_[i].entry != 0) {
        i = (i + 1) & (size - 1);
      }
      shortcuts_[i] = {high, entry};
    }
  }
}

template <class Key>
uint32_t CidrSet::IntervalIndex<Key>::intervalOf(Key key) const noexcept {
  return static_cast<uint32_t>(std::upper_bound(starts_.begin(), starts_.end(), key) -
                               starts_.begin() - 1);
}

// One sweep over the intervals for all `count` blocks: each block's first and last interval are
// found by walking forward from the previous block's, not by two binary searches per block, and a
// run of blocks inside one interval is filled at once. The 2^16-entry roots made 131,072 pairs of
// searches over the service-tag sets' intervals, a quarter of the start-up with the service-tags
// file (bench/e2e/PROFILE.md section 8).
template <class Key>
void CidrSet::IntervalIndex<Key>::fillTable(std::vector<uint32_t>& table, size_t offset,
                                            size_t count, Key first, uint32_t shift) {
  const Key span = Key{1} << shift;
  const size_t intervals = starts_.size();
  uint32_t lo = intervalOf(first);
  for (size_t j = 0; j < count;) {
    const Key block_first = first + static_cast<Key>(j) * span;
    const Key block_last = block_first + (span - 1);
    while (lo + 1 < intervals && starts_[lo + 1] <= block_first) {
      ++lo;
    }
    if (lo + 1 == intervals || starts_[lo + 1] > block_last) {
      // This block and the following ones up to the next boundary lie in one interval: one value
      // for the whole run (most of a 2^16-entry root is such runs).
      const Key left = static_cast<Key>(count - j);
      const Key before_boundary =
          lo + 1 == intervals ? left : std::min(left, (starts_[lo + 1] - block_first) >> shift);
      const uint32_t entry = entryForIntervals(lo, lo);
      std::fill_n(table.begin() + static_cast<std::ptrdiff_t>(offset + j),
                  static_cast<size_t>(before_boundary), entry);
      j += static_cast<size_t>(before_boundary);
      continue;
    }
    uint32_t hi = lo;
    while (hi + 1 < intervals && starts_[hi + 1] <= block_last) {
      ++hi;
    }
    // entryForIntervals may grow tables_, which `table` can be: index it only after the call.
    const uint32_t entry = entryForIntervals(lo, hi);
    table[offset + j] = entry;
    lo = hi;
    ++j;
  }
}

template <class Key>
uint32_t CidrSet::IntervalIndex<Key>::makeEntry(Key first, Key last) {
  return entryForIntervals(intervalOf(first), intervalOf(last));
}

template <class Key>
uint32_t CidrSet::IntervalIndex<Key>::entryForIntervals(uint32_t lo, uint32_t hi) {
  auto direct = [](uint32_t value) {
    return kValueFlag | (value == kNoMatch ? kNoMatchPayload : value);
  };
  if (hi == lo) {
    return direct(values_[lo]);
  }
  if (hi - lo <= kLeafIntervals) {
    return (lo << 8) | (hi - lo);
  }
  // Boundaries inside [first, last] are starts_[lo + 1] .. starts_[hi]. Find the smallest aligned
  // block holding all of them; its table indexes the 8 bits just under the block's prefix.
  const Key low = starts_[lo + 1];
  const Key high = starts_[hi];
  int top = kBits - 1;  // highest bit in which low and high differ (they differ: hi > lo + 1)
  while (((low ^ high) >> top) == 0) {
    --top;
  }
  uint32_t shift = static_cast<uint32_t>(top + 1 >= 8 ? top + 1 - 8 : 0);
  if (kBits > 64 && shift > 56 && shift < 64) {
    shift = 64;  // keep the window inside the high half (see window()); it still holds `top`
  }
  const Key mask = shift + 8 >= kBits ? Key{0} : ~((Key{1} << (shift + 8)) - 1);
  const Key block_first = low & mask;
  const size_t node = nodes_.size();
  if (node >= (kPayload >> 8)) {
    throw std::length_error("CidrSet: radix tables too large");
  }
  // Keys of [first, last] under the block precede every boundary; keys over it follow them all.
  nodes_.push_back({block_first, mask, values_[lo], values_[hi], shift});
  tables_.resize((node + 1) << 8, 0);
  fillTable(tables_, node << 8, 256, block_first, shift);
  return kNodeFlag | static_cast<uint32_t>(node);
}

template <class Key>
uint32_t CidrSet::IntervalIndex<Key>::lookupByBinarySearch(Key key) const noexcept {
  const auto it = std::upper_bound(starts_.begin(), starts_.end(), key);
  return values_[static_cast<size_t>(it - starts_.begin() - 1)];
}

template class CidrSet::IntervalIndex<uint32_t>;
template class CidrSet::IntervalIndex<Uint128>;

CidrSet::CidrSet(std::span<const Entry> entries) {
  std::vector<IntervalIndex<uint32_t>::Prefix> v4;
  std::vector<IntervalIndex<Uint128>::Prefix> v6;
  uint32_t order = 0;
  for (const Entry& entry : entries) {
    const Cidr& cidr = entry.cidr;
    if (cidr.address.isV4()) {
      const uint32_t host_mask = cidr.length == 0 ? 0xffffffffu : (1u << (32 - cidr.length)) - 1;
      const uint32_t first = cidr.address.v4Value() & ~host_mask;
      v4.push_back({first, first | host_mask, entry.value, order++});
    } else {
      const Uint128 host_mask =
          cidr.length == 0 ? ~Uint128{0} : (Uint128{1} << (128 - cidr.length)) - 1;
      const Uint128 first = cidr.address.v6Value() & ~host_mask;
      v6.push_back({first, first | host_mask, entry.value, order++});
    }
  }
  v4_.build(std::move(v4));
  v6_.build(std::move(v6));
}

uint32_t CidrSet::lookupByBinarySearch(const IpAddress& address) const noexcept {
  return address.isV4() ? v4_.lookupByBinarySearch(address.v4Value())
                        : v6_.lookupByBinarySearch(address.v6Value());
}

}  // namespace acr
