#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace acr {

// A rule of the policy that can decide: a host pattern, an allowed or denied range, a service tag
// or one of the built-in special-purpose ranges. Decisions point at the rule that decided.
struct Rule {
  enum class Kind : uint8_t {
    kHostPattern,
    kAllowCidr,
    kServiceTag,
    kDenyCidr,
    kSpecialRange,
    kClientCidr,  // --client-cidr: a range of clients that may use the proxy
    kHostBinding,  // --bind-host-tag, [[policy.bind]]: a host pattern bound to tags and ranges
  };
  Kind kind;
  std::string text;    // the pattern, the CIDR, the tag name, or what the special range is
  std::string origin;  // where the rule came from ("--registry myreg", "embedded default", ...)
  // A host pattern from a preset: the preset's name ("mcr", "iotedge via mcr"); otherwise empty.
  std::string preset = {};
  // kHostBinding: the tags and ranges the pattern is bound to, as configured
  // ("AzureContainerRegistry, 192.0.2.0/24"); otherwise empty.
  std::string bound_to = {};
  // kClientCidr of a client group ([[group]]): the group's name; empty for --client-cidr.
  std::string group = {};
};

enum class Verdict : uint8_t { kAllow, kDeny };

// Why a decision went the way it did. The names (reasonName) are stable: logs, metrics labels,
// the X-Acr-Egress-Reason header and tests all use them.
enum class Reason : uint8_t {
  kHostAllowed,        // "host_allowed": the name matches a host pattern
  kAddressAllowed,     // "address_allowed": the address is in --allow-cidr or a service tag
  kAddressPublic,      // "address_public": a resolved address outside every special range
  kInvalidHost,        // "invalid_host": not a valid host name (see HostName)
  kHostNotAllowed,     // "host_not_allowed": no host pattern matches
  kPortNotAllowed,     // "port_not_allowed"
  kAddressSpecial,     // "address_special": special-purpose range, not explicitly allowed
  kAddressNotAllowed,  // "address_not_allowed": an IP literal, or --strict-ip, outside the set
  kAddressDenied,      // "address_denied": inside a --deny-cidr range
  kSniAddressMismatch,  // "sni_address_mismatch": a transparent destination outside the allowed
                        // set and not among the SNI's own DNS answers
  kNoSni,  // "no_sni": a ClientHello without SNI (with --allow-no-sni: and its destination is not
           // inside the allowed set; `detail` holds the address's own Reason, if one was judged)
  kEsni,   // "esni": the ClientHello offers the obsolete ESNI extension (0xffce), which hides the
           // real name from any proxy
  kClientAllowed,       // "client_allowed": the client is in a --client-cidr range, or none is set
  kClientNotAllowed,    // "client_not_allowed": client rules exist and none holds the client
  // "ech": the ClientHello offers ECH (0xfe0d) and the policy denies ECH (policy.ech = "deny")
  kEch,
  // "address_not_bound": the name matches a bound host pattern (--bind-host-tag, [[policy.bind]])
  // and the address is outside the tags and ranges bound to it
  kAddressNotBound,
};
std::string_view reasonName(Reason reason) noexcept;

// The outcome of one policy check. Plain data; `rule` points into the Policy that decided (or
// the static special-range table), so it lives as long as that policy snapshot.
struct Decision {
  Verdict verdict = Verdict::kDeny;
  Reason reason = Reason::kHostNotAllowed;
  const Rule* rule = nullptr;
  // kInvalidHost: the HostName::Status. kAddressNotAllowed: kDetailLiteral or kDetailStrict.
  // kNoSni: kDetailNoAddress, or the Reason decideAddress gave the destination.
  uint8_t detail = 0;
  // Report-only (--report-only): the rules deny (`reason` says why), but the verdict is kAllow
  // because enforcement of that kind of rule is off. Only host, port and address-set denials
  // (host_not_allowed, port_not_allowed, address_not_allowed, sni_address_mismatch,
  // address_not_bound) are waived.
  bool would_deny = false;

  static constexpr uint8_t kDetailLiteral = 0;
  static constexpr uint8_t kDetailStrict = 1;
  static constexpr uint8_t kDetailNoAddress = 0xff;

  bool allowed() const noexcept { return verdict == Verdict::kAllow; }
};

}  // namespace acr
