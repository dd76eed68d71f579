#pragma once

#include <cstddef>
#include <cstdint>
#include <ostream>
#include <string>
#include <string_view>

#include "dns/dns_answer.h"
#include "filters/client_hello_parser.h"
#include "filters/connect_request_parser.h"
#include "filters/decision.h"

namespace acr {

// Every reason a connection ends with: the access log's `reason`, the `reason` label of
// acr_egress_connections_total, the X-Acr-Egress-Reason header and status line of a connect
// refusal, and the table of docs/troubleshooting.md all come from one table
// (closeReasonInfo). The names are stable data.
//
// The first three blocks mirror filters/ enums in their order, so that closeReasonOf() is a
// cast (tests/proxy/close_reason_test.cc checks that the names agree):
enum class CloseReason : uint8_t {
  // filters/decision.h Reason, in order: the policy's verdicts.
  kHostAllowed,
  kAddressAllowed,
  kAddressPublic,
  kInvalidHost,
  kHostNotAllowed,
  kPortNotAllowed,
  kAddressSpecial,
  kAddressNotAllowed,
  kAddressDenied,
  kSniAddressMismatch,
  kNoSni,
  kEsni,
  kClientAllowed,
  kClientNotAllowed,
  kEch,
  kAddressNotBound,
  // filters/connect_request_parser.h ConnectError, in order from kBadRequestLine.
  kBadRequestLine,
  kBadTarget,
  kBadPort,
  kBadVersion,
  kBadHeader,
  kMissingHost,
  kDuplicateHost,
  kBareLf,
  kTlsToProxyPort,
  kHttp2Preface,
  kConnectOnly,
  kHeadTooLarge,
  // filters/client_hello_parser.h ClientHelloError, in order from kNotTls.
  kNotTls,
  kLegacyHello,
  kBadRecord,
  kBadClientHello,
  kBadSni,
  kDuplicateExtension,
  kClientHelloTooLarge,
  // The proxy's own.
  kHeadTimeout,
  kHelloTimeout,
  kHandshakeMemory,
  kNotRedirected,
  kSniMismatch,
  kProxyLoop,
  kSelfConnection,
  kDnsNxDomain,
  kDnsNoAddresses,
  kDnsTimeout,
  kDnsFailure,
  kUpstreamTimeout,
  kUpstreamRefused,
  kUpstreamUnreachable,
  kUpstreamProxyRefused,
  kClientClosed,
  kShutdown,
  kRevoked,
  kOverloaded,
  kClientOverloaded,
  kListenerOverloaded,
  kDraining,
  kInternalError,
};
inline constexpr size_t kCloseReasonCount = static_cast<size_t>(CloseReason::kInternalError) + 1;

// One row of the table.
struct CloseReasonInfo {
  CloseReason reason;
  std::string_view name;  // stable identifier
  // The connect listener's answer when it refuses with this reason before its 200 (phases
  // accept, head, dns, connect): 200 for the allowing reasons (the tunnel), 0 for a reset or no
  // answer at all. After the 200, and on the sni and transparent listeners, every refusal is a
  // reset.
  uint16_t http_status;
  std::string_view phases;   // the access log `phase` values it can end in, for the reader
  std::string_view meaning;  // what happened, one line
  std::string_view action;   // what to do about it, one line
};

const CloseReasonInfo& closeReasonInfo(CloseReason reason) noexcept;
inline std::string_view closeReasonName(CloseReason reason) noexcept {
  return closeReasonInfo(reason).name;
}
// True for the reasons an allowed connection carries (host_allowed, address_allowed,
// address_public, client_allowed): a tunnel, or with decision "incomplete" none.
inline bool isAllowingReason(CloseReason reason) noexcept {
  return closeReasonInfo(reason).http_status == 200;
}

CloseReason closeReasonOf(Reason reason) noexcept;
// `error` must not be kNone.
CloseReason closeReasonOf(ConnectError error) noexcept;
CloseReason closeReasonOf(ClientHelloError error) noexcept;
// `status` must be a failure (not kOk, not kCancelled).
CloseReason closeReasonOf(DnsStatus status) noexcept;

// The connect listener's whole refusal for `reason` (whose http_status is an error): status line
// with the reason in it (Go clients such as docker and skopeo report only that), the
// X-Acr-Egress-Reason header, and "acr-egress: <sentence>" as a text body; Connection: close.
std::string httpRefusal(CloseReason reason, std::string_view sentence);
std::string_view httpStatusText(uint16_t status) noexcept;

// docs/troubleshooting.md's table of reasons, in markdown: one row per reason, in table order
// (`acr-egress reference reasons` prints it; scripts/update-docs and a test keep the docs equal).
void writeCloseReasonReference(std::ostream& out);

}  // namespace acr
