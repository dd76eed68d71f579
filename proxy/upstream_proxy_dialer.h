#pragma once

#include <event2/bufferevent.h>
#include <event2/event.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "conf/upstream_proxy.h"
#include "proxy/happy_eyeballs_dialer.h"

namespace acr {

class Resolver;

// How a tunnel through the upstream proxy ended its setup, handed to the callback once.
struct UpstreamProxyResult {
  enum class Outcome : uint8_t {
    kTunnel,      // a 2xx answer: `dial.upstream` carries the tunnel
    kDialFailed,  // the upstream proxy was not reached: `dial` says why (its name did not
                  // resolve: `dial.endpoint` unset, `detail` says so)
    kTimeout,     // connected, but the answer's head was not complete by the deadline
    kClosed,      // connected, but it closed (or failed: `dial.error`) before a complete head
    kRefused,     // it answered with a status other than 2xx (`status`, `status_line`)
    kMalformed,   // the answer is not an HTTP/1.x status line, or its head is over kMaxHead
  };
  Outcome outcome = Outcome::kDialFailed;
  // The dial of the upstream proxy itself. For kTunnel as DialResult documents it (owned by the
  // receiver, local endpoint still registered in own_upstreams, callbacks unset, reading not
  // enabled); for every other outcome `upstream` is null and its socket is closed already.
  DialResult dial;
  uint16_t status = 0;
  std::string status_line;  // the answer's first line, printable, at most 200 bytes
  std::string detail;       // kDialFailed before any dial: what went wrong
};

// Opens one tunnel through an HTTP upstream proxy (--upstream-proxy): resolves the proxy's name
// (with the proxy's own resolver; an IP literal is itself), dials its addresses with a
// HappyEyeballsDialer (same budget, SO_MARK, keepalive and loop guard as a direct dial), sends
// `CONNECT target HTTP/1.1` with the Basic credentials, if any, and reads the answer's head
// (RFC 9110 9.3.6: any 2xx means the tunnel is open). Bytes the proxy sent after the head stay
// in the upstream's input: they belong to the tunnel, and the Relay passes them on first.
// Every step shares DialOptions::deadline. Not thread-safe; callbacks run on `base`'s loop.
class UpstreamProxyDialer final : private Stream::Handler {
 public:
  using Callback = std::function<void(UpstreamProxyResult)>;
  static constexpr size_t kMaxHead = 16 * 1024;

  // `options.port` is ignored (the proxy's port is used). `done` runs exactly once unless the
  // dialer is cancelled or destroyed first, from start() or the event loop, as the dialer's last
  // action: it may call cancel(), but must not destroy the dialer.
  UpstreamProxyDialer(event_base* base, Resolver& resolver, const UpstreamProxySettings& proxy,
                      DialOptions options, Callback done);
  ~UpstreamProxyDialer() override;
  UpstreamProxyDialer(const UpstreamProxyDialer&) = delete;
  UpstreamProxyDialer& operator=(const UpstreamProxyDialer&) = delete;

  // Asks for a tunnel to `target`, "name:port", "a.b.c.d:port" or "[v6]:port". Once.
  void start(const std::string& target);
  // Stops every step in flight and closes the proxy connection; `done` will not run. Idempotent.
  void cancel() noexcept;

  // The attempts to dial the upstream proxy, in order (empty before its name resolved).
  const std::vector<DialAttempt>& attempts() const noexcept;

 private:
  // Where the setup is; the timer runs in kResolve and kAnswer (the dialer has its own).
  enum class State : uint8_t { kIdle, kResolve, kDial, kAnswer, kDone };

  // The proxy's connection while its answer is awaited: writes the request, reads the answer.
  void onStreamEvent(Stream& upstream, short what) override;
  static void onTimer(evutil_socket_t, short, void* self);
  void onResolved(const std::vector<IpAddress>& addresses, std::string_view failure);
  void onDialed(DialResult result);
  void readAnswer();
  void armDeadline();
  // Ends the setup with `outcome`; closes the proxy connection unless it is a tunnel.
  void finish(UpstreamProxyResult::Outcome outcome);
  void closeConnection() noexcept;

  event_base* base_;
  Resolver& resolver_;
  const UpstreamProxySettings& proxy_;
  DialOptions options_;
  Callback done_;
  State state_ = State::kIdle;
  std::string request_;
  uint64_t dns_ticket_ = 0;
  event* timer_ = nullptr;
  std::unique_ptr<HappyEyeballsDialer> dialer_;
  UpstreamProxyResult result_;
};

}  // namespace acr
