#include "filters/host_matcher.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <stdexcept>

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
  for (size_t j = i; j < label.size(); ++j) {
    tail = (tail << 8) | static_cast<uint8_t>(label[j]);
  }
  return mix(hash ^ tail);
}

uint64_t HostMatcher::shapeHash(const uint64_t* label_hashes, size_t count,
                                uint64_t mask) noexcept {
  // Label hashes are already mixed: combine them by position cheaply, mix once at the end.
  uint64_t hash = count;
  for (size_t i = 0; i < count; ++i) {
    if ((mask >> i & 1) == 0) {
      hash ^= std::rotl(label_hashes[i], static_cast<int>(i));
      hash += i;
    }
  }
  hash = mix(hash);
  return hash == 0 ? 1 : hash;
}

bool HostMatcher::sameLabels(std::string_view pattern, const HostName& name,
                             uint64_t mask) noexcept {
  const std::string_view text = name.view();
  if (mask == 0) {
    return pattern == text;
  }
  // One pass: a '*' label of the pattern consumes one whole label of the name.
  size_t p = 0;
  size_t n = 0;
  while (p < pattern.size() && n < text.size()) {
    if (pattern[p] == '*') {
      while (n < text.size() && text[n] != '.') {
        ++n;
      }
      ++p;
      continue;
    }
    if (pattern[p] != text[n]) {
      return false;
    }
    ++p;
    ++n;
  }
  return p == pattern.size() && n == text.size();
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
    fresh.probes.resize(8);
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
  const size_t probe_mask = shape->probes.size() - 1;
  for (size_t i = hash & probe_mask;; i = (i + 1) & probe_mask) {
    const Probe& probe = shape->probes[i];
    if (probe.tag == 0) {
      break;
    }
    const Slot& existing = shape->slots[probe.slot];
    if (existing.hash == hash && slotText(existing) == name.view()) {
      return {};
    }
  }
  Slot slot;
  slot.hash = hash;
  const std::string_view text = name.view();
  if (text.size() <= kInlineText) {
    slot.id = id;
    slot.length = static_cast<uint16_t>(text.size());
    std::memcpy(slot.text, text.data(), text.size());
  } else {
    slot.id = static_cast<uint32_t>(long_patterns_.size());
    slot.length = kLongPattern;
    long_patterns_.push_back({std::string(text), id});
  }
  insert(*shape, slot);
  ++size_;
  return {};
}

std::string_view HostMatcher::slotText(const Slot& slot) const noexcept {
  if (slot.length == kLongPattern) {
    return long_patterns_[slot.id].text;
  }
  return {slot.text, slot.length};
}

uint32_t HostMatcher::slotId(const Slot& slot) const noexcept {
  return slot.length == kLongPattern ? long_patterns_[slot.id].id : slot.id;
}

void HostMatcher::insert(Shape& shape, const Slot& slot) {
  if (shape.slots.size() >= UINT32_MAX) {
    throw std::length_error("HostMatcher: too many patterns of one shape");
  }
  shape.slots.push_back(slot);
  // Keep the probe array at most half full so probe sequences stay short.
  if (shape.slots.size() * 2 > shape.probes.size()) {
    shape.probes.assign(shape.probes.size() * 2, Probe{});
    for (uint32_t i = 0; i < shape.slots.size(); ++i) {
      placeProbe(shape, i);
    }
  } else {
    placeProbe(shape, static_cast<uint32_t>(shape.slots.size() - 1));
  }
}

void HostMatcher::placeProbe(Shape& shape, uint32_t index) {
  const uint64_t hash = shape.slots[index].hash;
  const size_t mask = shape.probes.size() - 1;
  size_t i = hash & mask;
  while (shape.probes[i].tag != 0) {
    i = (i + 1) & mask;
  }
  shape.probes[i] = {probeTag(hash), index};
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
    const uint32_t tag = probeTag(hash);
    const size_t mask = shape.probes.size() - 1;
    for (size_t i = hash & mask;; i = (i + 1) & mask) {
      const Probe probe = shape.probes[i];
      if (probe.tag == 0) {
        break;
      }
      if (probe.tag != tag) {
        continue;
      }
      const Slot& slot = shape.slots[probe.slot];
      if (slot.hash == hash && sameLabels(slotText(slot), name, shape.wildcard_mask)) {
        return slotId(slot);
      }
    }
  }
  return kNoMatch;
}

}  // namespace acr
