#include "filters/client_hello_parser.h"

#include <gtest/gtest.h>
#include <openssl/bytestring.h>
#include <openssl/mem.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <ostream>
#include <random>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace acr {
namespace {

using Bytes = std::vector<uint8_t>;

constexpr uint8_t kHandshake = 22;
constexpr uint16_t kRecordTls10 = 0x0301;

const std::filesystem::path kCaptureDir =
    std::filesystem::path(ACR_SHARED_DIR) / "data" / "clienthello";

Bytes toBytes(std::string_view s) { return Bytes(s.begin(), s.end()); }

Bytes readFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in) << path;
  return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

Bytes concat(std::span<const uint8_t> a, std::span<const uint8_t> b) {
  Bytes out(a.begin(), a.end());
  out.insert(out.end(), b.begin(), b.end());
  return out;
}

// ---- Building TLS bytes with BoringSSL's CBB ----

void cbbOk(int result) { EXPECT_EQ(result, 1) << "CBB write failed"; }

Bytes finish(CBB* cbb) {
  uint8_t* data = nullptr;
  size_t len = 0;
  cbbOk(CBB_finish(cbb, &data, &len));
  Bytes out(data, data + len);
  OPENSSL_free(data);
  return out;
}

Bytes record(uint8_t type, uint16_t version, std::span<const uint8_t> payload) {
  CBB cbb;
  CBB fragment;
  cbbOk(CBB_init(&cbb, payload.size() + 5));
  cbbOk(CBB_add_u8(&cbb, type));
  cbbOk(CBB_add_u16(&cbb, version));
  cbbOk(CBB_add_u16_length_prefixed(&cbb, &fragment));
  cbbOk(CBB_add_bytes(&fragment, payload.data(), payload.size()));
  return finish(&cbb);
}

Bytes handshake(std::span<const uint8_t> body, uint8_t msg_type = 1) {
  CBB cbb;
  CBB contents;
  cbbOk(CBB_init(&cbb, body.size() + 4));
  cbbOk(CBB_add_u8(&cbb, msg_type));
  cbbOk(CBB_add_u24_length_prefixed(&cbb, &contents));
  cbbOk(CBB_add_bytes(&contents, body.data(), body.size()));
  return finish(&cbb);
}

// Frames a handshake message into handshake records whose fragments have the given sizes in
// turn; the last size repeats until the message is used up.
Bytes frame(std::span<const uint8_t> message, const std::vector<size_t>& sizes,
            uint16_t version = kRecordTls10) {
  Bytes out;
  size_t i = 0;
  for (size_t pos = 0; pos < message.size(); ++i) {
    const size_t n = std::min(sizes[std::min(i, sizes.size() - 1)], message.size() - pos);
    const Bytes r = record(kHandshake, version, message.subspan(pos, n));
    out.insert(out.end(), r.begin(), r.end());
    pos += n;
  }
  return out;
}

// The handshake message of a one-record capture.
Bytes messageOf(std::span<const uint8_t> wire) {
  CBS cbs;
  CBS_init(&cbs, wire.data(), wire.size());
  uint8_t type = 0;
  uint16_t version = 0;
  CBS payload;
  EXPECT_TRUE(CBS_get_u8(&cbs, &type) && CBS_get_u16(&cbs, &version) &&
              CBS_get_u16_length_prefixed(&cbs, &payload) && CBS_len(&cbs) == 0)
      << "not a single record";
  return Bytes(CBS_data(&payload), CBS_data(&payload) + CBS_len(&payload));
}

struct Extension {
  uint16_t type;
  Bytes data;
};

Extension sniExtNames(const std::vector<std::string_view>& names, uint8_t name_type = 0) {
  CBB cbb;
  CBB list;
  cbbOk(CBB_init(&cbb, 64));
  cbbOk(CBB_add_u16_length_prefixed(&cbb, &list));
  for (std::string_view name : names) {
    CBB host;
    cbbOk(CBB_add_u8(&list, name_type));
    cbbOk(CBB_add_u16_length_prefixed(&list, &host));
    cbbOk(CBB_add_bytes(&host, reinterpret_cast<const uint8_t*>(name.data()), name.size()));
  }
  return {0, finish(&cbb)};
}

Extension sniExt(std::string_view name) { return sniExtNames({name}); }

Extension alpnExt(const std::vector<std::string_view>& protocols) {
  CBB cbb;
  CBB list;
  cbbOk(CBB_init(&cbb, 64));
  cbbOk(CBB_add_u16_length_prefixed(&cbb, &list));
  for (std::string_view p : protocols) {
    CBB name;
    cbbOk(CBB_add_u8_length_prefixed(&list, &name));
    cbbOk(CBB_add_bytes(&name, reinterpret_cast<const uint8_t*>(p.data()), p.size()));
  }
  return {16, finish(&cbb)};
}

Extension versionsExt(const std::vector<uint16_t>& versions) {
  CBB cbb;
  CBB list;
  cbbOk(CBB_init(&cbb, 16));
  cbbOk(CBB_add_u8_length_prefixed(&cbb, &list));
  for (uint16_t v : versions) {
    cbbOk(CBB_add_u16(&list, v));
  }
  return {43, finish(&cbb)};
}

Extension u16ListExt(uint16_t type, const std::vector<uint16_t>& values) {
  CBB cbb;
  CBB list;
  cbbOk(CBB_init(&cbb, 16));
  cbbOk(CBB_add_u16_length_prefixed(&cbb, &list));
  for (uint16_t v : values) {
    cbbOk(CBB_add_u16(&list, v));
  }
  return {type, finish(&cbb)};
}

// A ClientHello body; every field can be set to a lie-free but unusual value.
struct HelloSpec {
  uint16_t legacy_version = 0x0303;
  Bytes session_id = Bytes(32, 0x5e);
  std::vector<uint16_t> cipher_suites = {0x1301, 0x1302, 0x1303, 0xc02f};
  Bytes compression_methods = {0};
  std::optional<std::vector<Extension>> extensions =
      std::vector<Extension>{sniExt("myregistry.azurecr.io"), u16ListExt(10, {0x001d, 0x0017}),
                             alpnExt({"h2", "http/1.1"}), versionsExt({0x0304, 0x0303})};
};

Bytes body(const HelloSpec& s) {
  CBB cbb;
  CBB child;
  cbbOk(CBB_init(&cbb, 512));
  cbbOk(CBB_add_u16(&cbb, s.legacy_version));
  const Bytes random(32, 0xa5);
  cbbOk(CBB_add_bytes(&cbb, random.data(), random.size()));
  cbbOk(CBB_add_u8_length_prefixed(&cbb, &child));
  cbbOk(CBB_add_bytes(&child, s.session_id.data(), s.session_id.size()));
  cbbOk(CBB_add_u16_length_prefixed(&cbb, &child));
  for (uint16_t suite : s.cipher_suites) {
    cbbOk(CBB_add_u16(&child, suite));
  }
  cbbOk(CBB_add_u8_length_prefixed(&cbb, &child));
  cbbOk(CBB_add_bytes(&child, s.compression_methods.data(), s.compression_methods.size()));
  if (s.extensions) {
    CBB extensions;
    cbbOk(CBB_add_u16_length_prefixed(&cbb, &extensions));
    for (const Extension& e : *s.extensions) {
      CBB data;
      cbbOk(CBB_add_u16(&extensions, e.type));
      cbbOk(CBB_add_u16_length_prefixed(&extensions, &data));
      cbbOk(CBB_add_bytes(&data, e.data.data(), e.data.size()));
    }
  }
  return finish(&cbb);
}

