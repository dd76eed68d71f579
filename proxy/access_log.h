#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace spdlog {
class logger;
}

namespace acr {

// Everything the one log line of a connection says. Filled in as the connection advances; written
// once, when it ends.
struct AccessRecord {
  std::string_view listener;  // "connect", "transparent", "sni"
  std::string client;         // "ip:port"
  std::string target;         // CONNECT host or SNI, as given (escaped when written)
  uint16_t port = 0;
  std::string original_dst;  // transparent only
  std::string dialled;       // upstream address actually connected
  bool allowed = false;
  // Report-only: let through although the rules deny; `reason` is the reason it would have had.
  bool would_deny = false;
  std::string_view reason;  // stable reason identifier
  std::string rule;         // the rule or tag that decided, if any
  std::string sentence;     // Policy::describe text, or a plain explanation
  uint64_t bytes_up = 0;    // client -> upstream
  uint64_t bytes_down = 0;  // upstream -> client
  double dns_ms = -1;
  double connect_ms = -1;
  double total_ms = 0;
  double decision_ms = -1;     // accept -> verdict (relay started); -1 before one (metrics only)
  std::string_view closed_by;  // "client", "upstream", "proxy"
  std::string_view phase;      // state when it ended: "head", "hello", "dns", "connect", ...
};

// Writes access records as one JSON object per line (or a plain text line) through spdlog.
class AccessLog {
 public:
  AccessLog(std::shared_ptr<spdlog::logger> logger, bool json);
  void write(const AccessRecord& record) const;
  // The summary of refusals DenyLogLimiter left out: reason "log_suppressed" and their count.
  void writeSuppressed(uint64_t suppressed, uint32_t rate) const;

  // JSON string escaping (RFC 8259), also used for untrusted names: never emits raw control bytes.
  static void appendJsonString(std::string& out, std::string_view text);

 private:
  std::shared_ptr<spdlog::logger> logger_;
  bool json_;
};

}  // namespace acr
