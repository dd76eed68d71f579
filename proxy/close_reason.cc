#include "proxy/close_reason.h"

#include <array>

namespace acr {
namespace {

using R = CloseReason;

// Phases, as the access log names them (Connection::phaseName).
constexpr std::string_view kPolicyPhases = "head, hello, dns";
constexpr std::string_view kHeadPhase = "head";
constexpr std::string_view kHelloPhases = "hello, tunnel_hello";

// Rows in enum order (checked below). Text: `meaning` says what happened, `action` what the
// operator does about it; both are one line of the README table, so no '|'.
constexpr std::array<CloseReasonInfo, kCloseReasonCount> kTable = {{
    {R::kHostAllowed, "host_allowed", 200, "relay (or any, as incomplete)",
     "allowed: the name matches a host pattern", "nothing"},
    {R::kAddressAllowed, "address_allowed", 200, "relay (or any, as incomplete)",
     "allowed: the address is in `--allow-cidr` or an allowed service tag", "nothing"},
    {R::kAddressPublic, "address_public", 200, "relay (or any, as incomplete)",
     "allowed: a resolved address outside every special-purpose range", "nothing"},
    {R::kInvalidHost, "invalid_host", 403, kPolicyPhases,
     "not a valid host name (empty label, NUL, IP where a name belongs, ...)",
     "fix the client's target"},
    {R::kHostNotAllowed, "host_not_allowed", 403, kPolicyPhases, "no host pattern matches the name",
     "add `--registry NAME` / `--allow-host`; with `--registry` blob storage is no longer allowed "
     "by default"},
    {R::kPortNotAllowed, "port_not_allowed", 403, kPolicyPhases,
     "port not in `--port` (443 only by default)", "add `--port`"},
    {R::kAddressSpecial, "address_special", 403, "head, hello, dns",
     "the name resolved to (or the original destination is) a private, loopback, link-local or "
     "other special address",
     "Private Link: `--allow-cidr` the private endpoint subnet"},
    {R::kAddressNotAllowed, "address_not_allowed", 403, "head, hello, dns",
     "an IP literal, or with `--strict-ip` any address, outside the allowed set",
     "add the range or the service tag"},
    {R::kAddressDenied, "address_denied", 403, "head, hello, dns", "inside a `--deny-cidr` range",
     "intended"},
    {R::kSniAddressMismatch, "sni_address_mismatch", 403, "dns",
     "transparent: an allowed SNI aimed at an address that is neither allowed nor one of the "
     "name's DNS answers",
     "the client pinned a wrong address, or the proxy's DNS disagrees with the client's"},
    {R::kNoSni, "no_sni", 403, "hello", "the ClientHello has no SNI",
     "`--allow-no-sni` if really wanted (transparent, allowed destinations only)"},
    {R::kEsni, "esni", 403, kHelloPhases,
     "the ClientHello offers the obsolete ESNI extension, which hides the server name",
     "intended: update or reconfigure the client (no current client sends ESNI)"},
    {R::kClientAllowed, "client_allowed", 200, "relay (or any, as incomplete)",
     "allowed: the client is in a `--client-cidr` range, or none is set", "nothing"},
    {R::kClientNotAllowed, "client_not_allowed", 403, "accept",
     "the client's source address is in no `--client-cidr` range",
     "add the client's range, or point the client at another proxy"},
    {R::kEch, "ech", 403, kHelloPhases,
     "`--deny-ech`: the ClientHello offers ECH, whose inner server name no proxy can see (Chrome "
     "sends GREASE ECH on every connection)",
     "intended; or drop `--deny-ech` for such clients"},
    {R::kAddressNotBound, "address_not_bound", 403, "hello, dns",
     "the name matches a bound host pattern (`--bind-host-tag`, `[[policy.bind]]`) and the "
     "address it resolved to (or the original destination) is outside the tags and ranges bound "
     "to it",
     "a poisoned or misconfigured DNS answer, or a stale service-tags file; refresh it or widen "
     "the binding"},

    {R::kBadRequestLine, "bad_request_line", 400, kHeadPhase, "malformed CONNECT request line",
     "usually a scanner or a non-proxy client"},
    {R::kBadTarget, "bad_target", 400, kHeadPhase, "malformed CONNECT target (not host:port)",
     "fix the client's proxy target"},
    {R::kBadPort, "bad_port", 400, kHeadPhase, "the CONNECT target's port is not 1..65535",
     "fix the client's proxy target"},
    {R::kBadVersion, "bad_version", 400, kHeadPhase, "not HTTP/1.0 or HTTP/1.1",
     "usually a scanner or a non-proxy client"},
    {R::kBadHeader, "bad_header", 400, kHeadPhase, "a malformed header line in the CONNECT head",
     "usually a scanner or a non-proxy client"},
    {R::kMissingHost, "missing_host", 400, kHeadPhase, "an HTTP/1.1 CONNECT without a Host header",
     "fix the client"},
    {R::kDuplicateHost, "duplicate_host", 400, kHeadPhase, "more than one Host header",
     "usually a smuggling attempt"},
    {R::kBareLf, "bare_lf", 400, kHeadPhase, "a line ended with LF instead of CRLF",
     "fix the client"},
    {R::kTlsToProxyPort, "tls_to_proxy_port", 400, kHeadPhase,
     "the client sent TLS to the proxy port", "use an `http://` proxy URL, not `https://`"},
    {R::kHttp2Preface, "http2_preface", 400, kHeadPhase,
     "the client spoke HTTP/2 to the proxy port", "configure the client for an HTTP/1.1 proxy"},
    {R::kConnectOnly, "connect_only", 405, kHeadPhase,
     "a method other than CONNECT (a plain-HTTP proxy request)",
     "this proxy only tunnels; use `https://` registry URLs"},
    {R::kHeadTooLarge, "head_too_large", 431, kHeadPhase,
     "the CONNECT head is over `--max-head-size` or has too many headers",
     "usually a scanner; raise `--max-head-size` only for a known client"},

    {R::kNotTls, "not_tls", 0, kHelloPhases, "the connection or tunnel does not start with TLS",
     "`--allow-non-tls` if really wanted (connect tunnels only)"},
    {R::kLegacyHello, "legacy_hello", 0, kHelloPhases, "an SSLv2-compatible or SSLv3 hello",
     "update the client"},
    {R::kBadRecord, "bad_record", 0, kHelloPhases,
     "the TLS record layer is malformed (wrong type or version, empty record)",
     "usually a scanner or a broken client"},
    {R::kBadClientHello, "bad_clienthello", 0, kHelloPhases,
     "the ClientHello is malformed (a length that lies, trailing bytes, bad extension)",
     "usually a scanner or a broken client"},
    {R::kBadSni, "bad_sni", 0, kHelloPhases,
     "the server_name extension is malformed (empty, NUL, several names)",
     "usually a scanner or a broken client"},
    {R::kDuplicateExtension, "duplicate_extension", 0, kHelloPhases,
     "a ClientHello extension appears twice", "usually a scanner or a broken client"},
    {R::kClientHelloTooLarge, "clienthello_too_large", 0, kHelloPhases,
     "the ClientHello is larger than `--max-client-hello-size`",
     "raise `--max-client-hello-size` only for a known client (post-quantum key shares)"},

    {R::kHeadTimeout, "head_timeout", 408, kHeadPhase,
     "the CONNECT head did not arrive within `--head-timeout`", "usually a scanner or a slowloris"},
    {R::kHelloTimeout, "hello_timeout", 0, kHelloPhases,
     "the ClientHello did not arrive within `--head-timeout`",
     "usually a scanner, or a client that is not TLS"},
    {R::kHandshakeMemory, "handshake_memory", 503, "head, hello, tunnel_hello",
     "unfinished heads/ClientHellos hold `--max-handshake-memory` already",
     "many parked half-requests (a slowloris); raise the budget only if the box has the memory"},
    {R::kNotRedirected, "not_redirected", 0, "hello",
     "a direct connection to the transparent port (no redirected original destination)",
     "fix the firewall rule"},
    {R::kSniMismatch, "sni_mismatch", 0, "tunnel_hello",
     "the tunnel's ClientHello names another host than the CONNECT target (or none)",
     "intended (domain fronting)"},
    {R::kProxyLoop, "proxy_loop", 0, "accept, head, hello",
     "the proxy's own upstream connection redirected back to it (any listener)",
     "give the proxy `--mark` and exclude the mark from the redirect rule"},
    {R::kSelfConnection, "self_connection", 403, "hello, dns",
     "the destination is an address:port this proxy listens on (a wildcard listener: any local "
     "address)",
     "a DNS answer or client pointing at the proxy itself; fix the name or the client"},
    {R::kDnsNxDomain, "dns_nxdomain", 502, "dns", "the proxy's own lookup: the name does not exist",
     "check the name, `--dns-server` or `/etc/resolv.conf`"},
    {R::kDnsNoAddresses, "dns_no_addresses", 502, "dns",
     "the proxy's own lookup: the name has no A and no AAAA record",
     "check the name, `--dns-server` or `/etc/resolv.conf`"},
    {R::kDnsTimeout, "dns_timeout", 504, "dns",
     "the proxy's own lookup got no answer within `--dns-timeout`",
     "check `--dns-server` or `/etc/resolv.conf`"},
    {R::kDnsFailure, "dns_failure", 502, "dns",
     "the proxy's own lookup failed (SERVFAIL, REFUSED, bad reply)",
     "check `--dns-server` or `/etc/resolv.conf`"},
    {R::kUpstreamTimeout, "upstream_timeout", 504, "connect",
     "no allowed address answered within `--connect-timeout`", "network path to Azure"},
    {R::kUpstreamRefused, "upstream_refused", 502, "connect",
     "every allowed address refused the connection", "network path to Azure"},
    {R::kUpstreamUnreachable, "upstream_unreachable", 502, "connect",
     "every allowed address failed (unreachable, no route)", "network path to Azure"},
    {R::kUpstreamProxyRefused, "upstream_proxy_refused", 502, "connect",
     "`--upstream-proxy` answered the CONNECT with a status other than 2xx (the sentence names "
     "it: 407 wrong credentials, 403 its own policy, 503 it could not reach the target)",
     "check `--upstream-proxy-credentials` and the upstream proxy's policy and log"},
    {R::kClientClosed, "client_closed", 0, "head, hello, dns, connect, tunnel_hello",
     "the client closed before the tunnel started (decision `incomplete` if it was allowed, e.g. "
     "after the 200 without a ClientHello)",
     "usually a client that gave up; nothing was relayed"},
    {R::kShutdown, "shutdown", 0, "any",
     "the drain deadline ended the connection (decision `incomplete` if it was allowed but not "
     "yet relaying)",
     "intended"},
    {R::kRevoked, "revoked", 403, "dns, connect, tunnel_hello, relay",
     "`revoke_on_reload`: a reload removed the rule that allowed this open connection (decision "
     "`allow` if it was relaying; a 403 before the 200)",
     "intended; the message names the new policy's denial"},
    {R::kOverloaded, "overloaded", 503, "accept", "at `--max-connections`",
     "raise the limit (and `LimitNOFILE`)"},
    {R::kClientOverloaded, "client_overloaded", 503, "accept",
     "the client's source address has `--max-connections-per-client` connections open (an "
     "IPv4-mapped IPv6 source counts as its IPv4)",
     "a flood or a connection leak in that client; raise the limit for a busy NAT gateway "
     "in front of many hosts"},
    {R::kListenerOverloaded, "listener_overloaded", 503, "accept",
     "the listener has `--max-connections-per-listener` connections open",
     "a flood on that listener; the other listeners keep their slots"},
    {R::kDraining, "draining", 503, "accept", "a new connection while the proxy shuts down",
     "intended: the next process takes new connections"},
    {R::kInternalError, "internal_error", 0, "accept",
     "the proxy could not set the connection up (out of memory)", "check the proxy's memory limit"},
}};

constexpr bool tableInEnumOrder() {
  for (size_t i = 0; i < kTable.size(); ++i) {
    if (static_cast<size_t>(kTable[i].reason) != i || kTable[i].name.empty()) {
      return false;
    }
  }
  return true;
}
static_assert(tableInEnumOrder(), "one row per CloseReason, in enum order");

// The filters/ enums mirrored by the first blocks.
static_assert(static_cast<size_t>(Reason::kAddressNotBound) ==
              static_cast<size_t>(R::kAddressNotBound));
static_assert(static_cast<size_t>(ConnectError::kTooLarge) -
                  static_cast<size_t>(ConnectError::kBadRequestLine) ==
              static_cast<size_t>(R::kHeadTooLarge) - static_cast<size_t>(R::kBadRequestLine));
static_assert(static_cast<size_t>(ClientHelloError::kTooLarge) -
                  static_cast<size_t>(ClientHelloError::kNotTls) ==
              static_cast<size_t>(R::kClientHelloTooLarge) - static_cast<size_t>(R::kNotTls));

}  // namespace

const CloseReasonInfo& closeReasonInfo(CloseReason reason) noexcept {
  const auto index = static_cast<size_t>(reason);
  return kTable[index < kTable.size() ? index : static_cast<size_t>(R::kInternalError)];
}

CloseReason closeReasonOf(Reason reason) noexcept { return static_cast<CloseReason>(reason); }

CloseReason closeReasonOf(ConnectError error) noexcept {
  if (error == ConnectError::kNone) {
    return R::kBadRequestLine;
  }
  return static_cast<CloseReason>(static_cast<size_t>(R::kBadRequestLine) +
                                  static_cast<size_t>(error) -
                                  static_cast<size_t>(ConnectError::kBadRequestLine));
}

CloseReason closeReasonOf(ClientHelloError error) noexcept {
  if (error == ClientHelloError::kNone) {
    return R::kBadClientHello;
  }
  return static_cast<CloseReason>(static_cast<size_t>(R::kNotTls) + static_cast<size_t>(error) -
                                  static_cast<size_t>(ClientHelloError::kNotTls));
}

CloseReason closeReasonOf(DnsStatus status) noexcept {
  switch (status) {
    case DnsStatus::kNxDomain:
      return R::kDnsNxDomain;
    case DnsStatus::kNoAddresses:
      return R::kDnsNoAddresses;
    case DnsStatus::kTimeout:
      return R::kDnsTimeout;
    default:
      return R::kDnsFailure;
  }
}

std::string_view httpStatusText(uint16_t status) noexcept {
  switch (status) {
    case 200:
      return "Connection established";
    case 400:
      return "Bad Request";
    case 403:
      return "Forbidden";
    case 405:
      return "Method Not Allowed";
    case 408:
      return "Request Timeout";
    case 431:
      return "Request Header Fields Too Large";
    case 502:
      return "Bad Gateway";
    case 503:
      return "Service Unavailable";
    case 504:
      return "Gateway Timeout";
  }
  return "Error";
}

std::string httpRefusal(CloseReason reason, std::string_view sentence) {
  const CloseReasonInfo& info = closeReasonInfo(reason);
  const std::string status = std::to_string(info.http_status);
  std::string body = "acr-egress: ";
  body += sentence;
  body += '\n';
  std::string out;
  out.reserve(192 + 2 * info.name.size() + body.size());
  out += "HTTP/1.1 ";
  out += status;
  out += ' ';
  out += httpStatusText(info.http_status);
  out += " (acr-egress: ";
  out += info.name;
  out += ")\r\nX-Acr-Egress-Reason: ";
  out += info.name;
  out += "\r\nContent-Type: text/plain\r\nContent-Length: ";
  out += std::to_string(body.size());
  out += "\r\nConnection: close\r\n\r\n";
  out += body;
  return out;
}

void writeCloseReasonReference(std::ostream& out) {
  out << "| reason | connect listener | phase | meaning | what to do |\n";
  out << "|---|---|---|---|---|\n";
  for (const CloseReasonInfo& info : kTable) {
    out << "| `" << info.name << "` | ";
    if (info.reason == R::kClientClosed) {
      out << "none (the client left)";
    } else if (info.http_status == 0) {
      out << "reset";
    } else {
      out << info.http_status;
    }
    out << " | " << info.phases << " | " << info.meaning << " | " << info.action << " |\n";
  }
}

}  // namespace acr
