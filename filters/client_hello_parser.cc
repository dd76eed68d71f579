#include "filters/client_hello_parser.h"

#include <algorithm>
#include <cstring>

namespace acr {

std::string_view clientHelloErrorName(ClientHelloError e) noexcept {
  switch (e) {
    case ClientHelloError::kNone:
      return "none";
    case ClientHelloError::kNotTls:
      return "not_tls";
    case ClientHelloError::kLegacyHello:
      return "legacy_hello";
    case ClientHelloError::kBadRecord:
      return "bad_record";
    case ClientHelloError::kBadClientHello:
      return "bad_clienthello";
    case ClientHelloError::kBadSni:
      return "bad_sni";
    case ClientHelloError::kDuplicateExtension:
      return "duplicate_extension";
    case ClientHelloError::kTooLarge:
      return "clienthello_too_large";
  }
  return "unknown";
}

namespace {

constexpr uint8_t kContentChangeCipherSpec = 20;
constexpr uint8_t kContentHandshake = 22;
constexpr uint8_t kContentHeartbeat = 24;
constexpr uint8_t kHandshakeClientHello = 1;
constexpr uint8_t kSsl2ClientHello = 1;
constexpr size_t kRecordHeaderSize = 5;
constexpr size_t kHandshakeHeaderSize = 4;
constexpr size_t kRandomSize = 32;
constexpr size_t kMaxSessionIdSize = 32;
constexpr size_t kMaxHostNameSize = 255;
constexpr uint16_t kSsl3Version = 0x0300;
constexpr uint16_t kTls10Version = 0x0301;
constexpr uint16_t kTls12Version = 0x0303;
constexpr uint8_t kMaxRecordMinorVersion = 4;
constexpr uint16_t kExtServerName = 0;
constexpr uint16_t kExtAlpn = 16;
constexpr uint16_t kExtSupportedVersions = 43;
constexpr uint16_t kExtEncryptedClientHello = 0xfe0d;
constexpr uint16_t kExtEncryptedServerName = 0xffce;
constexpr uint8_t kNameTypeHostName = 0;
constexpr uint8_t kEchClientOuter = 0;
// Extension types below this are tracked in a 64-bit mask; the rest are sorted.
constexpr uint16_t kMaskedExtensionTypes = 64;

// CBS_init, CBS_len and CBS_data are out-of-line calls into libcrypto, made for every field;
// BoringSSL's C++ conversions between CBS and bssl::Span do the same inline. Every field is still
// read with CBS_get_*.
CBS cbsOf(const uint8_t* data, size_t len) { return CBS(bssl::MakeConstSpan(data, len)); }
size_t lengthOf(const CBS& cbs) { return bssl::Span<const uint8_t>(cbs).size(); }
const uint8_t* dataOf(const CBS& cbs) { return bssl::Span<const uint8_t>(cbs).data(); }

// RFC 8701: GREASE values are 0x?a?a with equal bytes.
constexpr bool isGrease(uint16_t v) { return (v & 0x0f0f) == 0x0a0a && (v >> 8) == (v & 0xff); }

// server_name (RFC 6066 3): one host_name entry, 1..255 bytes, no NUL. Lengths that lie are
// bad_clienthello; a well-framed list we refuse to interpret is bad_sni. These are BoringSSL's
// server rules (extract_sni), so both sides see the same name.
ClientHelloError parseServerName(CBS* ext, std::string_view* sni) {
  CBS list;
  if (!CBS_get_u16_length_prefixed(ext, &list) || lengthOf(*ext) != 0) {
    return ClientHelloError::kBadClientHello;
  }
  uint8_t name_type;
  CBS name;
  if (!CBS_get_u8(&list, &name_type)) {
    return ClientHelloError::kBadSni;  // empty list
  }
  if (!CBS_get_u16_length_prefixed(&list, &name)) {
    return ClientHelloError::kBadClientHello;
  }
  if (lengthOf(list) != 0 || name_type != kNameTypeHostName || lengthOf(name) == 0 ||
      lengthOf(name) > kMaxHostNameSize || CBS_contains_zero_byte(&name)) {
    return ClientHelloError::kBadSni;
  }
  *sni = std::string_view(reinterpret_cast<const char*>(dataOf(name)), lengthOf(name));
  return ClientHelloError::kNone;
}

// ALPN (RFC 7301 3.1): a non-empty list of non-empty protocol names, nothing after it.
bool parseAlpn(CBS* ext, std::span<const uint8_t>* alpn) {
  CBS list;
  if (!CBS_get_u16_length_prefixed(ext, &list) || lengthOf(*ext) != 0 || lengthOf(list) == 0) {
    return false;
  }
  *alpn = std::span<const uint8_t>(dataOf(list), lengthOf(list));
  while (lengthOf(list) != 0) {
    CBS name;
    if (!CBS_get_u8_length_prefixed(&list, &name) || lengthOf(name) == 0) {
      return false;
    }
  }
  return true;
}

// supported_versions (RFC 8446 4.2.1): versions<2..254>, u16 entries. *max_version is raised to
// the highest non-GREASE entry.
bool parseSupportedVersions(CBS* ext, uint16_t* max_version) {
  CBS versions;
  if (!CBS_get_u8_length_prefixed(ext, &versions) || lengthOf(*ext) != 0 ||
      lengthOf(versions) < 2 || lengthOf(versions) % 2 != 0) {
    return false;
  }
  uint16_t highest = 0;
  uint16_t version;
  while (CBS_get_u16(&versions, &version)) {
    if (!isGrease(version)) {
      highest = std::max(highest, version);
    }
  }
  if (highest != 0) {
    *max_version = highest;
  }
  return true;
}

// encrypted_client_hello (draft-ietf-tls-esni 5): the outer form must be well framed. BoringSSL
// rejects a malformed outer ECH before anything looks at the SNI, so we do too; the other forms
// carry nothing we read.
bool parseEch(CBS* ext) {
  uint8_t type;
  if (!CBS_get_u8(ext, &type)) {
    return false;
  }
  if (type != kEchClientOuter) {
    return true;
  }
  uint16_t kdf_id;
  uint16_t aead_id;
  uint8_t config_id;
  CBS enc;
  CBS payload;
  return CBS_get_u16(ext, &kdf_id) && CBS_get_u16(ext, &aead_id) && CBS_get_u8(ext, &config_id) &&
         CBS_get_u16_length_prefixed(ext, &enc) && CBS_get_u16_length_prefixed(ext, &payload) &&
         lengthOf(*ext) == 0;
}

}  // namespace

void ClientHelloParser::reset() noexcept {
  state_ = State::kStart;
  status_ = ClientHelloStatus::kNeedMore;
  error_ = ClientHelloError::kNone;
  offset_ = 0;
  record_left_ = 0;
  message_len_ = 0;
  assembled_ = 0;
  ext_count_ = 0;
  hello_ = ClientHello{};
}

ClientHelloStatus ClientHelloParser::fail(ClientHelloError e) noexcept {
  error_ = e;
  switch (e) {
    case ClientHelloError::kNotTls:
      status_ = ClientHelloStatus::kNotTls;
      break;
    case ClientHelloError::kTooLarge:
      status_ = ClientHelloStatus::kTooLarge;
      break;
    default:
      status_ = ClientHelloStatus::kMalformed;
      break;
  }
  state_ = State::kFinal;
  hello_ = ClientHello{};
  return status_;
}

// The stream this parser accepts, all integers big-endian:
//
//   TLSPlaintext (RFC 8446 5.1), repeated until the handshake message ends:
//     u8  type                 22 (handshake); any other type, first or between fragments, is
//                              refused (RFC 8446 5.1: no interleaving with handshake fragments)
//     u16 legacy_record_version 0x0300..0x0304, otherwise ignored
//     u16 length               1..16384 (zero-length handshake fragments are forbidden)
//     u8  fragment[length]     the next bytes of the handshake message; the record that ends
//                              the message must end with it (the ClientHello is the client's
//                              whole first flight)
//
//   Handshake (RFC 8446 4), the fragments concatenated:
//     u8  msg_type             1 (client_hello)
//     u24 length               41..16384
//     ClientHello body:
//       u16 legacy_version            0x0301..0x0303 (0x0300 is SSLv3: legacy_hello)
//       u8  random[32]
//       u8  session_id_len            0..32, then session_id
//       u16 cipher_suites_len         even, >= 2, then the suites
//       u8  compression_methods_len   >= 1, then the methods
//       u16 extensions_len            optional: a body may end after the compression methods;
//                                     if present it must reach the end of the body exactly
//       extensions_len bytes of:  u16 extension_type, u16 extension_data_len, extension_data
//
//   extension_data of the extensions read (all others are skipped by their length):
//     server_name (0):      u16 server_name_list_len (= extension_data_len - 2),
//                           u8 name_type (0), u16 host_name_len (1..255), host_name (no NUL);
//                           exactly one entry
//     ALPN (16):            u16 protocol_name_list_len (= extension_data_len - 2, >= 2),
//                           then entries of u8 len (>= 1) + protocol name
//     supported_versions (43): u8 versions_len (even, >= 2, = extension_data_len - 1), u16 each
//     encrypted_client_hello (0xfe0d): u8 type; type 0 (outer): u16 kdf_id, u16 aead_id,
//                           u8 config_id, u16 enc_len + enc, u16 payload_len + payload, nothing
//                           after
//     ESNI (0xffce):        presence only
//
// An SSLv2-compatible hello (RFC 5246 E.2) starts with a 2-byte length whose high bit is set,
// then msg_type 1; a TLS record never starts with a high bit, so 3 bytes tell them apart.
ClientHelloStatus ClientHelloParser::parse(std::span<const uint8_t> input) noexcept {
  for (;;) {
    const size_t avail = input.size() > offset_ ? input.size() - offset_ : 0;
    switch (state_) {
      case State::kFinal:
        return status_;

      case State::kStart: {
        CBS cbs = cbsOf(input.data(), input.size());
        uint8_t first;
        if (!CBS_get_u8(&cbs, &first)) {
          return ClientHelloStatus::kNeedMore;
        }
        if (first == kContentHandshake) {
          state_ = State::kRecordHeader;
          break;
        }
        if ((first & 0x80) != 0) {
          uint8_t msg_type;
          if (!CBS_skip(&cbs, 1) || !CBS_get_u8(&cbs, &msg_type)) {
            return ClientHelloStatus::kNeedMore;
          }
          return fail(msg_type == kSsl2ClientHello ? ClientHelloError::kLegacyHello
                                                   : ClientHelloError::kNotTls);
        }
        // A TLS content type other than handshake: a TLS peer that did not start with a hello.
        if (first >= kContentChangeCipherSpec && first <= kContentHeartbeat) {
          return fail(ClientHelloError::kBadRecord);
        }
        return fail(ClientHelloError::kNotTls);
      }

      case State::kRecordHeader: {
        if (avail < kRecordHeaderSize) {
          return ClientHelloStatus::kNeedMore;
        }
        CBS cbs = cbsOf(input.data() + offset_, kRecordHeaderSize);
        uint8_t type;
        uint16_t version;
        uint16_t length;
        CBS_get_u8(&cbs, &type);
        CBS_get_u16(&cbs, &version);
        CBS_get_u16(&cbs, &length);
        if (type != kContentHandshake || (version >> 8) != 3 ||
            (version & 0xff) > kMaxRecordMinorVersion || length == 0) {
          return fail(ClientHelloError::kBadRecord);
        }
        if (length > kMaxRecordSize || offset_ + kRecordHeaderSize + length > kMaxWireBytes) {
          return fail(ClientHelloError::kTooLarge);
        }
        if (message_len_ != 0 && length > message_len_ - assembled_) {
          return fail(ClientHelloError::kBadClientHello);  // the record runs past the hello
        }
        state_ = offset_ == 0 ? State::kFirstFragment : State::kFragment;
        offset_ += kRecordHeaderSize;
        record_left_ = length;
        break;
      }

      case State::kFirstFragment: {
        if (record_left_ < kHandshakeHeaderSize) {
          state_ = State::kFragment;
          break;
        }
        if (avail < kHandshakeHeaderSize) {
          return ClientHelloStatus::kNeedMore;
        }
        CBS header = cbsOf(input.data() + offset_, kHandshakeHeaderSize);
        if (const ClientHelloError e = checkMessageHeader(&header); e != ClientHelloError::kNone) {
          return fail(e);
        }
        if (message_len_ < record_left_) {
          return fail(ClientHelloError::kBadClientHello);  // the record runs past the hello
        }
        if (message_len_ == record_left_) {
          state_ = State::kWholeMessage;
          break;
        }
        std::memcpy(buffer_.data(), input.data() + offset_, kHandshakeHeaderSize);
        assembled_ = kHandshakeHeaderSize;
        offset_ += kHandshakeHeaderSize;
        record_left_ -= kHandshakeHeaderSize;
        state_ = record_left_ == 0 ? State::kRecordHeader : State::kFragment;
        break;
      }

      case State::kWholeMessage: {
        if (avail < record_left_) {
          return ClientHelloStatus::kNeedMore;
        }
        const ClientHelloError e = parseBody(input.data() + offset_ + kHandshakeHeaderSize,
                                             message_len_ - kHandshakeHeaderSize);
        if (e != ClientHelloError::kNone) {
          return fail(e);
        }
        offset_ += record_left_;
        record_left_ = 0;
        hello_.wire_length = offset_;
        state_ = State::kFinal;
        status_ = ClientHelloStatus::kDone;
        return status_;
      }

      case State::kFragment: {
        if (avail == 0) {
          return ClientHelloStatus::kNeedMore;
        }
        // Until the handshake header is known, copy only up to its end so that the record
        // length check below sees what is left of this record.
        const size_t want = message_len_ == 0
                                ? std::min(record_left_, kHandshakeHeaderSize - assembled_)
                                : record_left_;
        const size_t n = std::min(avail, want);
        std::memcpy(buffer_.data() + assembled_, input.data() + offset_, n);
        assembled_ += n;
        offset_ += n;
        record_left_ -= n;
        if (message_len_ == 0 && assembled_ == kHandshakeHeaderSize) {
          CBS header = cbsOf(buffer_.data(), kHandshakeHeaderSize);
          if (const ClientHelloError e = checkMessageHeader(&header);
              e != ClientHelloError::kNone) {
            return fail(e);
          }
          if (record_left_ > message_len_ - assembled_) {
            return fail(ClientHelloError::kBadClientHello);  // the record runs past the hello
          }
        }
        if (message_len_ != 0 && assembled_ == message_len_) {
          const ClientHelloError e =
              parseBody(buffer_.data() + kHandshakeHeaderSize, message_len_ - kHandshakeHeaderSize);
          if (e != ClientHelloError::kNone) {
            return fail(e);
          }
          hello_.wire_length = offset_;
          state_ = State::kFinal;
          status_ = ClientHelloStatus::kDone;
          return status_;
        }
        if (record_left_ == 0) {
          state_ = State::kRecordHeader;
        }
        break;
      }
    }
  }
}

ClientHelloError ClientHelloParser::checkMessageHeader(CBS* header) noexcept {
  uint8_t msg_type;
  uint32_t length;
  CBS_get_u8(header, &msg_type);
  CBS_get_u24(header, &length);
  if (msg_type != kHandshakeClientHello) {
    return ClientHelloError::kBadClientHello;
  }
  if (length > max_handshake_size_) {
    return ClientHelloError::kTooLarge;
  }
  if (length < kMinBodySize) {
    return ClientHelloError::kBadClientHello;
  }
  message_len_ = kHandshakeHeaderSize + length;
  return ClientHelloError::kNone;
}

ClientHelloError ClientHelloParser::parseBody(const uint8_t* data, size_t len) noexcept {
  static_assert((kMaxHandshakeSize - kMinBodySize) / 4 < kMaxExtensions);
  CBS body = cbsOf(data, len);
  uint16_t legacy_version;
  if (!CBS_get_u16(&body, &legacy_version)) {
    return ClientHelloError::kBadClientHello;
  }
  if (legacy_version == kSsl3Version) {
    return ClientHelloError::kLegacyHello;
  }
  if (legacy_version < kTls10Version || legacy_version > kTls12Version) {
    return ClientHelloError::kBadClientHello;
  }
  CBS session_id;
  CBS cipher_suites;
  CBS compression_methods;
  if (!CBS_skip(&body, kRandomSize) || !CBS_get_u8_length_prefixed(&body, &session_id) ||
      lengthOf(session_id) > kMaxSessionIdSize ||
      !CBS_get_u16_length_prefixed(&body, &cipher_suites) || lengthOf(cipher_suites) == 0 ||
      lengthOf(cipher_suites) % 2 != 0 ||
      !CBS_get_u8_length_prefixed(&body, &compression_methods) ||
      lengthOf(compression_methods) == 0) {
    return ClientHelloError::kBadClientHello;
  }
  hello_ = ClientHello{};
  hello_.legacy_version = legacy_version;
  hello_.max_version = legacy_version;
  if (lengthOf(body) == 0) {
    return ClientHelloError::kNone;  // a hello without extensions
  }
  CBS extensions;
  if (!CBS_get_u16_length_prefixed(&body, &extensions) || lengthOf(body) != 0) {
    return ClientHelloError::kBadClientHello;
  }

  // First pass: frame every extension and collect the types; interpret only once the whole
  // block is known to be well framed and free of duplicates (BoringSSL's order).
  CBS server_name;
  CBS alpn;
  CBS supported_versions;
  CBS ech;
  bool has_alpn = false;
  bool has_supported_versions = false;
  uint64_t low_types = 0;
  bool duplicate = false;
  ext_count_ = 0;
  while (lengthOf(extensions) != 0) {
    uint16_t type;
    CBS ext;
    if (!CBS_get_u16(&extensions, &type) || !CBS_get_u16_length_prefixed(&extensions, &ext)) {
      return ClientHelloError::kBadClientHello;
    }
    if (type < kMaskedExtensionTypes) {
      const uint64_t bit = uint64_t{1} << type;
      duplicate |= (low_types & bit) != 0;
      low_types |= bit;
    } else {
      ext_types_[ext_count_++] = type;
    }
    switch (type) {
      case kExtServerName:
        server_name = ext;
        hello_.has_sni = true;
        break;
      case kExtAlpn:
        alpn = ext;
        has_alpn = true;
        break;
      case kExtSupportedVersions:
        supported_versions = ext;
        has_supported_versions = true;
        break;
      case kExtEncryptedClientHello:
        ech = ext;
        hello_.ech_offered = true;
        break;
      case kExtEncryptedServerName:
        hello_.esni_offered = true;
        break;
      default:
        break;
    }
  }
  if (duplicate || hasDuplicateExtension()) {
    return ClientHelloError::kDuplicateExtension;
  }

  if (hello_.ech_offered && !parseEch(&ech)) {
    return ClientHelloError::kBadClientHello;
  }
  if (hello_.has_sni) {
    if (const ClientHelloError e = parseServerName(&server_name, &hello_.sni);
        e != ClientHelloError::kNone) {
      return e;
    }
  }
  if (has_alpn && !parseAlpn(&alpn, &hello_.alpn)) {
    return ClientHelloError::kBadClientHello;
  }
  if (has_supported_versions && !parseSupportedVersions(&supported_versions, &hello_.max_version)) {
    return ClientHelloError::kBadClientHello;
  }
  return ClientHelloError::kNone;
}

// Sort and compare neighbours, as BoringSSL's tls1_check_duplicate_extensions: O(n log n) for
// the few high types real clients send (GREASE, renegotiation_info, ECH, ALPS).
bool ClientHelloParser::hasDuplicateExtension() noexcept {
  const auto end = ext_types_.begin() + static_cast<std::ptrdiff_t>(ext_count_);
  std::sort(ext_types_.begin(), end);
  return std::adjacent_find(ext_types_.begin(), end) != end;
}

}  // namespace acr
