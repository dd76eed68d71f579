// Fuzzes the TOML configuration loader and the policy validation behind it: any input either
// yields a policy or a ConfigError; never a crash, hang or other exception. The policy built is
// then asked about names and every spelling of a few addresses, and must keep "deny always wins":
// no decision may allow an address when a --deny-cidr holds any of its spellings.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "conf/config.h"
#include "conf/policy_factory.h"

namespace {

bool deniedByRange(const acr::PolicyConfig& config, const acr::IpAddress& address) {
  const auto v4 = address.isV4() ? std::optional<acr::IpAddress>(address) : address.embeddedV4();
  for (const acr::ConfigValue& text : config.deny_cidrs) {
    const auto cidr = acr::Cidr::parse(text.text);
    if (cidr &&
        (cidr->contains(address) ||
         (v4 && (cidr->contains(*v4) || cidr->contains(acr::IpAddress::v6(
                                            (acr::Uint128{0xffff} << 32) | v4->v4Value())))))) {
      return true;
    }
  }
  return false;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    acr::Config config = acr::parseConfigText(text, "fuzz.toml");
    // No file I/O from fuzzed paths: the tags file is fuzzed by service_tags_fuzz.
    config.policy.service_tags_file.reset();
    config.policy.service_tags.clear();
    const acr::PolicySnapshot snapshot = acr::buildPolicy(config.policy);
    const acr::Policy& policy = *snapshot.policy;
    (void)policy.decide("myreg.azurecr.io", 443);
    (void)snapshot.summary();
    for (const char* literal :
         {"20.20.1.1", "64:ff9b::1414:101", "::ffff:20.20.1.1", "2002:1414:101::1",
          "64:ff9b:1::a9fe:a9fe", "10.1.2.3", "::ffff:10.1.2.3", "2603:1030::1", "3fff::1"}) {
      const acr::IpAddress address = *acr::IpAddress::parse(literal);
      const acr::Decision dial = policy.decideAddress(address);
      const acr::Decision named = policy.decideLiteral(address, 443);
      const acr::Decision bare = policy.decideWithoutSni(address, 443);
      if (deniedByRange(config.policy, address) &&
          (dial.allowed() || named.allowed() || bare.allowed())) {
        __builtin_trap();  // a --deny-cidr holds a spelling of the address: nothing may allow it
      }
      (void)policy.describe(dial, {literal, address, 443});
      (void)policy.describe(bare, {"", address, 443});
    }
  } catch (const acr::ConfigError&) {
  }
  return 0;
}
