#pragma once

#include <bitset>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "filters/cidr_set.h"
#include "filters/decision.h"
#include "filters/host_matcher.h"
#include "filters/ip_address.h"

namespace acr {

struct ClientHello;

// What a decision was about, for its sentence: the host or IP literal as the client gave it, the
// address checked (if any) and the port.
struct DecisionSubject {
  std::string_view host;
  std::optional<IpAddress> address;
  uint16_t port = 0;
};

// The immutable allow/deny policy. Built once by Policy::Builder from validated configuration,
// then shared read-only (std::shared_ptr<const Policy>) by every event loop; a reload builds a new
// one. Every decide* function is pure, allocation-free and never throws.
//
// Semantics (the README documents them for users):
// - A name passes when it is a valid host name (HostName), its port is allowed, and a host pattern
//   matches it. Names are never resolved here.
// - An IP-literal target passes only when its port is allowed and it is inside the allowed set
//   (--allow-cidr plus the prefixes of the chosen service tags) and not inside --deny-cidr.
// - Ranges are compared with every spelling of an address: as written, the IPv4 address it
//   embeds (IpAddress::embeddedV4) and that IPv4 address's ::ffff: mapped form. A --deny-cidr
//   holding any spelling denies, whatever range allows another one.
// - An address to dial (resolved, or the original destination): --deny-cidr denies; the allowed
//   set allows; a special-purpose range holding its embedded IPv4 address (or, without one, the
//   address itself) denies; --strict-ip denies whatever is left; otherwise it is allowed as
//   public.
class Policy {
 public:
  class Builder;

  // A target as the client named it: an IP literal goes to decideLiteral, a name to decideName.
  Decision decide(std::string_view host, uint16_t port) const noexcept;
  Decision decideName(std::string_view host, uint16_t port) const noexcept;
  Decision decideLiteral(const IpAddress& address, uint16_t port) const noexcept;
  Decision decideAddress(const IpAddress& address) const noexcept;
  // An address dialled for `host` (resolved for it, or a transparent destination with that SNI):
  // decideAddress, and when that allows it and `host` (a valid name) matches a bound host pattern
  // (the most specific one, as host patterns match), the address must also lie inside the
  // tags and ranges bound to that pattern, else kAddressNotBound naming the binding's rule. A
  // binding only narrows: an address inside it still needs decideAddress's allow. An IP literal
  // or a name no binding matches is judged by decideAddress alone.
  Decision decideDialled(std::string_view host, const IpAddress& address) const noexcept;
  bool hasBindings() const noexcept { return !bindings_.empty(); }
  // Transparent listener, after the SNI passed decideName: may the connection go to the address
  // the client really dialled? Yes if decideAddress allows it by a range or tag; no if
  // decideAddress denies it; a public address outside the allowed set only if it is among
  // `answers`, the proxy's own DNS answers for the SNI (kSniAddressMismatch otherwise). This is
  // what stops an allowed name from being sent to an attacker's address.
  Decision decideOriginalDestination(const IpAddress& destination,
                                     std::span<const IpAddress> answers) const noexcept;
  // A ClientHello (transparent and sni listeners, and the tunnel's first bytes): one offering the
  // obsolete ESNI extension is denied kEsni whatever its SNI (ESNI hides the real name and no
  // current client sends it); one without SNI is denied kNoSni (kDetailNoAddress); otherwise its
  // SNI goes to decideName. ECH (0xfe0d) is not judged: it may be GREASE, and with real ECH the
  // outer SNI, which is judged here, is all any proxy can see. `normalized`, when given, receives
  // the SNI as decideName normalized it (empty when it was not judged or is not a valid name), so
  // that the caller does not normalize it again.
  Decision decideSni(const ClientHello& hello, uint16_t port,
                     HostName* normalized = nullptr) const noexcept;
  // Transparent listener with --allow-no-sni, a hello without SNI: the port rule first
  // (kPortNotAllowed), then only an address inside the allowed set passes (kAddressAllowed);
  // anything else is kNoSni with `detail` the Reason decideAddress gave and its rule.
  Decision decideWithoutSni(const IpAddress& destination, uint16_t port) const noexcept;
  // May `client` (a connection's source address) use the proxy at all? Allowed (rule null) when
  // there is no client rule: whether that is acceptable depends on the listener's address, which
  // conf/ checks at startup. Otherwise allowed by the most specific --client-cidr range holding
  // it, kClientNotAllowed if none does. An IPv4-mapped client (::ffff:a.b.c.d) is judged as its
  // IPv4 address; no other embedded form is unwrapped, since a client may choose its 6to4 or
  // NAT64 address freely.
  Decision decideClient(const IpAddress& client) const noexcept {
    return chooseClient(client).decision;
  }
  // Client rules include the groups' clients.
  bool hasClientRules() const noexcept { return has_client_rules_; }

  // Client groups ([[group]], docs/policy.md "Client groups"): each has its own complete policy,
  // built by conf/ with the top-level keys it did not set. Only the top-level policy has groups
  // and client rules; a group's policy has neither.
  static constexpr uint32_t kNoGroup = UINT32_MAX;
  struct Group {
    std::string name;
    std::shared_ptr<const Policy> policy;
  };
  struct ClientChoice {
    Decision decision;     // what decideClient says
    const Policy* policy;  // judges the client's connections: its group's policy, or this one
    uint32_t group;        // index into groups(), or kNoGroup (top-level policy, or refused)
  };
  // decideClient, and whose policy judges the client: the most specific client range holding it
  // decides, whether a group's or a --client-cidr one (conf/ refuses the same prefix in two
  // places). A refused client gets this policy and kNoGroup.
  ClientChoice chooseClient(const IpAddress& client) const noexcept;
  const std::vector<Group>& groups() const noexcept { return groups_; }

