#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace acr {

// Parser for the request head a client sends to the connect listener (an explicit HTTP proxy used
// as HTTPS_PROXY=http://host:3128). It accepts a strict subset of RFC 9112 and refuses the rest;
// it never repairs input, so the proxy and any later reader cannot disagree on what was asked.
//
//   head           = request-line *header-line CRLF
//   request-line   = method SP request-target SP ( "HTTP/1.0" / "HTTP/1.1" ) CRLF
//   request-target = reg-name ":" port / "[" IPv6address "]" ":" port   ; authority-form only
//   reg-name       = 1*253( ALPHA / DIGIT / "-" / "." / "_" )
//   port           = 1*5DIGIT, no sign, no leading zero, value 1..65535
//   header-line    = token ":" OWS *( VCHAR / obs-text / SP / HTAB ) OWS CRLF
//
// Choices (THREATS.md 6.2 case ids):
// - Line endings are CRLF only; a LF not preceded by CR anywhere in the head is kBareLf (C7).
//   Every supported client (curl, Go's net/http behind docker and skopeo) sends CRLF, and a single
//   framing rule leaves no end-of-head differential. A CR not followed by LF, NUL, DEL or any other
//   CTL (HTAB is allowed in header lines only) is kBadRequestLine or kBadHeader, named after the
//   line it occurs in (C6).
//   Such a byte error takes precedence over a grammar error of the same line, so the outcome never
//   depends on how the stream was split into reads.
// - Byte 0 == 0x16 (a TLS record: the client was given https:// for this http:// proxy) is
//   kTlsOnProxyPort at once; the request line "PRI * HTTP/2.0" is kHttp2Preface (C11).
// - The request line has exactly two SPs: none, more than two, or a leading or trailing SP is
//   kBadRequestLine (so "host:443 " with a trailing space reads as a double space); exactly one
//   SP (no version, HTTP/0.9 shape) or a version other than HTTP/1.0 or HTTP/1.1 (case-sensitive)
//   is kBadVersion. No empty line may precede the request line (RFC 9112 2.2 only suggests
//   skipping one, and no CONNECT client sends it).
// - A well-formed request line whose method is not "CONNECT" (case-sensitive) is
//   kMethodNotAllowed as soon as that line ends; its target is not examined (C4).
// - The target is split at ']' for a bracketed IPv6 literal, else at its last ':'. An empty or
//   invalid host, or a port field with a character other than letters, digits, '+' and '-'
//   (paths, queries, fragments, userinfo, schemes) is kBadTarget (C3). A missing port, or a port
//   field that is not a canonical decimal 1..65535 ("", "0", "0443", "+443", "-1", "https",
//   "65536") is kBadPort: leading zeros are refused rather than canonicalised, so logs show the
//   port exactly as the policy saw it (C2). Brackets must hold a valid IPv6 literal without a
//   zone id (C12). Whether the host is an allowed name, a valid DNS name or an IPv4 literal
//   ("127.1", "2130706433") is left to the policy (B6, B9).
// - Header names are tokens immediately followed by ':' (RFC 9112 5.1); obs-fold is rejected.
//   More than kMaxHeaderCount header lines is kTooLarge (C6, C8).
// - Host: at most one in any version (kDuplicateHost); HTTP/1.1 requires one (kMissingHost). Its
//   value must be host[:port] under the target's rules and non-empty, since RFC 9112 3.2 requires
//   it to equal the target authority; otherwise kBadHeader. host_header_mismatch compares names
//   case-insensitively, IPv6 literals by address, and the port only when Host carries one (there
//   is no scheme to default it from). The policy decides on the target alone (C5).
// - Other headers are ignored, including Content-Length and Transfer-Encoding: a CONNECT request
//   has no content (RFC 9110 9.3.6) and every byte after the head is tunnel data (C9, C10).
// - The head, final CRLF CRLF included, must fit in max_head_size bytes, else kTooLarge; no byte
//   past the cap is read (C8).
//
// No I/O, no logging, no allocation.

enum class ConnectStatus : uint8_t {
  kNeedMore,          // head incomplete and under the cap: call parse() again with more bytes
  kDone,              // request() holds a CONNECT request; the tunnel starts at head_length
  kMalformed,         // refuse with 400
  kMethodNotAllowed,  // refuse with 405; request().method names the method
  kTooLarge,          // refuse with 431
};

