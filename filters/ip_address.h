#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace acr {

using Uint128 = unsigned __int128;

// An IPv4 or IPv6 address as a plain value. IPv4 is held as a host-order 32-bit integer and IPv6
// as a host-order 128-bit integer so that prefix arithmetic is shifts and compares.
class IpAddress {
 public:
  enum class Family : uint8_t { kV4, kV6 };
  // Longest text form() writes, without the terminating NUL (INET6_ADDRSTRLEN - 1).
  static constexpr size_t kMaxTextLength = 45;

  constexpr IpAddress() noexcept = default;
  static constexpr IpAddress v4(uint32_t value) noexcept { return IpAddress(Family::kV4, value); }
  static constexpr IpAddress v6(Uint128 value) noexcept { return IpAddress(Family::kV6, value); }
  static IpAddress fromV6Bytes(const std::array<uint8_t, 16>& bytes) noexcept;

  // Strict text parse: an IPv4 dotted quad of four decimal parts without leading zeros, or an IPv6
  // address in RFC 4291 text form. No brackets, no zone id, no inet_aton shorthands ("127.1",
  // "0x7f.1", "2130706433"), no surrounding spaces. Allocation-free.
  static std::optional<IpAddress> parse(std::string_view text) noexcept;

  constexpr Family family() const noexcept { return family_; }
  constexpr bool isV4() const noexcept { return family_ == Family::kV4; }
  constexpr uint32_t v4Value() const noexcept { return static_cast<uint32_t>(value_); }
  constexpr Uint128 v6Value() const noexcept { return value_; }
  std::array<uint8_t, 16> v6Bytes() const noexcept;

  // The IPv4 address an IPv6 address carries inside it, judged as that IPv4 address by the policy:
  // IPv4-mapped ::ffff:0:0/96, IPv4-compatible ::/96 (except :: and ::1), NAT64 64:ff9b::/96,
  // local-use NAT64 64:ff9b:1::/48 with the IPv4 address in the last 32 bits (bits 64..95 zero)
  // and 6to4 2002::/16. Empty for IPv4 addresses and for every other IPv6 address.
  std::optional<IpAddress> embeddedV4() const noexcept;

  // Writes the canonical text form (RFC 5952 for IPv6) to `out` and returns its length.
  size_t format(std::array<char, kMaxTextLength + 1>& out) const noexcept;
  std::string toString() const;

  friend constexpr bool operator==(const IpAddress&, const IpAddress&) = default;

 private:
  constexpr IpAddress(Family family, Uint128 value) noexcept : family_(family), value_(value) {}

  Family family_ = Family::kV4;
  Uint128 value_ = 0;
};

// A network prefix "address/length" whose host bits are zero.
struct Cidr {
  IpAddress address;
  uint8_t length = 0;

  // Strict parse of "address/length": the address as IpAddress::parse, the length a decimal
  // number without leading zeros up to 32 (IPv4) or 128 (IPv6), and no host bits set. A bare
  // address is not a CIDR. On failure returns empty and, if `error` is given, says why.
  static std::optional<Cidr> parse(std::string_view text, std::string* error = nullptr);

  bool contains(const IpAddress& address) const noexcept;
  std::string toString() const;

  friend bool operator==(const Cidr&, const Cidr&) = default;
};

// A total order on prefixes for sorted lists: IPv4 before IPv6, then by address, shorter first.
struct CidrOrder {
  bool operator()(const Cidr& a, const Cidr& b) const noexcept {
    if (a.address.family() != b.address.family()) {
      return a.address.isV4();
    }
    if (a.address.v6Value() != b.address.v6Value()) {
      return a.address.v6Value() < b.address.v6Value();
    }
    return a.length < b.length;
  }
};

}  // namespace acr
