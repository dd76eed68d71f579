// libFuzzer target for ClientHelloParser. The input is the byte stream a client sends first on a
// transparent or SNI connection. It is parsed whole, then as growing prefixes split at points
// taken from its own bytes (each prefix in a fresh, exactly sized buffer, so a read past the
// prefix or a view into an older buffer is caught by ASan), then one byte per call for short
// inputs; all runs must agree exactly. A hello that parses is also re-framed into records of
// sizes taken from the input and must parse to the same result. Status invariants are checked.

#include <openssl/bytestring.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "filters/client_hello_parser.h"

namespace {

using acr::ClientHello;
using acr::ClientHelloError;
using acr::ClientHelloParser;
using acr::ClientHelloStatus;

using Bytes = std::vector<uint8_t>;

void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "client_hello_parser_fuzz: %s\n", what);
    std::abort();
  }
}

struct Result {
  ClientHelloStatus status = ClientHelloStatus::kNeedMore;
  ClientHelloError error = ClientHelloError::kNone;
  bool has_sni = false;
  std::string sni;
  std::string alpn;
  bool ech_offered = false;
  bool esni_offered = false;
  uint16_t legacy_version = 0;
  uint16_t max_version = 0;
  size_t wire_length = 0;
  bool operator==(const Result&) const = default;
};

// A view must lie inside the input or inside the parser (its reassembly buffer).
void checkAlias(const void* data, size_t size, std::span<const uint8_t> input,
                const ClientHelloParser& parser) {
  if (size == 0) {
    return;
  }
  const auto at = reinterpret_cast<uintptr_t>(data);
  const auto in = reinterpret_cast<uintptr_t>(input.data());
  const auto self = reinterpret_cast<uintptr_t>(&parser);
  check((at >= in && at - in + size <= input.size()) ||
            (at >= self && at - self + size <= sizeof(parser)),
        "view outside the input and the parser");
}

// Reads the outcome while `input` (the buffer of the deciding call) is alive, checking the
// invariants every status promises.
Result resultOf(ClientHelloStatus status, const ClientHelloParser& parser,
                std::span<const uint8_t> input) {
  Result r;
  r.status = status;
  r.error = parser.error();
  const bool refused = status == ClientHelloStatus::kNotTls ||
                       status == ClientHelloStatus::kMalformed ||
                       status == ClientHelloStatus::kTooLarge;
  check(refused == (r.error != ClientHelloError::kNone), "error() disagrees with the status");
  check(status != ClientHelloStatus::kNotTls || r.error == ClientHelloError::kNotTls,
        "kNotTls without not_tls");
  check(status != ClientHelloStatus::kTooLarge || r.error == ClientHelloError::kTooLarge,
        "kTooLarge without clienthello_too_large");
  check(clientHelloErrorName(r.error) != "unknown", "unnamed error");
  if (status != ClientHelloStatus::kDone) {
    return r;
  }
  const ClientHello& h = parser.hello();
  checkAlias(h.sni.data(), h.sni.size(), input, parser);
  checkAlias(h.alpn.data(), h.alpn.size(), input, parser);
  check(h.has_sni == !h.sni.empty(), "has_sni disagrees with sni");
  check(h.sni.size() <= 255 && h.sni.find('\0') == std::string_view::npos, "bad sni returned");
  check(h.wire_length >= 5 + 4 + 41 && h.wire_length <= input.size(), "bad wire_length");
  check(h.wire_length <= ClientHelloParser::kMaxWireBytes, "wire_length over the cap");
  check(h.legacy_version >= 0x0301 && h.legacy_version <= 0x0303, "bad legacy_version");
  check(h.max_version != 0, "no max_version");
  size_t protocols = 0;
  check(acr::forEachAlpnProtocol(h.alpn, [&](std::string_view p) { protocols += !p.empty(); }),
        "malformed alpn returned");
  check(h.alpn.empty() || protocols > 0, "alpn without protocols");
  r.has_sni = h.has_sni;
  r.sni = std::string(h.sni);
  r.alpn = std::string(h.alpn.begin(), h.alpn.end());
  r.ech_offered = h.ech_offered;
  r.esni_offered = h.esni_offered;
  r.legacy_version = h.legacy_version;
  r.max_version = h.max_version;
  r.wire_length = h.wire_length;
  return r;
}