// The hello as a client sends it: one record.
Bytes wire(const HelloSpec& s, uint16_t record_version = kRecordTls10) {
  return record(kHandshake, record_version, handshake(body(s)));
}

HelloSpec withExtensions(std::vector<Extension> extensions) {
  HelloSpec s;
  s.extensions = std::move(extensions);
  return s;
}

// A spec whose body is exactly `body_size` bytes, filled by a padding extension (21).
HelloSpec paddedTo(size_t body_size) {
  HelloSpec s;
  s.extensions->push_back({21, {}});
  const size_t base = body(s).size();
  s.extensions->back().data.assign(body_size - base, 0);
  return s;
}

// ---- Locating the length fields of a one-record hello, to make them lie ----

struct LengthField {
  std::string name;
  size_t offset;
  size_t width;
};

std::vector<LengthField> lengthFields(std::span<const uint8_t> w) {
  std::vector<LengthField> fields;
  CBS cbs;
  CBS_init(&cbs, w.data(), w.size());
  auto at = [&](const CBS& c) { return static_cast<size_t>(CBS_data(&c) - w.data()); };
  auto add = [&](std::string name, const CBS& c, size_t width) {
    fields.push_back({std::move(name), at(c), width});
  };
  CBS payload;
  CBS message;
  CBS b;
  add("record_length", cbs, 2);
  fields.back().offset += 3;
  EXPECT_TRUE(CBS_skip(&cbs, 3) && CBS_get_u16_length_prefixed(&cbs, &payload));
  add("handshake_length", payload, 3);
  fields.back().offset += 1;
  EXPECT_TRUE(CBS_skip(&payload, 1) && CBS_get_u24_length_prefixed(&payload, &message));
  b = message;
  CBS part;
  EXPECT_TRUE(CBS_skip(&b, 34));
  add("session_id_length", b, 1);
  EXPECT_TRUE(CBS_get_u8_length_prefixed(&b, &part));
  add("cipher_suites_length", b, 2);
  EXPECT_TRUE(CBS_get_u16_length_prefixed(&b, &part));
  add("compression_methods_length", b, 1);
  EXPECT_TRUE(CBS_get_u8_length_prefixed(&b, &part));
  if (CBS_len(&b) == 0) {
    return fields;
  }
  CBS extensions;
  add("extensions_length", b, 2);
  EXPECT_TRUE(CBS_get_u16_length_prefixed(&b, &extensions));
  while (CBS_len(&extensions) > 0) {
    uint16_t type = 0;
    CBS ext;
    EXPECT_TRUE(CBS_get_u16(&extensions, &type));
    const std::string name = "extension " + std::to_string(type);
    add(name + " length", extensions, 2);
    EXPECT_TRUE(CBS_get_u16_length_prefixed(&extensions, &ext));
    CBS list;
    CBS item;
    if (type == 0) {
      add("server_name_list_length", ext, 2);
      EXPECT_TRUE(CBS_get_u16_length_prefixed(&ext, &list) && CBS_skip(&list, 1));
      add("host_name_length", list, 2);
    } else if (type == 16) {
      add("alpn_list_length", ext, 2);
      EXPECT_TRUE(CBS_get_u16_length_prefixed(&ext, &list));
      while (CBS_len(&list) > 0) {
        add("alpn_protocol_length", list, 1);
        EXPECT_TRUE(CBS_get_u8_length_prefixed(&list, &item));
      }
    } else if (type == 43) {
      add("supported_versions_length", ext, 1);
    } else if (type == 0xfe0d) {
      uint8_t ech_type = 1;
      EXPECT_TRUE(CBS_get_u8(&ext, &ech_type));
      if (ech_type == 0) {
        EXPECT_TRUE(CBS_skip(&ext, 5));
        add("ech_enc_length", ext, 2);
        EXPECT_TRUE(CBS_get_u16_length_prefixed(&ext, &item));
        add("ech_payload_length", ext, 2);
      }
    }
  }
  return fields;
}

// `w` with the length field changed by `delta`, or nothing if the new value does not fit.
std::optional<Bytes> withLength(std::span<const uint8_t> w, const LengthField& f, int64_t delta) {
  int64_t value = 0;
  for (size_t i = 0; i < f.width; ++i) {
    value = (value << 8) | w[f.offset + i];
  }
  value += delta;
  if (value < 0 || value >= (int64_t{1} << (8 * f.width))) {
    return std::nullopt;
  }
  Bytes out(w.begin(), w.end());
  for (size_t i = f.width; i-- > 0; value >>= 8) {
    out[f.offset + i] = static_cast<uint8_t>(value & 0xff);
  }
  return out;
}

// ---- Running the parser ----

// Everything a parse reports, copied out so that runs on different buffers compare.
struct Outcome {
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
  size_t decided_at = 0;  // input bytes seen by the call that returned the final status
  bool operator==(const Outcome&) const = default;
};

void PrintTo(const Outcome& o, std::ostream* os) {
  *os << "{status=" << static_cast<int>(o.status) << " error=" << clientHelloErrorName(o.error)
      << " has_sni=" << o.has_sni << " sni=\"" << o.sni << "\" alpn_len=" << o.alpn.size()
      << " ech=" << o.ech_offered << " esni=" << o.esni_offered << " legacy=0x" << std::hex
      << o.legacy_version << " max=0x" << o.max_version << std::dec
      << " wire_length=" << o.wire_length << " decided_at=" << o.decided_at << "}";
}

Outcome outcomeOf(const ClientHelloParser& p, ClientHelloStatus status, size_t seen) {
  Outcome o;
  o.status = status;
  o.error = p.error();
  if (status != ClientHelloStatus::kNeedMore) {
    o.decided_at = seen;
  }
  if (status == ClientHelloStatus::kDone) {
    const ClientHello& h = p.hello();
    o.has_sni = h.has_sni;
    o.sni = std::string(h.sni);
    o.alpn = std::string(h.alpn.begin(), h.alpn.end());
    o.ech_offered = h.ech_offered;
    o.esni_offered = h.esni_offered;
    o.legacy_version = h.legacy_version;
    o.max_version = h.max_version;
    o.wire_length = h.wire_length;
  }
  return o;
}

Outcome parseOnce(std::span<const uint8_t> input) {
  ClientHelloParser p;
  return outcomeOf(p, p.parse(input), input.size());
}

// Delivers `input` in calls that each add the next chunk size (cycled) to the prefix. Every
// call gets a fresh, exactly sized copy of the prefix, so reading past it is an ASan error and
// the parser cannot rely on the buffer's address; inputs over kCopyLimit bytes are passed as
// prefixes of `input` itself, to keep the quadratic copying cheap. The outcome is read when the
// status turns final (its views alias that call's prefix); later calls must return the same status.
Outcome parseInChunks(std::span<const uint8_t> input, const std::vector<size_t>& chunks) {
  constexpr size_t kCopyLimit = 16 * 1024;
  ClientHelloParser p;
  Outcome outcome;
  size_t size = 0;
  Bytes prefix;
  for (size_t i = 0; size < input.size(); ++i) {
    size = std::min(input.size(), size + std::max<size_t>(1, chunks[i % chunks.size()]));
    std::span<const uint8_t> view = input.first(size);
    if (input.size() <= kCopyLimit) {
      prefix.assign(view.begin(), view.end());
      view = prefix;
    }
    const ClientHelloStatus status = p.parse(view);
    if (outcome.status == ClientHelloStatus::kNeedMore) {
      outcome = outcomeOf(p, status, size);
    } else {
      EXPECT_EQ(status, outcome.status) << "a final status changed";
    }
  }
  return outcome;
}

