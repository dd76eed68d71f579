#include "filters/connect_request_parser.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <cstring>

#include "filters/socket_address.h"

namespace acr {
namespace {

// Per-byte properties, one table lookup each.
enum CharFlag : uint8_t {
  kScanPlain = 1 << 0,  // VCHAR, SP or obs-text: the byte scan passes over it in any line
  kToken = 1 << 1,      // RFC 9110 5.6.2 tchar
  kHost = 1 << 2,       // reg-name byte accepted in a target: ALPHA / DIGIT / "-" / "." / "_"
};

constexpr std::array<uint8_t, 256> makeCharFlags() {
  std::array<uint8_t, 256> flags{};
  for (size_t c = 0; c < flags.size(); ++c) {
    const bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    if (c >= 0x20 && c != 0x7f) {
      flags[c] |= kScanPlain;
    }
    if (alnum ||
        std::string_view("!#$%&'*+-.^_`|~").find(static_cast<char>(c)) != std::string_view::npos) {
      flags[c] |= kToken;
    }
    if (alnum || c == '-' || c == '.' || c == '_') {
      flags[c] |= kHost;
    }
  }
  return flags;
}
constexpr std::array<uint8_t, 256> kCharFlags = makeCharFlags();

constexpr bool hasFlag(char c, CharFlag flag) {
  return (kCharFlags[static_cast<unsigned char>(c)] & flag) != 0;
}

constexpr bool isDigit(char c) { return c >= '0' && c <= '9'; }
constexpr bool isAlpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
constexpr char toLower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c; }

constexpr bool isToken(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return hasFlag(c, kToken); });
}

constexpr bool isRegName(std::string_view s) {
  return !s.empty() && s.size() <= 253 &&
         std::all_of(s.begin(), s.end(), [](char c) { return hasFlag(c, kHost); });
}

constexpr bool equalsIgnoreCase(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return toLower(x) == toLower(y);
         });
}

constexpr bool isOws(char c) { return c == ' ' || c == '\t'; }

constexpr std::string_view trimOws(std::string_view s) {
  while (!s.empty() && isOws(s.front())) {
    s.remove_prefix(1);
  }
  while (!s.empty() && isOws(s.back())) {
    s.remove_suffix(1);
  }
  return s;
}

// Validates an IPv6 literal (the text between brackets) and stores its address. The text is
// copied into a bounded buffer for inet_pton; a zone id ('%') or any other character outside
// hex digits, ':' and '.' is refused before the copy, which also keeps NUL out of it.
bool parseIpv6(std::string_view literal, std::array<uint8_t, 16>& address) {
  char text[INET6_ADDRSTRLEN];
  if (literal.empty() || literal.size() >= sizeof(text)) {
    return false;
  }
  for (char c : literal) {
    const char lower = toLower(c);
    if (!isDigit(c) && !(lower >= 'a' && lower <= 'f') && c != ':' && c != '.') {
      return false;
    }
  }
  std::memcpy(text, literal.data(), literal.size());
  text[literal.size()] = '\0';
  in6_addr parsed;
  if (inet_pton(AF_INET6, text, &parsed) != 1) {
    return false;
  }
  std::memcpy(address.data(), &parsed, address.size());
  return true;
}

struct Authority {
  std::string_view host;  // aliases the parsed text; brackets stripped
  bool ipv6 = false;
  std::array<uint8_t, 16> address{};  // when ipv6
  bool has_port = false;
  uint16_t port = 0;
};

// Parses `host[:port]` (authority-form; bracketed IPv6 allowed) into `out`. Returns kNone,
// kBadTarget (the text is not an authority) or kBadPort (the port is missing while
// `port_required`, or is not a canonical decimal 1..65535).
ConnectError parseAuthority(std::string_view text, bool port_required, Authority& out) {
  const std::optional<HostPort> parts = splitHostPort(text);
  if (!parts) {
    return ConnectError::kBadTarget;
  }
  out.host = parts->host;
  if (parts->bracketed) {
    if (!parseIpv6(out.host, out.address)) {
      return ConnectError::kBadTarget;
    }
    out.ipv6 = true;
  } else if (!isRegName(out.host)) {
    return ConnectError::kBadTarget;  // a bare IPv6 address included: it must be bracketed
  }
  if (!parts->has_port) {
    return port_required ? ConnectError::kBadPort : ConnectError::kNone;
  }
  const std::string_view port_text = parts->port;
  // Characters that cannot be a mistyped port mean the target is not authority-form at all.
  if (!std::all_of(port_text.begin(), port_text.end(),
                   [](char c) { return isAlpha(c) || isDigit(c) || c == '+' || c == '-'; })) {
    return ConnectError::kBadTarget;
  }
  const std::optional<uint16_t> port = parsePort(port_text);
  if (!port) {
    return ConnectError::kBadPort;
  }
  out.has_port = true;
  out.port = *port;
  return ConnectError::kNone;
}

}  // namespace

