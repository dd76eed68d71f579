// Fuzzes host-name normalisation (HostName::normalize) and its use by HostMatcher: any input
// either normalises to a name that satisfies the documented rules or is refused with a status;
// never a crash or an out-of-bounds read. The checks below trap on any broken property:
// - a valid name is 1..253 bytes of lower-case letters, digits, '-', '_' (and '*' labels for
//   patterns) in labels of 1..63 bytes, without a trailing dot, and not ending in a number;
// - normalising is idempotent, ignores ASCII case and exactly one trailing dot;
// - a valid name used as a pattern matches itself, and only names equal to it.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "filters/host_matcher.h"
#include "filters/host_name.h"

namespace {

void check(bool ok) {
  if (!ok) {
    __builtin_trap();
  }
}

bool validByte(char c, bool wildcard) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.' ||
         (wildcard && c == '*');
}

void checkName(std::string_view text, bool wildcard) {
  acr::HostName name;
  const acr::HostName::Status status = acr::HostName::normalize(text, name, wildcard);
  if (status != acr::HostName::Status::kOk) {
    check(name.view().empty() && name.labelCount() == 0);
    check(!acr::HostName::statusText(status).empty());
    return;
  }
  const std::string_view view = name.view();
  check(!view.empty() && view.size() <= acr::HostName::kMaxLength);
  check(view.back() != '.');
  check(text.size() == view.size() || (text.size() == view.size() + 1 && text.back() == '.'));
  std::string joined;
  for (size_t i = 0; i < name.labelCount(); ++i) {
    const std::string_view label = name.label(i);
    check(!label.empty() && label.size() <= acr::HostName::kMaxLabelLength);
    check(label.find('.') == std::string_view::npos);
    check(label.find('*') == std::string_view::npos || label == "*");
    joined += (i == 0 ? "" : ".") + std::string(label);
  }
  check(joined == view);
  for (size_t i = 0; i < view.size(); ++i) {
    check(validByte(view[i], wildcard));
    const char original = text[i];
    check(view[i] == ((original >= 'A' && original <= 'Z') ? original + 32 : original));
  }

  // Idempotent, case-blind, and blind to one trailing dot.
  acr::HostName again;
  check(acr::HostName::normalize(view, again, wildcard) == acr::HostName::Status::kOk);
  check(again.view() == view && again.labelCount() == name.labelCount());
  std::string upper(view);
  for (char& c : upper) {
    c = (c >= 'a' && c <= 'z') ? static_cast<char>(c - 32) : c;
  }
  upper += '.';
  check(acr::HostName::normalize(upper, again, wildcard) == acr::HostName::Status::kOk);
  check(again.view() == view);

  // A name without wildcards is a pattern that matches exactly itself.
  if (view.find('*') == std::string_view::npos) {
    acr::HostMatcher matcher;
    if (matcher.add(view, 7).empty()) {
      check(matcher.match(name) == 7);
      acr::HostName longer;
      const std::string child = "x." + std::string(view);
      if (acr::HostName::normalize(child, longer) == acr::HostName::Status::kOk) {
        check(matcher.match(longer) == acr::HostMatcher::kNoMatch);
      }
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  checkName(text, /*wildcard=*/false);
  checkName(text, /*wildcard=*/true);
  return 0;
}
