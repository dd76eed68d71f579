#include "filters/policy.h"

#include <array>

#include "filters/client_hello_parser.h"
#include "filters/host_name.h"
#include "filters/special_ranges.h"

namespace acr {

std::string_view reasonName(Reason reason) noexcept {
  switch (reason) {
    case Reason::kHostAllowed:
      return "host_allowed";
    case Reason::kAddressAllowed:
      return "address_allowed";
    case Reason::kAddressPublic:
      return "address_public";
    case Reason::kInvalidHost:
      return "invalid_host";
    case Reason::kHostNotAllowed:
      return "host_not_allowed";
    case Reason::kPortNotAllowed:
      return "port_not_allowed";
    case Reason::kAddressSpecial:
      return "address_special";
    case Reason::kAddressNotAllowed:
      return "address_not_allowed";
    case Reason::kAddressDenied:
      return "address_denied";
    case Reason::kSniAddressMismatch:
      return "sni_address_mismatch";
    case Reason::kNoSni:
      return "no_sni";
    case Reason::kEsni:
      return "esni";
    case Reason::kClientAllowed:
      return "client_allowed";
    case Reason::kClientNotAllowed:
      return "client_not_allowed";
    case Reason::kEch:
      return "ech";
    case Reason::kAddressNotBound:
      return "address_not_bound";
  }
  return "unknown";
}

namespace {

// The spellings of one address that ranges are compared with: the address as written, the IPv4
// address it embeds (IpAddress::embeddedV4), and the IPv4-mapped form ::ffff:a.b.c.d of that IPv4
// address (the same host on a dual-stack socket). So a range written in any of these forms
// matches an address written in any other, and "deny always wins" holds for every spelling.
class Spellings {
 public:
  explicit Spellings(const IpAddress& address) noexcept {
    add(address);
    const std::optional<IpAddress> v4 =
        address.isV4() ? std::optional<IpAddress>(address) : address.embeddedV4();
    if (v4) {
      add(*v4);
      add(IpAddress::v6((Uint128{0xffff} << 32) | v4->v4Value()));
    }
  }
  // The value of the most specific range of `set` holding the first spelling that any range
  // holds, or CidrSet::kNoMatch.
  uint32_t lookup(const CidrSet& set) const noexcept {
    for (size_t i = 0; i < count_; ++i) {
      if (const uint32_t rule = set.lookup(items_[i]); rule != CidrSet::kNoMatch) {
        return rule;
      }
    }
    return CidrSet::kNoMatch;
  }

 private:
  void add(const IpAddress& address) noexcept {
    for (size_t i = 0; i < count_; ++i) {
      if (items_[i] == address) {
        return;
      }
    }
    items_[count_++] = address;
  }