std::string_view connectErrorName(ConnectError e) noexcept {
  switch (e) {
    case ConnectError::kNone:
      return "none";
    case ConnectError::kBadRequestLine:
      return "bad_request_line";
    case ConnectError::kBadTarget:
      return "bad_target";
    case ConnectError::kBadPort:
      return "bad_port";
    case ConnectError::kBadVersion:
      return "bad_version";
    case ConnectError::kBadHeader:
      return "bad_header";
    case ConnectError::kMissingHost:
      return "missing_host";
    case ConnectError::kDuplicateHost:
      return "duplicate_host";
    case ConnectError::kBareLf:
      return "bare_lf";
    case ConnectError::kTlsOnProxyPort:
      return "tls_to_proxy_port";
    case ConnectError::kHttp2Preface:
      return "http2_preface";
    case ConnectError::kMethodNotAllowed:
      return "connect_only";
    case ConnectError::kTooLarge:
      return "head_too_large";
  }
  return "unknown";
}

ConnectRequestParser::ConnectRequestParser(size_t max_head_size) noexcept
    : max_head_size_(max_head_size) {}

void ConnectRequestParser::reset() noexcept { *this = ConnectRequestParser(max_head_size_); }

ConnectStatus ConnectRequestParser::parse(std::string_view input) noexcept {
  // A shorter input breaks the contract; refusing to read it keeps every offset in bounds.
  if (state_ == State::kFinished || input.size() < pos_) {
    return status_;
  }
  const auto* bytes = reinterpret_cast<const unsigned char*>(input.data());
  const size_t limit = std::min(input.size(), max_head_size_);
  if (pos_ == 0 && limit > 0 && bytes[0] == 0x16) {
    return finish(input, ConnectStatus::kMalformed, ConnectError::kTlsOnProxyPort);
  }
  // A local index: stores through `this` could alias `bytes` and slow the scan.
  size_t pos = pos_;
  while (true) {
    while (pos < limit && (kCharFlags[bytes[pos]] & kScanPlain) != 0) {
      ++pos;
    }
    if (pos == limit) {
      break;
    }
    const unsigned char c = bytes[pos];
    if (c == '\t' && state_ == State::kHeaders) {
      ++pos;
      continue;
    }
    if (c == '\n') {
      return finish(input, ConnectStatus::kMalformed, ConnectError::kBareLf);
    }
    if (c == '\r' && pos + 1 == limit) {
      break;  // its LF has not arrived, or would lie past the cap
    }
    if (c != '\r' || bytes[pos + 1] != '\n') {
      return finish(
          input, ConnectStatus::kMalformed,
          state_ == State::kRequestLine ? ConnectError::kBadRequestLine : ConnectError::kBadHeader);
    }
    const size_t line_end = pos;
    pos += 2;
    const ConnectStatus status = state_ == State::kRequestLine ? onRequestLine(input, line_end)
                                                               : onHeaderLine(input, line_end);
    if (status != ConnectStatus::kNeedMore) {
      return status;
    }
    line_start_ = pos;
  }
  pos_ = pos;
  if (input.size() >= max_head_size_) {
    return finish(input, ConnectStatus::kTooLarge, ConnectError::kTooLarge);
  }
  publish(input);
  return ConnectStatus::kNeedMore;
}