Outcome parseBytewise(std::span<const uint8_t> input) { return parseInChunks(input, {1}); }

// Parses `input` whole and 1 byte per call and expects the same final status and error.
void expectRejected(std::span<const uint8_t> input, ClientHelloStatus status,
                    ClientHelloError error) {
  const Outcome once = parseOnce(input);
  EXPECT_EQ(once.status, status);
  EXPECT_EQ(clientHelloErrorName(once.error), clientHelloErrorName(error));
  const Outcome bytewise = parseBytewise(input);
  EXPECT_EQ(bytewise.status, once.status);
  EXPECT_EQ(bytewise.error, once.error);
}

std::vector<std::string> alpnProtocols(std::string_view alpn) {
  std::vector<std::string> out;
  const auto* data = reinterpret_cast<const uint8_t*>(alpn.data());
  EXPECT_TRUE(forEachAlpnProtocol(std::span<const uint8_t>(data, alpn.size()),
                                  [&](std::string_view p) { out.emplace_back(p); }));
  return out;
}

// ---- Real captures ----

struct CaptureCase {
  const char* file;
  const char* sni;  // nullptr: no server_name extension
  std::vector<std::string> alpn;
  uint16_t max_version;
  bool ech;
};

// Expected values from ../shared/data/SOURCES.md (SNI) and an independent Python dissection
// of the files (ALPN, supported_versions, ECH).
const std::vector<CaptureCase>& captureCases() {
  static const std::vector<CaptureCase> cases = {
      {"chromium156-default-acr.bin", "myregistry.azurecr.io", {"h2", "http/1.1"}, 0x0304, true},
      {"chromium156-default-acr-run2.bin",
       "myregistry.azurecr.io",
       {"h2", "http/1.1"},
       0x0304,
       true},
      {"chromium156-default-data.bin",
       "myregistry.eastus.data.azurecr.io",
       {"h2", "http/1.1"},
       0x0304,
       true},
      {"curl-default-acr.bin", "myregistry.azurecr.io", {"h2", "http/1.1"}, 0x0304, false},
      {"curl-default-data.bin",
       "myregistry.eastus.data.azurecr.io",
       {"h2", "http/1.1"},
       0x0304,
       false},
      {"curl-tls12only-acr.bin", "myregistry.azurecr.io", {"h2", "http/1.1"}, 0x0303, false},
      {"gnutls-default-acr.bin", "myregistry.azurecr.io", {}, 0x0304, false},
      {"java17-default-acr.bin", "myregistry.azurecr.io", {}, 0x0304, false},
      {"node-default-acr.bin", "myregistry.azurecr.io", {}, 0x0304, false},
      {"openssl-alpn-h2-blob.bin",
       "myaccount.blob.core.windows.net",
       {"h2", "http/1.1"},
       0x0304,
       false},
      {"openssl-default-acr.bin", "myregistry.azurecr.io", {}, 0x0304, false},
      {"openssl-nosni.bin", nullptr, {}, 0x0304, false},
      {"openssl-tls12-acr.bin", "myregistry.azurecr.io", {}, 0x0303, false},
      {"openssl-tls13-data.bin", "myregistry.eastus.data.azurecr.io", {}, 0x0304, false},
      {"python3-default-acr.bin", "myregistry.azurecr.io", {}, 0x0304, false},
      {"skopeo-go-default-acr.bin", "myregistry.azurecr.io", {}, 0x0304, false},
  };
  return cases;
}

// Every capture file has an expectation, so a new capture cannot go untested.
TEST(ClientHelloParserTest, EveryCaptureHasAnExpectation) {
  std::set<std::string> expected;
  for (const CaptureCase& c : captureCases()) {
    expected.insert(c.file);
  }
  std::set<std::string> present;
  for (const auto& entry : std::filesystem::directory_iterator(kCaptureDir)) {
    if (entry.path().extension() == ".bin") {
      present.insert(entry.path().filename().string());
    }
  }
  EXPECT_EQ(present, expected);
}

// Each real client's hello parses to the SNI, ALPN, versions and ECH flag it really sent.
TEST(ClientHelloParserTest, CapturesParse) {
  for (const CaptureCase& c : captureCases()) {
    SCOPED_TRACE(c.file);
    const Bytes w = readFile(kCaptureDir / c.file);
    const Outcome o = parseOnce(w);
    ASSERT_EQ(o.status, ClientHelloStatus::kDone) << clientHelloErrorName(o.error);
    EXPECT_EQ(o.has_sni, c.sni != nullptr);
    EXPECT_EQ(o.sni, c.sni != nullptr ? c.sni : "");
    EXPECT_EQ(alpnProtocols(o.alpn), c.alpn);
    EXPECT_EQ(o.legacy_version, 0x0303);
    EXPECT_EQ(o.max_version, c.max_version);
    EXPECT_EQ(o.ech_offered, c.ech);
    EXPECT_FALSE(o.esni_offered);
    EXPECT_EQ(o.wire_length, w.size());
    EXPECT_EQ(o.decided_at, w.size());
  }
}

// P3/P5: every capture gives the same result delivered 1 byte per call, re-framed into 2
// records, into 1-byte records (splitting the handshake header), and both at once.
TEST(ClientHelloParserTest, P5CapturesReframedAndDribbledGiveTheSameResult) {
  for (const CaptureCase& c : captureCases()) {
    SCOPED_TRACE(c.file);
    const Bytes w = readFile(kCaptureDir / c.file);
    const Outcome once = parseOnce(w);
    ASSERT_EQ(once.status, ClientHelloStatus::kDone);
    EXPECT_EQ(parseBytewise(w), once);

    const Bytes message = messageOf(w);
    const std::vector<std::vector<size_t>> framings = {{message.size() / 2}, {1},       {2}, {3},
                                                       {1, 2, 1, 700},       {4, 16384}};
    for (const auto& sizes : framings) {
      SCOPED_TRACE(testing::Message() << "first fragment " << sizes[0]);
      const Bytes framed = frame(message, sizes);
      Outcome expected = once;
      expected.wire_length = framed.size();
      expected.decided_at = framed.size();
      EXPECT_EQ(parseOnce(framed), expected);
      EXPECT_EQ(parseBytewise(framed), expected);
    }
  }
}

