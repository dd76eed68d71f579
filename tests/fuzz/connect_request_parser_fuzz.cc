// libFuzzer target for ConnectRequestParser. The input is the byte stream a client sends to the
// connect listener. It is parsed whole, then as growing prefixes split at points taken from its
// own bytes (each prefix in a fresh buffer, so a view left pointing into an older buffer is caught
// by ASan or by the comparison), then one byte per call; all runs must agree exactly, under the
// default cap and under a small cap derived from the input. Status invariants are checked too.

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string_view>

#include "filters/connect_request_parser.h"

namespace {

using acr::ConnectError;
using acr::ConnectRequest;
using acr::ConnectRequestParser;
using acr::ConnectStatus;

void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "connect_request_parser_fuzz: %s\n", what);
    std::abort();
  }
}

// A view as an offset into the stream, so results from different buffers compare.
struct Slice {
  size_t offset = 0;
  size_t length = 0;
  bool operator==(const Slice&) const = default;
};

struct Result {
  ConnectStatus status = ConnectStatus::kNeedMore;
  ConnectError error = ConnectError::kNone;
  Slice host;
  bool host_is_ipv6 = false;
  uint16_t port = 0;
  Slice method;
  uint8_t http_minor = 0;
  Slice host_header;
  bool host_header_mismatch = false;
  size_t head_length = 0;
  bool operator==(const Result&) const = default;
};

// Views must lie inside `buffer` (empty views may sit anywhere); their bytes are read so ASan
// reports a view into freed memory.
Slice sliceOf(std::string_view view, std::string_view buffer) {
  if (view.empty()) {
    return {};
  }
  const auto begin = reinterpret_cast<uintptr_t>(buffer.data());
  const auto at = reinterpret_cast<uintptr_t>(view.data());
  check(at >= begin && at - begin + view.size() <= buffer.size(), "view outside the input");
  volatile char sink = 0;
  for (char c : view) {
    sink = sink ^ c;
  }
  return {at - begin, view.size()};
}

Result resultOf(ConnectStatus status, const ConnectRequestParser& parser, std::string_view buffer) {
  const ConnectRequest& r = parser.request();
  Result result;
  result.status = status;
  result.error = parser.error();
  result.host = sliceOf(r.host, buffer);
  result.host_is_ipv6 = r.host_is_ipv6;
  result.port = r.port;
  result.method = sliceOf(r.method, buffer);
  result.http_minor = r.http_minor;
  result.host_header = sliceOf(r.host_header, buffer);
  result.host_header_mismatch = r.host_header_mismatch;
  result.head_length = r.head_length;
  return result;
}

void checkInvariants(const Result& r, std::string_view input, size_t max) {
  check(r.status == ConnectStatus::kNeedMore || acr::connectErrorName(r.error) != "unknown",
        "unnamed error");
  switch (r.status) {
    case ConnectStatus::kNeedMore:
      check(input.size() < max && r.error == ConnectError::kNone, "kNeedMore at or past the cap");
      break;
    case ConnectStatus::kDone:
      check(r.error == ConnectError::kNone, "kDone with an error");
      check(r.head_length >= 4 && r.head_length <= input.size() && r.head_length <= max,
            "head_length out of range");
      check(input.substr(r.head_length - 4, 4) == "\r\n\r\n", "head does not end in CRLF CRLF");
      check(input.substr(r.method.offset, r.method.length) == "CONNECT", "kDone for non-CONNECT");
      check(r.host.length > 0 && r.port > 0, "kDone without host or port");
      check(r.host.offset + r.host.length <= r.head_length &&
                r.host_header.offset + r.host_header.length <= r.head_length,
            "view past the head");
      check(r.http_minor == 1 ? r.host_header.length > 0 : true, "HTTP/1.1 without Host");
      break;
    case ConnectStatus::kMethodNotAllowed:
      check(r.error == ConnectError::kMethodNotAllowed && r.method.length > 0,
            "kMethodNotAllowed without method");
      check(input.substr(r.method.offset, r.method.length) != "CONNECT", "CONNECT refused");
      break;
    case ConnectStatus::kMalformed:
      check(r.error != ConnectError::kNone && r.error != ConnectError::kTooLarge &&
                r.error != ConnectError::kMethodNotAllowed,
            "kMalformed with a non-syntax error");
      break;
    case ConnectStatus::kTooLarge:
      check(r.error == ConnectError::kTooLarge, "kTooLarge with another error");
      break;
  }
}

Result parseWhole(std::string_view input, size_t max) {
  ConnectRequestParser parser(max);
  return resultOf(parser.parse(input), parser, input);
}

// Chunk lengths come from the input's own bytes, so the fuzzer explores split points too.
Result parseChunked(std::string_view input, size_t max) {
  ConnectRequestParser parser(max);
  std::unique_ptr<char[]> buffer;
  std::string_view prefix;
  ConnectStatus status = ConnectStatus::kNeedMore;
  size_t size = 0;
  size_t step_source = 0;
  while (status == ConnectStatus::kNeedMore) {
    buffer = std::make_unique<char[]>(size + 1);
    std::memcpy(buffer.get(), input.data(), size);
    prefix = std::string_view(buffer.get(), size);
    status = parser.parse(prefix);
    if (size == input.size()) {
      break;
    }
    const uint8_t step = input[step_source++ % input.size()];
    size = std::min(input.size(), size + (step % 2 == 0 ? 1 : 1 + step / 8));
  }
  return resultOf(status, parser, prefix);
}

Result parseByteByByte(std::string_view input, size_t max) {
  ConnectRequestParser parser(max);
  ConnectStatus status = parser.parse(input.substr(0, 0));
  for (size_t n = 1; n <= input.size() && status == ConnectStatus::kNeedMore; ++n) {
    status = parser.parse(input.substr(0, n));
  }
  return resultOf(status, parser, input);
}

void runWithCap(std::string_view input, size_t max) {
  const Result whole = parseWhole(input, max);
  checkInvariants(whole, input, max);
  check(parseChunked(input, max) == whole, "chunked parse differs from whole parse");
  if (input.size() <= 2048) {
    check(parseByteByByte(input, max) == whole, "byte-by-byte parse differs from whole parse");
  }
  // A final status reached at some prefix stays the same when more bytes follow.
  if (whole.status != ConnectStatus::kNeedMore) {
    ConnectRequestParser parser(max);
    const ConnectStatus status = parser.parse(input);
    check(parser.parse(input) == status && parser.error() == whole.error, "final status changed");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  runWithCap(input, ConnectRequestParser::kDefaultMaxHeadSize);
  runWithCap(input, 24 + (size == 0 ? 0 : data[size - 1] % 128));
  return 0;
}
