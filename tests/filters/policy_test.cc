#include "filters/policy.h"

#include <gtest/gtest.h>

#include <string>

#include "conf/policy_factory.h"
#include "filters/client_hello_parser.h"
#include "test_data.h"

namespace acr {
namespace {

ConfigValue value(std::string text) { return {std::move(text), "test"}; }

std::shared_ptr<const Policy> defaultPolicy() { return buildPolicy(PolicyConfig{}).policy; }

struct NameCase {
  const char* label;
  std::string host;
  uint16_t port;
  Reason reason;
};

// The embedded default allows the registry, data and blob endpoints and nothing else.
TEST(PolicyTest, DefaultPolicyNames) {
  const auto policy = defaultPolicy();
  const NameCase cases[] = {
      {"login_server", "myregistry.azurecr.io", 443, Reason::kHostAllowed},
      {"data_endpoint", "myregistry.eastus.data.azurecr.io", 443, Reason::kHostAllowed},
      {"blob", "myaccount.blob.core.windows.net", 443, Reason::kHostAllowed},
      {"trailing_dot", "myregistry.azurecr.io.", 443, Reason::kHostAllowed},
      {"mixed_case", "MyRegistry.AzureCR.IO", 443, Reason::kHostAllowed},
      {"two_trailing_dots", "myregistry.azurecr.io..", 443, Reason::kInvalidHost},
      {"suffix_attack", "azurecr.io.evil.com", 443, Reason::kHostNotAllowed},
      {"no_label_boundary", "evilazurecr.io", 443, Reason::kHostNotAllowed},
      {"appended_label", "myreg.azurecr.io.evil", 443, Reason::kHostNotAllowed},
      {"bare_blob", "blob.core.windows.net", 443, Reason::kHostNotAllowed},
      {"bare_registry_domain", "azurecr.io", 443, Reason::kHostNotAllowed},
      {"two_labels_under_one_wildcard", "a.b.blob.core.windows.net", 443, Reason::kHostNotAllowed},
      {"data_depth_too_deep", "a.b.c.data.azurecr.io", 443, Reason::kHostNotAllowed},
      {"nul", std::string("myreg\0.azurecr.io", 17), 443, Reason::kInvalidHost},
      {"label_64", std::string(64, 'a') + ".azurecr.io", 443, Reason::kInvalidHost},
      {"name_254",
       std::string(63, 'a') + "." + std::string(63, 'a') + "." + std::string(63, 'a') + "." +
           std::string(51, 'a') + ".azurecr.io",
       443, Reason::kInvalidHost},
      {"utf8", "m\xc3\xbcller.azurecr.io", 443, Reason::kInvalidHost},
      {"with_port", "myreg.azurecr.io:443", 443, Reason::kInvalidHost},
      {"inet_aton", "127.1", 443, Reason::kInvalidHost},
      {"decimal_ip", "2130706433", 443, Reason::kInvalidHost},
      {"hex_ip", "0x7f.0.0.1", 443, Reason::kInvalidHost},
      {"ssh_port", "myregistry.azurecr.io", 22, Reason::kPortNotAllowed},
      {"http_port", "myregistry.azurecr.io", 80, Reason::kPortNotAllowed},
      {"proxy_port", "myregistry.azurecr.io", 3128, Reason::kPortNotAllowed},
      {"denied_name_any_port", "example.com", 443, Reason::kHostNotAllowed},
  };
  for (const NameCase& c : cases) {
    const Decision decision = policy->decide(c.host, c.port);
    EXPECT_EQ(decision.reason, c.reason) << c.label << ": " << reasonName(decision.reason);
    EXPECT_EQ(decision.allowed(), c.reason == Reason::kHostAllowed) << c.label;
  }
}

// --registry allows the login server and the data endpoints of the given regions only.
TEST(PolicyTest, RegistryAndRegions) {
  PolicyConfig config;
  config.registries = {value("myreg")};
  config.regions = {value("eastus"), value("westeurope")};
  const auto policy = buildPolicy(config).policy;
  EXPECT_TRUE(policy->decide("myreg.azurecr.io", 443).allowed());
  EXPECT_TRUE(policy->decide("myreg.eastus.data.azurecr.io", 443).allowed());
  EXPECT_TRUE(policy->decide("myreg.westeurope.data.azurecr.io", 443).allowed());
  EXPECT_FALSE(policy->decide("myreg.westus.data.azurecr.io", 443).allowed());
  EXPECT_FALSE(policy->decide("other.azurecr.io", 443).allowed());
  EXPECT_FALSE(policy->decide("acct.blob.core.windows.net", 443).allowed());

  PolicyConfig any_region;
  any_region.registries = {value("myreg")};
  const auto any = buildPolicy(any_region).policy;
  EXPECT_TRUE(any->decide("myreg.westus.data.azurecr.io", 443).allowed());
  EXPECT_FALSE(any->decide("myreg.a.b.data.azurecr.io", 443).allowed());
}

struct AddressCase {
  const char* label;
  const char* address;
  Reason reason;
};

// Resolved or original-destination addresses: special ranges are denied, IPv4 hidden in IPv6 is
// judged by the IPv4 address, public addresses pass.
TEST(PolicyTest, AddressesToDial) {
  const auto policy = defaultPolicy();
  const AddressCase cases[] = {
      {"public_v4", "20.60.1.1", Reason::kAddressPublic},
      {"public_v6", "2603:1030::1", Reason::kAddressPublic},
      {"metadata", "169.254.169.254", Reason::kAddressSpecial},
      {"wireserver", "168.63.129.16", Reason::kAddressSpecial},
      {"wireserver_neighbour_public", "168.63.129.17", Reason::kAddressPublic},
      {"loopback", "127.0.0.1", Reason::kAddressSpecial},
      {"unspecified", "0.0.0.0", Reason::kAddressSpecial},
      {"rfc1918_10", "10.0.0.5", Reason::kAddressSpecial},
      {"rfc1918_172", "172.16.0.1", Reason::kAddressSpecial},
      {"rfc1918_192", "192.168.1.1", Reason::kAddressSpecial},
      {"cgnat", "100.64.0.1", Reason::kAddressSpecial},
      {"multicast", "224.0.0.1", Reason::kAddressSpecial},
      {"broadcast", "255.255.255.255", Reason::kAddressSpecial},
      {"reserved", "240.0.0.1", Reason::kAddressSpecial},
      {"documentation", "192.0.2.10", Reason::kAddressSpecial},
      {"v6_loopback", "::1", Reason::kAddressSpecial},
      {"v6_unspecified", "::", Reason::kAddressSpecial},
      {"v6_ula", "fc00::1", Reason::kAddressSpecial},
      {"v6_link_local", "fe80::1", Reason::kAddressSpecial},
      {"v6_multicast", "ff02::1", Reason::kAddressSpecial},
      {"mapped_metadata", "::ffff:169.254.169.254", Reason::kAddressSpecial},
      {"nat64_metadata", "64:ff9b::a9fe:a9fe", Reason::kAddressSpecial},
      {"nat64_private", "64:ff9b::a00:5", Reason::kAddressSpecial},
      {"sixto4_metadata", "2002:a9fe:a9fe::", Reason::kAddressSpecial},
      {"compat_metadata", "::a9fe:a9fe", Reason::kAddressSpecial},
      {"mapped_loopback", "::ffff:127.0.0.1", Reason::kAddressSpecial},
      {"nat64_public", "64:ff9b::143c:101", Reason::kAddressPublic},
      {"mapped_public", "::ffff:20.60.1.1", Reason::kAddressPublic},
  };
  for (const AddressCase& c : cases) {
    const Decision decision = policy->decideAddress(*IpAddress::parse(c.address));
    EXPECT_EQ(decision.reason, c.reason) << c.label << ": " << reasonName(decision.reason);
  }
}

// --allow-cidr opens a special range (Private Link), --deny-cidr always wins, --strict-ip closes
// everything outside the allowed set.
TEST(PolicyTest, AllowDenyAndStrict) {
  PolicyConfig config;
  config.allow_cidrs = {value("10.1.0.0/16"), value("20.0.0.0/8")};
  config.deny_cidrs = {value("20.60.0.0/16"), value("10.1.2.0/24")};
  const auto policy = buildPolicy(config).policy;
  EXPECT_EQ(policy->decideAddress(*IpAddress::parse("10.1.1.1")).reason, Reason::kAddressAllowed);
  EXPECT_EQ(policy->decideAddress(*IpAddress::parse("10.1.2.1")).reason, Reason::kAddressDenied);
  EXPECT_EQ(policy->decideAddress(*IpAddress::parse("10.2.0.1")).reason, Reason::kAddressSpecial);
  EXPECT_EQ(policy->decideAddress(*IpAddress::parse("20.60.1.1")).reason, Reason::kAddressDenied);
  EXPECT_EQ(policy->decideAddress(*IpAddress::parse("::ffff:20.60.1.1")).reason,
            Reason::kAddressDenied);
  EXPECT_EQ(policy->decideAddress(*IpAddress::parse("20.1.1.1")).reason, Reason::kAddressAllowed);
  EXPECT_EQ(policy->decideAddress(*IpAddress::parse("8.8.8.8")).reason, Reason::kAddressPublic);

  config.strict_ip = true;
  const auto strict = buildPolicy(config).policy;
  EXPECT_EQ(strict->decideAddress(*IpAddress::parse("8.8.8.8")).reason, Reason::kAddressNotAllowed);
  EXPECT_EQ(strict->decideAddress(*IpAddress::parse("20.1.1.1")).reason, Reason::kAddressAllowed);
}

// IP-literal targets pass only inside the allowed set, on an allowed port.
// Transparent original destinations (THREATS B1): an allowed SNI sent to an address outside the
// allowed set must be among the SNI's own DNS answers; ranges, tags and denials decide first.
TEST(PolicyTest, OriginalDestinationMustBeAnAnswerOfTheSni) {
  PolicyConfig config;
  config.allow_cidrs = {value("20.0.0.0/8")};
  config.deny_cidrs = {value("20.60.0.0/16")};
  const auto policy = buildPolicy(config).policy;
  const auto ip = [](const char* text) { return *IpAddress::parse(text); };
  const std::vector<IpAddress> answers = {ip("52.1.1.1"), ip("2603:1000::1")};
  struct Case {
    const char* label;
    const char* destination;
    Reason reason;
  };
  const Case cases[] = {
      {"public answer", "52.1.1.1", Reason::kAddressPublic},
      {"public v6 answer", "2603:1000::1", Reason::kAddressPublic},
      {"mapped form of an answer", "::ffff:52.1.1.1", Reason::kAddressPublic},
      {"attacker's public address", "52.1.1.2", Reason::kSniAddressMismatch},
      {"attacker's v6 address", "2603:1000::2", Reason::kSniAddressMismatch},
      {"allowed range, not an answer", "20.1.1.1", Reason::kAddressAllowed},
      {"denied range wins", "20.60.1.1", Reason::kAddressDenied},
      {"special even if answered", "10.0.0.1", Reason::kAddressSpecial},
  };
  for (const Case& c : cases) {
    const Decision decision = policy->decideOriginalDestination(ip(c.destination), answers);
    EXPECT_EQ(decision.reason, c.reason) << c.label << ": " << reasonName(decision.reason);
  }
  EXPECT_EQ(policy->decideOriginalDestination(ip("10.0.0.1"), std::vector{ip("10.0.0.1")}).reason,
            Reason::kAddressSpecial);
  EXPECT_EQ(policy->decideOriginalDestination(ip("52.1.1.1"), {}).reason,
            Reason::kSniAddressMismatch);
  const Decision mismatch = policy->decideOriginalDestination(ip("52.1.1.2"), answers);
  EXPECT_EQ(policy->describe(mismatch, {"myreg.azurecr.io", ip("52.1.1.2"), 443}),
            "denied: 52.1.1.2 is not among the addresses of myreg.azurecr.io and in no allowed "
            "range");
  EXPECT_EQ(reasonName(Reason::kSniAddressMismatch), "sni_address_mismatch");
}

TEST(PolicyTest, IpLiteralTargets) {
  PolicyConfig config;
  config.allow_cidrs = {value("20.60.0.0/16")};
  const auto policy = buildPolicy(config).policy;
  EXPECT_EQ(policy->decide("20.60.1.1", 443).reason, Reason::kAddressAllowed);
  EXPECT_EQ(policy->decide("20.60.1.1", 22).reason, Reason::kPortNotAllowed);
  EXPECT_EQ(policy->decide("8.8.8.8", 443).reason, Reason::kAddressNotAllowed);
  EXPECT_EQ(policy->decide("::ffff:8.8.8.8", 443).reason, Reason::kAddressNotAllowed);
  EXPECT_EQ(policy->decide("::ffff:20.60.1.1", 443).reason, Reason::kAddressAllowed);
  EXPECT_EQ(policy->decide("127.0.0.1", 443).reason, Reason::kAddressNotAllowed);
}

// Every decision renders as one sentence naming the rule or tag that decided.
TEST(PolicyTest, SentencesNameTheRule) {
  PolicyConfig config;
  config.allow_hosts = {value("*.blob.core.windows.net")};
  config.allow_cidrs = {value("192.0.2.0/24")};
  config.deny_cidrs = {value("198.51.100.0/24")};
  config.service_tags_file = value(test::serviceTagsPath());
  config.service_tags = {value("Storage"), value("Storage.WestUS")};
  const auto snapshot = buildPolicy(config);
  const Policy& policy = *snapshot.policy;
  auto sentence = [&](const Decision& d, std::string_view host, const char* address,
                      uint16_t port) {
    DecisionSubject subject{host, address ? IpAddress::parse(address) : std::nullopt, port};
    return policy.describe(d, subject);
  };
  EXPECT_EQ(sentence(policy.decide("acct.blob.core.windows.net", 443), "acct.blob.core.windows.net",
                     nullptr, 443),
            "allowed: host matches *.blob.core.windows.net");
  const auto storage = *IpAddress::parse("20.60.1.1");
  EXPECT_EQ(sentence(policy.decideAddress(storage), "", "20.60.1.1", 443),
            "allowed: 20.60.1.1 is in service tag Storage.WestUS");
  EXPECT_EQ(sentence(policy.decideAddress(*IpAddress::parse("20.60.2.1")), "", "20.60.2.1", 443),
            "allowed: 20.60.2.1 is in service tag Storage");
  EXPECT_EQ(sentence(policy.decideAddress(*IpAddress::parse("10.0.0.5")), "", "10.0.0.5", 443),
            "denied: 10.0.0.5 is private (RFC 1918) and in no allowed range");
  EXPECT_EQ(sentence(policy.decideAddress(*IpAddress::parse("192.0.2.7")), "", "192.0.2.7", 443),
            "allowed: 192.0.2.7 is in allowed range 192.0.2.0/24");
  EXPECT_EQ(
      sentence(policy.decideAddress(*IpAddress::parse("198.51.100.1")), "", "198.51.100.1", 443),
      "denied: 198.51.100.1 is in denied range 198.51.100.0/24");
  EXPECT_EQ(sentence(policy.decide("evil.example", 443), "evil.example", nullptr, 443),
            "denied: host evil.example matches no allowed host pattern");
  EXPECT_EQ(sentence(policy.decide("acct.blob.core.windows.net", 22), "acct.blob.core.windows.net",
                     nullptr, 22),
            "denied: port 22 is not allowed (allowed: 443)");
  const std::string nul("a\0b.blob.core.windows.net", 25);
  EXPECT_EQ(sentence(policy.decide(nul, 443), nul, nullptr, 443),
            "denied: 'a\\x00b.blob.core.windows.net' is not a valid host name (byte other than a "
            "letter, digit, '-' or '_')");
  EXPECT_EQ(sentence(policy.decideAddress(*IpAddress::parse("64:ff9b::a00:5")), "",
                     "64:ff9b::a00:5", 443),
            "denied: 64:ff9b::a00:5 (embedding 10.0.0.5) is private (RFC 1918) and in no allowed "
            "range");
  const Decision decision = policy.decideAddress(*IpAddress::parse("168.63.129.16"));
  EXPECT_EQ(decision.reason, Reason::kAddressSpecial);
  ASSERT_NE(decision.rule, nullptr);
  EXPECT_NE(decision.rule->text.find("168.63.129.16"), std::string::npos);
}

// Issue 10 defect 4: --deny-cidr and --allow-cidr ranges written over an IPv4-embedding IPv6 form
// (NAT64 64:ff9b::/96, IPv4-mapped ::ffff:0:0/96, 6to4 2002::/16) match addresses written in that
// form, and an IPv4 range still matches every spelling of its addresses: each spelling is looked
// up in both sets, and a denial of any spelling wins.
TEST(PolicyTest, RangesMatchEverySpellingAndDenyWins) {
  const auto ip = [](const char* text) { return *IpAddress::parse(text); };
  struct Case {
    const char* label;
    std::vector<const char*> allow;
    std::vector<const char*> deny;
    const char* address;
    Reason literal;  // decideLiteral (CONNECT or `check` of an IP literal)
    Reason dial;     // decideAddress (a resolved address or an original destination)
  };
  const Case cases[] = {
      {"nat64 range denies nat64 spelling",
       {"0.0.0.0/0"},
       {"64:ff9b::/96"},
       "64:ff9b::1414:101",
       Reason::kAddressDenied,
       Reason::kAddressDenied},
      {"mapped range denies mapped spelling",
       {"0.0.0.0/0"},
       {"::ffff:0:0/96"},
       "::ffff:20.20.1.1",
       Reason::kAddressDenied,
       Reason::kAddressDenied},
      {"6to4 range denies 6to4 spelling",
       {"0.0.0.0/0"},
       {"2002::/16"},
       "2002:1414:101::1",
       Reason::kAddressDenied,
       Reason::kAddressDenied},
      {"mapped range denies the plain IPv4 address",
       {"0.0.0.0/0"},
       {"::ffff:20.20.0.0/112"},
       "20.20.1.1",
       Reason::kAddressDenied,
       Reason::kAddressDenied},
      {"v4 range denies nat64 spelling",
       {"::/0"},
       {"20.20.0.0/16"},
       "64:ff9b::1414:101",
       Reason::kAddressDenied,
       Reason::kAddressDenied},
      {"v4 deny beats nat64 allow",
       {"64:ff9b::/96"},
       {"20.20.0.0/16"},
       "64:ff9b::1414:101",
       Reason::kAddressDenied,
       Reason::kAddressDenied},
      {"nat64 deny beats v4 allow",
       {"20.20.0.0/16"},
       {"64:ff9b::/96"},
       "64:ff9b::1414:101",
       Reason::kAddressDenied,
       Reason::kAddressDenied},
      {"nat64 allow range admits its spelling",
       {"64:ff9b::/96"},
       {},
       "64:ff9b::1414:101",
       Reason::kAddressAllowed,
       Reason::kAddressAllowed},
      {"v4 allow range admits nat64 spelling",
       {"20.20.0.0/16"},
       {},
       "64:ff9b::1414:101",
       Reason::kAddressAllowed,
       Reason::kAddressAllowed},
      {"nat64 deny leaves plain IPv4 alone",
       {"0.0.0.0/0"},
       {"64:ff9b::/96"},
       "20.20.1.1",
       Reason::kAddressAllowed,
       Reason::kAddressAllowed},
  };
  for (const Case& c : cases) {
    PolicyConfig config;
    for (const char* cidr : c.allow) {
      config.allow_cidrs.push_back(value(cidr));
    }
    for (const char* cidr : c.deny) {
      config.deny_cidrs.push_back(value(cidr));
    }
    const auto policy = buildPolicy(config).policy;
    const Decision literal = policy->decideLiteral(ip(c.address), 443);
    EXPECT_EQ(literal.reason, c.literal) << c.label << ": " << reasonName(literal.reason);
    const Decision dial = policy->decideAddress(ip(c.address));
    EXPECT_EQ(dial.reason, c.dial) << c.label << ": " << reasonName(dial.reason);
    const Decision original =
        policy->decideOriginalDestination(ip(c.address), std::vector{ip(c.address)});
    EXPECT_EQ(original.reason, c.dial) << c.label << ": " << reasonName(original.reason);
  }
  PolicyConfig config;
  config.allow_cidrs = {value("0.0.0.0/0")};
  config.deny_cidrs = {value("64:ff9b::/96")};
  const auto policy = buildPolicy(config).policy;
  const Decision denied = policy->decide("64:ff9b::1414:101", 443);
  EXPECT_EQ(policy->describe(denied, {"64:ff9b::1414:101", ip("64:ff9b::1414:101"), 443}),
            "denied: 64:ff9b::1414:101 (embedding 20.20.1.1) is in denied range 64:ff9b::/96");
}

// Issue 10 defect 8: the RFC 8215 local-use NAT64 prefix 64:ff9b:1::/48 carries its IPv4 address
// like 64:ff9b::/96 (in the last 32 bits), so the metadata address behind a local NAT64 is
// special; a layout the policy cannot read is special as a whole. 3fff::/20 (RFC 9637) is
// documentation.
TEST(PolicyTest, LocalUseNat64AndNewDocumentationRangeAreSpecial) {
  const auto policy = defaultPolicy();
  const AddressCase cases[] = {
      {"local nat64 metadata", "64:ff9b:1::a9fe:a9fe", Reason::kAddressSpecial},
      {"local nat64 metadata in a /64", "64:ff9b:1:ab::a9fe:a9fe", Reason::kAddressSpecial},
      {"local nat64 private", "64:ff9b:1:ffff::a00:5", Reason::kAddressSpecial},
      {"local nat64 loopback", "64:ff9b:1::7f00:1", Reason::kAddressSpecial},
      {"local nat64 public", "64:ff9b:1::1414:101", Reason::kAddressPublic},
      {"local nat64 other layout", "64:ff9b:1:a9fe:a9:fe00::", Reason::kAddressSpecial},
      {"documentation 3fff::/20", "3fff::1", Reason::kAddressSpecial},
      {"documentation 3fff::/20 top", "3fff:fff:ffff::1", Reason::kAddressSpecial},
      {"just past 3fff::/20", "3fff:1000::1", Reason::kAddressPublic},
  };
  for (const AddressCase& c : cases) {
    const Decision decision = policy->decideAddress(*IpAddress::parse(c.address));
    EXPECT_EQ(decision.reason, c.reason) << c.label << ": " << reasonName(decision.reason);
  }
  const IpAddress metadata = *IpAddress::parse("64:ff9b:1::a9fe:a9fe");
  EXPECT_EQ(policy->describe(policy->decideAddress(metadata), {"", metadata, 443}),
            "denied: 64:ff9b:1::a9fe:a9fe (embedding 169.254.169.254) is the instance metadata "
            "service (link-local) and in no allowed range");
}

// Issue 10 defect 3: with --allow-no-sni, a hello without SNI is held to the port rule first
// (as one with an SNI is), then only an address inside the allowed set passes.
TEST(PolicyTest, WithoutSniThePortRuleComesFirst) {
  PolicyConfig config;
  config.allow_cidrs = {value("192.0.2.0/24")};
  config.deny_cidrs = {value("192.0.2.128/25")};
  const auto policy = buildPolicy(config).policy;
  const auto ip = [](const char* text) { return *IpAddress::parse(text); };
  struct Case {
    const char* label;
    const char* destination;
    uint16_t port;
    Reason reason;
    const char* sentence;
  };
  const Case cases[] = {
      {"allowed range, allowed port", "192.0.2.10", 443, Reason::kAddressAllowed,
       "allowed: 192.0.2.10 is in allowed range 192.0.2.0/24"},
      {"allowed range, other port", "192.0.2.10", 8443, Reason::kPortNotAllowed,
       "denied: port 8443 is not allowed (allowed: 443)"},
      {"allowed range, ssh", "192.0.2.10", 22, Reason::kPortNotAllowed,
       "denied: port 22 is not allowed (allowed: 443)"},
      {"public address", "20.60.1.1", 443, Reason::kNoSni,
       "denied: no SNI, and 20.60.1.1 is in no allowed range"},
      {"special address", "10.0.0.5", 443, Reason::kNoSni,
       "denied: no SNI, and 10.0.0.5 is private (RFC 1918) and in no allowed range"},
      {"denied range", "192.0.2.200", 443, Reason::kNoSni,
       "denied: no SNI, and 192.0.2.200 is in denied range 192.0.2.128/25"},
      {"denied range, other port", "192.0.2.200", 8443, Reason::kPortNotAllowed,
       "denied: port 8443 is not allowed (allowed: 443)"},
  };
  for (const Case& c : cases) {
    const Decision decision = policy->decideWithoutSni(ip(c.destination), c.port);
    EXPECT_EQ(decision.reason, c.reason) << c.label << ": " << reasonName(decision.reason);
    EXPECT_EQ(decision.allowed(), c.reason == Reason::kAddressAllowed) << c.label;
    EXPECT_EQ(policy->describe(decision, {"", ip(c.destination), c.port}), c.sentence) << c.label;
  }
}

// Issue 10 defect 9: a hello offering ESNI is denied "esni" whatever its SNI; one offering ECH is
// judged by its outer SNI like any other; a hello without SNI is "no_sni".
TEST(PolicyTest, EsniIsDeniedAndEchIsJudgedByTheOuterSni) {
  const auto policy = defaultPolicy();
  ClientHello hello;
  hello.has_sni = true;
  hello.sni = "myreg.azurecr.io";
  EXPECT_EQ(policy->decideSni(hello, 443).reason, Reason::kHostAllowed);
  hello.ech_offered = true;
  EXPECT_EQ(policy->decideSni(hello, 443).reason, Reason::kHostAllowed);
  hello.sni = "cloudflare-ech.com";
  EXPECT_EQ(policy->decideSni(hello, 443).reason, Reason::kHostNotAllowed);
  hello.sni = "myreg.azurecr.io";
  EXPECT_EQ(policy->decideSni(hello, 22).reason, Reason::kPortNotAllowed);
  hello.ech_offered = false;
  hello.esni_offered = true;
  const Decision esni = policy->decideSni(hello, 443);
  EXPECT_EQ(esni.reason, Reason::kEsni);
  EXPECT_FALSE(esni.allowed());
  EXPECT_EQ(policy->describe(esni, {hello.sni, std::nullopt, 443}),
            "denied: the ClientHello offers the obsolete ESNI extension (0xffce), which hides the "
            "server name");
  hello.has_sni = false;
  hello.sni = {};
  EXPECT_EQ(policy->decideSni(hello, 443).reason, Reason::kEsni);
  {
    // B14: with ECH denied, an ECH hello is refused whatever its outer SNI; ESNI stays esni;
    // a hello without ECH is judged as before.
    PolicyConfig config;
    config.deny_ech = true;
    const auto strict = buildPolicy(config).policy;
    ClientHello ech;
    ech.has_sni = true;
    ech.sni = "myreg.azurecr.io";
    EXPECT_EQ(strict->decideSni(ech, 443).reason, Reason::kHostAllowed);
    ech.ech_offered = true;
    const Decision denied = strict->decideSni(ech, 443);
    EXPECT_FALSE(denied.allowed());
    EXPECT_EQ(denied.reason, Reason::kEch);
    EXPECT_EQ(reasonName(Reason::kEch), "ech");
    EXPECT_EQ(strict->describe(denied, {ech.sni, std::nullopt, 443})
                  .rfind("denied: the ClientHello "
                         "offers ECH",
                         0),
              0u);
    ech.esni_offered = true;
    EXPECT_EQ(strict->decideSni(ech, 443).reason, Reason::kEsni);
  }
  hello.esni_offered = false;
  const Decision no_sni = policy->decideSni(hello, 443);
  EXPECT_EQ(no_sni.reason, Reason::kNoSni);
  EXPECT_EQ(policy->describe(no_sni, {"", std::nullopt, 443}),
            "denied: the ClientHello carries no SNI");
}

// Reason names are the stable identifiers logs and metrics use.
TEST(PolicyTest, ReasonNamesAreStable) {
  EXPECT_EQ(reasonName(Reason::kHostNotAllowed), "host_not_allowed");
  EXPECT_EQ(reasonName(Reason::kInvalidHost), "invalid_host");
  EXPECT_EQ(reasonName(Reason::kPortNotAllowed), "port_not_allowed");
  EXPECT_EQ(reasonName(Reason::kAddressSpecial), "address_special");
  EXPECT_EQ(reasonName(Reason::kAddressNotAllowed), "address_not_allowed");
  EXPECT_EQ(reasonName(Reason::kAddressDenied), "address_denied");
  EXPECT_EQ(reasonName(Reason::kHostAllowed), "host_allowed");
  EXPECT_EQ(reasonName(Reason::kNoSni), "no_sni");
  EXPECT_EQ(reasonName(Reason::kEsni), "esni");
}

// Client rules: without any, every client is allowed (the listener's address decides at startup);
// with some, the most specific range that holds the client allows it and anything else is
// client_not_allowed. IPv4-mapped clients are judged as IPv4, 6to4 ones are not unwrapped.
TEST(PolicyTest, ClientRules) {
  const auto open = defaultPolicy();
  EXPECT_FALSE(open->hasClientRules());
  const Decision anyone = open->decideClient(*IpAddress::parse("203.0.113.7"));
  EXPECT_TRUE(anyone.allowed());
  EXPECT_EQ(anyone.rule, nullptr);

  PolicyConfig config;
  config.client_cidrs = {value("10.20.0.0/16"), value("10.20.30.0/24"), value("2001:db8::/48")};
  const auto policy = buildPolicy(config).policy;
  EXPECT_TRUE(policy->hasClientRules());
  struct Case {
    const char* label;
    const char* client;
    Reason reason;
    const char* rule;
  };
  const Case cases[] = {
      {"in_range", "10.20.1.2", Reason::kClientAllowed, "10.20.0.0/16"},
      {"most_specific", "10.20.30.4", Reason::kClientAllowed, "10.20.30.0/24"},
      {"outside", "10.21.0.1", Reason::kClientNotAllowed, nullptr},
      {"v6_in_range", "2001:db8:0:1::5", Reason::kClientAllowed, "2001:db8::/48"},
      {"v6_outside", "2001:db8:1::5", Reason::kClientNotAllowed, nullptr},
      {"v4_mapped", "::ffff:10.20.1.2", Reason::kClientAllowed, "10.20.0.0/16"},
      {"6to4_not_unwrapped", "2002:a14:102::1", Reason::kClientNotAllowed, nullptr},
      {"nat64_not_unwrapped", "64:ff9b::a14:102", Reason::kClientNotAllowed, nullptr},
  };
  for (const Case& c : cases) {
    const Decision decision = policy->decideClient(*IpAddress::parse(c.client));
    EXPECT_EQ(decision.reason, c.reason) << c.label;
    EXPECT_EQ(decision.allowed(), c.reason == Reason::kClientAllowed) << c.label;
    EXPECT_EQ(decision.rule == nullptr ? std::string() : decision.rule->text,
              c.rule == nullptr ? "" : c.rule)
        << c.label;
  }
  const IpAddress outsider = *IpAddress::parse("192.0.2.9");
  EXPECT_EQ(policy->describe(policy->decideClient(outsider), {"", outsider, 0}),
            "denied: client 192.0.2.9 is in no client range (--client-cidr)");
  EXPECT_EQ(reasonName(Reason::kClientNotAllowed), "client_not_allowed");
  // Client ranges allow no destination.
  EXPECT_FALSE(policy->decide("10.20.1.2", 443).allowed());
}

// Client groups: the most specific client range decides, across groups and --client-cidr alike
// (a group's /24 inside another group's /16; a --client-cidr /24 inside a group's /16), and the
// client gets that range's policy; a client in no range is refused with the top-level policy.
TEST(PolicyTest, ClientGroupsTakeTheMostSpecificRange) {
  auto only = [](const char* pattern) {
    Policy::Builder builder;
    EXPECT_EQ(builder.addHostPattern(pattern, "test"), "");
    builder.addPort(443);
    return builder.build();
  };
  const auto build = only("buildreg.azurecr.io");
  const auto device = only("devicereg.westeurope.data.azurecr.io");
  const auto lab = only("labreg.azurecr.io");
  Policy::Builder top;
  ASSERT_EQ(top.addHostPattern("basereg.azurecr.io", "test"), "");
  top.addPort(443);
  const uint32_t build_index = top.addGroup("build", build);
  const uint32_t device_index = top.addGroup("device", device);
  const uint32_t lab_index = top.addGroup("lab", lab);
  auto cidr = [](const char* text) { return *Cidr::parse(text); };
  top.addClientCidr(cidr("10.20.0.0/16"), "test", build_index);
  top.addClientCidr(cidr("10.20.5.0/24"), "test");  // --client-cidr inside the build group
  top.addClientCidr(cidr("10.30.0.0/16"), "test", device_index);
  top.addClientCidr(cidr("10.30.7.0/24"), "test", lab_index);  // a group inside another
  top.addClientCidr(cidr("2001:db8:30::/48"), "test", device_index);
  const auto policy = top.build();
  ASSERT_EQ(policy->groups().size(), 3u);
  EXPECT_TRUE(policy->hasClientRules());
  struct Case {
    const char* label;
    const char* client;
    uint32_t group;
    const char* allowed_host;  // the one host the chosen policy lets through
  };
  const Case cases[] = {
      {"group_16", "10.20.1.2", build_index, "buildreg.azurecr.io"},
      {"client_cidr_24_inside_group", "10.20.5.9", Policy::kNoGroup, "basereg.azurecr.io"},
      {"other_group", "10.30.1.1", device_index, "devicereg.westeurope.data.azurecr.io"},
      {"group_24_inside_group_16", "10.30.7.7", lab_index, "labreg.azurecr.io"},
      {"v4_mapped", "::ffff:10.30.7.7", lab_index, "labreg.azurecr.io"},
      {"v6", "2001:db8:30::5", device_index, "devicereg.westeurope.data.azurecr.io"},
  };
  const char* hosts[] = {"buildreg.azurecr.io", "basereg.azurecr.io",
                         "devicereg.westeurope.data.azurecr.io", "labreg.azurecr.io"};
  for (const Case& c : cases) {
    const Policy::ClientChoice choice = policy->chooseClient(*IpAddress::parse(c.client));
    ASSERT_TRUE(choice.decision.allowed()) << c.label;
    EXPECT_EQ(choice.group, c.group) << c.label;
    EXPECT_EQ(choice.policy,
              c.group == Policy::kNoGroup ? policy.get() : policy->groups()[c.group].policy.get())
        << c.label;
    for (const char* host : hosts) {
      EXPECT_EQ(choice.policy->decide(host, 443).allowed(),
                std::string_view(host) == c.allowed_host)
          << c.label << " " << host;
    }
  }
  const IpAddress member = *IpAddress::parse("10.30.7.7");
  EXPECT_EQ(policy->describe(policy->decideClient(member), {"", member, 0}),
            "allowed: client 10.30.7.7 is in client range 10.30.7.0/24 of group lab");
  const IpAddress outsider = *IpAddress::parse("192.0.2.9");
  const Policy::ClientChoice refused = policy->chooseClient(outsider);
  EXPECT_EQ(refused.decision.reason, Reason::kClientNotAllowed);
  EXPECT_EQ(refused.group, Policy::kNoGroup);
  EXPECT_EQ(refused.policy, policy.get());
  EXPECT_EQ(policy->describe(refused.decision, {"", outsider, 0}),
            "denied: client 192.0.2.9 is in no client range (--client-cidr or a [[group]])");
}

// Report-only waives host, port and address-set denials (kAllow, would_deny, the reason kept) and
// nothing else: invalid names, --deny-cidr, special ranges and client rules stay enforced, and an
// IP literal outside the allowed set passes only if it is not special.
TEST(PolicyTest, ReportOnlyWaivesOnlyRuleDenials) {
  PolicyConfig config;
  config.registries = {value("myreg")};
  config.deny_cidrs = {value("198.51.100.0/24")};
  config.client_cidrs = {value("10.0.0.0/8")};
  config.strict_ip = true;
  config.report_only = true;
  const auto policy = buildPolicy(config).policy;
  EXPECT_TRUE(policy->reportOnly());
  struct Case {
    const char* label;
    Decision decision;
    Verdict verdict;
    Reason reason;
    bool would_deny;
  };
  const IpAddress metadata = *IpAddress::parse("169.254.169.254");
  const IpAddress denied = *IpAddress::parse("198.51.100.7");
  const IpAddress public_v4 = *IpAddress::parse("20.60.1.1");  // not special, not allowed
  const IpAddress answer = *IpAddress::parse("20.60.1.2");
  const Case cases[] = {
      {"host", policy->decide("evil.example.com", 443), Verdict::kAllow, Reason::kHostNotAllowed,
       true},
      {"port", policy->decide("myreg.azurecr.io", 22), Verdict::kAllow, Reason::kPortNotAllowed,
       true},
      {"allowed_host", policy->decide("myreg.azurecr.io", 443), Verdict::kAllow,
       Reason::kHostAllowed, false},
      {"literal_public", policy->decide("20.60.1.1", 443), Verdict::kAllow,
       Reason::kAddressNotAllowed, true},
      {"literal_metadata", policy->decide("169.254.169.254", 443), Verdict::kDeny,
       Reason::kAddressSpecial, false},
      {"literal_loopback", policy->decide("127.0.0.1", 443), Verdict::kDeny,
       Reason::kAddressSpecial, false},
      {"literal_mapped_metadata", policy->decide("::ffff:169.254.169.254", 443), Verdict::kDeny,
       Reason::kAddressSpecial, false},
      {"literal_denied", policy->decide("198.51.100.7", 443), Verdict::kDeny,
       Reason::kAddressDenied, false},
      {"invalid", policy->decide("a..b", 443), Verdict::kDeny, Reason::kInvalidHost, false},
      {"resolved_metadata", policy->decideAddress(metadata), Verdict::kDeny,
       Reason::kAddressSpecial, false},
      {"resolved_denied", policy->decideAddress(denied), Verdict::kDeny, Reason::kAddressDenied,
       false},
      {"resolved_strict", policy->decideAddress(public_v4), Verdict::kAllow,
       Reason::kAddressNotAllowed, true},
      {"mismatch", policy->decideOriginalDestination(public_v4, std::span(&answer, 1)),
       Verdict::kAllow, Reason::kAddressNotAllowed, true},
      {"client", policy->decideClient(public_v4), Verdict::kDeny, Reason::kClientNotAllowed, false},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(c.decision.verdict, c.verdict) << c.label;
    EXPECT_EQ(c.decision.reason, c.reason) << c.label;
    EXPECT_EQ(c.decision.would_deny, c.would_deny) << c.label;
  }
  EXPECT_EQ(policy->describe(cases[0].decision, {"evil.example.com", std::nullopt, 443}),
            "report-only, would be denied: host evil.example.com matches no allowed host pattern");

  config.strict_ip = false;
  const auto loose = buildPolicy(config).policy;
  const Decision mismatch = loose->decideOriginalDestination(public_v4, std::span(&answer, 1));
  EXPECT_TRUE(mismatch.allowed());
  EXPECT_TRUE(mismatch.would_deny);
  EXPECT_EQ(mismatch.reason, Reason::kSniAddressMismatch);

  config.report_only = false;
  const auto enforcing = buildPolicy(config).policy;
  EXPECT_FALSE(enforcing->decide("evil.example.com", 443).allowed());
  EXPECT_FALSE(enforcing->decide("evil.example.com", 443).would_deny);
}

}  // namespace
}  // namespace acr

