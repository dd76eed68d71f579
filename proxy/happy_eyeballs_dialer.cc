#include "proxy/happy_eyeballs_dialer.h"

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "proxy/own_upstreams.h"
#include "proxy/socket_options.h"

namespace acr {
namespace {

timeval toTimeval(std::chrono::milliseconds duration) {
  const int64_t ms = std::max<int64_t>(duration.count(), 0);
  return timeval{static_cast<time_t>(ms / 1000), static_cast<suseconds_t>((ms % 1000) * 1000)};
}

AttemptOutcome outcomeOf(int error) noexcept {
  return error == ECONNREFUSED ? AttemptOutcome::kRefused : AttemptOutcome::kUnreachable;
}

}  // namespace

std::vector<IpAddress> happyEyeballsOrder(const std::vector<IpAddress>& addresses, bool first_v6) {
  // Two cursors, one per family, each at the next address of its family not taken yet: one
  // allocation (the result), not one per family as well, on every tunnel's dial.
  const auto next_of = [&](size_t from, bool v6) {
    while (from < addresses.size() && addresses[from].isV4() == v6) {
      ++from;
    }
    return from;
  };
  std::vector<IpAddress> ordered;
  ordered.reserve(addresses.size());
  size_t first = next_of(0, first_v6);
  size_t second = next_of(0, !first_v6);
  while (first < addresses.size() || second < addresses.size()) {
    if (first < addresses.size()) {
      ordered.push_back(addresses[first]);
      first = next_of(first + 1, first_v6);
    }
    if (second < addresses.size()) {
      ordered.push_back(addresses[second]);
      second = next_of(second + 1, !first_v6);
    }
  }
  return ordered;
}

namespace {

bool hasDuplicates(const std::vector<IpAddress>& addresses) noexcept {
  for (size_t i = 1; i < addresses.size(); ++i) {
    if (std::find(addresses.begin(), addresses.begin() + static_cast<ptrdiff_t>(i), addresses[i]) !=
        addresses.begin() + static_cast<ptrdiff_t>(i)) {
      return true;
    }
  }
  return false;
}

}  // namespace

std::string_view attemptOutcomeName(AttemptOutcome outcome) noexcept {
  switch (outcome) {
    case AttemptOutcome::kPending:
      return "pending";
    case AttemptOutcome::kConnected:
      return "connected";
    case AttemptOutcome::kRefused:
      return "refused";
    case AttemptOutcome::kUnreachable:
      return "unreachable";
    case AttemptOutcome::kTimeout:
      return "timeout";
    case AttemptOutcome::kCancelled:
      return "cancelled";
    case AttemptOutcome::kError:
      return "error";
  }
  return "unknown";
}

std::string DialAttempt::toString() const {
  // One allocation at the exact length, not one per piece.
  std::array<char, SocketAddress::kMaxTextLength> address;
  const size_t length = endpoint.format(address);
  const std::string_view name = attemptOutcomeName(outcome);
  std::string out;
  out.reserve(length + 1 + name.size());
  out.append(address.data(), length).append(1, ' ').append(name);
  return out;
}

// One attempt in flight: its socket and where its record is.
// One attempt in flight: its stream's edges come here until it connects or fails.
struct HappyEyeballsDialer::Live final : Stream::Handler {
  ACR_SLAB_ALLOCATED(Live, handshakes)
  HappyEyeballsDialer* dialer = nullptr;
  size_t index = 0;  // into attempts_
  std::unique_ptr<Stream> stream;
  std::optional<SocketAddress> local;  // registered in own_upstreams, with `remote`
  SocketAddress remote;                // the address this attempt dials