  // One plain sentence, e.g. "allowed: host matches *.blob.core.windows.net" or
  // "denied: 10.0.0.5 is private (RFC 1918) and in no allowed range".
  std::string describe(const Decision& decision, const DecisionSubject& subject) const;

  bool portAllowed(uint16_t port) const noexcept { return ports_.test(port); }
  std::vector<uint16_t> ports() const;
  bool strictIp() const noexcept { return strict_ip_; }
  // Report-only: host, port and address-set denials come back as kAllow with would_deny set.
  // Everything else stays enforced: invalid names, --deny-cidr, special-purpose addresses, client
  // rules (and, in proxy/, malformed requests, proxy_loop, self_connection and limits), so that
  // report-only never opens a path to the metadata service or the local network.
  bool reportOnly() const noexcept { return report_only_; }
  // Revoke on reload (THREATS F14): when this policy replaces another, connections opened under
  // the old one are judged again by this one and closed (reason revoked) if it denies them. Off:
  // they keep the policy they were accepted with until they end.
  bool revokeOnReload() const noexcept { return revoke_on_reload_; }
  // ECH (THREATS B14): by default a hello offering ECH is judged by its outer SNI; with denyEch()
  // it is denied kEch whatever that name (GREASE ECH included: it cannot be told apart).
  bool denyEch() const noexcept { return deny_ech_; }
  const std::vector<Rule>& rules() const noexcept { return rules_; }
  // Allowed-set prefixes per family, counted over every entry added (for summaries).
  size_t allowedPrefixCount() const noexcept { return allowed_prefix_count_; }

 private:
  Policy() = default;

  Decision allow(Reason reason, uint32_t rule) const noexcept;
  Decision deny(Reason reason, const Rule* rule, uint8_t detail = 0) const noexcept;
  // decideName, normalizing `host` into `name` (left empty when it is not a valid name).
  Decision decideName(std::string_view host, uint16_t port, HostName& name) const noexcept;

  std::vector<Rule> rules_;
  HostMatcher hosts_;
  std::bitset<65536> ports_;
  CidrSet allowed_;
  CidrSet denied_;
  bool strict_ip_ = false;
  size_t allowed_prefix_count_ = 0;
  CidrSet clients_;  // client range -> its kClientCidr rule
  bool has_client_rules_ = false;
  std::vector<uint32_t> rule_group_;  // rule index -> group index (kNoGroup: not a group's)
  std::vector<Group> groups_;
  bool report_only_ = false;
  bool revoke_on_reload_ = false;
  bool deny_ech_ = false;
  // Address binding: bind_hosts_ maps a name to its binding's index in bindings_.
  struct Binding {
    CidrSet ranges;
    uint32_t rule;  // the kHostBinding rule in rules_
  };
  HostMatcher bind_hosts_;
  std::vector<Binding> bindings_;
};

// Collects rules, then produces a Policy. Validation of user text (patterns, CIDRs) happens in
// conf/, which reports file and line; add* here only refuse what cannot be represented.
class Policy::Builder {
 public:
  // Returns an empty string or why the pattern is invalid. `preset` names the preset the pattern
  // comes from, if any (sentences name it).
  std::string addHostPattern(std::string_view pattern, std::string origin, std::string preset = {});
  void addPort(uint16_t port) { ports_.set(port); }
  void addAllowCidr(const Cidr& cidr, std::string origin);
  void addDenyCidr(const Cidr& cidr, std::string origin);
  // A service tag's prefixes. Regional tags (with a '.') win over global tags for the same prefix,
  // so that a sentence names the most specific tag.
  void addServiceTag(std::string_view name, std::span<const Cidr> prefixes, std::string origin);
  void setStrictIp(bool strict) { strict_ip_ = strict; }
  // A client range; `group` (an index addGroup returned) makes it one of that group's clients.
  void addClientCidr(const Cidr& cidr, std::string origin, uint32_t group = kNoGroup);
  // A client group and its policy (built without groups or client rules); returns its index.
  uint32_t addGroup(std::string name, std::shared_ptr<const Policy> policy);
  void setReportOnly(bool report_only) { report_only_ = report_only; }
  void setRevokeOnReload(bool revoke) { revoke_on_reload_ = revoke; }
  void setDenyEch(bool deny) { deny_ech_ = deny; }
  // Binds `pattern` (a host pattern) to `ranges` (a service tag's prefixes and CIDRs; `bound_to`
  // names them for sentences). The same pattern bound twice is bound to both sets together.
  // Returns an empty string or why the pattern is invalid.
  std::string addBinding(std::string_view pattern, std::span<const Cidr> ranges,
                         std::string_view bound_to, std::string origin);

  std::shared_ptr<const Policy> build();

 private:
  std::vector<Rule> rules_;
  HostMatcher hosts_;
  std::bitset<65536> ports_;
  std::vector<CidrSet::Entry> allow_cidrs_;
  std::vector<CidrSet::Entry> regional_tags_;
  std::vector<CidrSet::Entry> global_tags_;
  std::vector<CidrSet::Entry> deny_cidrs_;
  bool strict_ip_ = false;
  std::vector<CidrSet::Entry> client_cidrs_;
  std::vector<uint32_t> client_groups_;  // parallel to client_cidrs_
  std::vector<Group> groups_;
  bool report_only_ = false;
  bool revoke_on_reload_ = false;
  bool deny_ech_ = false;
  HostMatcher bind_hosts_;
  struct PendingBinding {
    std::string pattern;  // normalised
    uint32_t rule;
    std::vector<CidrSet::Entry> ranges;
  };
  std::vector<PendingBinding> bindings_;
};

}  // namespace acr
