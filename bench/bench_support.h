#pragma once

#include <atomic>
#include <cstddef>
#include <string>
#include <vector>

#include "conf/service_tags.h"
#include "filters/cidr_set.h"

namespace acr::bench {

// Heap allocations made by this process so far (operator new is counted in bench_support.cc).
size_t allocationCount() noexcept;

inline std::string sharedPath(const std::string& relative) {
  return std::string(ACR_SHARED_DIR) + "/" + relative;
}

// Every prefix of the tags loaded (ServiceTags::tags()), the value being the tag's index there.
std::vector<CidrSet::Entry> entriesOf(const ServiceTags& tags);

// Every prefix of every tag of the real service-tags file, the value being the tag index.
const std::vector<CidrSet::Entry>& allServiceTagEntries();

}  // namespace acr::bench
