// ConnectRequestParser on the request heads real clients send to the connect listener: whole
// heads as they arrive in one segment, and the same head dribbled in small reads (the parser must
// stay linear in the bytes received, not in bytes times reads).

#include <benchmark/benchmark.h>

#include <string_view>

#include "filters/connect_request_parser.h"

namespace acr {
namespace {

using namespace std::string_view_literals;

// curl 7.88.1 with -p -x http://proxy:3128.
constexpr std::string_view kCurlHead =
    "CONNECT myreg.azurecr.io:443 HTTP/1.1\r\n"
    "Host: myreg.azurecr.io:443\r\n"
    "User-Agent: curl/7.88.1\r\n"
    "Proxy-Connection: Keep-Alive\r\n"
    "\r\n"sv;

// Go's net/http as used by dockerd and skopeo, with proxy credentials in the URL, followed by the
// first bytes of the pipelined ClientHello that the parser must leave alone.
constexpr std::string_view kGoHead =
    "CONNECT myreg.westeurope.data.azurecr.io:443 HTTP/1.1\r\n"
    "Host: myreg.westeurope.data.azurecr.io:443\r\n"
    "User-Agent: Go-http-client/1.1\r\n"
    "Proxy-Authorization: Basic YWNyLXB1bGxlcjpzM2NyM3QtcGFzc3dvcmQtZm9yLXRoZS1wcm94eQ==\r\n"
    "Proxy-Connection: Keep-Alive\r\n"
    "Traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n"
    "\r\n"
    "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"sv;

void parseWhole(benchmark::State& state, std::string_view head) {
  ConnectRequestParser parser;
  for (auto _ : state) {
    parser.reset();
    ConnectStatus status = parser.parse(head);
    benchmark::DoNotOptimize(status);
    benchmark::DoNotOptimize(parser.request());
  }
  if (parser.parse(head) != ConnectStatus::kDone) {
    state.SkipWithError("head did not parse");
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * parser.request().head_length));
}

// Each call passes a prefix `chunk` bytes longer than the previous one, as a read loop would.
void parseChunked(benchmark::State& state, std::string_view head) {
  const size_t chunk = static_cast<size_t>(state.range(0));
  ConnectRequestParser parser;
  for (auto _ : state) {
    parser.reset();
    ConnectStatus status = ConnectStatus::kNeedMore;
    for (size_t size = chunk; status == ConnectStatus::kNeedMore && size < head.size() + chunk;
         size += chunk) {
      status = parser.parse(head.substr(0, size));
    }
    benchmark::DoNotOptimize(status);
    benchmark::DoNotOptimize(parser.request());
  }
  if (parser.error() != ConnectError::kNone) {
    state.SkipWithError("head did not parse");
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * parser.request().head_length));
}

void BM_ConnectParseCurlHead(benchmark::State& state) { parseWhole(state, kCurlHead); }
BENCHMARK(BM_ConnectParseCurlHead);

void BM_ConnectParseGoHead(benchmark::State& state) { parseWhole(state, kGoHead); }
BENCHMARK(BM_ConnectParseGoHead);

void BM_ConnectParseCurlHeadChunked(benchmark::State& state) { parseChunked(state, kCurlHead); }
BENCHMARK(BM_ConnectParseCurlHeadChunked)->Arg(1)->Arg(8)->Arg(64);

void BM_ConnectParseGoHeadChunked(benchmark::State& state) { parseChunked(state, kGoHead); }
BENCHMARK(BM_ConnectParseGoHeadChunked)->Arg(1)->Arg(8)->Arg(64);

}  // namespace
}  // namespace acr