  std::array<IpAddress, 3> items_;
  size_t count_ = 0;
};

}  // namespace

Decision Policy::allow(Reason reason, uint32_t rule) const noexcept {
  return {Verdict::kAllow, reason, rule == CidrSet::kNoMatch ? nullptr : &rules_[rule], 0};
}

Decision Policy::deny(Reason reason, const Rule* rule, uint8_t detail) const noexcept {
  if (report_only_ &&
      (reason == Reason::kHostNotAllowed || reason == Reason::kPortNotAllowed ||
       reason == Reason::kAddressNotAllowed || reason == Reason::kSniAddressMismatch ||
       reason == Reason::kAddressNotBound)) {
    return {Verdict::kAllow, reason, rule, detail, true};
  }
  return {Verdict::kDeny, reason, rule, detail};
}

Decision Policy::decide(std::string_view host, uint16_t port) const noexcept {
  if (const auto literal = IpAddress::parse(host)) {
    return decideLiteral(*literal, port);
  }
  return decideName(host, port);
}

Decision Policy::decideName(std::string_view host, uint16_t port) const noexcept {
  HostName name;
  return decideName(host, port, name);
}

Decision Policy::decideName(std::string_view host, uint16_t port, HostName& name) const noexcept {
  const HostName::Status status = HostName::normalize(host, name);
  if (status != HostName::Status::kOk) {
    name = HostName();
    return deny(Reason::kInvalidHost, nullptr, static_cast<uint8_t>(status));
  }
  if (!portAllowed(port)) {
    return deny(Reason::kPortNotAllowed, nullptr);
  }
  const uint32_t rule = hosts_.match(name);
  if (rule == HostMatcher::kNoMatch) {
    return deny(Reason::kHostNotAllowed, nullptr);
  }
  return allow(Reason::kHostAllowed, rule);
}

Decision Policy::decideLiteral(const IpAddress& address, uint16_t port) const noexcept {
  if (!portAllowed(port)) {
    return deny(Reason::kPortNotAllowed, nullptr);
  }
  const Spellings spellings(address);
  if (const uint32_t rule = spellings.lookup(denied_); rule != CidrSet::kNoMatch) {
    return deny(Reason::kAddressDenied, &rules_[rule]);
  }
  if (const uint32_t rule = spellings.lookup(allowed_); rule != CidrSet::kNoMatch) {
    return allow(Reason::kAddressAllowed, rule);
  }
  const Decision denial = deny(Reason::kAddressNotAllowed, nullptr, Decision::kDetailLiteral);
  if (denial.would_deny) {
    // Report-only lets a literal outside the allowed set through, but never to a special range
    // (judged, as in decideAddress, by the IPv4 address it embeds, if any).
    const IpAddress judged = address.embeddedV4().value_or(address);
    if (const Rule* special = SpecialRanges::instance().find(judged)) {
      return {Verdict::kDeny, Reason::kAddressSpecial, special, 0};
    }
  }
  return denial;
}

Decision Policy::decideAddress(const IpAddress& address) const noexcept {
  const Spellings spellings(address);
  if (const uint32_t rule = spellings.lookup(denied_); rule != CidrSet::kNoMatch) {
    return deny(Reason::kAddressDenied, &rules_[rule]);
  }
  if (const uint32_t rule = spellings.lookup(allowed_); rule != CidrSet::kNoMatch) {
    return allow(Reason::kAddressAllowed, rule);
  }
  // Special ranges judge what the address really reaches: the IPv4 address it embeds, if any.
  const IpAddress judged = address.embeddedV4().value_or(address);
  if (const Rule* special = SpecialRanges::instance().find(judged)) {
    return deny(Reason::kAddressSpecial, special);
  }
  if (strict_ip_) {
    return deny(Reason::kAddressNotAllowed, nullptr, Decision::kDetailStrict);
  }
  return allow(Reason::kAddressPublic, CidrSet::kNoMatch);
}

Decision Policy::decideDialled(std::string_view host, const IpAddress& address) const noexcept {
  const Decision decision = decideAddress(address);
  if (!decision.allowed() || bindings_.empty()) {
    return decision;
  }
  HostName name;
  if (HostName::normalize(host, name) != HostName::Status::kOk) {
    return decision;  // an IP literal (or no name): nothing is bound to it
  }
  const uint32_t index = bind_hosts_.match(name);
  if (index == HostMatcher::kNoMatch) {
    return decision;
  }
  const Binding& binding = bindings_[index];
  if (Spellings(address).lookup(binding.ranges) != CidrSet::kNoMatch) {
    return decision;
  }
  const Decision unbound = deny(Reason::kAddressNotBound, &rules_[binding.rule]);
  // Report-only waives the binding, but a waived denial must not hide a waived address-set one.
  return unbound.would_deny && decision.would_deny ? decision : unbound;
}

Decision Policy::decideOriginalDestination(const IpAddress& destination,
                                           std::span<const IpAddress> answers) const noexcept {
  const Decision decision = decideAddress(destination);
  if (decision.reason != Reason::kAddressPublic) {
    return decision;  // allowed by a range or tag, or denied outright: the answers do not matter
  }
  const IpAddress judged = destination.embeddedV4().value_or(destination);
  for (const IpAddress& answer : answers) {
    if (answer == destination || answer.embeddedV4().value_or(answer) == judged) {
      return decision;
    }
  }
  return deny(Reason::kSniAddressMismatch, nullptr);
}

Decision Policy::decideSni(const ClientHello& hello, uint16_t port,
                           HostName* normalized) const noexcept {
  if (hello.esni_offered) {
    return deny(Reason::kEsni, nullptr);
  }
  if (hello.ech_offered && deny_ech_) {
    return deny(Reason::kEch, nullptr);
  }
  if (!hello.has_sni) {
    return deny(Reason::kNoSni, nullptr, Decision::kDetailNoAddress);
  }
  if (normalized != nullptr) {
    return decideName(hello.sni, port, *normalized);
  }
  return decideName(hello.sni, port);
}

Decision Policy::decideWithoutSni(const IpAddress& destination, uint16_t port) const noexcept {
  if (!portAllowed(port)) {
    return deny(Reason::kPortNotAllowed, nullptr);
  }
  const Decision address = decideAddress(destination);
  if (address.reason == Reason::kAddressAllowed) {
    return address;
  }
  // Without a name only a range or tag can vouch for the destination: "public" is not enough.
  return deny(Reason::kNoSni, address.rule, static_cast<uint8_t>(address.reason));
}

Policy::ClientChoice Policy::chooseClient(const IpAddress& client) const noexcept {
  if (!has_client_rules_) {
    return {{Verdict::kAllow, Reason::kClientAllowed, nullptr, 0}, this, kNoGroup};
  }
  IpAddress judged = client;
  if (!client.isV4() && (client.v6Value() >> 32) == 0xffff) {
    judged = IpAddress::v4(static_cast<uint32_t>(client.v6Value()));
  }
  if (const uint32_t rule = clients_.lookup(judged); rule != CidrSet::kNoMatch) {
    const uint32_t group = rule_group_[rule];
    return {{Verdict::kAllow, Reason::kClientAllowed, &rules_[rule], 0},
            group == kNoGroup ? this : groups_[group].policy.get(),
            group};
  }
  return {{Verdict::kDeny, Reason::kClientNotAllowed, nullptr, 0}, this, kNoGroup};
}

std::vector<uint16_t> Policy::ports() const {
  std::vector<uint16_t> ports;
  for (uint32_t port = 0; port < 65536; ++port) {
    if (ports_.test(port)) {
      ports.push_back(static_cast<uint16_t>(port));
    }
  }
  return ports;
}

namespace {

// Host text as given may hold any byte (a NUL from a ClientHello, say): show it escaped.
std::string printable(std::string_view text) {
  std::string out;
  for (unsigned char c : text.substr(0, 300)) {
    if (c >= 0x21 && c <= 0x7e && c != '\\' && c != '\'') {
      out += static_cast<char>(c);
    } else {
      static constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  if (text.size() > 300) {
    out += "...";
  }
  return out;
}

std::string addressText(const DecisionSubject& subject) {
  if (!subject.address) {
    return printable(subject.host);
  }
  std::string text = subject.address->toString();
  if (const auto inner = subject.address->embeddedV4()) {
    text += " (embedding " + inner->toString() + ")";
  }
  return text;
}

}  // namespace

std::string Policy::describe(const Decision& decision, const DecisionSubject& subject) const {
  if (decision.would_deny) {
    Decision enforced = decision;
    enforced.verdict = Verdict::kDeny;
    enforced.would_deny = false;
    const std::string sentence = describe(enforced, subject);
    constexpr std::string_view kDenied = "denied: ";
    return "report-only, would be denied: " +
           (sentence.starts_with(kDenied) ? sentence.substr(kDenied.size()) : sentence);
  }
  const std::string rule = decision.rule != nullptr ? decision.rule->text : std::string();
  switch (decision.reason) {
    case Reason::kHostAllowed:
      if (decision.rule != nullptr && !decision.rule->preset.empty()) {
        return "allowed: host matches " + rule + " (preset " + decision.rule->preset + ")";
      }
      return "allowed: host matches " + rule;
    case Reason::kAddressAllowed:
      if (decision.rule != nullptr && decision.rule->kind == Rule::Kind::kServiceTag) {
        return "allowed: " + addressText(subject) + " is in service tag " + rule;
      }
      return "allowed: " + addressText(subject) + " is in allowed range " + rule;
    case Reason::kAddressPublic:
      return "allowed: " + addressText(subject) + " is a public address";
    case Reason::kInvalidHost:
      return "denied: '" + printable(subject.host) + "' is not a valid host name (" +
             std::string(HostName::statusText(static_cast<HostName::Status>(decision.detail))) +
             ")";
    case Reason::kHostNotAllowed:
      return "denied: host " + printable(subject.host) + " matches no allowed host pattern";
    case Reason::kPortNotAllowed: {
      std::string allowed;
      for (const uint16_t port : ports()) {
        allowed += (allowed.empty() ? "" : ", ") + std::to_string(port);
      }
      return "denied: port " + std::to_string(subject.port) +
             " is not allowed (allowed: " + (allowed.empty() ? "none" : allowed) + ")";
    }
    case Reason::kAddressSpecial:
      return "denied: " + addressText(subject) + " is " + rule + " and in no allowed range";
    case Reason::kAddressNotAllowed:
      if (decision.detail == Decision::kDetailStrict) {
        return "denied: " + addressText(subject) + " is in no allowed range (strict-ip)";
      }
      return "denied: " + addressText(subject) + " is an IP literal in no allowed range";
    case Reason::kAddressDenied:
      return "denied: " + addressText(subject) + " is in denied range " + rule;
    case Reason::kSniAddressMismatch:
      return "denied: " + addressText(subject) + " is not among the addresses of " +
             printable(subject.host) + " and in no allowed range";
    case Reason::kNoSni: {
      const auto inner = static_cast<Reason>(decision.detail);
      if (decision.detail == Decision::kDetailNoAddress || !subject.address) {
        return "denied: the ClientHello carries no SNI";
      }
      if (inner == Reason::kAddressSpecial || inner == Reason::kAddressDenied) {
        // "denied: X is ..." of the address's own decision, after "no SNI, and".
        const std::string why = describe({Verdict::kDeny, inner, decision.rule, 0}, subject);
        return "denied: no SNI, and " + why.substr(std::string_view("denied: ").size());
      }
      return "denied: no SNI, and " + addressText(subject) + " is in no allowed range";
    }
    case Reason::kEsni:
      return "denied: the ClientHello offers the obsolete ESNI extension (0xffce), which hides "
             "the server name";
    case Reason::kClientAllowed:
      if (decision.rule == nullptr) {
        return "allowed: no client rule is set";
      }
      if (!decision.rule->group.empty()) {
        return "allowed: client " + addressText(subject) + " is in client range " + rule +
               " of group " + decision.rule->group;
      }
      return "allowed: client " + addressText(subject) + " is in client range " + rule;
    case Reason::kClientNotAllowed:
      return "denied: client " + addressText(subject) + " is in no client range (" +
             (groups_.empty() ? "--client-cidr" : "--client-cidr or a [[group]]") + ")";
    case Reason::kEch:
      return "denied: the ClientHello offers ECH (0xfe0d), whose inner server name no proxy can "
             "see, and the policy denies ECH (policy.ech = \"deny\")";
    case Reason::kAddressNotBound: {
      const std::string bound = decision.rule != nullptr ? decision.rule->bound_to : std::string();
      return "denied: " + addressText(subject) + " is outside the ranges bound to " + rule + " (" +
             bound + ")" + (subject.host.empty() ? "" : " for " + printable(subject.host));
    }
  }
  return "denied";
}

std::string Policy::Builder::addHostPattern(std::string_view pattern, std::string origin,
                                            std::string preset) {
  const uint32_t id = static_cast<uint32_t>(rules_.size());
  std::string error = hosts_.add(pattern, id);
  if (error.empty()) {
    HostName name;
    HostName::normalize(pattern, name, /*allow_wildcard=*/true);
    rules_.push_back(
        {Rule::Kind::kHostPattern, std::string(name.view()), std::move(origin), std::move(preset)});
  }
  return error;
}

void Policy::Builder::addAllowCidr(const Cidr& cidr, std::string origin) {
  allow_cidrs_.push_back({cidr, static_cast<uint32_t>(rules_.size())});
  rules_.push_back({Rule::Kind::kAllowCidr, cidr.toString(), std::move(origin)});
}

void Policy::Builder::addDenyCidr(const Cidr& cidr, std::string origin) {
  deny_cidrs_.push_back({cidr, static_cast<uint32_t>(rules_.size())});
  rules_.push_back({Rule::Kind::kDenyCidr, cidr.toString(), std::move(origin)});
}

void Policy::Builder::addClientCidr(const Cidr& cidr, std::string origin, uint32_t group) {
  client_cidrs_.push_back({cidr, static_cast<uint32_t>(rules_.size())});
  client_groups_.push_back(group);
  rules_.push_back({Rule::Kind::kClientCidr,
                    cidr.toString(),
                    std::move(origin),
                    {},
                    {},
                    group == kNoGroup ? std::string() : groups_.at(group).name});
}

uint32_t Policy::Builder::addGroup(std::string name, std::shared_ptr<const Policy> policy) {
  groups_.push_back({std::move(name), std::move(policy)});
  return static_cast<uint32_t>(groups_.size() - 1);
}

void Policy::Builder::addServiceTag(std::string_view name, std::span<const Cidr> prefixes,
                                    std::string origin) {
  const uint32_t id = static_cast<uint32_t>(rules_.size());
  rules_.push_back({Rule::Kind::kServiceTag, std::string(name), std::move(origin)});
  auto& target = name.find('.') != std::string_view::npos ? regional_tags_ : global_tags_;
  for (const Cidr& cidr : prefixes) {
    target.push_back({cidr, id});
  }
}

std::string Policy::Builder::addBinding(std::string_view pattern, std::span<const Cidr> ranges,
                                        std::string_view bound_to, std::string origin) {
  HostName name;
  if (HostName::normalize(pattern, name, /*allow_wildcard=*/true) == HostName::Status::kOk) {
    for (PendingBinding& binding : bindings_) {
      if (binding.pattern == name.view()) {
        for (const Cidr& cidr : ranges) {
          binding.ranges.push_back({cidr, binding.rule});
        }
        Rule& rule = rules_[binding.rule];
        rule.bound_to += ", " + std::string(bound_to);
        rule.origin += ", " + origin;
        return {};
      }
    }
  }
  const auto index = static_cast<uint32_t>(bindings_.size());
  std::string error = bind_hosts_.add(pattern, index);
  if (!error.empty()) {
    return error;
  }
  const auto rule = static_cast<uint32_t>(rules_.size());
  rules_.push_back({Rule::Kind::kHostBinding,
                    std::string(name.view()),
                    std::move(origin),
                    {},
                    std::string(bound_to)});
  PendingBinding binding{std::string(name.view()), rule, {}};
  for (const Cidr& cidr : ranges) {
    binding.ranges.push_back({cidr, rule});
  }
  bindings_.push_back(std::move(binding));
  return {};
}

std::shared_ptr<const Policy> Policy::Builder::build() {
  std::shared_ptr<Policy> policy(new Policy());
  // Equal prefixes: the entry listed first wins, so explicit ranges, then regional tags.
  std::vector<CidrSet::Entry> allowed = allow_cidrs_;
  allowed.insert(allowed.end(), regional_tags_.begin(), regional_tags_.end());
  allowed.insert(allowed.end(), global_tags_.begin(), global_tags_.end());
  policy->allowed_ = CidrSet(allowed);
  policy->allowed_prefix_count_ = allowed.size();
  policy->denied_ = CidrSet(deny_cidrs_);
  policy->rules_ = std::move(rules_);
  policy->hosts_ = std::move(hosts_);
  policy->ports_ = ports_;
  policy->strict_ip_ = strict_ip_;
  policy->clients_ = CidrSet(client_cidrs_);
  policy->has_client_rules_ = !client_cidrs_.empty();
  policy->rule_group_.assign(policy->rules_.size(), kNoGroup);
  for (size_t i = 0; i < client_cidrs_.size(); ++i) {
    policy->rule_group_[client_cidrs_[i].value] = client_groups_[i];
  }
  policy->groups_ = std::move(groups_);
  policy->report_only_ = report_only_;
  policy->revoke_on_reload_ = revoke_on_reload_;
  policy->deny_ech_ = deny_ech_;
  policy->bind_hosts_ = std::move(bind_hosts_);
  for (const PendingBinding& binding : bindings_) {
    policy->bindings_.push_back({CidrSet(binding.ranges), binding.rule});
  }
  return policy;
}

}  // namespace acr
