// Fuzzes the TOML configuration loader and the policy validation behind it: any input either
// yields a policy or a ConfigError; never a crash, hang or other exception.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "conf/config.h"
#include "conf/policy_factory.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    acr::Config config = acr::parseConfigText(text, "fuzz.toml");
    // No file I/O from fuzzed paths: the tags file is fuzzed by service_tags_fuzz.
    config.policy.service_tags_file.reset();
    config.policy.service_tags.clear();
    const acr::PolicySnapshot snapshot = acr::buildPolicy(config.policy);
    (void)snapshot.policy->decide("myreg.azurecr.io", 443);
    (void)snapshot.summary();
  } catch (const acr::ConfigError&) {
  }
  return 0;
}
