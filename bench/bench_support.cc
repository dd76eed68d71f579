#include "bench_support.h"

#include <cstdlib>
#include <new>

#include "conf/service_tags.h"

namespace {
std::atomic<size_t> g_allocations{0};
}  // namespace

// Counting allocator: lets benchmarks assert that the hot path allocates nothing.
void* operator new(std::size_t size) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(size == 0 ? 1 : size)) {
    return p;
  }
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace acr::bench {

size_t allocationCount() noexcept { return g_allocations.load(std::memory_order_relaxed); }

std::vector<CidrSet::Entry> entriesOf(const ServiceTags& tags) {
  size_t count = 0;
  for (const ServiceTag& tag : tags.tags()) {
    count += tag.prefixes.size();
  }
  std::vector<CidrSet::Entry> out;
  out.reserve(count);
  for (uint32_t t = 0; t < tags.tags().size(); ++t) {
    for (const Cidr& prefix : tags.tags()[t].prefixes) {
      out.push_back({prefix, t});
    }
  }
  return out;
}

const std::vector<CidrSet::Entry>& allServiceTagEntries() {
  static const std::vector<CidrSet::Entry> entries =
      entriesOf(ServiceTags::load(sharedPath("data/ServiceTags_Public.json")));
  return entries;
}

}  // namespace acr::bench
