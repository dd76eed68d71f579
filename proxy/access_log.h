#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

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
  std::string dialled;       // upstream address that carried the tunnel (else the last tried)
  std::vector<std::string> attempts;  // every connection attempt: "ADDR:PORT outcome", in order
  bool allowed = false;               // the tunnel was relayed
  // The policy let it through but it ended before relaying (the client closed after the 200,
  // a drain during dns/connect/tunnel_hello): decision "incomplete", never "deny", so that a
  // refusal count and an "allowed:" sentence never describe the same connection.
  bool incomplete = false;
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
  // The ClientHello offered ECH (0xfe0d): its SNI is the outer, public name; the inner one is
  // encrypted and invisible to any proxy. Also set for GREASE ECH (indistinguishable).
  bool ech = false;
  // The client group whose policy judged the connection ([[group]]); empty for the top-level
  // policy. Points into the policy snapshot the connection keeps.
  std::string_view group;
  // The group's series in Metrics (ActivePolicy::seriesOf); metrics only, never logged.
  uint32_t group_series = UINT32_MAX;
};

// An AccessRecord as a relaying tunnel keeps it until it ends (memory per idle tunnel, issue 9
// section 2): the scalars, and every text field in one allocation (lengths first, then the bytes),
// instead of a 376-byte record with six strings and a vector of them (~350 bytes in up to eight
// allocations, each one pinning a heap page among the freed handshakes). unpack() gives back an
// equal record, except for what only the end sets: bytes_up, bytes_down, total_ms, closed_by and
// phase come back zero or empty.
class PackedAccessRecord {
 public:
  PackedAccessRecord() = default;
  explicit PackedAccessRecord(const AccessRecord& record);
  AccessRecord unpack() const;
  // The same into `record`, whose strings keep their capacity: a record reused for every line
  // (Connection::finish) costs no allocation once its strings have grown.
  void unpackInto(AccessRecord& record) const;

 private:
  // The text fields in packing order (client, target, original_dst, dialled, rule, sentence),
  // then each attempt.
  static constexpr size_t kFixedTexts = 6;

  // The scalars kept, named as in AccessRecord: copyScalars() copies them either way.
  struct Scalars {
    std::string_view listener;
    std::string_view reason;
    std::string_view group;
    double dns_ms = -1;
    double connect_ms = -1;
    double decision_ms = -1;
    uint32_t group_series = UINT32_MAX;
    uint16_t port = 0;
    bool allowed = false;
    bool incomplete = false;
    bool would_deny = false;
    bool ech = false;
  };
  template <typename From, typename To>
  static void copyScalars(const From& from, To& to) noexcept;

  // Texts of up to Slab::kMaxSlot bytes (nearly all) live in Slab::tunnels(), with the tunnel
  // that keeps them; longer ones on the heap.
  struct TextsDeleter {
    TextsDeleter() noexcept : bytes(0) {}
    explicit TextsDeleter(size_t size) noexcept : bytes(size) {}
    size_t bytes;
    void operator()(char* texts) const noexcept;
  };

  Scalars scalars_;
  uint32_t attempt_count_ = 0;
  // uint32_t lengths[kFixedTexts + attempt_count_], then the bytes.
  std::unique_ptr<char[], TextsDeleter> texts_;
};

// What a record's `decision` field and the connections_total `decision` label say.
enum class Outcome : uint8_t {
  kDeny,        // "deny": refused (policy, malformed request, limits) or failed before relaying
  kAllow,       // "allow": relayed
  kIncomplete,  // "incomplete": allowed, ended before relaying (reason client_closed, shutdown)
  kWouldDeny,   // "would_deny": relayed only because report-only waived a denial (metrics label;
                // the log line says decision "allow" with would_deny true)
};
inline Outcome outcomeOf(const AccessRecord& record) noexcept {
  if (record.allowed) {
    return record.would_deny ? Outcome::kWouldDeny : Outcome::kAllow;
  }
  return record.incomplete ? Outcome::kIncomplete : Outcome::kDeny;
}
std::string_view outcomeName(Outcome outcome) noexcept;
// The log line's `decision`: a report-only pass is "allow" there (with would_deny true).
inline std::string_view decisionName(const AccessRecord& record) noexcept {
  return record.allowed ? std::string_view("allow") : outcomeName(outcomeOf(record));
}

// Writes access records as one JSON object per line (or a plain text line) through spdlog.
class AccessLog {
 public:
  AccessLog(std::shared_ptr<spdlog::logger> logger, bool json);
  void write(const AccessRecord& record) const;
  // The same log written in the other format (a reload may change log.format).
  AccessLog withFormat(bool json) const { return AccessLog(logger_, json); }
  // The summary of refusals DenyLogLimiter left out: reason "log_suppressed" and their count.
  void writeSuppressed(uint64_t suppressed, uint32_t rate) const;

  // JSON string escaping (RFC 8259), also used for untrusted names: never emits raw control bytes.
  static void appendJsonString(std::string& out, std::string_view text);

 private:
  std::shared_ptr<spdlog::logger> logger_;
  bool json_;
};

}  // namespace acr