// P3/P5: random record framings delivered in random chunk sizes agree with one call.
TEST(ClientHelloParserTest, P5RandomFramingsAndChunksAgree) {
  std::mt19937 rng(20261122);
  for (const CaptureCase& c : captureCases()) {
    SCOPED_TRACE(c.file);
    const Bytes message = messageOf(readFile(kCaptureDir / c.file));
    for (int round = 0; round < 20; ++round) {
      std::vector<size_t> sizes;
      for (int i = 0; i < 8; ++i) {
        sizes.push_back(std::uniform_int_distribution<size_t>(1, 600)(rng));
      }
      std::vector<size_t> chunks;
      for (int i = 0; i < 8; ++i) {
        chunks.push_back(std::uniform_int_distribution<size_t>(1, 300)(rng));
      }
      const Bytes framed = frame(message, sizes);
      const Outcome once = parseOnce(framed);
      EXPECT_EQ(once.status, ClientHelloStatus::kDone);
      EXPECT_EQ(parseInChunks(framed, chunks), once);
    }
  }
}

// A hello inside its first record is read in place; one spread over records is reassembled in
// the parser, so the SNI view aliases the parser and not the input (the header's contract).
TEST(ClientHelloParserTest, SniAliasesInputOnlyWhenTheHelloIsInOneRecord) {
  const Bytes w = readFile(kCaptureDir / "curl-default-acr.bin");
  auto inside = [](std::string_view view, std::span<const uint8_t> buffer) {
    const auto* p = reinterpret_cast<const uint8_t*>(view.data());
    return p >= buffer.data() && p + view.size() <= buffer.data() + buffer.size();
  };
  ClientHelloParser p;
  ASSERT_EQ(p.parse(w), ClientHelloStatus::kDone);
  EXPECT_TRUE(inside(p.hello().sni, w));

  const Bytes framed = frame(messageOf(w), {100});
  p.reset();
  ASSERT_EQ(p.parse(framed), ClientHelloStatus::kDone);
  EXPECT_FALSE(inside(p.hello().sni, framed));
  EXPECT_EQ(p.hello().sni, "myregistry.azurecr.io");
}

// Bytes after the record that completes the hello are the caller's: not examined, not counted.
TEST(ClientHelloParserTest, BytesAfterTheHelloAreNotExamined) {
  const Bytes w = readFile(kCaptureDir / "openssl-default-acr.bin");
  const Bytes ccs = record(20, 0x0303, Bytes{1});
  for (const Bytes& tail : {ccs, toBytes("garbage"), Bytes(20000, 0xff)}) {
    const Bytes input = concat(w, tail);
    const Outcome o = parseOnce(input);
    EXPECT_EQ(o.status, ClientHelloStatus::kDone);
    EXPECT_EQ(o.wire_length, w.size());
    EXPECT_EQ(parseBytewise(input).decided_at, w.size());
  }
}

// P8: every strict prefix of every capture asks for more bytes, in one call or dribbled.
TEST(ClientHelloParserTest, P8TruncatedCapturesNeedMore) {
  EXPECT_EQ(parseOnce({}).status, ClientHelloStatus::kNeedMore);
  for (const CaptureCase& c : captureCases()) {
    SCOPED_TRACE(c.file);
    const Bytes w = readFile(kCaptureDir / c.file);
    for (size_t n = 0; n < w.size(); ++n) {
      ASSERT_EQ(parseOnce(std::span(w).first(n)).status, ClientHelloStatus::kNeedMore) << n;
    }
    // Dribbling already covers every prefix; cut the 1-byte-record framing too.
    const Bytes framed = frame(messageOf(w), {1});
    EXPECT_EQ(parseBytewise(std::span(framed).first(framed.size() - 1)).status,
              ClientHelloStatus::kNeedMore);
  }
}

// P1: zero bytes and plain HTTP are classified as not TLS from the first byte.
TEST(ClientHelloParserTest, P1NotTlsIsDecidedFromTheFirstByte) {
  for (const Bytes& input :
       {Bytes(100, 0), toBytes("GET / HTTP/1.1\r\nHost: myreg.azurecr.io\r\n\r\n"),
        toBytes("CONNECT myreg.azurecr.io:443 HTTP/1.1\r\n\r\n"),
        toBytes("SSH-2.0-OpenSSH_9.2\r\n"), toBytes("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")}) {
    const Outcome o = parseBytewise(input);
    EXPECT_EQ(o.status, ClientHelloStatus::kNotTls);
    EXPECT_EQ(o.error, ClientHelloError::kNotTls);
    EXPECT_EQ(o.decided_at, 1u);
    EXPECT_EQ(parseOnce(input).status, ClientHelloStatus::kNotTls);
  }
}

// P1: a high first byte needs 3 bytes to rule out SSLv2; sniproxy's 0xff x 5 is not TLS by then.
TEST(ClientHelloParserTest, P1HighFirstByteIsDecidedWithinThreeBytes) {
  const Outcome o = parseBytewise(Bytes(5, 0xff));
  EXPECT_EQ(o.status, ClientHelloStatus::kNotTls);
  EXPECT_EQ(o.decided_at, 3u);
  EXPECT_EQ(parseOnce(Bytes{0xff, 0xff}).status, ClientHelloStatus::kNeedMore);
}

// P2: a 16 KiB + 1 junk read is decided from its first bytes, with or without a 0x16 lead.
TEST(ClientHelloParserTest, P2HugeNonTlsReadIsDecidedFromTheHeader) {
  const struct {
    const char* name;
    Bytes input;
    ClientHelloStatus status;
    ClientHelloError error;
    size_t decided_at;
  } cases[] = {
      {"junk", Bytes(16385, 'A'), ClientHelloStatus::kNotTls, ClientHelloError::kNotTls, 1},
      {"0x16 then junk", concat(Bytes{0x16}, Bytes(16384, 'A')), ClientHelloStatus::kMalformed,
       ClientHelloError::kBadRecord, 5},
      {"record 0xffff then junk", concat(Bytes{0x16, 0x03, 0x01, 0xff, 0xff}, Bytes(16380, 'A')),
       ClientHelloStatus::kTooLarge, ClientHelloError::kTooLarge, 5},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    const Outcome o = parseBytewise(c.input);
    EXPECT_EQ(o.status, c.status);
    EXPECT_EQ(o.error, c.error);
    EXPECT_EQ(o.decided_at, c.decided_at);
    EXPECT_EQ(parseOnce(c.input).status, c.status);
  }
}

// P6: a first record of another TLS content type is refused from its first byte.
TEST(ClientHelloParserTest, P6OtherRecordTypeFirstIsBadRecord) {
  const Bytes message = handshake(body(HelloSpec{}));
  for (uint8_t type : {20, 21, 23, 24}) {
    SCOPED_TRACE(static_cast<int>(type));
    const Bytes input = record(type, 0x0303, message);
    const Outcome o = parseBytewise(input);
    EXPECT_EQ(o.status, ClientHelloStatus::kMalformed);
    EXPECT_EQ(o.error, ClientHelloError::kBadRecord);
    EXPECT_EQ(o.decided_at, 1u);
  }
}

// P6: an alert, CCS, application-data or heartbeat record between hello fragments is refused.
TEST(ClientHelloParserTest, P6RecordInterleavedBetweenFragmentsIsBadRecord) {
  const Bytes message = handshake(body(HelloSpec{}));
  const Bytes first = frame(std::span(message).first(10), {10});
  const Bytes rest = frame(std::span(message).subspan(10), {16384});
  for (uint8_t type : {20, 21, 23, 24, 0, 0x80}) {
    SCOPED_TRACE(static_cast<int>(type));
    const Bytes input = concat(concat(first, record(type, 0x0303, Bytes{1, 0})), rest);
    expectRejected(input, ClientHelloStatus::kMalformed, ClientHelloError::kBadRecord);
    EXPECT_EQ(parseBytewise(input).decided_at, first.size() + 5);
  }
}

