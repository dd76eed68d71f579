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

// Copies `text` into a NUL-terminated stack buffer for inet_pton; false if it cannot fit.
bool toCString(std::string_view text, std::array<char, IpAddress::kMaxTextLength + 1>& out) {
  if (text.empty() || text.size() > IpAddress::kMaxTextLength) {
    return false;
  }
  std::memcpy(out.data(), text.data(), text.size());
  out[text.size()] = '\0';
  return true;
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
  std::array<char, kMaxTextLength + 1> buffer;
  if (!toCString(text, buffer)) {
    return std::nullopt;
  }
  // glibc's inet_pton(AF_INET) is strict: exactly four decimal parts, no leading zeros.
  in_addr v4_addr;
  if (inet_pton(AF_INET, buffer.data(), &v4_addr) == 1) {
    return v4(ntohl(v4_addr.s_addr));
  }
  std::array<uint8_t, 16> v6_bytes;
  if (inet_pton(AF_INET6, buffer.data(), v6_bytes.data()) == 1) {
    return fromV6Bytes(v6_bytes);
  }
  return std::nullopt;
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
    in_addr addr;
    addr.s_addr = htonl(v4Value());
    inet_ntop(AF_INET, &addr, out.data(), out.size());
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
