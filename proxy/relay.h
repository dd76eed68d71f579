#pragma once

#include <event2/buffer.h>
#include <event2/bufferevent.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace acr {

struct ProxyStats;

// The relay of one tunnel: bytes both ways between the client's and the upstream's connected
// bufferevents, with flow control, byte counters, half-close and the process-wide buffer budget
// (README "Relay", THREATS R8). It takes over both bufferevents' callbacks from start() to
// stop(); the bufferevents stay owned by the caller, who frees them only after stop().
//
// Flow control: a side stops being read once kHighWater bytes wait for the other side (or the
// process is past --max-buffer-memory and this tunnel holds at least its fair share), and resumes
// when the other side has drained to half of that. Per tunnel: about 2 x (kHighWater + one read).
class Relay {
 public:
  static constexpr size_t kHighWater = 64 * 1024;

  // Told once, when the tunnel is over: both directions have passed their FIN (`reset` false,
  // `closed_by` the side that sent the first FIN), or a side failed (`reset` true; `closed_by`
  // the side that sent the first FIN, else the failing side). It may call stop() but must not
  // destroy the Relay.
  class Observer {
   public:
    virtual ~Observer() = default;
    virtual void onRelayEnded(std::string_view closed_by, bool reset) = 0;
  };

  Relay(bufferevent* client, bufferevent* upstream, ProxyStats& stats, size_t max_buffer_memory,
        Observer& observer) noexcept;
  ~Relay();
  Relay(const Relay&) = delete;
  Relay& operator=(const Relay&) = delete;

  // Counts the tunnel as active, passes on the bytes both inputs hold already (the head's early
  // bytes, the ClientHello), byte-exact, and starts reading both sides.
  void start();
  // Unregisters from the bufferevents (disabling nothing) and returns this tunnel's share of the
  // buffer budget and of the active tunnels. Idempotent; the destructor calls it.
  void stop() noexcept;

  uint64_t bytesUp() const noexcept { return bytes_up_; }      // client -> upstream
  uint64_t bytesDown() const noexcept { return bytes_down_; }  // upstream -> client
  std::chrono::steady_clock::time_point lastActivity() const noexcept { return last_activity_; }
  // "client" or "upstream": the side whose FIN came first; empty before one.
  std::string_view closedBy() const noexcept { return closed_by_; }

 private:
  // One direction's half-close: its source has not sent FIN; has sent it but bytes before it
  // still wait in the sink's output; or the FIN has been passed on (shutdown(SHUT_WR) of the sink).
  enum class HalfClose : uint8_t { kOpen, kFinPending, kFinSent };
  struct Direction {
    bufferevent* source;
    bufferevent* sink;
    HalfClose half_close = HalfClose::kOpen;
    bool down;  // upstream -> client
  };

  static void onClientRead(bufferevent*, void* self);
  static void onUpstreamRead(bufferevent*, void* self);
  static void onClientWrite(bufferevent*, void* self);
  static void onUpstreamWrite(bufferevent*, void* self);
  static void onClientEvent(bufferevent*, short events, void* self);
  static void onUpstreamEvent(bufferevent*, short events, void* self);
  static void onOutputChanged(evbuffer* buffer, const evbuffer_cb_info* info, void* self);

  void forward(Direction& direction);
  // The sink of `direction` drained to its low watermark: resume reading its source, or pass on
  // a pending FIN once everything before it is out.
  void onDrained(Direction& direction);
  void onFin(Direction& direction);
  void end(std::string_view failed_side, bool reset);
  bool overBufferBudget(size_t queued) const noexcept;

  bufferevent* const client_;
  bufferevent* const upstream_;
  ProxyStats& stats_;
  const int64_t max_buffer_memory_;
  Observer& observer_;
  Direction up_;
  Direction down_;
  evbuffer_cb_entry* client_output_cb_ = nullptr;
  evbuffer_cb_entry* upstream_output_cb_ = nullptr;
  int64_t buffered_ = 0;  // this tunnel's share of ProxyStats::relay_buffered
  bool started_ = false;
  bool ended_ = false;
  std::string_view closed_by_;  // the side whose FIN came first
  uint64_t bytes_up_ = 0;
  uint64_t bytes_down_ = 0;
  std::chrono::steady_clock::time_point last_activity_;
};

}  // namespace acr