// P7: an oversize record, an oversize handshake length and 0xFFFFFF are refused as soon as the
// header that declares them is complete, without waiting for (or buffering) the declared bytes.
TEST(ClientHelloParserTest, P7OversizeIsRefusedAtTheHeader) {
  const struct {
    const char* name;
    Bytes input;
    size_t decided_at;
  } cases[] = {
      {"record 16385", {0x16, 0x03, 0x01, 0x40, 0x01, 0x01, 0x00, 0x3f, 0xfd}, 5},
      {"handshake 17000", {0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0x42, 0x68}, 9},
      {"handshake 0xffffff", {0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0xff, 0xff, 0xff}, 9},
      {"handshake 16385 split",
       {0x16, 0x03, 0x01, 0x00, 0x02, 0x01, 0x00, 0x16, 0x03, 0x01, 0x00, 0x02, 0x40, 0x01},
       14},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    const Outcome o = parseBytewise(c.input);
    EXPECT_EQ(o.status, ClientHelloStatus::kTooLarge);
    EXPECT_EQ(o.error, ClientHelloError::kTooLarge);
    EXPECT_EQ(o.decided_at, c.decided_at);
  }
}

// P7: a body of exactly 16384 bytes is accepted (in two records, and dribbled); 16385 is not.
TEST(ClientHelloParserTest, P7BodyAtTheCapIsAccepted) {
  const Bytes message = handshake(body(paddedTo(ClientHelloParser::kMaxHandshakeSize)));
  ASSERT_EQ(message.size(), ClientHelloParser::kMaxHandshakeSize + 4);
  const Bytes framed = frame(message, {16384});
  const Outcome o = parseOnce(framed);
  EXPECT_EQ(o.status, ClientHelloStatus::kDone);
  EXPECT_EQ(o.sni, "myregistry.azurecr.io");
  EXPECT_EQ(parseBytewise(framed), o);

  const Bytes over =
      frame(handshake(body(paddedTo(ClientHelloParser::kMaxHandshakeSize + 1))), {16384});
  expectRejected(over, ClientHelloStatus::kTooLarge, ClientHelloError::kTooLarge);
}

// P7/R3: framing overhead is bounded too: 1-byte records may not carry the wire past 64 KiB.
TEST(ClientHelloParserTest, P7WireBytesAreBounded) {
  const Bytes small = handshake(body(paddedTo(10000)));
  const Bytes ok = frame(small, {1});
  ASSERT_LE(ok.size(), ClientHelloParser::kMaxWireBytes);
  EXPECT_EQ(parseOnce(ok).status, ClientHelloStatus::kDone);

  const Bytes big = frame(handshake(body(paddedTo(11000))), {1});
  ASSERT_GT(big.size(), ClientHelloParser::kMaxWireBytes);
  const Outcome o = parseBytewise(big);
  EXPECT_EQ(o.status, ClientHelloStatus::kTooLarge);
  EXPECT_LE(o.decided_at, ClientHelloParser::kMaxWireBytes + 5);  // + the header that crosses
  EXPECT_EQ(parseOnce(big).status, ClientHelloStatus::kTooLarge);
}

// P3/R3: a 16 KiB hello dribbled 1 byte per call over 2 records is parsed (the benchmark, not
// this test, shows the work is linear).
TEST(ClientHelloParserTest, P3LargestHelloDribbledParses) {
  const Bytes framed =
      frame(handshake(body(paddedTo(ClientHelloParser::kMaxHandshakeSize))), {8000});
  const Outcome o = parseBytewise(framed);
  EXPECT_EQ(o.status, ClientHelloStatus::kDone);
  EXPECT_EQ(o.wire_length, framed.size());
}

// P8: zero-length records and a handshake message too short to be a hello are refused.
TEST(ClientHelloParserTest, P8EmptyRecordsAndMessages) {
  const Bytes message = handshake(body(HelloSpec{}));
  const Bytes empty_record = record(kHandshake, 0x0301, Bytes{});
  expectRejected(empty_record, ClientHelloStatus::kMalformed, ClientHelloError::kBadRecord);
  expectRejected(concat(frame(std::span(message).first(2), {2}),
                        concat(empty_record, frame(std::span(message).subspan(2), {16384}))),
                 ClientHelloStatus::kMalformed, ClientHelloError::kBadRecord);
  expectRejected(record(kHandshake, 0x0301, handshake(Bytes{})), ClientHelloStatus::kMalformed,
                 ClientHelloError::kBadClientHello);
  expectRejected(record(kHandshake, 0x0301, handshake(Bytes(40, 3))), ClientHelloStatus::kMalformed,
                 ClientHelloError::kBadClientHello);
}

// A first handshake message other than ClientHello is refused once its type byte arrives.
TEST(ClientHelloParserTest, FirstMessageMustBeClientHello) {
  for (uint8_t type : {0, 2, 4, 11, 20, 255}) {
    SCOPED_TRACE(static_cast<int>(type));
    const Bytes input = record(kHandshake, 0x0301, handshake(body(HelloSpec{}), type));
    expectRejected(input, ClientHelloStatus::kMalformed, ClientHelloError::kBadClientHello);
    EXPECT_EQ(parseBytewise(input).decided_at, 9u);
  }
}

// A record that runs past the end of the hello (trailing bytes) is refused at its header.
TEST(ClientHelloParserTest, TrailingBytesInTheHellosRecordAreRefused) {
  const Bytes message = handshake(body(HelloSpec{}));
  const Bytes one = record(kHandshake, 0x0301, concat(message, Bytes{0}));
  expectRejected(one, ClientHelloStatus::kMalformed, ClientHelloError::kBadClientHello);
  EXPECT_EQ(parseBytewise(one).decided_at, 9u);
  // Split: the second record is one byte longer than what is left of the message.
  const Bytes first = frame(std::span(message).first(50), {50});
  const Bytes second = record(kHandshake, 0x0301, concat(std::span(message).subspan(50), Bytes{1}));
  const Bytes split = concat(first, second);
  expectRejected(split, ClientHelloStatus::kMalformed, ClientHelloError::kBadClientHello);
  EXPECT_EQ(parseBytewise(split).decided_at, first.size() + 5);
  // Header split over 1-byte records, then a record running past the end.
  const Bytes tiny =
      concat(frame(std::span(message).first(4), {1}),
             record(kHandshake, 0x0301, concat(std::span(message).subspan(4), Bytes{1})));
  expectRejected(tiny, ClientHelloStatus::kMalformed, ClientHelloError::kBadClientHello);
}

