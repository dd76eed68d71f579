#pragma once

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/event_struct.h>

#include <cstddef>
#include <cstdint>

#include "proxy/slab.h"

namespace acr {

// One non-blocking TCP socket of a tunnel (the client's from accept, an upstream's from its
// connect()) and its one edge-triggered libevent event for reading, writing and the peer's FIN,
// added when the stream opens and deleted when it closes: two epoll_ctl calls in the socket's
// life. A libevent bufferevent cost two to three more per socket (its level-triggered events
// added, modified when a connect finished, deleted when the relay took the socket over) and the
// relay's own event two again: 8 epoll_ctl per tunnel, 13 % of the proxy's CPU under load
// (bench/e2e/PROFILE.md). Whoever holds the stream (the dialer while it connects, the Connection
// during the handshake, the Relay while relaying) receives its edges through Handler; handing it
// on is setHandler(), without a system call.
//
// Edge-triggered: an edge says the socket became readable or writable, once. The stream keeps
// what the edges said (readable(), writable(), finSeen()) until a read or write finds otherwise,
// so a holder that was not reading when the edge came still knows there is something to read.
// A read shorter than asked ends the readiness without the extra read that would return EAGAIN:
// a TCP socket's receive queue was empty then, and new bytes bring a new edge. Except after an
// edge that may have been an error's (shortReadDrained()): libevent reports EPOLLERR as plain
// read and write readiness, so a reset that came right behind the peer's last bytes looks like
// those bytes' edge, and no later edge would say it is there.
//
// Not thread-safe: used on the loop of the event_base it was opened on.
class Stream {
 public:
  class Handler {
   public:
    virtual ~Handler() = default;
    // An edge: `what` holds EV_READ, EV_WRITE and EV_CLOSED as libevent reported them (an error
    // or hang-up as EV_READ | EV_WRITE); the stream has recorded them already.
    virtual void onStreamEvent(Stream& stream, short what) = 0;
  };

  // How readToInput() stopped.
  enum class ReadEnd : uint8_t {
    kDrained,  // the socket has no more bytes for now
    kLimit,    // input() holds `limit` bytes; the socket may hold more (readable() stays true)
    kEof,      // the peer's FIN was read (eof() from now on)
    kError,    // a read failed (error() holds its errno)
  };

  // The size of the per-thread scratch buffer (scratch()).
  static constexpr size_t kScratchSize = 64 * 1024;
  // One read buffer per event-loop thread, shared by all its streams and relays: bytes are read
  // into it first, so that a stream never owns more than the bytes it holds (a handshake read
  // into a reserved evbuffer chain held a 4 KiB chain for a 257-byte ClientHello until the relay,
  // and 500 such chains freed at once left the heap in 4 KiB holes between live tunnels).
  static char* scratch() noexcept;

  // Takes `fd`: closed by close() or the destructor. Nothing is registered before open().
  Stream(event_base* base, int fd) noexcept : base_(base), fd_(fd) {}
  ~Stream() { close(false); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  // An upstream's stream lives as long as its tunnel (a dial attempt that loses is rare).
  ACR_SLAB_ALLOCATED(Stream, tunnels)

  // Adds the event (one epoll_ctl), its edges going to `handler` (null: only recorded). False
  // when libevent could not; the stream is then only good for close().
  bool open(Handler* handler) noexcept;
  // Who receives the edges from now on (null: nobody; they are still recorded).
  void setHandler(Handler* handler) noexcept { handler_ = handler; }
  // Calls the handler with `what` on the loop's current pass (the edge already seen, again).
  void activate(short what) noexcept;

  int fd() const noexcept { return fd_; }
  bool isOpen() const noexcept { return fd_ >= 0; }
  bool readable() const noexcept { return readable_; }
  bool writable() const noexcept { return writable_; }
  bool finSeen() const noexcept { return fin_seen_; }
  bool eof() const noexcept { return eof_; }
  int error() const noexcept { return error_; }
  // False once a read returned EAGAIN or failed: that read also told whether an error waited.
  void setReadable(bool readable) noexcept {
    readable_ = readable;
    error_may_wait_ = error_may_wait_ && readable;
  }
  // Called after a read shorter than asked. True when it emptied the receive queue: readable()
  // ends, and new bytes, a FIN or an error bring a new edge. False when one more read must tell:
  // a FIN was seen (the next read returns it), or the edge that made the socket readable said
  // EV_READ | EV_WRITE without EV_CLOSED, which is how libevent reports EPOLLERR (a reset): the
  // error waits behind the bytes, and the edge that would announce it has come already. That
  // edge costs one read more (EAGAIN when it was only bytes); the next short read ends it.
  bool shortReadDrained() noexcept;
  void setWritable(bool writable) noexcept { writable_ = writable; }
  // The FIN has been read: eof() and nothing left to read.
  void setEof() noexcept {
    eof_ = true;
    readable_ = false;
  }
  // A read or write failed with `error` (errno).
  void setError(int error) noexcept { error_ = error; }

  // Bytes read and not consumed yet, and bytes the socket has not taken yet; made on first use,
  // freed by releaseBuffers() or close().
  evbuffer* input() noexcept;
  evbuffer* output() noexcept;
  size_t inputLength() const noexcept;
  size_t outputLength() const noexcept;
  // Frees the buffers that are empty: an idle relayed tunnel holds none.
  void releaseBuffers() noexcept;

  // Reads into input() while the socket is readable, until it is drained, its FIN is read, or
  // input() holds `limit` bytes.
  ReadEnd readToInput(size_t limit) noexcept;
  // Queues `length` bytes behind output() and writes what the socket takes at once. False when
  // the socket failed (error()).
  bool write(const void* data, size_t length) noexcept;
  // Writes output() while the socket takes it. False when the socket failed (error()).
  bool flush() noexcept;

  // Deletes the event (one epoll_ctl), frees the buffers and closes the socket: with a reset
  // (SO_LINGER 0) when `reset`, else with a FIN after what the kernel still holds. Idempotent.
  void close(bool reset) noexcept;

 private:
  static void onEvent(evutil_socket_t, short what, void* self);

  event_base* const base_;
  int fd_;
  Handler* handler_ = nullptr;
  event event_{};  // edge-triggered; valid from open() to close()
  bool registered_ = false;
  bool readable_ = false;
  bool writable_ = false;
  bool fin_seen_ = false;  // EV_CLOSED (EPOLLRDHUP) has been seen
  bool eof_ = false;       // the FIN itself has been read
  // An edge said EV_READ | EV_WRITE without EV_CLOSED: it may have been an error's, and no read
  // since has told (shortReadDrained(), setReadable(false)).
  bool error_may_wait_ = false;
  int error_ = 0;
  evbuffer* input_ = nullptr;
  evbuffer* output_ = nullptr;
};

}  // namespace acr
