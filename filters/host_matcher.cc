#include "filters/host_matcher.h"

#include <algorithm>
#include <cstring>

namespace acr {
namespace {

constexpr uint64_t kMultiplier = 0x9e3779b97f4a7c15ull;

uint64_t mix(uint64_t value) noexcept {
  value ^= value >> 32;
  value *= kMultiplier;
  value ^= value >> 29;
  return value;
}

}  // namespace

uint64_t HostMatcher::labelHash(std::string_view label) noexcept {
  uint64_t hash = label.size() * kMultiplier;
  size_t i = 0;
  for (; i + 8 <= label.size(); i += 8) {
    uint64_t chunk;
    std::memcpy(&chunk, label.data() + i, 8);
    hash = mix(hash ^ chunk);
  }
  uint64_t tail = 0;
  std::memcpy(&tail, label.data() + i, label.size() - i);
  return mix(hash ^ tail);
}

uint64_t HostMatcher::shapeHash(const uint64_t* label_hashes, size_t count,
                                uint64_t mask) noexcept {
  uint64_t hash = count;
  for (size_t i = 0; i < count; ++i) {
    if ((mask >> i & 1) == 0) {
      hash = mix(hash + label_hashes[i] + i);
    }
  }
  return hash == 0 ? 1 : hash;
}

bool HostMatcher::sameLabels(std::string_view pattern, const HostName& name,
                             uint64_t mask) noexcept {
  if (mask == 0) {
    return pattern == name.view();
  }
  // Both have the shape's label count; compare the non-wildcard labels one by one.
  size_t begin = 0;
  for (size_t i = 0; i < name.labelCount(); ++i) {
    size_t end = pattern.find('.', begin);
    if (end == std::string_view::npos) {
      end = pattern.size();
    }
    if ((mask >> i & 1) == 0 && pattern.substr(begin, end - begin) != name.label(i)) {
      return false;
    }
    begin = end + 1;
  }
  return true;
}

std::string HostMatcher::add(std::string_view pattern, uint32_t id) {
  HostName name;
  const HostName::Status status = HostName::normalize(pattern, name, /*allow_wildcard=*/true);
  if (status != HostName::Status::kOk) {
    return "invalid host pattern '" + std::string(pattern) +
           "': " + std::string(HostName::statusText(status));
  }
  if (name.labelCount() > 64) {
    return "invalid host pattern '" + std::string(pattern) + "': more than 64 labels";
  }
  uint64_t mask = 0;
  int wildcards = 0;
  uint64_t hashes[64];
  for (size_t i = 0; i < name.labelCount(); ++i) {
    if (name.label(i) == "*") {
      mask |= uint64_t{1} << i;
      ++wildcards;
    }
    hashes[i] = labelHash(name.label(i));
  }
  if (wildcards == static_cast<int>(name.labelCount())) {
    return "invalid host pattern '" + std::string(pattern) + "': only wildcards";
  }
  auto shape = std::find_if(shapes_.begin(), shapes_.end(), [&](const Shape& s) {
    return s.wildcard_mask == mask && s.label_count == name.labelCount();
  });
  if (shape == shapes_.end()) {
    Shape fresh;
    fresh.wildcard_mask = mask;
    fresh.label_count = name.labelCount();
    fresh.wildcards = wildcards;
    fresh.slots.resize(8);
    shapes_.push_back(std::move(fresh));
    std::stable_sort(shapes_.begin(), shapes_.end(), [](const Shape& a, const Shape& b) {
      return a.wildcards != b.wildcards ? a.wildcards < b.wildcards : a.label_count < b.label_count;
    });
    shape = std::find_if(shapes_.begin(), shapes_.end(), [&](const Shape& s) {
      return s.wildcard_mask == mask && s.label_count == name.labelCount();
    });
  }
  const uint64_t hash = shapeHash(hashes, name.labelCount(), mask);
  // Duplicate pattern: keep the first id.
  for (size_t i = hash & (shape->slots.size() - 1);; i = (i + 1) & (shape->slots.size() - 1)) {
    const Slot& slot = shape->slots[i];
    if (slot.hash == 0) {
      break;
    }
    if (slot.hash == hash && patterns_[slot.pattern].text == name.view()) {
      return {};
    }
  }
  patterns_.push_back({std::string(name.view()), id});
  insert(*shape, hash, static_cast<uint32_t>(patterns_.size() - 1));
  return {};
}

void HostMatcher::insert(Shape& shape, uint64_t hash, uint32_t pattern_index) {
  // Keep the load factor at or under 1/2 so probe sequences stay short.
  if ((shape.used + 1) * 2 > shape.slots.size()) {
    std::vector<Slot> old = std::move(shape.slots);
    shape.slots.assign(old.size() * 2, Slot{});
    shape.used = 0;
    for (const Slot& slot : old) {
      if (slot.hash != 0) {
        insert(shape, slot.hash, slot.pattern);
      }
    }
  }
  const size_t mask = shape.slots.size() - 1;
  size_t i = hash & mask;
  while (shape.slots[i].hash != 0) {
    i = (i + 1) & mask;
  }
  shape.slots[i] = {hash, pattern_index};
  ++shape.used;
}

uint32_t HostMatcher::match(const HostName& name) const noexcept {
  const size_t count = name.labelCount();
  if (count == 0 || count > 64) {
    return kNoMatch;
  }
  uint64_t hashes[64];
  bool hashed = false;
  for (const Shape& shape : shapes_) {
    if (shape.label_count != count) {
      continue;
    }
    if (!hashed) {
      for (size_t i = 0; i < count; ++i) {
        hashes[i] = labelHash(name.label(i));
      }
      hashed = true;
    }
    const uint64_t hash = shapeHash(hashes, count, shape.wildcard_mask);
    const size_t mask = shape.slots.size() - 1;
    for (size_t i = hash & mask;; i = (i + 1) & mask) {
      const Slot& slot = shape.slots[i];
      if (slot.hash == 0) {
        break;
      }
      if (slot.hash == hash &&
          sameLabels(patterns_[slot.pattern].text, name, shape.wildcard_mask)) {
        return patterns_[slot.pattern].id;
      }
    }
  }
  return kNoMatch;
}

}  // namespace acr