  void onStreamEvent(Stream& edge, short what) override {
    dialer->onAttemptEvent(*this, edge, what);
  }
};

HappyEyeballsDialer::HappyEyeballsDialer(event_base* base, DialOptions options, Callback done)
    : base_(base), options_(options), done_(std::move(done)) {
  evtimer_assign(&next_timer_, base_, &HappyEyeballsDialer::onNextTimer, this);
  evtimer_assign(&deadline_timer_, base_, &HappyEyeballsDialer::onDeadline, this);
}

HappyEyeballsDialer::~HappyEyeballsDialer() { cancel(); }

void HappyEyeballsDialer::add(const std::vector<IpAddress>& addresses, bool more_coming) {
  if (finished_) {
    return;
  }
  more_coming_ = more_coming;
  if (queue_.empty() && attempts_.empty() && !hasDuplicates(addresses)) {
    // The first addresses (nearly every dial's only ones): nothing to merge them with, so they
    // are ordered straight into the queue (one allocation, not two).
    queue_ = happyEyeballsOrder(addresses, true);
  } else {
    std::vector<IpAddress> merged = queue_;
    for (const IpAddress& address : addresses) {
      const bool attempted = std::any_of(
          attempts_.begin(), attempts_.end(),
          [&](const DialAttempt& attempt) { return toIpAddress(attempt.endpoint) == address; });
      if (!attempted && std::find(merged.begin(), merged.end(), address) == merged.end()) {
        merged.push_back(address);
      }
    }
    // Alternate starting with the family not dialled last (IPv6 before anything was dialled).
    queue_ = happyEyeballsOrder(merged, attempts_.empty() || !last_v6_);
  }
  if (!started_) {
    started_ = true;
    const timeval budget = toTimeval(
        std::chrono::duration_cast<std::chrono::milliseconds>(options_.deadline - Clock::now()));
    evtimer_add(&deadline_timer_, &budget);
    startNext();
    return;
  }
  if (live_.empty()) {
    startNext();
  } else if (options_.attempt_delay.count() == 0) {
    // One at a time: the attempt in flight now shares the budget with the new addresses.
    const auto share = (options_.deadline - last_start_) / static_cast<int64_t>(queue_.size() + 1);
    armNext(
        std::chrono::duration_cast<std::chrono::milliseconds>(last_start_ + share - Clock::now()));
  } else if (!evtimer_pending(&next_timer_, nullptr)) {
    // The delay runs from the last attempt's start, as if the addresses had been there all along.
    const auto since =
        std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - last_start_);
    armNext(options_.attempt_delay - since);
  }
}

void HappyEyeballsDialer::cancel() noexcept {
  if (finished_) {
    return;  // won, failed or cancelled: nothing in flight, both timers stopped already
  }
  finished_ = true;
  while (!live_.empty()) {
    closeLive(*live_.back(), AttemptOutcome::kCancelled, 0);
  }
  evtimer_del(&next_timer_);
  evtimer_del(&deadline_timer_);
}

bool HappyEyeballsDialer::startNext() {
  while (!queue_.empty()) {
    const IpAddress address = queue_.front();
    queue_.erase(queue_.begin());
    const SocketAddress endpoint = toSocketAddress(address, options_.port);
    attempts_.push_back({endpoint, AttemptOutcome::kPending, 0});
    const size_t index = attempts_.size() - 1;
    last_v6_ = !address.isV4();
    last_start_ = Clock::now();
    const int fd = socket(endpoint.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      attempts_[index].outcome = AttemptOutcome::kError;
      attempts_[index].error = last_error_ = errno;
      continue;
    }
    if (options_.mark && !setMark(fd, *options_.mark)) {
      // Without its mark the socket could be redirected back to the proxy: fail closed.
      const int error = errno;
      attempts_[index].outcome = AttemptOutcome::kError;
      attempts_[index].error = error;
      close(fd);
      queue_.clear();
      while (!live_.empty()) {
        closeLive(*live_.front(), AttemptOutcome::kCancelled, 0);
      }
      fail(false, error);
      return false;
    }
    setNoDelay(fd);  // not fatal: Nagle only delays (socket_options.h says why it is off)
    auto live = std::make_unique<Live>();
    live->dialer = this;
    live->index = index;
    live->stream = std::make_unique<Stream>(base_, fd);  // closes fd from here on
    int error = 0;
    if (::connect(fd, endpoint.get(), endpoint.length) != 0 && errno != EINPROGRESS) {
      error = errno;
    } else if (!live->stream->open(live.get())) {
      // Registered only after connect(): epoll reports a socket that is not connecting yet as
      // hung up. A connect() that completed at once reports writable when registered.
      error = ENOMEM;
    }
    if (error != 0) {
      attempts_[index].outcome = error == ENOMEM ? AttemptOutcome::kError : outcomeOf(error);
      attempts_[index].error = last_error_ = error;
      continue;  // `live` closes the socket
    }
    if (options_.own_upstreams != nullptr) {
      // connect() has bound the local port already: register it before the kernel can deliver a
      // redirected copy of this connection to our own transparent listener.
      live->local = localAddress(fd);
      live->remote = endpoint;
      if (live->local) {
        options_.own_upstreams->add(*live->local, live->remote);
      }
    }
    live_.push_back(std::move(live));
    if (options_.attempt_delay.count() > 0) {
      armNext(options_.attempt_delay);
    } else {
      // One at a time: this attempt gets its share of what is left of the budget (counting one
      // more address when the other family is still being resolved).
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(options_.deadline - Clock::now());
      const size_t sharing = queue_.size() + 1 + (more_coming_ ? 1 : 0);
      armNext(std::max(left / static_cast<int64_t>(sharing), std::chrono::milliseconds(1)));
    }
    return true;
  }
  if (live_.empty() && !more_coming_) {
    fail(false, last_error_);
    return false;
  }
  return true;
}

