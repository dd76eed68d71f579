// Fuzzes the service-tags JSON loader: any input either loads (and then builds a CidrSet and a
// policy from every tag) or raises ConfigError; never a crash, hang or other exception. An input
// that loads whole also loads with a selection of tags (the last one's name), which keeps exactly
// that tag, whole, and knows the others by name.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "conf/config.h"
#include "conf/service_tags.h"
#include "filters/cidr_set.h"
#include "filters/policy.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view json(reinterpret_cast<const char*>(data), size);
  try {
    const acr::ServiceTags tags = acr::ServiceTags::parse(json, "fuzz.json");
    acr::Policy::Builder builder;
    std::vector<acr::CidrSet::Entry> entries;
    for (uint32_t t = 0; t < tags.tags().size(); ++t) {
      builder.addServiceTag(tags.tags()[t].name, tags.tags()[t].prefixes, "fuzz");
      for (const acr::Cidr& prefix : tags.tags()[t].prefixes) {
        entries.push_back({prefix, t});
      }
    }
    const acr::CidrSet set(entries);
    const auto policy = builder.build();
    for (const auto& entry : entries) {
      if (set.lookup(entry.cidr.address) != set.lookupByBinarySearch(entry.cidr.address)) {
        __builtin_trap();  // the radix index and the plain search must agree
      }
      (void)policy->decideAddress(entry.cidr.address);
    }
    (void)tags.suggest("Storage");
    if (!tags.tags().empty()) {
      const std::vector<std::string> keep = {tags.tags().back().name};
      const acr::ServiceTags some = acr::ServiceTags::parse(json, "fuzz.json", &keep);
      const acr::ServiceTag* kept = some.find(keep.front());
      if (some.tagCount() != tags.tagCount() || some.tags().size() != 1 || kept == nullptr ||
          kept->prefixes != tags.tags().back().prefixes ||
          (tags.tags().size() > 1 && some.find(tags.tags().front().name) != nullptr) ||
          !some.known(tags.tags().front().name)) {
        __builtin_trap();
      }
    }
  } catch (const acr::ConfigError&) {
  }
  return 0;
}
