// P16: our ClientHello parser against BoringSSL's own server on the same bytes. Hellos come from
// a real BoringSSL client across versions and options, from the real captures, and from
// mutations of the captures. The server reports what it saw from its select-certificate callback
// (which runs after BoringSSL has parsed the hello, checked duplicate extensions and extracted
// the SNI) and then refuses, so no handshake goes further.

#include <gtest/gtest.h>
#include <openssl/bio.h>
#include <openssl/bytestring.h>
#include <openssl/err.h>
#include <openssl/mem.h>
#include <openssl/ssl.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "filters/client_hello_parser.h"

namespace acr {
namespace {

using Bytes = std::vector<uint8_t>;

const std::filesystem::path kCaptureDir =
    std::filesystem::path(ACR_SHARED_DIR) / "data" / "clienthello";

std::vector<std::filesystem::path> capturePaths() {
  std::vector<std::filesystem::path> paths;
  for (const auto& entry : std::filesystem::directory_iterator(kCaptureDir)) {
    if (entry.path().extension() == ".bin") {
      paths.push_back(entry.path());
    }
  }
  std::sort(paths.begin(), paths.end());
  return paths;
}

Bytes readFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in) << path;
  return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void cbbOk(int result) { EXPECT_EQ(result, 1) << "CBB write failed"; }

Bytes finish(CBB* cbb) {
  uint8_t* data = nullptr;
  size_t len = 0;
  cbbOk(CBB_finish(cbb, &data, &len));
  Bytes out(data, data + len);
  OPENSSL_free(data);
  return out;
}

// Frames a handshake message into handshake records of at most `fragment` bytes.
Bytes frame(std::span<const uint8_t> message, size_t fragment) {
  CBB cbb;
  cbbOk(CBB_init(&cbb, message.size() + 64));
  for (size_t pos = 0; pos < message.size(); pos += fragment) {
    const size_t n = std::min(fragment, message.size() - pos);
    CBB payload;
    cbbOk(CBB_add_u8(&cbb, 22));
    cbbOk(CBB_add_u16(&cbb, 0x0301));
    cbbOk(CBB_add_u16_length_prefixed(&cbb, &payload));
    cbbOk(CBB_add_bytes(&payload, message.data() + pos, n));
  }
  return finish(&cbb);
}

// A one-record hello taken apart so that its extension list can be edited and re-serialised.
struct SplitHello {
  Bytes head;  // body up to (not including) the extensions length
  std::vector<std::pair<uint16_t, Bytes>> extensions;
};

SplitHello split(std::span<const uint8_t> wire) {
  SplitHello s;
  CBS cbs;
  CBS payload;
  CBS message;
  CBS_init(&cbs, wire.data(), wire.size());
  EXPECT_TRUE(CBS_skip(&cbs, 3) && CBS_get_u16_length_prefixed(&cbs, &payload) &&
              CBS_skip(&payload, 1) && CBS_get_u24_length_prefixed(&payload, &message));
  CBS body = message;
  CBS part;
  EXPECT_TRUE(CBS_skip(&body, 34) && CBS_get_u8_length_prefixed(&body, &part) &&
              CBS_get_u16_length_prefixed(&body, &part) &&
              CBS_get_u8_length_prefixed(&body, &part));
  s.head.assign(CBS_data(&message), CBS_data(&body));
  CBS extensions;
  EXPECT_TRUE(CBS_get_u16_length_prefixed(&body, &extensions));
  while (CBS_len(&extensions) > 0) {
    uint16_t type = 0;
    CBS data;
    EXPECT_TRUE(CBS_get_u16(&extensions, &type) && CBS_get_u16_length_prefixed(&extensions, &data));
    s.extensions.emplace_back(type, Bytes(CBS_data(&data), CBS_data(&data) + CBS_len(&data)));
  }
  return s;
}

Bytes join(const SplitHello& s) {
  CBB cbb;
  CBB message;
  CBB body;
  CBB extensions;
  cbbOk(CBB_init(&cbb, 2048));
  cbbOk(CBB_add_u8(&cbb, 1));
  cbbOk(CBB_add_u24_length_prefixed(&cbb, &message));
  cbbOk(CBB_add_bytes(&message, s.head.data(), s.head.size()));
  cbbOk(CBB_add_u16_length_prefixed(&message, &extensions));
  for (const auto& [type, data] : s.extensions) {
    cbbOk(CBB_add_u16(&extensions, type));
    cbbOk(CBB_add_u16_length_prefixed(&extensions, &body));
    cbbOk(CBB_add_bytes(&body, data.data(), data.size()));
  }
  const Bytes m = finish(&cbb);
  return frame(m, 16384);
}

// ---- BoringSSL's side ----

// What BoringSSL's server made of the bytes.
struct ServerView {
  enum class Result { kAccepted, kRejected, kWantRead };
  Result result = Result::kRejected;
  bool has_sni = false;  // SSL_get_servername in the callback
  std::string sni;
  bool sni_extension = false;  // SSL_early_callback_ctx_extension_get(server_name)
  uint16_t version = 0;        // ClientHello.legacy_version as BoringSSL read it
  std::optional<Bytes> alpn;   // extension bodies, for the stricter-reason checks
  std::optional<Bytes> supported_versions;
  std::string error;  // BoringSSL's reason when it refused
};

void PrintTo(ServerView::Result r, std::ostream* os) {
  static const char* const kNames[] = {"accepted", "rejected", "want_read"};
  *os << kNames[static_cast<int>(r)];
}

int viewIndex() {
  static const int index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}

std::optional<Bytes> extension(const SSL_CLIENT_HELLO* hello, uint16_t type) {
  const uint8_t* data = nullptr;
  size_t len = 0;
  if (!SSL_early_callback_ctx_extension_get(hello, type, &data, &len)) {
    return std::nullopt;
  }
  return Bytes(data, data + len);
}

ssl_select_cert_result_t recordAndRefuse(const SSL_CLIENT_HELLO* hello) {
  auto* view = static_cast<ServerView*>(SSL_get_ex_data(hello->ssl, viewIndex()));
  view->result = ServerView::Result::kAccepted;
  if (const char* name = SSL_get_servername(hello->ssl, TLSEXT_NAMETYPE_host_name)) {
    view->has_sni = true;
    view->sni = name;
  }
  view->sni_extension = extension(hello, TLSEXT_TYPE_server_name).has_value();
  view->version = hello->version;
  view->alpn = extension(hello, TLSEXT_TYPE_application_layer_protocol_negotiation);
  view->supported_versions = extension(hello, TLSEXT_TYPE_supported_versions);
  return ssl_select_cert_error;
}

// Feeds bytes to a fresh BoringSSL server and reports what its select-certificate callback saw.
ServerView serverView(std::span<const uint8_t> input) {
  static SSL_CTX* const ctx = [] {
    SSL_CTX* c = SSL_CTX_new(TLS_method());
    SSL_CTX_set_select_certificate_cb(c, recordAndRefuse);
    return c;
  }();
  ServerView view;
  bssl::UniquePtr<SSL> ssl(SSL_new(ctx));
  BIO* rbio = BIO_new(BIO_s_mem());
  BIO* wbio = BIO_new(BIO_s_mem());
  BIO_set_mem_eof_return(rbio, -1);  // no more bytes yet, rather than end of stream
  EXPECT_EQ(BIO_write(rbio, input.data(), static_cast<int>(input.size())),
            static_cast<int>(input.size()));
  SSL_set_bio(ssl.get(), rbio, wbio);
  SSL_set_accept_state(ssl.get());
  SSL_set_ex_data(ssl.get(), viewIndex(), &view);
  const int ret = SSL_do_handshake(ssl.get());
  EXPECT_LE(ret, 0) << "the callback refuses every handshake";
  if (view.result != ServerView::Result::kAccepted) {
    view.result = SSL_get_error(ssl.get(), ret) == SSL_ERROR_WANT_READ
                      ? ServerView::Result::kWantRead
                      : ServerView::Result::kRejected;
    if (const uint32_t e = ERR_peek_error()) {
      view.error = ERR_reason_error_string(e) != nullptr ? ERR_reason_error_string(e) : "?";
    }
  }
  ERR_clear_error();
  return view;
}

// ---- Our side ----

struct OurView {
  ClientHelloStatus status = ClientHelloStatus::kNeedMore;
  ClientHelloError error = ClientHelloError::kNone;
  bool has_sni = false;
  std::string sni;
  Bytes alpn;
  uint16_t legacy_version = 0;
  uint16_t max_version = 0;
};

OurView ourView(std::span<const uint8_t> input) {
  ClientHelloParser p;
  OurView v;
  v.status = p.parse(input);
  v.error = p.error();
  if (v.status == ClientHelloStatus::kDone) {
    v.has_sni = p.hello().has_sni;
    v.sni = std::string(p.hello().sni);
    v.alpn.assign(p.hello().alpn.begin(), p.hello().alpn.end());
    v.legacy_version = p.hello().legacy_version;
    v.max_version = p.hello().max_version;
  }
  return v;
}

// ---- Where we are stricter than BoringSSL's server, on purpose ----

// The records up to the end of the handshake message, as the parser would frame them.
struct Framing {
  bool sslv2 = false;
  bool bad_record_version = false;  // a version outside 0x0300..0x0304 (BoringSSL: any 0x03xx)
  bool trailing_bytes = false;      // the record ending the hello holds more after it
};

Framing framingOf(std::span<const uint8_t> input) {
  Framing f;
  f.sslv2 = !input.empty() && (input[0] & 0x80) != 0;
  CBS cbs;
  CBS_init(&cbs, input.data(), input.size());
  Bytes message;
  uint8_t type = 0;
  uint16_t version = 0;
  CBS fragment;
  while (CBS_get_u8(&cbs, &type) && CBS_get_u16(&cbs, &version) &&
         CBS_get_u16_length_prefixed(&cbs, &fragment)) {
    f.bad_record_version |= (version >> 8) != 3 || (version & 0xff) > 4;
    message.insert(message.end(), CBS_data(&fragment), CBS_data(&fragment) + CBS_len(&fragment));
    CBS header;
    CBS_init(&header, message.data(), message.size());
    uint32_t body_len = 0;
    if (CBS_skip(&header, 1) && CBS_get_u24(&header, &body_len) && CBS_len(&header) >= body_len) {
      f.trailing_bytes = CBS_len(&header) > body_len;
      break;
    }
  }
  return f;
}

bool validAlpn(const Bytes& ext) {
  CBS cbs;
  CBS list;
  CBS_init(&cbs, ext.data(), ext.size());
  if (!CBS_get_u16_length_prefixed(&cbs, &list) || CBS_len(&cbs) != 0 || CBS_len(&list) == 0) {
    return false;
  }
  while (CBS_len(&list) > 0) {
    CBS name;
    if (!CBS_get_u8_length_prefixed(&list, &name) || CBS_len(&name) == 0) {
      return false;
    }
  }
  return true;
}

bool validSupportedVersions(const Bytes& ext) {
  CBS cbs;
  CBS list;
  CBS_init(&cbs, ext.data(), ext.size());
  return CBS_get_u8_length_prefixed(&cbs, &list) && CBS_len(&cbs) == 0 && CBS_len(&list) >= 2 &&
         CBS_len(&list) % 2 == 0;
}

// The documented reasons we may refuse a hello that BoringSSL's select-certificate callback
// accepted. BoringSSL checks these later in its handshake or not at all; a proxy that refuses
// them early loses nothing real clients send (none of the captures or generated hellos hits one).
//   sslv2_compatible_hello  - SSLv2 framing cannot carry SNI; refused as legacy_hello
//   record_version          - record version outside 0x0300..0x0304 (BoringSSL takes any 0x03xx)
//   trailing_bytes          - the record ending the hello holds more handshake bytes: the
//                             client's first flight is the ClientHello alone
//   client_version          - legacy_version outside 0x0301..0x0303 (version negotiation runs
//                             after the callback in BoringSSL)
//   alpn_malformed          - BoringSSL parses ALPN after the callback, and only with an ALPN
//                             callback installed
//   supported_versions_malformed - parsed during version negotiation, after the callback
std::optional<std::string> stricterReason(std::span<const uint8_t> input, const ServerView& s) {
  const Framing f = framingOf(input);
  if (f.sslv2) {
    return "sslv2_compatible_hello";
  }
  if (f.bad_record_version) {
    return "record_version";
  }
  if (f.trailing_bytes) {
    return "trailing_bytes";
  }
  if (s.version < 0x0301 || s.version > 0x0303) {
    return "client_version";
  }
  if (s.alpn && !validAlpn(*s.alpn)) {
    return "alpn_malformed";
  }
  if (s.supported_versions && !validSupportedVersions(*s.supported_versions)) {
    return "supported_versions_malformed";
  }
  return std::nullopt;
}

std::string describe(std::span<const uint8_t> input, const OurView& ours, const ServerView& s) {
  std::string text = "ours: " + std::string(clientHelloErrorName(ours.error)) + " status " +
                     std::to_string(static_cast<int>(ours.status)) + " sni '" + ours.sni +
                     "'; boringssl: " + testing::PrintToString(s.result) + " '" + s.error +
                     "' sni '" + s.sni + "'; first bytes:";
  static const char kHex[] = "0123456789abcdef";
  for (size_t i = 0; i < std::min<size_t>(input.size(), 16); ++i) {
    text += ' ';
    text += kHex[input[i] >> 4];
    text += kHex[input[i] & 0xf];
  }
  return text;
}

// Compares both views of `input` under the differential contract; returns BoringSSL's view.
// Counts how often each side decided, so tests can show the mutations reach both outcomes.
struct Tally {
  int both_done = 0;
  int both_refused = 0;
  std::map<std::string, int> we_are_stricter;  // by reason
  int want_more = 0;
};

ServerView expectAgreement(std::span<const uint8_t> input, Tally* tally = nullptr) {
  const ServerView s = serverView(input);
  const OurView ours = ourView(input);
  const std::string what = describe(input, ours, s);
  EXPECT_EQ(s.has_sni, s.sni_extension) << what;
  if (ours.status == ClientHelloStatus::kDone) {
    // We never accept what BoringSSL's parser refused, and we read the same name.
    EXPECT_EQ(s.result, ServerView::Result::kAccepted) << what;
    EXPECT_EQ(ours.has_sni, s.has_sni) << what;
    EXPECT_EQ(ours.sni, s.sni) << what;
    if (tally) {
      ++tally->both_done;
    }
  } else if (s.result == ServerView::Result::kAccepted) {
    // BoringSSL accepted and we did not: only for a documented stricter reason.
    const std::optional<std::string> reason = stricterReason(input, s);
    EXPECT_TRUE(reason.has_value()) << what;
    EXPECT_NE(ours.status, ClientHelloStatus::kNeedMore) << what;
    if (tally) {
      ++tally->we_are_stricter[reason.value_or("none")];
    }
  } else if (tally) {
    ++(ours.status == ClientHelloStatus::kNeedMore ? tally->want_more : tally->both_refused);
  }
  return s;
}

// ---- Hellos from a real BoringSSL client ----

struct ClientOptions {
  uint16_t min_version;
  uint16_t max_version;
  const char* sni;  // nullptr: no server_name
  Bytes alpn;       // wire-format protocol list; empty: no ALPN
  bool grease;
  bool ech_grease;
  size_t max_fragment;  // 0: default record size
};

Bytes clientHello(const ClientOptions& o) {
  bssl::UniquePtr<SSL_CTX> ctx(SSL_CTX_new(TLS_method()));
  SSL_CTX_set_grease_enabled(ctx.get(), o.grease);
  bssl::UniquePtr<SSL> ssl(SSL_new(ctx.get()));
  EXPECT_TRUE(SSL_set_min_proto_version(ssl.get(), o.min_version));
  EXPECT_TRUE(SSL_set_max_proto_version(ssl.get(), o.max_version));
  if (o.sni != nullptr) {
    EXPECT_TRUE(SSL_set_tlsext_host_name(ssl.get(), o.sni));
  }
  if (!o.alpn.empty()) {
    EXPECT_EQ(SSL_set_alpn_protos(ssl.get(), o.alpn.data(), static_cast<unsigned>(o.alpn.size())),
              0);
  }
  SSL_set_enable_ech_grease(ssl.get(), o.ech_grease);
  SSL_set_permute_extensions(ssl.get(), o.grease);
  if (o.max_fragment != 0) {
    EXPECT_TRUE(SSL_set_max_send_fragment(ssl.get(), o.max_fragment));
  }
  BIO* rbio = BIO_new(BIO_s_mem());
  BIO* wbio = BIO_new(BIO_s_mem());
  BIO_set_mem_eof_return(rbio, -1);
  SSL_set_bio(ssl.get(), rbio, wbio);
  SSL_set_connect_state(ssl.get());
  const int ret = SSL_do_handshake(ssl.get());
  EXPECT_EQ(SSL_get_error(ssl.get(), ret), SSL_ERROR_WANT_READ);
  const uint8_t* data = nullptr;
  size_t len = 0;
  EXPECT_TRUE(BIO_mem_contents(wbio, &data, &len));
  ERR_clear_error();
  return Bytes(data, data + len);
}

Bytes alpnList(const std::vector<std::string>& protocols) {
  Bytes out;
  for (const std::string& p : protocols) {
    out.push_back(static_cast<uint8_t>(p.size()));
    out.insert(out.end(), p.begin(), p.end());
  }
  return out;
}

// Hellos BoringSSL's client writes for every version range, with and without SNI, ALPN, GREASE
// (with extension permutation) and ECH GREASE, parse to exactly the SNI BoringSSL's server reads,
// also when re-framed into 1-byte records; the options show up in what we report.
TEST(ClientHelloDifferentialTest, P16GeneratedHellosAgreeWithBoringSslServer) {
  const std::string long_name = std::string(63, 'a') + "." + std::string(63, 'b') + "." +
                                std::string(63, 'c') + "." + std::string(61, 'd');
  const uint16_t versions[] = {TLS1_VERSION, TLS1_1_VERSION, TLS1_2_VERSION, TLS1_3_VERSION};
  const char* const names[] = {nullptr, "myregistry.azurecr.io", long_name.c_str()};
  const Bytes alpns[] = {{}, alpnList({"h2", "http/1.1"})};
  int hellos = 0;
  for (uint16_t min : versions) {
    for (uint16_t max : versions) {
      if (min > max) {
        continue;
      }
      for (const char* name : names) {
        for (const Bytes& alpn : alpns) {
          for (int flags = 0; flags < 4; ++flags) {
            const ClientOptions o = {min, max, name, alpn, (flags & 1) != 0, (flags & 2) != 0, 0};
            SCOPED_TRACE(testing::Message()
                         << std::hex << "min 0x" << min << " max 0x" << max << std::dec << " sni "
                         << (name ? name : "-") << " alpn " << alpn.size() << " flags " << flags);
            const Bytes hello = clientHello(o);
            const ServerView s = expectAgreement(hello);
            ASSERT_EQ(s.result, ServerView::Result::kAccepted) << s.error;
            const OurView ours = ourView(hello);
            ASSERT_EQ(ours.status, ClientHelloStatus::kDone) << clientHelloErrorName(ours.error);
            EXPECT_EQ(ours.has_sni, name != nullptr);
            EXPECT_EQ(ours.sni, name ? name : "");
            EXPECT_EQ(ours.alpn, alpn);
            EXPECT_EQ(ours.max_version, max);
            // The same message in 1-byte records: BoringSSL reassembles it too.
            CBS cbs;
            CBS message;
            CBS_init(&cbs, hello.data(), hello.size());
            ASSERT_TRUE(CBS_skip(&cbs, 3) && CBS_get_u16_length_prefixed(&cbs, &message));
            const Bytes tiny = frame(std::span(CBS_data(&message), CBS_len(&message)), 1);
            EXPECT_EQ(expectAgreement(tiny).result, ServerView::Result::kAccepted);
            EXPECT_EQ(ourView(tiny).sni, ours.sni);
            ++hellos;
          }
        }
      }
    }
  }
  EXPECT_EQ(hellos, 10 * 3 * 2 * 4);
}

// P5: a BoringSSL client with a 512-byte record limit and a large ALPN list writes a hello in
// several records of its own; both parsers reassemble it to the same SNI.
TEST(ClientHelloDifferentialTest, P5MultiRecordHellosFromBoringSslClient) {
  std::vector<std::string> many;
  for (int i = 0; i < 60; ++i) {
    many.push_back("protocol-" + std::to_string(i));
  }
  for (uint16_t max : {TLS1_2_VERSION, TLS1_3_VERSION}) {
    const ClientOptions o = {TLS1_VERSION, max, "myregistry.azurecr.io", alpnList(many), true,
                             true,         512};
    const Bytes hello = clientHello(o);
    CBS cbs;
    CBS first;
    CBS_init(&cbs, hello.data(), hello.size());
    ASSERT_TRUE(CBS_skip(&cbs, 3) && CBS_get_u16_length_prefixed(&cbs, &first));
    ASSERT_GT(CBS_len(&cbs), 0u) << "expected more than one record";
    const ServerView s = expectAgreement(hello);
    EXPECT_EQ(s.result, ServerView::Result::kAccepted);
    const OurView ours = ourView(hello);
    EXPECT_EQ(ours.status, ClientHelloStatus::kDone);
    EXPECT_EQ(ours.sni, "myregistry.azurecr.io");
    EXPECT_EQ(ours.alpn, alpnList(many));
  }
}

// Every real capture, whole and re-framed into 2 and 1-byte records, gets the same SNI from
// both parsers, and BoringSSL's server accepts all of them.
TEST(ClientHelloDifferentialTest, P16CapturesAgreeWithBoringSslServer) {
  const auto paths = capturePaths();
  ASSERT_FALSE(paths.empty());
  for (const auto& path : paths) {
    SCOPED_TRACE(path.filename().string());
    const Bytes w = readFile(path);
    const ServerView s = expectAgreement(w);
    EXPECT_EQ(s.result, ServerView::Result::kAccepted) << s.error;
    EXPECT_EQ(ourView(w).status, ClientHelloStatus::kDone);
    const std::span<const uint8_t> message = std::span(w).subspan(5);
    for (size_t fragment : {message.size() / 2 + 1, size_t{1}}) {
      EXPECT_EQ(expectAgreement(frame(message, fragment)).result, ServerView::Result::kAccepted);
    }
  }
}

// Every truncation of every capture: neither side accepts, and BoringSSL asks for more bytes
// exactly where we do.
TEST(ClientHelloDifferentialTest, P8TruncatedCapturesAgree) {
  for (const auto& path : capturePaths()) {
    SCOPED_TRACE(path.filename().string());
    const Bytes w = readFile(path);
    for (size_t n = 0; n < w.size(); n += 1 + n / 64) {
      const ServerView s = expectAgreement(std::span(w).first(n));
      EXPECT_EQ(s.result, ServerView::Result::kWantRead) << n;
    }
  }
}

// Every byte of every capture changed (three ways each), plus random multi-byte damage: whenever
// both finish they read the same SNI, we never accept what BoringSSL refuses, and we refuse what
// it accepts only for a documented reason.
TEST(ClientHelloDifferentialTest, P16MutatedCapturesAgree) {
  std::mt19937 rng(6066);
  Tally tally;
  for (const auto& path : capturePaths()) {
    SCOPED_TRACE(path.filename().string());
    const Bytes w = readFile(path);
    for (size_t i = 0; i < w.size(); ++i) {
      for (uint8_t mask : {uint8_t{0x01}, uint8_t{0x80}, static_cast<uint8_t>(rng() | 1)}) {
        Bytes m = w;
        m[i] ^= mask;
        expectAgreement(m, &tally);
      }
      Bytes zero = w;
      zero[i] = 0;
      expectAgreement(zero, &tally);
    }
    for (int round = 0; round < 200; ++round) {
      Bytes m = w;
      const int hits = 1 + static_cast<int>(rng() % 4);
      for (int h = 0; h < hits; ++h) {
        m[rng() % m.size()] = static_cast<uint8_t>(rng());
      }
      expectAgreement(m, &tally);
    }
  }
  // The mutations reach every branch of the contract.
  EXPECT_GT(tally.both_done, 0);
  EXPECT_GT(tally.both_refused, 0);
  EXPECT_GT(tally.want_more, 0);
  std::cout << "mutations: both done " << tally.both_done << ", both refused " << tally.both_refused
            << ", both want more " << tally.want_more << ", we stricter:";
  for (const auto& [reason, count] : tally.we_are_stricter) {
    std::cout << " " << reason << " " << count;
  }
  std::cout << "\n";
}

// P11: a second server_name (same or another name), or a repeat of any other extension, in a
// real capture is refused by both parsers.
TEST(ClientHelloDifferentialTest, P11DuplicateExtensionsInCapturesAreRefusedByBoth) {
  for (const auto& path : capturePaths()) {
    SCOPED_TRACE(path.filename().string());
    const SplitHello original = split(readFile(path));
    ASSERT_EQ(expectAgreement(join(original)).result, ServerView::Result::kAccepted);
    for (size_t i = 0; i < original.extensions.size(); ++i) {
      SplitHello twice = original;
      twice.extensions.insert(twice.extensions.begin() + static_cast<std::ptrdiff_t>(i) + 1,
                              original.extensions[i]);
      const Bytes input = join(twice);
      EXPECT_EQ(expectAgreement(input).result, ServerView::Result::kRejected) << i;
      EXPECT_EQ(ourView(input).error, ClientHelloError::kDuplicateExtension) << i;
    }
    SplitHello other = original;
    other.extensions.emplace_back(0, Bytes{0x00, 0x0f, 0x00, 0x00, 0x0c, 'e', 'v', 'i', 'l', '.',
                                           'e', 'x', 'a', 'm', 'p', 'l', 'e'});
    const Bytes input = join(other);
    const bool had_sni = std::any_of(original.extensions.begin(), original.extensions.end(),
                                     [](const auto& e) { return e.first == 0; });
    const ServerView s = expectAgreement(input);
    EXPECT_EQ(s.result, had_sni ? ServerView::Result::kRejected : ServerView::Result::kAccepted);
  }
}

// P10: bad host names spliced into a real capture are refused by both parsers.
TEST(ClientHelloDifferentialTest, P10BadHostNamesInCapturesAreRefusedByBoth) {
  using namespace std::string_view_literals;
  const SplitHello original = split(readFile(kCaptureDir / "skopeo-go-default-acr.bin"));
  const std::string long_name(256, 'a');
  const std::vector<std::pair<uint8_t, std::string_view>> names = {
      {0, "local\0ost"sv}, {0, ""sv}, {1, "myregistry.azurecr.io"sv}, {0, long_name}};
  for (const auto& [name_type, name] : names) {
    SCOPED_TRACE(testing::Message() << "type " << int{name_type} << " size " << name.size());
    SplitHello h = original;
    for (auto& [type, data] : h.extensions) {
      if (type == 0) {
        CBB cbb;
        CBB list;
        CBB host;
        cbbOk(CBB_init(&cbb, 300));
        cbbOk(CBB_add_u16_length_prefixed(&cbb, &list));
        cbbOk(CBB_add_u8(&list, name_type));
        cbbOk(CBB_add_u16_length_prefixed(&list, &host));
        cbbOk(CBB_add_bytes(&host, reinterpret_cast<const uint8_t*>(name.data()), name.size()));
        data = finish(&cbb);
      }
    }
    const Bytes input = join(h);
    EXPECT_EQ(expectAgreement(input).result, ServerView::Result::kRejected);
    EXPECT_EQ(ourView(input).error, ClientHelloError::kBadSni);
  }
}

}  // namespace
}  // namespace acr