// Feeds `input` as the given growing prefix sizes and then whole, each call on a fresh copy.
Result parseIncrementally(ClientHelloParser& parser, std::span<const uint8_t> input,
                          std::vector<size_t> cuts) {
  parser.reset();
  cuts.push_back(input.size());
  std::sort(cuts.begin(), cuts.end());
  Result result;
  bool decided = false;
  for (size_t cut : cuts) {
    if (cut > input.size()) {
      continue;
    }
    const std::unique_ptr<uint8_t[]> copy(new uint8_t[std::max<size_t>(cut, 1)]);
    std::copy_n(input.data(), cut, copy.get());
    const std::span<const uint8_t> prefix(copy.get(), cut);
    const ClientHelloStatus status = parser.parse(prefix);
    if (!decided) {
      result = resultOf(status, parser, prefix);
      decided = status != ClientHelloStatus::kNeedMore;
    } else {
      check(status == result.status, "a final status changed");
    }
  }
  return result;
}

// The handshake message when `input` starts with one record that holds all of it.
std::span<const uint8_t> singleRecordMessage(std::span<const uint8_t> input, size_t wire_length) {
  CBS cbs;
  CBS payload;
  CBS_init(&cbs, input.data(), wire_length);
  if (!CBS_skip(&cbs, 3) || !CBS_get_u16_length_prefixed(&cbs, &payload) || CBS_len(&cbs) != 0) {
    return {};
  }
  return std::span<const uint8_t>(CBS_data(&payload), CBS_len(&payload));
}

Bytes reframe(std::span<const uint8_t> message, std::span<const uint8_t> sizes) {
  Bytes out;
  for (size_t pos = 0, i = 0; pos < message.size(); ++i) {
    const size_t want = sizes.empty() ? 1 : 1 + sizes[i % sizes.size()] % 97;
    const size_t n = std::min(want, message.size() - pos);
    out.insert(out.end(),
               {22, 0x03, 0x01, static_cast<uint8_t>(n >> 8), static_cast<uint8_t>(n & 0xff)});
    out.insert(out.end(), message.begin() + static_cast<std::ptrdiff_t>(pos),
               message.begin() + static_cast<std::ptrdiff_t>(pos + n));
    pos += n;
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // About 24 KiB each: kept off the stack and reused, which also exercises reset().
  static ClientHelloParser* const whole_parser = new ClientHelloParser;
  static ClientHelloParser* const split_parser = new ClientHelloParser;
  const std::span<const uint8_t> input(data, size);

  whole_parser->reset();
  const Result whole = resultOf(whole_parser->parse(input), *whole_parser, input);
  check(whole_parser->parse(input) == whole.status, "repeat call changed the status");

  // Split points from the input's own bytes, plus the header boundaries.
  std::vector<size_t> cuts = {1, 3, 5, 9, size / 2};
  if (size > 0) {
    cuts.push_back(data[0] * size / 256);
    cuts.push_back(data[size - 1] * size / 256);
    cuts.push_back(data[size / 3] * size / 256 + size / 2);
  }
  check(parseIncrementally(*split_parser, input, cuts) == whole, "split parse disagrees");

  if (size <= 600) {
    std::vector<size_t> every(size);
    for (size_t i = 0; i < size; ++i) {
      every[i] = i;
    }
    check(parseIncrementally(*split_parser, input, every) == whole, "bytewise parse disagrees");
  }

  if (whole.status == ClientHelloStatus::kDone) {
    const std::span<const uint8_t> message = singleRecordMessage(input, whole.wire_length);
    if (!message.empty()) {
      const Bytes framed = reframe(message, input.subspan(whole.wire_length));
      Result expected = whole;
      expected.wire_length = framed.size();
      if (framed.size() <= ClientHelloParser::kMaxWireBytes) {
        check(parseIncrementally(*split_parser, framed, {framed.size() / 2}) == expected,
              "re-framed parse disagrees");
      }
    }
  }
  return 0;
}
