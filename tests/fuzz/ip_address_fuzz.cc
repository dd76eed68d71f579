// Differential fuzzing of IpAddress::parse against glibc's inet_pton, the parser it replaced
// (filters/ip_address.cc): for every input both accept the same texts and give the same address.
// The one intended difference: inet_pton reads a C string and stops at a NUL byte, so it accepted
// "1.2.3.4" followed by a NUL and anything; IpAddress::parse refuses every input holding a NUL.
// A text that parses also formats and parses back to the same address.
#include <arpa/inet.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "filters/ip_address.h"

namespace {

void check(bool ok) {
  if (!ok) {
    __builtin_trap();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const auto parsed = acr::IpAddress::parse(text);
  if (text.find('\0') != std::string_view::npos) {
    check(!parsed);
    return 0;
  }
  const std::string c_string(text);
  in_addr v4{};
  std::array<uint8_t, 16> v6{};
  const bool fits = !text.empty() && text.size() <= acr::IpAddress::kMaxTextLength;
  if (fits && inet_pton(AF_INET, c_string.c_str(), &v4) == 1) {
    check(parsed == acr::IpAddress::v4(ntohl(v4.s_addr)));
  } else if (fits && inet_pton(AF_INET6, c_string.c_str(), v6.data()) == 1) {
    check(parsed == acr::IpAddress::fromV6Bytes(v6));
  } else {
    check(!parsed);
  }
  if (parsed) {
    check(acr::IpAddress::parse(parsed->toString()) == parsed);
  }
  return 0;
}
