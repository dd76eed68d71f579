// CIDR lookups on the real service-tags file with every tag loaded (95,823 prefixes), warm:
// the radix-indexed CidrSet against a binary search over the same elementary intervals.
#include <benchmark/benchmark.h>

#include <random>

#include "bench_support.h"
#include "conf/service_tags.h"
#include "filters/cidr_set.h"

namespace acr {
namespace {

const CidrSet& allTags() {
  static const CidrSet set(bench::allServiceTagEntries());
  return set;
}

enum class Draw { kRandom, kInside };

// Each benchmark runs over a set of addresses given as its argument: 8192 (the warm case: the
// paths those lookups touch stay in cache) and 65536 (a working set larger than L2, where every
// lookup pays cache misses). Both are reported; the ratios use the same set for both structures.

// `count` addresses: uniformly random, or drawn from inside random prefixes of the file.
std::vector<IpAddress> addresses(bool v4, Draw draw, int count) {
  std::mt19937_64 random(v4 ? 4 : 6);
  std::vector<const Cidr*> pool;
  for (const auto& entry : bench::allServiceTagEntries()) {
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
void lookups(benchmark::State& state, bool v4, Draw draw) {
  const CidrSet& set = allTags();
  const int count = static_cast<int>(state.range(0));
  const std::vector<IpAddress> input = addresses(v4, draw, count);
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
BENCHMARK(BM_CidrLookup_V4Random)->Arg(8192)->Arg(65536);
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
    std::vector<CidrSet::Entry> entries;
    entries.reserve(96000);
    for (uint32_t t = 0; t < tags.tags().size(); ++t) {
      for (const Cidr& prefix : tags.tags()[t].prefixes) {
        entries.push_back({prefix, t});
      }
    }
    const CidrSet set(entries);
    benchmark::DoNotOptimize(set.intervalCount());
  }
}
BENCHMARK(BM_ServiceTagsLoadAndBuild)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace acr
