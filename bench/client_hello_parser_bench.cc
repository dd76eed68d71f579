// ClientHelloParser on every real capture in ../shared/data/clienthello, one benchmark per file:
// in one call (the loopback case), re-framed into two records (a ~2 KB hello over MSS 1460),
// delivered 1 byte per call (P3 trickle) and in 1-byte records delivered 1 byte per call (the
// worst framing). The per-byte rate of the trickle cases staying flat across 200-byte and 2 KB
// captures is the evidence that work is linear in bytes. The allocs counter must stay 0.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <span>
#include <string>
#include <vector>

#include "bench_support.h"
#include "filters/client_hello_parser.h"

namespace acr {
namespace {

using Bytes = std::vector<uint8_t>;

struct Capture {
  std::string name;  // file name without .bin
  Bytes wire;        // one record, as captured
  Bytes two_records;
  Bytes one_byte_records;
};

// Frames the capture's handshake message into records of at most `fragment` bytes.
Bytes reframe(const Bytes& wire, size_t fragment) {
  const std::span<const uint8_t> message = std::span(wire).subspan(5);
  Bytes out;
  for (size_t pos = 0; pos < message.size(); pos += fragment) {
    const size_t n = std::min(fragment, message.size() - pos);
    out.insert(out.end(),
               {22, 0x03, 0x01, static_cast<uint8_t>(n >> 8), static_cast<uint8_t>(n & 0xff)});
    out.insert(out.end(), message.begin() + static_cast<std::ptrdiff_t>(pos),
               message.begin() + static_cast<std::ptrdiff_t>(pos + n));
  }
  return out;
}

const std::vector<Capture>& captures() {
  static const std::vector<Capture> all = [] {
    std::vector<std::filesystem::path> paths;
    for (const auto& entry :
         std::filesystem::directory_iterator(bench::sharedPath("data/clienthello"))) {
      if (entry.path().extension() == ".bin") {
        paths.push_back(entry.path());
      }
    }
    std::sort(paths.begin(), paths.end());
    std::vector<Capture> out;
    for (const auto& path : paths) {
      std::ifstream in(path, std::ios::binary);
      Capture c;
      c.name = path.stem().string();
      c.wire.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
      c.two_records = reframe(c.wire, (c.wire.size() - 5) / 2 + 1);
      c.one_byte_records = reframe(c.wire, 1);
      out.push_back(std::move(c));
    }
    return out;
  }();
  return all;
}

// Runs `parse` (which resets and drives `parser` through one connection's bytes) per iteration
// and reports bytes/s and heap allocations per connection.
template <class Parse>
void run(benchmark::State& state, const Bytes& input, Parse&& parse) {
  static ClientHelloParser parser;
  ClientHelloStatus status = ClientHelloStatus::kNeedMore;
  const size_t allocations_before = bench::allocationCount();
  for (auto _ : state) {
    parser.reset();
    status = parse(parser, std::span<const uint8_t>(input));
    benchmark::DoNotOptimize(status);
    benchmark::DoNotOptimize(parser.hello().sni.data());
  }
  const size_t allocations = bench::allocationCount() - allocations_before;
  if (status != ClientHelloStatus::kDone) {
    state.SkipWithError("capture did not parse");
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * input.size()));
  state.counters["bytes"] = static_cast<double>(input.size());
  state.counters["allocs"] =
      benchmark::Counter(static_cast<double>(allocations), benchmark::Counter::kAvgIterations);
}

ClientHelloStatus parseWhole(ClientHelloParser& parser, std::span<const uint8_t> input) {
  return parser.parse(input);
}

ClientHelloStatus parseBytewise(ClientHelloParser& parser, std::span<const uint8_t> input) {
  ClientHelloStatus status = ClientHelloStatus::kNeedMore;
  for (size_t n = 1; n <= input.size() && status == ClientHelloStatus::kNeedMore; ++n) {
    status = parser.parse(input.first(n));
  }
  return status;
}

void BM_ClientHelloParse(benchmark::State& state, const Capture* c) {
  run(state, c->wire, parseWhole);
}

void BM_ClientHelloParseTwoRecords(benchmark::State& state, const Capture* c) {
  run(state, c->two_records, parseWhole);
}

void BM_ClientHelloParseBytewise(benchmark::State& state, const Capture* c) {
  run(state, c->wire, parseBytewise);
}

void BM_ClientHelloParseOneByteRecordsBytewise(benchmark::State& state, const Capture* c) {
  run(state, c->one_byte_records, parseBytewise);
}

// One benchmark per capture and delivery, named BM_<delivery>/<capture>.
[[maybe_unused]] const bool kRegistered = [] {
  for (const Capture& c : captures()) {
    benchmark::RegisterBenchmark(("BM_ClientHelloParse/" + c.name).c_str(), BM_ClientHelloParse,
                                 &c);
  }
  for (const Capture& c : captures()) {
    benchmark::RegisterBenchmark(("BM_ClientHelloParseTwoRecords/" + c.name).c_str(),
                                 BM_ClientHelloParseTwoRecords, &c);
  }
  for (const Capture& c : captures()) {
    benchmark::RegisterBenchmark(("BM_ClientHelloParseBytewise/" + c.name).c_str(),
                                 BM_ClientHelloParseBytewise, &c);
  }
  for (const Capture& c : captures()) {
    benchmark::RegisterBenchmark(("BM_ClientHelloParseOneByteRecordsBytewise/" + c.name).c_str(),
                                 BM_ClientHelloParseOneByteRecordsBytewise, &c);
  }
  return true;
}();

}  // namespace
}  // namespace acr
