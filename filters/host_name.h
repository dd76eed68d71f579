#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace acr {

// A host name in the one form the policy compares: lower case, without its trailing dot, checked
// against the rules below. Held inline so that normalising a name on the data path never
// allocates.
//
// A name is valid when it is 1..253 bytes (after removing one trailing dot), every label is
// 1..63 bytes of ASCII letters, digits, '-' or '_', and it does not end in a numeric label (the
// WHATWG "ends in a number" rule: a last label of only digits, or 0x plus hex digits). The last
// rule keeps IPv4 literals and their inet_aton spellings ("127.1", "2130706433", "0x7f.0.0.1")
// out of name matching; IPv6 literals already fail on ':'. Patterns (HostMatcher) additionally
// allow a label that is exactly '*'.
class HostName {
 public:
  static constexpr size_t kMaxLength = 253;
  static constexpr size_t kMaxLabelLength = 63;
  static constexpr size_t kMaxLabels = 127;

  enum class Status : uint8_t {
    kOk,
    kEmpty,
    kTooLong,
    kEmptyLabel,
    kLabelTooLong,
    kBadCharacter,
    kNumeric,
  };
  // Human-readable cause, for decision sentences and config errors.
  static std::string_view statusText(Status status) noexcept;

  // Normalises and validates `text` into `out`. `allow_wildcard` accepts '*' labels (patterns).
  // On any status other than kOk, `out` is left empty.
  static Status normalize(std::string_view text, HostName& out,
                          bool allow_wildcard = false) noexcept;

  std::string_view view() const noexcept { return {chars_.data(), length_}; }
  size_t labelCount() const noexcept { return label_count_; }
  // Label `i`, counted from the left (0 is the leftmost label).
  std::string_view label(size_t i) const noexcept {
    const size_t begin = label_begin_[i];
    const size_t end = i + 1 < label_count_ ? label_begin_[i + 1] - 1 : length_;
    return {chars_.data() + begin, end - begin};
  }

 private:
  // Not zero-initialised: only [0, length_) and [0, label_count_) are ever read.
  std::array<char, kMaxLength + 1> chars_;
  std::array<uint8_t, kMaxLabels + 1> label_begin_;
  uint8_t length_ = 0;
  uint8_t label_count_ = 0;
};

}  // namespace acr
