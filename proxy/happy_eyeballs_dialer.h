#pragma once

#include <event2/event.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "conf/proxy_settings.h"
#include "filters/ip_address.h"
#include "proxy/slab.h"
#include "proxy/stream.h"

namespace acr {

class OwnUpstreams;

// RFC 8305 §4 order: the families alternate, starting with `first_v6` ? IPv6 : IPv4 (IPv6 when
// both are present and nothing was dialled yet), each family keeping the order it was given in
// (the resolver's). Duplicates are kept: callers pass distinct addresses.
std::vector<IpAddress> happyEyeballsOrder(const std::vector<IpAddress>& addresses,
                                          bool first_v6 = true);

// How one connection attempt ended. The names (attemptOutcomeName) are stable: the access log's
// "attempts" and the upstream_connect_total metric use them.
enum class AttemptOutcome : uint8_t {
  kPending,      // "pending": still connecting (never in a finished dial)
  kConnected,    // "connected": this attempt won and carries the tunnel
  kRefused,      // "refused": the upstream answered with RST (ECONNREFUSED)
  kUnreachable,  // "unreachable": ICMP unreachable, no route, or another connect() error
  kTimeout,      // "timeout": still connecting when the connect budget (or its share) ran out
  kCancelled,    // "cancelled": still connecting when another attempt won; closed at once
  kError,        // "error": no socket could be made or marked for it (local failure)
};
inline constexpr size_t kAttemptOutcomeCount = 7;
std::string_view attemptOutcomeName(AttemptOutcome outcome) noexcept;

struct DialAttempt {
  SocketAddress endpoint;
  AttemptOutcome outcome = AttemptOutcome::kPending;
  int error = 0;  // errno of a failed attempt
  // "192.0.2.1:443 connected", "[2001:db8::1]:443 timeout".
  std::string toString() const;
};

struct DialOptions {
  uint16_t port = 0;
  // RFC 8305 "Connection Attempt Delay". 0: one attempt at a time, each given an equal share of
  // what is left of the budget (the behaviour before Happy Eyeballs).
  std::chrono::milliseconds attempt_delay{250};
  std::chrono::steady_clock::time_point deadline;  // all attempts together
  std::optional<uint32_t> mark;                    // SO_MARK; a socket that cannot be marked
                                                   // ends the whole dial (fail closed)
  // When set, the local endpoint of every attempt socket is registered here from connect() until
  // that socket closes (the transparent listener's loop guard must see all of them).
  OwnUpstreams* own_upstreams = nullptr;
};

// The end of a dial, handed to the callback once.
struct DialResult {
  // The winner, connected, or null when every attempt failed. Owned by the receiver from now on;
  // its event is registered, with no handler (its edges are recorded until one is set).
  std::unique_ptr<Stream> upstream;
  // The winner's local endpoint, still registered in own_upstreams with `endpoint`: the receiver
  // removes that pair when it frees `upstream`.
  std::optional<SocketAddress> local;
  // The winner, or the last address attempted (unset when nothing was attempted).
  std::optional<SocketAddress> endpoint;
  bool timed_out = false;  // the connect budget ran out
  int error = 0;           // failure: errno of the last attempt to end (ETIMEDOUT at the deadline)
};

// Dials the addresses a policy judged, RFC 8305 style, on one event loop: the next attempt starts
// when the ones in flight have not connected after `attempt_delay`, or at once when one fails
// (refused, unreachable); the first to connect wins and every other attempt is closed at once;
// the deadline ends them all. It dials only the addresses given to add(), never anything else.
// Not thread-safe; every callback runs on the loop of `base`.
class HappyEyeballsDialer {
 public:
  using Callback = std::function<void(DialResult)>;

  // `done` runs exactly once (unless the dialer is cancelled or destroyed first), from add() or
  // from the event loop, as the dialer's last action: it may call cancel(), but must not destroy
  // the dialer.
  HappyEyeballsDialer(event_base* base, DialOptions options, Callback done);
  // Closes every attempt still in flight and unregisters their endpoints; `done` is not called.
  ~HappyEyeballsDialer();
  HappyEyeballsDialer(const HappyEyeballsDialer&) = delete;
  HappyEyeballsDialer& operator=(const HappyEyeballsDialer&) = delete;
  ACR_SLAB_ALLOCATED(HappyEyeballsDialer, handshakes)  // a connection's, until its dial ends

  // Queues `addresses` (those already queued or attempted are skipped) in happyEyeballsOrder and
  // starts dialling if nothing is in flight. `more_coming`: another add() will follow (the other
  // address family is still being resolved), so running out of addresses is not yet a failure.
  // Ignored once finished.
  void add(const std::vector<IpAddress>& addresses, bool more_coming);
  // Closes every attempt in flight; `done` will not run. Idempotent.
  void cancel() noexcept;

  bool finished() const noexcept { return finished_; }
  // Every attempt started so far, in the order they were started.
  const std::vector<DialAttempt>& attempts() const noexcept { return attempts_; }

 private:
  using Clock = std::chrono::steady_clock;
  struct Live;

  void onAttemptEvent(Live& live, Stream& stream, short what);
  static void onNextTimer(evutil_socket_t, short, void* arg);
  static void onDeadline(evutil_socket_t, short, void* arg);

  // Starts attempts until one is in flight or the queue is empty; then ends the dial if nothing
  // is in flight and nothing more is coming. Returns false when the dial ended (done ran).
  bool startNext();
  void armNext(std::chrono::milliseconds delay);
  void closeLive(Live& live, AttemptOutcome outcome, int error);
  void win(Live& live);
  void fail(bool timed_out, int error);

  event_base* base_;
  DialOptions options_;
  Callback done_;
  // Members, not event_new: two allocations fewer per dial (slab.h says why that matters).
  event next_timer_{};  // the next attempt (delay > 0), or this attempt's share (0)
  event deadline_timer_{};
  std::vector<IpAddress> queue_;  // judged, not yet attempted
  std::vector<std::unique_ptr<Live>> live_;
  std::vector<DialAttempt> attempts_;
  bool started_ = false;
  bool more_coming_ = false;
  bool finished_ = false;
  bool last_v6_ = false;  // family of the attempt started last
  Clock::time_point last_start_;
  int last_error_ = 0;
};

}  // namespace acr