// Why a head was refused. connectErrorName() gives each a stable name used as the reason id in
// logs, metric labels and the X-Acr-Egress-Reason header.
enum class ConnectError : uint8_t {
  kNone,
  kBadRequestLine,    // "bad_request_line"
  kBadTarget,         // "bad_target"
  kBadPort,           // "bad_port"
  kBadVersion,        // "bad_version"
  kBadHeader,         // "bad_header"
  kMissingHost,       // "missing_host"
  kDuplicateHost,     // "duplicate_host"
  kBareLf,            // "bare_lf"
  kTlsOnProxyPort,    // "tls_to_proxy_port": the client should use an http:// proxy URL
  kHttp2Preface,      // "http2_preface"
  kMethodNotAllowed,  // "connect_only"
  kTooLarge,          // "head_too_large": byte cap or header count cap
};

std::string_view connectErrorName(ConnectError e) noexcept;

// A parsed head. The string_views alias the `input` given to the parse() call that returned the
// final status (or, before that, the latest call); they stay valid as long as that buffer does.
// Complete after kDone; after kMethodNotAllowed only method and http_minor are meaningful.
struct ConnectRequest {
  std::string_view host;              // target host as written; IPv6 literals without brackets
  bool host_is_ipv6 = false;          // the target was a bracketed IPv6 literal (validated)
  uint16_t port = 0;                  // 1..65535
  std::string_view method;            // also set for kMethodNotAllowed so the refusal is logged
  uint8_t http_minor = 1;             // HTTP/1.0 or HTTP/1.1
  std::string_view host_header;       // Host value without surrounding whitespace; empty if absent
  bool host_header_mismatch = false;  // Host names another host or port than the target
  size_t head_length = 0;             // bytes through the final CRLF CRLF; the rest is tunnel data
};

// Incremental parser for one connection's request head.
class ConnectRequestParser {
 public:
  static constexpr size_t kDefaultMaxHeadSize = 8192;
  static constexpr size_t kMaxHeaderCount = 64;

  explicit ConnectRequestParser(size_t max_head_size = kDefaultMaxHeadSize) noexcept;

  // `input` is every byte received so far; each call passes a longer or equal prefix of the same
  // stream (the buffer may move between calls). Each byte is classified once: the scan resumes
  // where the previous call stopped, and a line's grammar is checked once when its CRLF arrives.
  // Returns kNeedMore until the head is complete, refused or over the cap; any other status is
  // final, and later calls return it again without reading `input`.
  ConnectStatus parse(std::string_view input) noexcept;

  const ConnectRequest& request() const noexcept { return request_; }
  ConnectError error() const noexcept { return error_; }

  // Forgets everything so the parser can read a new stream; keeps max_head_size.
  void reset() noexcept;

 private:
  enum class State : uint8_t {
    kRequestLine,  // reading the request line
    kHeaders,      // request line accepted; reading header lines until the empty line
    kFinished,     // a final status was returned; nothing more is read
  };
  // A byte range of the stream; stored as offsets because the caller's buffer may move.
  struct Span {
    size_t offset = 0;
    size_t length = 0;
  };

  ConnectStatus onRequestLine(std::string_view input, size_t end) noexcept;
  ConnectStatus onHeaderLine(std::string_view input, size_t end) noexcept;
  ConnectStatus finish(std::string_view input, ConnectStatus status, ConnectError error) noexcept;
  void publish(std::string_view input) noexcept;

  size_t max_head_size_;
  State state_ = State::kRequestLine;
  ConnectStatus status_ = ConnectStatus::kNeedMore;
  ConnectError error_ = ConnectError::kNone;
  size_t pos_ = 0;         // next byte to classify; every earlier byte has been classified
  size_t line_start_ = 0;  // first byte of the line being read
  size_t header_count_ = 0;
  size_t host_count_ = 0;
  Span method_;
  Span host_;
  Span host_header_;
  std::array<uint8_t, 16> target_address_{};  // the target's IPv6 address when host_is_ipv6
  ConnectRequest request_;
};

}  // namespace acr