// P9: the classic lying inner lengths (sniproxy and HAProxy vectors) are refused.
TEST(ClientHelloParserTest, P9LyingLengthsAreRefused) {
  const Bytes good = wire(HelloSpec{});
  const std::vector<LengthField> fields = lengthFields(good);
  auto field = [&](std::string_view name) {
    const auto it = std::find_if(fields.begin(), fields.end(),
                                 [&](const LengthField& f) { return f.name == name; });
    EXPECT_NE(it, fields.end()) << name;
    return *it;
  };
  auto lie = [&](std::string_view name, int64_t delta) {
    return withLength(good, field(name), delta).value_or(Bytes{});
  };
  HelloSpec odd_suites;
  odd_suites.cipher_suites = {};
  HelloSpec no_compression;
  no_compression.compression_methods = {};
  HelloSpec long_session;
  long_session.session_id = Bytes(33, 1);
  // sniproxy bad_request_test: server_name ext length 0x0e but only 5 bytes follow.
  HelloSpec sniproxy;
  sniproxy.extensions = std::vector<Extension>{};
  Bytes sniproxy_wire = wire(sniproxy);
  {
    // Append the truncated extension and re-declare the outer lengths around it.
    const Bytes ext = {0x00, 0x00, 0x00, 0x0e, 0x00, 0x0c, 0x00, 0x00, 0x09};
    const std::vector<LengthField> f = lengthFields(sniproxy_wire);
    sniproxy_wire.insert(sniproxy_wire.end(), ext.begin(), ext.end());
    for (const LengthField& l : f) {
      if (l.name == "record_length" || l.name == "handshake_length" ||
          l.name == "extensions_length") {
        sniproxy_wire = withLength(sniproxy_wire, l, static_cast<int64_t>(ext.size())).value();
      }
    }
  }
  const struct {
    const char* name;
    Bytes input;
    ClientHelloError error;
  } cases[] = {
      {"session_id_length 33", wire(long_session), ClientHelloError::kBadClientHello},
      {"session_id_length past the body", lie("session_id_length", 200),
       ClientHelloError::kBadClientHello},
      {"cipher_suites_length odd", lie("cipher_suites_length", 1),
       ClientHelloError::kBadClientHello},
      {"cipher_suites_length overlong", lie("cipher_suites_length", 4000),
       ClientHelloError::kBadClientHello},
      {"cipher_suites empty", wire(odd_suites), ClientHelloError::kBadClientHello},
      {"compression_methods_length 0", wire(no_compression), ClientHelloError::kBadClientHello},
      {"extensions_length past the body", lie("extensions_length", 1),
       ClientHelloError::kBadClientHello},
      {"extensions_length short of the body", lie("extensions_length", -1),
       ClientHelloError::kBadClientHello},
      {"extension length past the block", lie("extension 43 length", 1),
       ClientHelloError::kBadClientHello},
      {"server_name_list_length > ext_len-2", lie("server_name_list_length", 1),
       ClientHelloError::kBadClientHello},
      {"server_name_list_length < ext_len-2", lie("server_name_list_length", -1),
       ClientHelloError::kBadClientHello},
      {"host_name_length past the list", lie("host_name_length", 1),
       ClientHelloError::kBadClientHello},
      {"host_name_length short of the list", lie("host_name_length", -1),
       ClientHelloError::kBadSni},
      {"sniproxy ext length 0x0e with 5 bytes", sniproxy_wire, ClientHelloError::kBadClientHello},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    ASSERT_FALSE(c.input.empty());
    expectRejected(c.input, ClientHelloStatus::kMalformed, c.error);
  }
}

// P9: every length field the parser reads, in every capture, is refused when it lies by one
// either way (never kDone): the record and handshake lengths by framing, the rest by CBS bounds.
TEST(ClientHelloParserTest, P9EveryLengthInEveryCaptureLyingByOneIsRefused) {
  for (const CaptureCase& c : captureCases()) {
    SCOPED_TRACE(c.file);
    const Bytes w = readFile(kCaptureDir / c.file);
    for (const LengthField& f : lengthFields(w)) {
      for (int64_t delta : {-1, 1}) {
        SCOPED_TRACE(testing::Message() << f.name << " at " << f.offset << " by " << delta);
        const std::optional<Bytes> lying = withLength(w, f, delta);
        if (!lying) {
          continue;
        }
        const Outcome once = parseOnce(*lying);
        EXPECT_NE(once.status, ClientHelloStatus::kDone);
        EXPECT_EQ(parseBytewise(*lying).status, once.status);
      }
    }
  }
}

// P10: bad host_name values are refused, never truncated at the NUL or read as another type.
TEST(ClientHelloParserTest, P10BadHostNamesAreBadSni) {
  using namespace std::string_view_literals;
  const struct {
    const char* name;
    Extension ext;
  } cases[] = {
      {"embedded NUL", sniExt("local\0ost"sv)},
      {"trailing NUL", sniExt("myregistry.azurecr.io\0"sv)},
      {"zero-length name", sniExt(""sv)},
      {"name_type 1", sniExtNames({"myregistry.azurecr.io"sv}, 1)},
      {"256-byte name", sniExt(std::string(256, 'a'))},
      {"empty list", {0, {0x00, 0x00}}},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    expectRejected(wire(withExtensions({c.ext})), ClientHelloStatus::kMalformed,
                   ClientHelloError::kBadSni);
  }
  const Outcome max = parseOnce(wire(withExtensions({sniExt(std::string(255, 'a'))})));
  EXPECT_EQ(max.status, ClientHelloStatus::kDone);
  EXPECT_EQ(max.sni.size(), 255u);
}

// P11: two names in one list are bad_sni; a repeated extension type is refused whatever it is.
TEST(ClientHelloParserTest, P11AmbiguousSniAndDuplicateExtensions) {
  expectRejected(wire(withExtensions({sniExtNames({"myregistry.azurecr.io", "evil.example"})})),
                 ClientHelloStatus::kMalformed, ClientHelloError::kBadSni);
  expectRejected(
      wire(withExtensions({sniExtNames({"myregistry.azurecr.io", "myregistry.azurecr.io"})})),
      ClientHelloStatus::kMalformed, ClientHelloError::kBadSni);
  const struct {
    const char* name;
    std::vector<Extension> extensions;
  } cases[] = {
      {"two server_name", {sniExt("myregistry.azurecr.io"), sniExt("evil.example")}},
      {"two identical server_name",
       {sniExt("myregistry.azurecr.io"), sniExt("myregistry.azurecr.io")}},
      {"server_name apart", {sniExt("a.b"), alpnExt({"h2"}), {0xff01, {0}}, sniExt("c.d")}},
      {"two ALPN", {alpnExt({"h2"}), alpnExt({"http/1.1"})}},
      {"two same GREASE", {{0x0a0a, {}}, sniExt("a.b"), {0x0a0a, {0}}}},
      {"two ECH", {{0xfe0d, {1}}, {0xfe0d, {1}}}},
      {"two unknown high types", {{0x7777, {}}, {0x1234, {}}, {0x7777, {}}}},
      {"two type 63", {{63, {}}, {63, {}}}},
      {"two type 64", {{64, {}}, {64, {}}}},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    expectRejected(wire(withExtensions(c.extensions)), ClientHelloStatus::kMalformed,
                   ClientHelloError::kDuplicateExtension);
  }
}

// P11: a duplicate is caught among many distinct extension types (the sort path, not only the
// low-type mask), and many distinct types are fine.
TEST(ClientHelloParserTest, P11DuplicateAmongManyExtensions) {
  std::vector<Extension> many;
  for (int t = 0; t < 3000; ++t) {
    many.push_back({static_cast<uint16_t>(60000 - t * 7), {}});
  }
  many.push_back(sniExt("myregistry.azurecr.io"));
  const Bytes distinct = frame(handshake(body(withExtensions(many))), {16384});
  EXPECT_EQ(parseOnce(distinct).status, ClientHelloStatus::kDone);
  many.insert(many.begin() + 5, many[1500]);
  expectRejected(frame(handshake(body(withExtensions(many))), {16384}),
                 ClientHelloStatus::kMalformed, ClientHelloError::kDuplicateExtension);
}

