// The whole per-connection decision on real bytes: parse a captured ClientHello, judge its SNI
// with the host rules, then judge an address with every service tag of the real file loaded.
#include <benchmark/benchmark.h>

#include <fstream>
#include <iterator>
#include <vector>

#include "bench_support.h"
#include "conf/policy_factory.h"
#include "conf/service_tags.h"
#include "filters/client_hello_parser.h"

namespace acr {
namespace {

std::vector<uint8_t> capture(const char* name) {
  std::ifstream in(bench::sharedPath(std::string("data/clienthello/") + name), std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::shared_ptr<const Policy> fullPolicy() {
  const std::string path = bench::sharedPath("data/ServiceTags_Public.json");
  const ServiceTags tags = ServiceTags::load(path);
  PolicyConfig config;
  config.service_tags_file = ConfigValue{path, "bench"};
  for (const ServiceTag& tag : tags.tags()) {
    config.service_tags.push_back({tag.name, "bench"});
  }
  return buildPolicy(config).policy;
}

void decision(benchmark::State& state, const char* file) {
  static const std::shared_ptr<const Policy> policy = fullPolicy();
  const std::vector<uint8_t> bytes = capture(file);
  const IpAddress address = *IpAddress::parse("20.60.1.1");
  ClientHelloParser parser;
  const size_t allocations_before = bench::allocationCount();
  for (auto _ : state) {
    parser.reset();
    if (parser.parse(bytes) != ClientHelloStatus::kDone) {
      state.SkipWithError("capture did not parse");
      break;
    }
    const Decision name = policy->decideName(parser.hello().sni, 443);
    const Decision dial = policy->decideAddress(address);
    benchmark::DoNotOptimize(name);
    benchmark::DoNotOptimize(dial);
  }
  state.counters["allocs_per_decision"] =
      static_cast<double>(bench::allocationCount() - allocations_before) /
      static_cast<double>(std::max<int64_t>(1, state.iterations()));
}
BENCHMARK_CAPTURE(decision, chromium156, "chromium156-default-acr.bin")
    ->Name("BM_Decision/chromium");
BENCHMARK_CAPTURE(decision, curl, "curl-default-acr.bin")->Name("BM_Decision/curl");
BENCHMARK_CAPTURE(decision, skopeo, "skopeo-go-default-acr.bin")->Name("BM_Decision/skopeo");

}  // namespace
}  // namespace acr