// Checks the request line [line_start_, end); returns kNeedMore to go on with the headers, or a
// final status.
ConnectStatus ConnectRequestParser::onRequestLine(std::string_view input, size_t end) noexcept {
  const std::string_view line = input.substr(line_start_, end - line_start_);
  const size_t sp1 = line.find(' ');
  if (sp1 == std::string_view::npos) {
    return finish(input, ConnectStatus::kMalformed, ConnectError::kBadRequestLine);
  }
  const std::string_view method = line.substr(0, sp1);
  const size_t sp2 = line.find(' ', sp1 + 1);
  const std::string_view target = line.substr(sp1 + 1, sp2 - (sp1 + 1));
  if (!isToken(method) || target.empty()) {
    return finish(input, ConnectStatus::kMalformed, ConnectError::kBadRequestLine);
  }
  if (sp2 == std::string_view::npos) {
    return finish(input, ConnectStatus::kMalformed, ConnectError::kBadVersion);
  }
  const std::string_view version = line.substr(sp2 + 1);
  if (version.empty() || version.find(' ') != std::string_view::npos) {
    return finish(input, ConnectStatus::kMalformed, ConnectError::kBadRequestLine);
  }
  if (method == "PRI" && target == "*" && version == "HTTP/2.0") {
    return finish(input, ConnectStatus::kMalformed, ConnectError::kHttp2Preface);
  }
  if (version == "HTTP/1.1") {
    request_.http_minor = 1;
  } else if (version == "HTTP/1.0") {
    request_.http_minor = 0;
  } else {
    return finish(input, ConnectStatus::kMalformed, ConnectError::kBadVersion);
  }
  method_ = {line_start_, method.size()};
  if (method != "CONNECT") {
    return finish(input, ConnectStatus::kMethodNotAllowed, ConnectError::kMethodNotAllowed);
  }
  Authority authority;
  const ConnectError error = parseAuthority(target, /*port_required=*/true, authority);
  if (error != ConnectError::kNone) {
    return finish(input, ConnectStatus::kMalformed, error);
  }
  host_ = {static_cast<size_t>(authority.host.data() - input.data()), authority.host.size()};
  request_.host_is_ipv6 = authority.ipv6;
  request_.port = authority.port;
  target_address_ = authority.address;
  state_ = State::kHeaders;
  return ConnectStatus::kNeedMore;
}

// Checks the header line [line_start_, end); the empty line ends the head. Returns kNeedMore to
// go on, or a final status.
ConnectStatus ConnectRequestParser::onHeaderLine(std::string_view input, size_t end) noexcept {
  const std::string_view line = input.substr(line_start_, end - line_start_);
  if (line.empty()) {
    if (request_.http_minor == 1 && host_count_ == 0) {
      return finish(input, ConnectStatus::kMalformed, ConnectError::kMissingHost);
    }
    request_.head_length = end + 2;
    return finish(input, ConnectStatus::kDone, ConnectError::kNone);
  }
  // A leading SP or HTAB (obs-fold) fails the token check along with space before the colon.
  const size_t colon = line.find(':');
  const std::string_view name = line.substr(0, colon);
  if (colon == std::string_view::npos || !isToken(name)) {
    return finish(input, ConnectStatus::kMalformed, ConnectError::kBadHeader);
  }
  if (++header_count_ > kMaxHeaderCount) {
    return finish(input, ConnectStatus::kTooLarge, ConnectError::kTooLarge);
  }
  if (!equalsIgnoreCase(name, "host")) {
    return ConnectStatus::kNeedMore;
  }
  if (++host_count_ > 1) {
    return finish(input, ConnectStatus::kMalformed, ConnectError::kDuplicateHost);
  }
  const std::string_view value = trimOws(line.substr(colon + 1));
  Authority authority;
  if (value.empty() ||
      parseAuthority(value, /*port_required=*/false, authority) != ConnectError::kNone) {
    return finish(input, ConnectStatus::kMalformed, ConnectError::kBadHeader);
  }
  host_header_ = {static_cast<size_t>(value.data() - input.data()), value.size()};
  const std::string_view target_host(input.data() + host_.offset, host_.length);
  const bool same_host = authority.ipv6 == request_.host_is_ipv6 &&
                         (authority.ipv6 ? authority.address == target_address_
                                         : equalsIgnoreCase(authority.host, target_host));
  request_.host_header_mismatch =
      !same_host || (authority.has_port && authority.port != request_.port);
  return ConnectStatus::kNeedMore;
}

ConnectStatus ConnectRequestParser::finish(std::string_view input, ConnectStatus status,
                                           ConnectError error) noexcept {
  state_ = State::kFinished;
  status_ = status;
  error_ = error;
  publish(input);
  return status;
}

void ConnectRequestParser::publish(std::string_view input) noexcept {
  request_.method = std::string_view(input.data() + method_.offset, method_.length);
  request_.host = std::string_view(input.data() + host_.offset, host_.length);
  request_.host_header = std::string_view(input.data() + host_header_.offset, host_header_.length);
}

}  // namespace acr