// P12: an SSLv2-compatible hello is legacy_hello after 3 bytes; SSLv3 is legacy_hello.
TEST(ClientHelloParserTest, P12LegacyHellos) {
  // SSLv2 CLIENT-HELLO as OpenSSL 0.9.8 sent it: 2-byte length with the high bit, msg_type 1,
  // version 3.1, cipher_spec/session_id/challenge lengths.
  const Bytes sslv2 = {0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15, 0x00, 0x00, 0x00, 0x10};
  const Outcome o = parseBytewise(sslv2);
  EXPECT_EQ(o.status, ClientHelloStatus::kMalformed);
  EXPECT_EQ(o.error, ClientHelloError::kLegacyHello);
  EXPECT_EQ(o.decided_at, 3u);
  EXPECT_EQ(parseOnce(std::span(sslv2).first(2)).status, ClientHelloStatus::kNeedMore);
  expectRejected(Bytes{0x80, 0x2e, 0x02, 0x03}, ClientHelloStatus::kNotTls,
                 ClientHelloError::kNotTls);

  HelloSpec ssl3;
  ssl3.legacy_version = 0x0300;
  ssl3.session_id = {};
  ssl3.cipher_suites = {0x000a, 0x002f};
  ssl3.extensions.reset();
  expectRejected(wire(ssl3, 0x0300), ClientHelloStatus::kMalformed, ClientHelloError::kLegacyHello);
}

// P13: record versions 0x0300..0x0304 are accepted (and otherwise ignored); other record
// versions are bad_record; client_version outside 0x0301..0x0303 is bad_clienthello.
TEST(ClientHelloParserTest, P13VersionOddities) {
  for (uint16_t v : {0x0300, 0x0301, 0x0302, 0x0303, 0x0304}) {
    SCOPED_TRACE(v);
    const Outcome o = parseOnce(wire(HelloSpec{}, v));
    EXPECT_EQ(o.status, ClientHelloStatus::kDone);
    // Later records are held to the same rule.
    const Bytes message = handshake(body(HelloSpec{}));
    EXPECT_EQ(parseOnce(concat(frame(std::span(message).first(9), {9}),
                               frame(std::span(message).subspan(9), {16384}, v)))
                  .status,
              ClientHelloStatus::kDone);
  }
  for (uint16_t v : {0x0410, 0x0200, 0x0305, 0x0000, 0x0303 + 0x0100, 0xfeff}) {
    SCOPED_TRACE(v);
    expectRejected(wire(HelloSpec{}, v), ClientHelloStatus::kMalformed,
                   ClientHelloError::kBadRecord);
    const Bytes message = handshake(body(HelloSpec{}));
    expectRejected(concat(frame(std::span(message).first(9), {9}),
                          frame(std::span(message).subspan(9), {16384}, v)),
                   ClientHelloStatus::kMalformed, ClientHelloError::kBadRecord);
  }
  // sniproxy vector: record version 0x0410 and length 0.
  expectRejected(Bytes{0x16, 0x04, 0x10, 0x00, 0x00}, ClientHelloStatus::kMalformed,
                 ClientHelloError::kBadRecord);
  for (uint16_t v : {0x0301, 0x0302, 0x0303}) {
    HelloSpec s;
    s.legacy_version = v;
    EXPECT_EQ(parseOnce(wire(s)).legacy_version, v);
  }
  for (uint16_t v : {0x0304, 0x0305, 0x0200, 0x0002, 0x7f1c, 0xfefd}) {
    SCOPED_TRACE(v);
    HelloSpec s;
    s.legacy_version = v;
    expectRejected(wire(s), ClientHelloStatus::kMalformed, ClientHelloError::kBadClientHello);
  }
}

// P14: TLS 1.3-only and GREASE-laden hellos parse; GREASE never decides max_version.
TEST(ClientHelloParserTest, P14ModernHellosWithGreaseParse) {
  HelloSpec tls13;
  tls13.cipher_suites = {0x1301};
  tls13.extensions = std::vector<Extension>{sniExt("myregistry.azurecr.io"), versionsExt({0x0304})};
  Outcome o = parseOnce(wire(tls13));
  EXPECT_EQ(o.status, ClientHelloStatus::kDone);
  EXPECT_EQ(o.legacy_version, 0x0303);
  EXPECT_EQ(o.max_version, 0x0304);

  HelloSpec grease;
  grease.cipher_suites = {0x3a3a, 0x1301, 0xfafa};
  grease.extensions = std::vector<Extension>{
      {0x0a0a, {}},
      sniExt("myregistry.azurecr.io"),
      u16ListExt(10, {0x2a2a, 0x11ec, 0x001d}),
      versionsExt({0x7a7a, 0x0304, 0x0303}),
      alpnExt({"h2"}),
      {0xfe0d, {0x00, 0x00, 0x01, 0x00, 0x01, 0x5a, 0x00, 0x02, 0xaa, 0xbb, 0x00, 0x01, 0xcc}},
      {0x1a1a, {0x00}},
  };
  o = parseOnce(wire(grease));
  EXPECT_EQ(o.status, ClientHelloStatus::kDone);
  EXPECT_EQ(o.sni, "myregistry.azurecr.io");
  EXPECT_EQ(o.max_version, 0x0304);
  EXPECT_TRUE(o.ech_offered);

  HelloSpec only_grease = tls13;
  only_grease.extensions->back() = versionsExt({0x8a8a});
  EXPECT_EQ(parseOnce(wire(only_grease)).max_version, 0x0303);
  HelloSpec older = tls13;
  older.extensions->back() = versionsExt({0x0301, 0x0302});
  EXPECT_EQ(parseOnce(wire(older)).max_version, 0x0302);
}

// P14: a hello with no extensions at all, or an empty extension block, parses without SNI.
TEST(ClientHelloParserTest, P14NoExtensionsParsesWithoutSni) {
  HelloSpec none;
  none.extensions.reset();
  for (const Bytes& input : {wire(none), wire(withExtensions({}))}) {
    const Outcome o = parseOnce(input);
    EXPECT_EQ(o.status, ClientHelloStatus::kDone);
    EXPECT_FALSE(o.has_sni);
    EXPECT_EQ(o.sni, "");
    EXPECT_EQ(o.alpn, "");
    EXPECT_EQ(o.max_version, 0x0303);
  }
  // One stray byte where the extensions length would start is a lie.
  Bytes stray = body(none);
  stray.push_back(0);
  expectRejected(record(kHandshake, 0x0301, handshake(stray)), ClientHelloStatus::kMalformed,
                 ClientHelloError::kBadClientHello);
}

