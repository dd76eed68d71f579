#include "filters/ip_address.h"

#include <arpa/inet.h>

#include <charconv>
#include <cstring>

namespace acr {
namespace {

Uint128 bytesToUint128(const uint8_t* bytes) noexcept {
  Uint128 value = 0;
  for (int i = 0; i < 16; ++i) {
    value = (value << 8) | bytes[i];
  }
  return value;
}

// The text forms glibc's inet_pton accepts, written out so that a parse neither copies the text to
// a NUL-terminated buffer nor tries IPv4 before IPv6: with inet_pton, reading the ~96,000 prefixes
// of Azure's service-tags file was a fifth of the start-up (bench/e2e/PROFILE.md section 8).
// tests/filters/ip_address_test.cc and tests/fuzz/ip_address_fuzz.cc compare both on every input.

// Four decimal parts of 0..255, no leading zeros, nothing else.
std::optional<uint32_t> parseDottedQuad(const char* p, const char* end) noexcept {
  uint32_t value = 0;
  int parts = 0;
  while (true) {
    if (p == end || *p < '0' || *p > '9') {
      return std::nullopt;
    }
    uint32_t part = static_cast<uint32_t>(*p++ - '0');
    if (part != 0) {
      for (int digits = 1; p != end && *p >= '0' && *p <= '9'; ++digits) {
        part = part * 10 + static_cast<uint32_t>(*p++ - '0');
        if (digits == 3 || part > 255) {
          return std::nullopt;
        }
      }
    }
    value = (value << 8) | part;
    if (++parts == 4) {
      return p == end ? std::optional<uint32_t>(value) : std::nullopt;
    }
    if (p == end || *p++ != '.') {
      return std::nullopt;
    }
  }
}

int hexDigit(char c) noexcept {
  if (c >= '0' && c <= '9') {
    return c - '0';
  }
  const char lower = static_cast<char>(c | 0x20);
  return lower >= 'a' && lower <= 'f' ? lower - 'a' + 10 : -1;
}

// RFC 4291 section 2.2: eight groups of one to four hex digits; one "::" standing for one or more
// zero groups; a dotted quad in place of the last two groups.
std::optional<Uint128> parseV6(const char* p, const char* end) noexcept {
  uint16_t groups[8] = {};
  int count = 0;
  int gap = -1;  // where "::" stands, as a group index
  if (p != end && *p == ':') {
    if (++p == end || *p != ':') {
      return std::nullopt;
    }
  }
  const char* group_start = p;
  uint32_t value = 0;
  int digits = 0;
  while (p != end) {
    const char c = *p++;
    const int digit = hexDigit(c);
    if (digit >= 0) {
      if (digits == 4) {
        return std::nullopt;
      }
      value = (value << 4) | static_cast<uint32_t>(digit);
      ++digits;
      continue;
    }
    if (c == ':') {
      group_start = p;
      if (digits == 0) {
        if (gap >= 0) {
          return std::nullopt;
        }
        gap = count;
        continue;
      }
      if (p == end || count == 8) {
        return std::nullopt;
      }
      groups[count++] = static_cast<uint16_t>(value);
      value = 0;
      digits = 0;
      continue;
    }
    if (c == '.' && count <= 6) {
      const auto v4 = parseDottedQuad(group_start, end);
      if (!v4) {
        return std::nullopt;
      }
      groups[count++] = static_cast<uint16_t>(*v4 >> 16);
      groups[count++] = static_cast<uint16_t>(*v4);
      digits = 0;
      break;
    }
    return std::nullopt;
  }
  if (digits > 0) {
    if (count == 8) {
      return std::nullopt;
    }
    groups[count++] = static_cast<uint16_t>(value);
  }
  if (gap >= 0) {
    if (count == 8) {
      return std::nullopt;  // "::" must stand for at least one group
    }
    const int moved = count - gap;
    for (int i = 0; i < moved; ++i) {
      groups[7 - i] = groups[count - 1 - i];
      groups[count - 1 - i] = 0;
    }
    count = 8;
  }
  if (count != 8) {
    return std::nullopt;
  }
  Uint128 result = 0;
  for (const uint16_t group : groups) {
    result = (result << 16) | group;
  }
  return result;
}

Uint128 prefixMask(int bits, int length) noexcept {
  if (length == 0) {
    return 0;
  }
  const Uint128 all = bits == 32 ? Uint128{0xffffffffu} : ~Uint128{0};
  return (all << (bits - length)) & all;
}

}  // namespace

IpAddress IpAddress::fromV6Bytes(const std::array<uint8_t, 16>& bytes) noexcept {
  return v6(bytesToUint128(bytes.data()));
}

std::array<uint8_t, 16> IpAddress::v6Bytes() const noexcept {
  std::array<uint8_t, 16> bytes{};
  for (int i = 0; i < 16; ++i) {
    bytes[15 - i] = static_cast<uint8_t>(value_ >> (8 * i));
  }
  return bytes;
}

std::optional<IpAddress> IpAddress::parse(std::string_view text) noexcept {
  if (text.empty() || text.size() > kMaxTextLength) {
    return std::nullopt;
  }
  const char* begin = text.data();
  const char* end = begin + text.size();
  if (text.find(':') == std::string_view::npos) {
    const auto value = parseDottedQuad(begin, end);
    return value ? std::optional<IpAddress>(v4(*value)) : std::nullopt;
  }
  const auto value = parseV6(begin, end);
  return value ? std::optional<IpAddress>(v6(*value)) : std::nullopt;
}

std::optional<IpAddress> IpAddress::embeddedV4() const noexcept {
  if (isV4()) {
    return std::nullopt;
  }
  const Uint128 low32 = value_ & 0xffffffffu;
  const Uint128 high96 = value_ >> 32;
  if (high96 == 0xffff) {  // ::ffff:a.b.c.d
    return v4(static_cast<uint32_t>(low32));
  }
  if (high96 == 0 && low32 > 1) {  // ::a.b.c.d (deprecated IPv4-compatible)
    return v4(static_cast<uint32_t>(low32));
  }
  if (high96 == ((Uint128{0x0064ff9b}) << 64)) {  // 64:ff9b::a.b.c.d (NAT64 well-known prefix)
    return v4(static_cast<uint32_t>(low32));
  }
  // 64:ff9b:1::/48 (RFC 8215 local-use NAT64) read like the /96 above: the operator's /96 sits
  // anywhere in the /48, with bits 64..95 zero (RFC 6052 "u" octet and suffix). Other RFC 6052
  // layouts are not read here; SpecialRanges holds the whole /48 so that they are refused.
  if ((value_ >> 80) == 0x0064ff9b0001 && ((value_ >> 32) & 0xffffffffu) == 0) {
    return v4(static_cast<uint32_t>(low32));
  }
  if ((value_ >> 112) == 0x2002) {  // 2002:AABB:CCDD::/48 (6to4)
    return v4(static_cast<uint32_t>(value_ >> 80));
  }
  return std::nullopt;
}

size_t IpAddress::format(std::array<char, kMaxTextLength + 1>& out) const noexcept {
  if (isV4()) {
    // Dotted decimal by hand: inet_ntop formats IPv4 with sprintf (~1,500 instructions, every
    // log line formats two or three addresses). The same text (a differential test checks).
    const uint32_t value = v4Value();
    char* p = out.data();
    for (int shift = 24; shift >= 0; shift -= 8) {
      p = std::to_chars(p, out.data() + out.size(), (value >> shift) & 0xff).ptr;
      *p++ = shift != 0 ? '.' : '\0';
    }
    return static_cast<size_t>(p - out.data() - 1);
  } else {
    const auto bytes = v6Bytes();
    inet_ntop(AF_INET6, bytes.data(), out.data(), out.size());
  }
  return std::strlen(out.data());
}

std::string IpAddress::toString() const {
  std::array<char, kMaxTextLength + 1> buffer;
  return std::string(buffer.data(), format(buffer));
}

std::optional<Cidr> Cidr::parse(std::string_view text, std::string* error) {
  auto fail = [&](std::string why) -> std::optional<Cidr> {
    if (error != nullptr) {
      *error = "invalid CIDR '" + std::string(text) + "': " + std::move(why);
    }
    return std::nullopt;
  };
  const size_t slash = text.find('/');
  if (slash == std::string_view::npos) {
    return fail("expected address/length");
  }
  const auto address = IpAddress::parse(text.substr(0, slash));
  if (!address) {
    return fail("'" + std::string(text.substr(0, slash)) + "' is not an IP address");
  }
  const std::string_view length_text = text.substr(slash + 1);
  const int max_length = address->isV4() ? 32 : 128;
  unsigned length = 0;
  const auto [end, ec] =
      std::from_chars(length_text.data(), length_text.data() + length_text.size(), length);
  if (length_text.empty() || ec != std::errc() || end != length_text.data() + length_text.size() ||
      (length_text.size() > 1 && length_text[0] == '0')) {
    return fail("prefix length '" + std::string(length_text) + "' is not a decimal number");
  }
  if (length > static_cast<unsigned>(max_length)) {
    return fail("prefix length " + std::to_string(length) + " is over " +
                std::to_string(max_length));
  }
  const Uint128 value = address->isV4() ? address->v4Value() : address->v6Value();
  const Uint128 mask = prefixMask(max_length, static_cast<int>(length));
  if ((value & ~mask & (max_length == 32 ? Uint128{0xffffffffu} : ~Uint128{0})) != 0) {
    const IpAddress network = address->isV4() ? IpAddress::v4(static_cast<uint32_t>(value & mask))
                                              : IpAddress::v6(value & mask);
    return fail("host bits are set (the network is " + network.toString() + "/" +
                std::to_string(length) + ")");
  }
  return Cidr{*address, static_cast<uint8_t>(length)};
}

bool Cidr::contains(const IpAddress& candidate) const noexcept {
  if (candidate.family() != address.family()) {
    return false;
  }
  const int bits = address.isV4() ? 32 : 128;
  const Uint128 mask = prefixMask(bits, length);
  const Uint128 value = candidate.isV4() ? candidate.v4Value() : candidate.v6Value();
  const Uint128 network = address.isV4() ? address.v4Value() : address.v6Value();
  return (value & mask) == network;
}

std::string Cidr::toString() const { return address.toString() + "/" + std::to_string(length); }

}  // namespace acr
