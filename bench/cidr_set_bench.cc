// CIDR lookups on the real service-tags file with every tag loaded (95,823 prefixes), and with the
// tags a registry policy names (*Policy*), warm: the radix-indexed CidrSet against a binary search
// over the same elementary intervals.
#include <benchmark/benchmark.h>

#include <random>
#include <string>
#include <vector>

#include "bench_support.h"
#include "conf/service_tags.h"
#include "filters/cidr_set.h"

namespace acr {
namespace {

const CidrSet& allTags() {
  static const CidrSet set(bench::allServiceTagEntries());
  return set;
}

// The set a policy with --service-tag AzureContainerRegistry --service-tag Storage builds (1,720
// prefixes; every IPv6 one in 2603::/16, so its IPv6 index has an 8-bit root).
const std::vector<CidrSet::Entry>& policyEntries() {
  static const std::vector<std::string> keep = {"AzureContainerRegistry", "Storage"};
  static const std::vector<CidrSet::Entry> entries =
      bench::entriesOf(ServiceTags::load(bench::sharedPath("data/ServiceTags_Public.json"), &keep));
  return entries;
}
const CidrSet& policyTags() {
  static const CidrSet set(policyEntries());
  return set;
}

enum class Draw { kRandom, kInside };
enum class Tags { kAll, kPolicy };

// Each benchmark runs over a set of addresses given as its argument: 8192 (the warm case: the
// paths those lookups touch stay in cache) and 65536 (a working set larger than L2, where every
// lookup pays cache misses). Both are reported; the ratios use the same set for both structures.

// `count` addresses: uniformly random, or drawn from inside random prefixes of the file.
std::vector<IpAddress> addresses(bool v4, Draw draw, int count, Tags tags) {
  std::mt19937_64 random(v4 ? 4 : 6);
  std::vector<const Cidr*> pool;
  for (const auto& entry : tags == Tags::kAll ? bench::allServiceTagEntries() : policyEntries()) {
    if (entry.cidr.address.isV4() == v4) {
      pool.push_back(&entry.cidr);
    }
  }
  std::vector<IpAddress> out;
  for (int i = 0; i < count; ++i) {
    const Uint128 noise = (Uint128{random()} << 64) | random();
    if (draw == Draw::kRandom) {
      out.push_back(v4 ? IpAddress::v4(static_cast<uint32_t>(noise)) : IpAddress::v6(noise));
      continue;
    }
    const Cidr& base = *pool[random() % pool.size()];
    const int bits = v4 ? 32 : 128;
    const Uint128 host = base.length == 0 ? ~Uint128{0} : (Uint128{1} << (bits - base.length)) - 1;
    out.push_back(v4 ? IpAddress::v4(base.address.v4Value() | static_cast<uint32_t>(noise & host))
                     : IpAddress::v6(base.address.v6Value() | (noise & host)));
  }
  return out;
}

template <bool kRadix>
void lookups(benchmark::State& state, bool v4, Draw draw, Tags tags = Tags::kAll) {
  const CidrSet& set = tags == Tags::kAll ? allTags() : policyTags();
  const int count = static_cast<int>(state.range(0));
  const std::vector<IpAddress> input = addresses(v4, draw, count, tags);
  size_t i = 0;
  for (auto _ : state) {
    const IpAddress& address = input[i++ & static_cast<size_t>(count - 1)];
    benchmark::DoNotOptimize(kRadix ? set.lookup(address) : set.lookupByBinarySearch(address));
  }
  state.counters["intervals"] = static_cast<double>(set.intervalCount());
}

void BM_CidrLookup_V4Random(benchmark::State& s) { lookups<true>(s, true, Draw::kRandom); }
void BM_CidrLookup_V4Inside(benchmark::State& s) { lookups<true>(s, true, Draw::kInside); }
void BM_CidrLookup_V6Random(benchmark::State& s) { lookups<true>(s, false, Draw::kRandom); }
void BM_CidrLookup_V6Inside(benchmark::State& s) { lookups<true>(s, false, Draw::kInside); }
void BM_CidrBinarySearch_V4Random(benchmark::State& s) { lookups<false>(s, true, Draw::kRandom); }
void BM_CidrBinarySearch_V4Inside(benchmark::State& s) { lookups<false>(s, true, Draw::kInside); }
void BM_CidrBinarySearch_V6Random(benchmark::State& s) { lookups<false>(s, false, Draw::kRandom); }
void BM_CidrBinarySearch_V6Inside(benchmark::State& s) { lookups<false>(s, false, Draw::kInside); }
void BM_CidrLookup_PolicyV4Inside(benchmark::State& s) {
  lookups<true>(s, true, Draw::kInside, Tags::kPolicy);
}
void BM_CidrLookup_PolicyV6Inside(benchmark::State& s) {
  lookups<true>(s, false, Draw::kInside, Tags::kPolicy);
}
void BM_CidrLookup_PolicyV6Random(benchmark::State& s) {
  lookups<true>(s, false, Draw::kRandom, Tags::kPolicy);
}
void BM_CidrBinarySearch_PolicyV6Inside(benchmark::State& s) {
  lookups<false>(s, false, Draw::kInside, Tags::kPolicy);
}
BENCHMARK(BM_CidrLookup_V4Random)->Arg(8192)->Arg(65536);
BENCHMARK(BM_CidrLookup_PolicyV4Inside)->Arg(8192)->Arg(65536);
BENCHMARK(BM_CidrLookup_PolicyV6Inside)->Arg(8192)->Arg(65536);
BENCHMARK(BM_CidrLookup_PolicyV6Random)->Arg(8192)->Arg(65536);
BENCHMARK(BM_CidrBinarySearch_PolicyV6Inside)->Arg(8192)->Arg(65536);
BENCHMARK(BM_CidrLookup_V4Inside)->Arg(8192)->Arg(65536);
BENCHMARK(BM_CidrLookup_V6Random)->Arg(8192)->Arg(65536);
BENCHMARK(BM_CidrLookup_V6Inside)->Arg(8192)->Arg(65536);
BENCHMARK(BM_CidrBinarySearch_V4Random)->Arg(8192)->Arg(65536);
BENCHMARK(BM_CidrBinarySearch_V4Inside)->Arg(8192)->Arg(65536);
BENCHMARK(BM_CidrBinarySearch_V6Random)->Arg(8192)->Arg(65536);
BENCHMARK(BM_CidrBinarySearch_V6Inside)->Arg(8192)->Arg(65536);

// Loading the whole real file (JSON parse and strict prefix parsing) and building the set.
void BM_ServiceTagsLoadAndBuild(benchmark::State& state) {
  for (auto _ : state) {
    const ServiceTags tags = ServiceTags::load(bench::sharedPath("data/ServiceTags_Public.json"));
    const CidrSet set(bench::entriesOf(tags));
    benchmark::DoNotOptimize(set.intervalCount());
  }
}
BENCHMARK(BM_ServiceTagsLoadAndBuild)->Unit(benchmark::kMillisecond);

// What a start with --service-tag AzureContainerRegistry --service-tag Storage does: the whole
// file read and checked, those two tags kept, their set built.
void BM_ServiceTagsLoadPolicyTags(benchmark::State& state) {
  const std::vector<std::string> keep = {"AzureContainerRegistry", "Storage"};
  for (auto _ : state) {
    const ServiceTags tags =
        ServiceTags::load(bench::sharedPath("data/ServiceTags_Public.json"), &keep);
    const CidrSet set(bench::entriesOf(tags));
    benchmark::DoNotOptimize(set.intervalCount());
  }
}
BENCHMARK(BM_ServiceTagsLoadPolicyTags)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace acr