namespace acr {
namespace {

// Address binding: an address dialled for a bound name must lie inside the bound ranges (the most
// specific matching pattern decides), after the normal address rules; other names, IP literals
// and addresses the normal rules deny are untouched by it. Table of named cases.
TEST(PolicyTest, AddressBinding) {
  Policy::Builder builder;
  builder.addHostPattern("*.azurecr.io", "test");
  builder.addHostPattern("*.blob.core.windows.net", "test");
  builder.addPort(443);
  const Cidr acr = *Cidr::parse("20.37.0.0/24");
  const Cidr own = *Cidr::parse("40.64.0.0/28");
  const Cidr second = *Cidr::parse("2a01:111::/32");
  ASSERT_EQ(builder.addBinding("*.azurecr.io", std::span(&acr, 1), "Acr", "--bind-host-tag"), "");
  ASSERT_EQ(builder.addBinding("myreg.azurecr.io", std::span(&own, 1), "40.64.0.0/28", "t"), "");
  // The same pattern again: bound to both sets together.
  ASSERT_EQ(builder.addBinding("*.azurecr.io", std::span(&second, 1), "2a01:111::/32", "t2"), "");
  EXPECT_NE(builder.addBinding("*", std::span(&acr, 1), "x", "t"), "");
  builder.addAllowCidr(*Cidr::parse("40.64.0.0/24"), "test");
  builder.addDenyCidr(*Cidr::parse("20.37.0.66/32"), "test");
  const auto policy = builder.build();
  ASSERT_TRUE(policy->hasBindings());
  struct Case {
    const char* label;
    const char* host;
    const char* address;
    Reason reason;
  };
  const Case cases[] = {
      {"public_outside_binding", "other.azurecr.io", "8.8.8.8", Reason::kAddressNotBound},
      {"inside_binding_public", "other.azurecr.io", "20.37.0.7", Reason::kAddressPublic},
      {"second_set_same_pattern", "other.azurecr.io", "2a01:111::5", Reason::kAddressPublic},
      {"mapped_spelling", "other.azurecr.io", "::ffff:20.37.0.7", Reason::kAddressPublic},
      {"exact_pattern_wins", "myreg.azurecr.io", "20.37.0.7", Reason::kAddressNotBound},
      {"exact_pattern_inside", "myreg.azurecr.io", "40.64.0.5", Reason::kAddressAllowed},
      {"allowed_range_outside_binding", "other.azurecr.io", "40.64.0.5", Reason::kAddressNotBound},
      {"deny_cidr_still_first", "other.azurecr.io", "20.37.0.66", Reason::kAddressDenied},
      {"special_still_denied", "other.azurecr.io", "127.0.0.1", Reason::kAddressSpecial},
      {"unbound_name", "acct.blob.core.windows.net", "8.8.8.8", Reason::kAddressPublic},
      {"ip_literal_host", "8.8.8.8", "8.8.8.8", Reason::kAddressPublic},
      {"trailing_dot_and_case", "OTHER.azurecr.io.", "8.8.8.8", Reason::kAddressNotBound},
  };
  for (const Case& c : cases) {
    const IpAddress address = *IpAddress::parse(c.address);
    const Decision decision = policy->decideDialled(c.host, address);
    EXPECT_EQ(decision.reason, c.reason) << c.label;
    EXPECT_EQ(decision.allowed(),
              c.reason == Reason::kAddressPublic || c.reason == Reason::kAddressAllowed)
        << c.label;
  }
  // The sentence names the address, the pattern, what it is bound to, and the name.
  const IpAddress outside = *IpAddress::parse("8.8.8.8");
  const Decision denial = policy->decideDialled("other.azurecr.io", outside);
  EXPECT_EQ(policy->describe(denial, {"other.azurecr.io", outside, 443}),
            "denied: 8.8.8.8 is outside the ranges bound to *.azurecr.io (Acr, 2a01:111::/32) "
            "for other.azurecr.io");
  EXPECT_EQ(reasonName(Reason::kAddressNotBound), "address_not_bound");
}

// Report-only waives a binding like the other address-set rules, never a special range.
TEST(PolicyTest, ReportOnlyWaivesBinding) {
  Policy::Builder builder;
  builder.addHostPattern("*.azurecr.io", "test");
  builder.addPort(443);
  const Cidr acr = *Cidr::parse("198.51.100.0/24");
  ASSERT_EQ(builder.addBinding("*.azurecr.io", std::span(&acr, 1), "Acr", "t"), "");
  builder.setReportOnly(true);
  const auto policy = builder.build();
  const Decision waived = policy->decideDialled("a.azurecr.io", *IpAddress::parse("8.8.8.8"));
  EXPECT_TRUE(waived.allowed());
  EXPECT_TRUE(waived.would_deny);
  EXPECT_EQ(waived.reason, Reason::kAddressNotBound);
  const Decision special = policy->decideDialled("a.azurecr.io", *IpAddress::parse("10.0.0.1"));
  EXPECT_FALSE(special.allowed());
  EXPECT_EQ(special.reason, Reason::kAddressSpecial);
}

}  // namespace
}  // namespace acr
