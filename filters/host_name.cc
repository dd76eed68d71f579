#include "filters/host_name.h"

namespace acr {
namespace {

// Each byte's normalised form: letters lowered, digits, '-', '_' and '.' as they are, 0 for every
// byte a host name may not hold (so one table read both validates and lowers).
constexpr std::array<char, 256> makeLowerTable() {
  std::array<char, 256> table{};
  for (int c = 'a'; c <= 'z'; ++c) table[c] = static_cast<char>(c);
  for (int c = 'A'; c <= 'Z'; ++c) table[c] = static_cast<char>(c + 32);
  for (int c = '0'; c <= '9'; ++c) table[c] = static_cast<char>(c);
  table['-'] = '-';
  table['_'] = '_';
  table['.'] = '.';
  return table;
}
constexpr std::array<char, 256> kLower = makeLowerTable();

bool isHexDigit(char c) noexcept { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); }

// WHATWG URL "ends in a number": the last label is all digits, or "0x" followed by hex digits.
bool endsInNumber(std::string_view last) noexcept {
  bool all_digits = true;
  for (char c : last) {
    all_digits = all_digits && c >= '0' && c <= '9';
  }
  if (all_digits) {
    return true;
  }
  if (last.size() >= 2 && last[0] == '0' && last[1] == 'x') {
    for (char c : last.substr(2)) {
      if (!isHexDigit(c)) {
        return false;
      }
    }
    return true;
  }
  return false;
}

}  // namespace

std::string_view HostName::statusText(Status status) noexcept {
  switch (status) {
    case Status::kOk:
      return "valid";
    case Status::kEmpty:
      return "empty name";
    case Status::kTooLong:
      return "longer than 253 bytes";
    case Status::kEmptyLabel:
      return "empty label";
    case Status::kLabelTooLong:
      return "label longer than 63 bytes";
    case Status::kBadCharacter:
      return "byte other than a letter, digit, '-' or '_'";
    case Status::kNumeric:
      return "ends in a numeric label (an IP literal is not a host name)";
  }
  return "invalid";
}

HostName::Status HostName::normalize(std::string_view text, HostName& out,
                                     bool allow_wildcard) noexcept {
  out.length_ = 0;
  out.label_count_ = 0;
  if (!text.empty() && text.back() == '.') {
    text.remove_suffix(1);
  }
  if (text.empty()) {
    return Status::kEmpty;
  }
  if (text.size() > kMaxLength) {
    return Status::kTooLong;
  }
  size_t label_begin = 0;
  uint8_t labels = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = kLower[static_cast<uint8_t>(text[i])];
    if (c == '.') {
      if (i == label_begin) {
        return Status::kEmptyLabel;
      }
      if (i - label_begin > kMaxLabelLength) {
        return Status::kLabelTooLong;
      }
      out.label_begin_[labels++] = static_cast<uint8_t>(label_begin);
      label_begin = i + 1;
    } else if (c == 0) {
      const bool lone_star = allow_wildcard && text[i] == '*' && i == label_begin &&
                             (i + 1 == text.size() || text[i + 1] == '.');
      if (!lone_star) {
        return Status::kBadCharacter;
      }
      c = '*';
    }
    out.chars_[i] = c;
  }
  if (label_begin == text.size()) {
    return Status::kEmptyLabel;
  }
  if (text.size() - label_begin > kMaxLabelLength) {
    return Status::kLabelTooLong;
  }
  out.label_begin_[labels++] = static_cast<uint8_t>(label_begin);
  const std::string_view normalized(out.chars_.data(), text.size());
  const std::string_view last = normalized.substr(out.label_begin_[labels - 1]);
  if (endsInNumber(last)) {
    return Status::kNumeric;
  }
  out.length_ = static_cast<uint8_t>(text.size());
  out.label_count_ = labels;
  return Status::kOk;
}

}  // namespace acr