void HappyEyeballsDialer::armNext(std::chrono::milliseconds delay) {
  const timeval tv = toTimeval(delay);
  evtimer_add(&next_timer_, &tv);
}

void HappyEyeballsDialer::closeLive(Live& live, AttemptOutcome outcome, int error) {
  DialAttempt& attempt = attempts_[live.index];
  attempt.outcome = outcome;
  attempt.error = error;
  if (live.local && options_.own_upstreams != nullptr) {
    options_.own_upstreams->remove(*live.local, live.remote);
  }
  live.stream.reset();  // closes the socket, if it was not handed over
  const auto it = std::find_if(live_.begin(), live_.end(),
                               [&](const std::unique_ptr<Live>& p) { return p.get() == &live; });
  live_.erase(it);  // frees `live`
}

void HappyEyeballsDialer::onAttemptEvent(Live& live, Stream& stream, short what) {
  // The connect() ended: connected (writable), or with an error, which epoll always reports
  // (EPOLLERR, EPOLLHUP) and libevent as readable and writable. So an edge that is only writable
  // is a connection, without the getsockopt(SO_ERROR) a mixed one needs to tell the two apart.
  int error = 0;
  socklen_t length = sizeof(error);
  if ((what & (EV_READ | EV_WRITE | EV_CLOSED)) != EV_WRITE &&
      getsockopt(stream.fd(), SOL_SOCKET, SO_ERROR, &error, &length) != 0) {
    error = errno;
  }
  if (error == 0 && (what & EV_WRITE) != 0) {
    win(live);
    return;
  }
  if (error == 0) {
    error = (what & EV_CLOSED) != 0 ? ECONNRESET : 0;
    if (error == 0) {
      return;  // not an end of the connect(); wait for it
    }
  }
  last_error_ = error;
  closeLive(live, outcomeOf(error), error);
  // A failed attempt moves on at once; the delay starts again from the new attempt.
  if (!queue_.empty()) {
    evtimer_del(&next_timer_);
  }
  startNext();
}

void HappyEyeballsDialer::onNextTimer(evutil_socket_t, short, void* arg) {
  auto& self = *static_cast<HappyEyeballsDialer*>(arg);
  if (self.options_.attempt_delay.count() == 0 && !self.live_.empty()) {
    self.last_error_ = ETIMEDOUT;
    self.closeLive(*self.live_.front(), AttemptOutcome::kTimeout, ETIMEDOUT);
  }
  self.startNext();
}

void HappyEyeballsDialer::onDeadline(evutil_socket_t, short, void* arg) {
  auto& self = *static_cast<HappyEyeballsDialer*>(arg);
  while (!self.live_.empty()) {
    self.closeLive(*self.live_.front(), AttemptOutcome::kTimeout, ETIMEDOUT);
  }
  self.fail(true, ETIMEDOUT);
}

void HappyEyeballsDialer::win(Live& live) {
  DialResult result;
  live.stream->setHandler(nullptr);
  result.upstream = std::move(live.stream);  // handed over, with its registration
  result.local = live.local;
  result.endpoint = attempts_[live.index].endpoint;
  attempts_[live.index].outcome = AttemptOutcome::kConnected;
  live.local.reset();
  closeLive(live, AttemptOutcome::kConnected, 0);
  while (!live_.empty()) {
    closeLive(*live_.front(), AttemptOutcome::kCancelled, 0);
  }
  finished_ = true;
  evtimer_del(&next_timer_);
  evtimer_del(&deadline_timer_);
  const Callback done = std::move(done_);
  done(std::move(result));
}

void HappyEyeballsDialer::fail(bool timed_out, int error) {
  DialResult result;
  result.timed_out = timed_out;
  result.error = error;
  if (!attempts_.empty()) {
    result.endpoint = attempts_.back().endpoint;
  }
  finished_ = true;
  evtimer_del(&next_timer_);
  evtimer_del(&deadline_timer_);
  const Callback done = std::move(done_);
  done(std::move(result));
}

}  // namespace acr
