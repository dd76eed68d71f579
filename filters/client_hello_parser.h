#pragma once

#include <openssl/bytestring.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

namespace acr {

// Progress of a ClientHelloParser. Every value but kNeedMore is final.
enum class ClientHelloStatus : uint8_t {
  kNeedMore,   // the bytes so far are a valid prefix; call parse() again with more
  kNotTls,     // the peer speaks another protocol
  kMalformed,  // TLS, but not a ClientHello this proxy accepts; error() says why
  kTooLarge,   // a record, the hello or its framing exceeds a fixed cap
  kDone,       // hello() holds the parsed ClientHello
};

// Why a hello was refused. clientHelloErrorName() gives the stable name used by logs, metric
// labels and tests.
enum class ClientHelloError : uint8_t {
  kNone,
  kNotTls,              // "not_tls": first byte is neither a TLS record nor an SSLv2 hello
  kLegacyHello,         // "legacy_hello": SSLv2-compatible hello or SSLv3 (client_version 0x0300)
  kBadRecord,           // "bad_record": record type not handshake (first or between fragments),
                        // record version outside 0x0300..0x0304, zero-length record
  kBadClientHello,      // "bad_clienthello": a length that lies, trailing bytes, bad
                        // client_version, first handshake message not a ClientHello, malformed
                        // ALPN, supported_versions or encrypted_client_hello
  kBadSni,              // "bad_sni": name_type != 0, empty or > 255-byte name, NUL in the name,
                        // more than one name, empty list
  kDuplicateExtension,  // "duplicate_extension": an extension type appears twice
  kTooLarge,            // "clienthello_too_large": record > 16384, hello body > 16384, or more
                        // than kMaxWireBytes of records before the hello ends
};

std::string_view clientHelloErrorName(ClientHelloError e) noexcept;

// What the proxy needs from a ClientHello. Views alias either the caller's input (the hello was
// inside the first record) or the parser's own buffer (it spanned several records): they stay
// valid while both the input and the parser are alive, unmoved and not reset().
struct ClientHello {
  std::string_view sni;           // empty when has_sni is false; 1..255 bytes, no NUL otherwise
  bool has_sni = false;           // a server_name extension with one host_name was present
  std::span<const uint8_t> alpn;  // ALPN protocol_name_list body (without its 2-byte length),
                                  // validated; empty if ALPN is absent
  bool ech_offered = false;       // extension 0xfe0d present (GREASE or real: cannot tell)
  bool esni_offered = false;      // obsolete ESNI extension 0xffce present
  uint16_t legacy_version = 0;    // ClientHello.legacy_version (0x0301..0x0303)
  uint16_t max_version = 0;       // highest non-GREASE supported_versions entry, else
                                  // legacy_version
  size_t wire_length = 0;         // bytes of input (record headers included) up to the end of
                                  // the record that completes the ClientHello
};

// Calls f(std::string_view protocol) for each protocol of an ALPN protocol_name_list body, in
// wire order. Returns false if the list is malformed (a zero-length protocol or a length past the
// end); f may already have been called for the protocols before the fault. The alpn of a hello
// that parsed kDone is always well formed; an empty span is an empty list and returns true.
template <class F>
bool forEachAlpnProtocol(std::span<const uint8_t> alpn, F&& f) {
  CBS list(bssl::MakeConstSpan(alpn.data(), alpn.size()));
  while (bssl::Span<const uint8_t>(list).size() > 0) {
    CBS name;
    if (!CBS_get_u8_length_prefixed(&list, &name)) {
      return false;
    }
    const bssl::Span<const uint8_t> protocol = name;
    if (protocol.empty()) {
      return false;
    }
    f(std::string_view(reinterpret_cast<const char*>(protocol.data()), protocol.size()));
  }
  return true;
}

// Incremental, bounded parser of the first TLS ClientHello on a connection (the client's first
// flight), for SNI-based policy. One object per connection; it holds about 24 KiB, so embed it
// in the connection rather than on a small stack. No I/O, logging or heap allocation.
class ClientHelloParser {
 public:
  // ClientHello body cap, the same as Envoy's tls_inspector and BoringSSL's server.
  static constexpr size_t kMaxHandshakeSize = 16384;
  // TLSPlaintext.length cap (RFC 8446 5.1).
  static constexpr size_t kMaxRecordSize = 16384;
  // Cap on record headers plus fragments up to the end of the hello: a hello cut into 1-byte
  // records costs 6 wire bytes per hello byte, so this bounds the work of such framing too.
  static constexpr size_t kMaxWireBytes = 65536;