// P15: long names are the parser's business only up to 255 bytes; label and total-length rules
// belong to the host-name policy, so a 64-byte label passes here.
TEST(ClientHelloParserTest, P15LongNamesParse) {
  const std::string label63(63, 'b');
  const std::vector<std::string> names = {
      std::string(240, 'a') + ".foo.com",                                    // 248 bytes
      label63 + "." + label63 + "." + label63 + "." + std::string(61, 'c'),  // 253 bytes
      std::string(64, 'd') + ".azurecr.io",
  };
  for (const std::string& name : names) {
    SCOPED_TRACE(name.size());
    const Bytes w = wire(withExtensions({sniExt(name)}));
    const Outcome o = parseOnce(w);
    EXPECT_EQ(o.status, ClientHelloStatus::kDone);
    EXPECT_EQ(o.sni, name);
    Outcome expected = o;
    const Bytes framed = frame(messageOf(w), {1});
    expected.wire_length = expected.decided_at = framed.size();
    EXPECT_EQ(parseBytewise(framed), expected);
  }
}

// ALPN is validated (non-empty list of non-empty names, exact framing) and exposed raw.
TEST(ClientHelloParserTest, AlpnIsValidated) {
  const Outcome o = parseOnce(wire(withExtensions({alpnExt({"h2", "http/1.1", "acme-tls/1"})})));
  EXPECT_EQ(o.status, ClientHelloStatus::kDone);
  EXPECT_EQ(alpnProtocols(o.alpn), (std::vector<std::string>{"h2", "http/1.1", "acme-tls/1"}));
  const struct {
    const char* name;
    Bytes data;
  } bad[] = {
      {"empty extension", {}},
      {"empty list", {0x00, 0x00}},
      {"zero-length protocol", {0x00, 0x04, 0x02, 'h', '2', 0x00}},
      {"only a zero-length protocol", {0x00, 0x01, 0x00}},
      {"protocol past the list", {0x00, 0x03, 0x03, 'h', '2'}},
      {"list past the extension", {0x00, 0x04, 0x02, 'h', '2'}},
      {"bytes after the list", {0x00, 0x03, 0x02, 'h', '2', 0x00}},
  };
  for (const auto& c : bad) {
    SCOPED_TRACE(c.name);
    expectRejected(wire(withExtensions({sniExt("a.b"), {16, c.data}})),
                   ClientHelloStatus::kMalformed, ClientHelloError::kBadClientHello);
  }
}

// supported_versions is validated: u8 length equal to the rest, even, at least one entry.
TEST(ClientHelloParserTest, SupportedVersionsIsValidated) {
  const struct {
    const char* name;
    Bytes data;
  } bad[] = {
      {"empty extension", {}},
      {"empty list", {0x00}},
      {"odd list", {0x01, 0x03}},
      {"odd list of 3", {0x03, 0x03, 0x04, 0x03}},
      {"list past the extension", {0x04, 0x03, 0x04}},
      {"bytes after the list", {0x02, 0x03, 0x04, 0x00}},
  };
  for (const auto& c : bad) {
    SCOPED_TRACE(c.name);
    expectRejected(wire(withExtensions({sniExt("a.b"), {43, c.data}})),
                   ClientHelloStatus::kMalformed, ClientHelloError::kBadClientHello);
  }
}

// encrypted_client_hello is flagged; a malformed outer ECH is refused as BoringSSL's server
// does; ESNI is flagged.
TEST(ClientHelloParserTest, EchAndEsniAreFlagged) {
  const Bytes outer = {0x00, 0x00, 0x01, 0x00, 0x01, 0x07, 0x00,
                       0x01, 0xee, 0x00, 0x02, 0x12, 0x34};
  Outcome o = parseOnce(wire(withExtensions({sniExt("cloudflare-ech.com"), {0xfe0d, outer}})));
  EXPECT_EQ(o.status, ClientHelloStatus::kDone);
  EXPECT_TRUE(o.ech_offered);
  EXPECT_EQ(o.sni, "cloudflare-ech.com");
  o = parseOnce(wire(withExtensions({sniExt("a.b"), {0xfe0d, {0x01}}})));  // inner marker
  EXPECT_TRUE(o.ech_offered);
  o = parseOnce(wire(withExtensions({sniExt("a.b"), {0xffce, {0x13, 0x01}}})));
  EXPECT_EQ(o.status, ClientHelloStatus::kDone);
  EXPECT_TRUE(o.esni_offered);
  EXPECT_FALSE(o.ech_offered);

  const std::vector<Bytes> bad = {
      {},
      {0x00, 0x00, 0x01},
      std::vector<uint8_t>(outer.begin(), outer.end() - 1),
      concat(outer, Bytes{0}),
  };
  for (const Bytes& data : bad) {
    expectRejected(wire(withExtensions({sniExt("a.b"), {0xfe0d, data}})),
                   ClientHelloStatus::kMalformed, ClientHelloError::kBadClientHello);
  }
}

// A final status sticks across calls, and reset() makes the parser reusable.
TEST(ClientHelloParserTest, FinalStatusSticksAndResetReuses) {
  ClientHelloParser p;
  const Bytes junk = toBytes("GET /");
  EXPECT_EQ(p.parse(junk), ClientHelloStatus::kNotTls);
  const Bytes w = readFile(kCaptureDir / "skopeo-go-default-acr.bin");
  EXPECT_EQ(p.parse(w), ClientHelloStatus::kNotTls);
  EXPECT_EQ(p.error(), ClientHelloError::kNotTls);
  p.reset();
  EXPECT_EQ(p.error(), ClientHelloError::kNone);
  EXPECT_EQ(p.parse(w), ClientHelloStatus::kDone);
  EXPECT_EQ(p.parse(w), ClientHelloStatus::kDone);
  EXPECT_EQ(p.hello().sni, "myregistry.azurecr.io");
  EXPECT_EQ(p.error(), ClientHelloError::kNone);
}

// Error names are the stable strings logs and metrics use.
TEST(ClientHelloParserTest, ErrorNamesAreStable) {
  const struct {
    ClientHelloError error;
    std::string_view name;
  } cases[] = {
      {ClientHelloError::kNone, "none"},
      {ClientHelloError::kNotTls, "not_tls"},
      {ClientHelloError::kLegacyHello, "legacy_hello"},
      {ClientHelloError::kBadRecord, "bad_record"},
      {ClientHelloError::kBadClientHello, "bad_clienthello"},
      {ClientHelloError::kBadSni, "bad_sni"},
      {ClientHelloError::kDuplicateExtension, "duplicate_extension"},
      {ClientHelloError::kTooLarge, "clienthello_too_large"},
  };
  for (const auto& c : cases) {
    EXPECT_EQ(clientHelloErrorName(c.error), c.name);
  }
}

// forEachAlpnProtocol walks well-formed lists in order and reports malformed ones.
TEST(ClientHelloParserTest, ForEachAlpnProtocolWalksTheList) {
  const struct {
    const char* name;
    Bytes list;
    bool ok;
    std::vector<std::string> protocols;
  } cases[] = {
      {"empty", {}, true, {}},
      {"two", {0x02, 'h', '2', 0x03, 'a', 'b', 'c'}, true, {"h2", "abc"}},
      {"zero-length entry", {0x02, 'h', '2', 0x00}, false, {"h2"}},
      {"entry past the end", {0x05, 'h', '2'}, false, {}},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    std::vector<std::string> seen;
    EXPECT_EQ(forEachAlpnProtocol(c.list, [&](std::string_view p) { seen.emplace_back(p); }), c.ok);
    EXPECT_EQ(seen, c.protocols);
  }
}

}  // namespace
}  // namespace acr
