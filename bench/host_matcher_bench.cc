// Host matching as Policy::decideName does it (normalise, then match) against 10,000 registries
// x 3 regions plus wildcard patterns, compared with 100 patterns of the same kinds. Names looked up
// are a mix of allowed login servers, data endpoints, blob hosts and denied names.
#include <benchmark/benchmark.h>

#include <random>
#include <string>
#include <vector>

#include "bench_support.h"
#include "filters/host_matcher.h"

namespace acr {
namespace {

constexpr const char* kRegions[] = {"eastus", "westeurope", "southeastasia"};

HostMatcher matcherFor(int registries) {
  HostMatcher matcher;
  uint32_t id = 0;
  for (int i = 0; i < registries; ++i) {
    const std::string name = "registry" + std::to_string(i);
    matcher.add(name + ".azurecr.io", id++);
    for (const char* region : kRegions) {
      matcher.add(name + "." + region + ".data.azurecr.io", id++);
    }
  }
  matcher.add("*.blob.core.windows.net", id++);
  matcher.add("*.*.data.azurecr.io", id++);
  return matcher;
}

std::vector<std::string> namesFor(int registries) {
  std::mt19937 random(7);
  std::vector<std::string> names;
  for (int i = 0; i < 4096; ++i) {
    const std::string reg = "registry" + std::to_string(random() % registries);
    switch (i % 4) {
      case 0:
        names.push_back(reg + ".azurecr.io");
        break;
      case 1:
        names.push_back(reg + "." + kRegions[random() % 3] + ".data.azurecr.io");
        break;
      case 2:
        names.push_back("account" + std::to_string(random() % 100000) + ".blob.core.windows.net");
        break;
      default:
        names.push_back(reg + "x.evil.example.com");
        break;
    }
  }
  return names;
}

void hostMatch(benchmark::State& state) {
  const int registries = static_cast<int>(state.range(0));
  const HostMatcher matcher = matcherFor(registries);
  const std::vector<std::string> names = namesFor(registries);
  size_t i = 0;
  size_t matched = 0;
  const size_t allocations_before = bench::allocationCount();
  for (auto _ : state) {
    HostName name;
    HostName::normalize(names[i++ & 4095], name);
    const uint32_t id = matcher.match(name);
    matched += id != HostMatcher::kNoMatch;
    benchmark::DoNotOptimize(id);
  }
  state.counters["allocs_per_lookup"] =
      static_cast<double>(bench::allocationCount() - allocations_before) /
      static_cast<double>(state.iterations());
  state.counters["patterns"] = static_cast<double>(matcher.size());
  state.counters["match_ratio"] =
      static_cast<double>(matched) / static_cast<double>(state.iterations());
}
// 25 registries x (1 + 3 regions) + 2 wildcards = 102 patterns; 10,000 registries = 40,002.
BENCHMARK(hostMatch)->Name("BM_HostMatch")->Arg(25)->Arg(10000);

}  // namespace
}  // namespace acr