  // `max_handshake_size` lowers the hello body cap (--max-client-hello-size); values above
  // kMaxHandshakeSize are clamped to it, so the buffer stays fixed.
  explicit ClientHelloParser(size_t max_handshake_size = kMaxHandshakeSize) noexcept
      : max_handshake_size_(max_handshake_size < kMaxHandshakeSize ? max_handshake_size
                                                                   : kMaxHandshakeSize) {}

  // `input` is every byte received so far on the connection; each call passes a longer (or
  // equal) prefix of the same stream, possibly at a different address. Work is linear in the
  // total bytes: bytes already examined are never examined again.
  // Returns kNeedMore until the bytes decide, then a final status which every later call
  // returns again: kDone (hello() is valid), kNotTls, kMalformed or kTooLarge (error() says why).
  // Decisions come as early as the bytes allow: after 1 byte for another protocol (kNotTls) or
  // another TLS content type first (bad_record); after 3 for a high-bit first byte (an SSLv2
  // hello is legacy_hello, anything else not_tls); record faults after the 5-byte header; an
  // oversize or non-ClientHello handshake header, or a record running past the hello, as soon
  // as the header declaring it arrives. Bytes after the record that completes the hello are
  // never examined.
  ClientHelloStatus parse(std::span<const uint8_t> input) noexcept;

  // The parsed hello; meaningful only after parse() returned kDone.
  const ClientHello& hello() const noexcept { return hello_; }
  // kNone unless parse() returned kNotTls, kMalformed or kTooLarge.
  ClientHelloError error() const noexcept { return error_; }
  // Forgets everything, for a new connection. Cheap: the buffers are not cleared.
  void reset() noexcept;

 private:
  enum class State : uint8_t {
    kStart,          // nothing examined; the first bytes decide TLS, SSLv2 or another protocol
    kRecordHeader,   // offset_ is the first byte of a record header
    kFirstFragment,  // inside the first record, the handshake header not yet read
    kWholeMessage,   // the whole message is inside the first record: wait for it, no copy
    kFragment,       // copying record payload into buffer_ (message spans several records)
    kFinal,          // status_ is final
  };
  // A ClientHello body (after the 4-byte handshake header) is at least this long.
  static constexpr size_t kMinBodySize = 2 + 32 + 1 + 2 + 2 + 1 + 1;
  // Upper bound on the extensions a kMaxHandshakeSize body can hold (4 bytes each at least).
  static constexpr size_t kMaxExtensions = kMaxHandshakeSize / 4;

  ClientHelloStatus fail(ClientHelloError e) noexcept;
  // Validates a handshake header; on success sets message_len_.
  ClientHelloError checkMessageHeader(CBS* header) noexcept;
  // Parses a complete ClientHello body into hello_ (views alias `body`).
  ClientHelloError parseBody(const uint8_t* body, size_t len) noexcept;
  // True if two of the ext_count_ types recorded in ext_types_ are equal. Reorders ext_types_.
  bool hasDuplicateExtension() noexcept;

  size_t max_handshake_size_;
  State state_ = State::kStart;
  ClientHelloStatus status_ = ClientHelloStatus::kNeedMore;
  ClientHelloError error_ = ClientHelloError::kNone;
  size_t offset_ = 0;       // stream offset of the first byte not yet examined
  size_t record_left_ = 0;  // payload bytes of the current record after offset_
  size_t message_len_ = 0;  // 4 + body length once the handshake header is read, else 0
  size_t assembled_ = 0;    // handshake bytes copied into buffer_
  size_t ext_count_ = 0;    // extension types with values >= 64 recorded in ext_types_
  ClientHello hello_;
  std::array<uint16_t, kMaxExtensions> ext_types_;
  std::array<uint8_t, kMaxHandshakeSize + 4> buffer_;
};

}  // namespace acr
