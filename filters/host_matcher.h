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
// count, however many patterns there are: 30,000 registry names cost what 100 do. Lookups do not
// allocate.
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
  // One cache line: a probe reads the hash, the id and (for patterns up to kInlineText bytes,
  // which covers registry and data-endpoint names) the text to verify against, all at once.
  static constexpr size_t kInlineText = 50;
  struct alignas(64) Slot {
    uint64_t hash = 0;  // 0 marks an empty slot
    uint32_t id = 0;
    uint16_t length = 0;  // pattern length; kLongPattern: the text is long_patterns_[id]
    char text[kInlineText];
  };
  static constexpr uint16_t kLongPattern = 0xffff;
  struct LongPattern {
    std::string text;
    uint32_t id;
  };
  struct Shape {
    uint64_t wildcard_mask = 0;  // bit i set: label i (from the left) is '*'
    size_t label_count = 0;
    int wildcards = 0;
    std::vector<Slot> slots;  // open addressing, power-of-two size
    size_t used = 0;
  };

  static uint64_t labelHash(std::string_view label) noexcept;
  static uint64_t shapeHash(const uint64_t* label_hashes, size_t count, uint64_t mask) noexcept;
  static bool sameLabels(std::string_view pattern, const HostName& name, uint64_t mask) noexcept;
  static void insert(Shape& shape, const Slot& slot);
  std::string_view slotText(const Slot& slot) const noexcept;
  uint32_t slotId(const Slot& slot) const noexcept;

  size_t size_ = 0;
  std::vector<LongPattern> long_patterns_;
  // Shapes sorted by wildcard count, then label count.
  std::vector<Shape> shapes_;
};

}  // namespace acr
