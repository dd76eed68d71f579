#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "filters/host_name.h"

namespace acr {

// Matches host names against patterns in which '*' stands for exactly one DNS label, in any
// position: "*.blob.core.windows.net" matches "acct.blob.core.windows.net" but neither
// "blob.core.windows.net" nor "a.b.blob.core.windows.net"; "myreg.*.data.azurecr.io" matches
// "myreg.eastus.data.azurecr.io".
//
// Patterns are grouped by shape (label count and wildcard positions). Each shape has a hash table
// keyed on the non-wildcard labels, so a lookup costs one probe per shape of the name's label
// count, however many patterns there are: 30,000 registry names cost what 100 do. The table is a
// dense array of 8-byte probes (a hash tag and an index) over the patterns stored without gaps,
// so that a large table stays cache- and TLB-friendly: a miss reads one probe line, a hit one
// probe line and its pattern. Lookups do not allocate.
class HostMatcher {
 public:
  static constexpr uint32_t kNoMatch = UINT32_MAX;

  // Adds `pattern` with the caller's `id`. Returns an empty string, or why the pattern is invalid.
  // Adding the same pattern twice keeps the first id.
  std::string add(std::string_view pattern, uint32_t id);

  // Id of a matching pattern, or kNoMatch. Patterns with fewer wildcards are preferred, so an
  // exact pattern wins over "*.azurecr.io".
  uint32_t match(const HostName& name) const noexcept;

  size_t size() const noexcept { return size_; }

 private:
  // One cache line: a matching probe reads the hash, the id and (for patterns up to kInlineText
  // bytes, which covers registry and data-endpoint names) the text to verify against at once.
  static constexpr size_t kInlineText = 50;
  struct alignas(64) Slot {
    uint64_t hash = 0;
    uint32_t id = 0;
    uint16_t length = 0;  // pattern length; kLongPattern: the text is long_patterns_[id]
    char text[kInlineText];
  };
  static constexpr uint16_t kLongPattern = 0xffff;
  struct Probe {
    uint32_t tag = 0;  // probeTag(hash); 0 marks an empty probe
    uint32_t slot = 0;
  };
  static uint32_t probeTag(uint64_t hash) noexcept {
    const auto tag = static_cast<uint32_t>(hash >> 32);  // the index uses the low bits
    return tag == 0 ? 1 : tag;
  }
  struct LongPattern {
    std::string text;
    uint32_t id;
  };
  struct Shape {
    uint64_t wildcard_mask = 0;  // bit i set: label i (from the left) is '*'
    size_t label_count = 0;
    int wildcards = 0;
    std::vector<Slot> slots;    // the patterns, dense, in insertion order
    std::vector<Probe> probes;  // open addressing over slots, power-of-two size, at most half full
  };

  static uint64_t labelHash(std::string_view label) noexcept;
  static uint64_t shapeHash(const uint64_t* label_hashes, size_t count, uint64_t mask) noexcept;
  static bool sameLabels(std::string_view pattern, const HostName& name, uint64_t mask) noexcept;
  static void insert(Shape& shape, const Slot& slot);
  static void placeProbe(Shape& shape, uint32_t index);
  std::string_view slotText(const Slot& slot) const noexcept;
  uint32_t slotId(const Slot& slot) const noexcept;

  size_t size_ = 0;
  std::vector<LongPattern> long_patterns_;
  // Shapes sorted by wildcard count, then label count.
  std::vector<Shape> shapes_;
};

}  // namespace acr
