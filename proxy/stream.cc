#include "proxy/stream.h"

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <memory>

#include "proxy/socket_options.h"

namespace acr {
namespace {

bool wouldBlock(int error) { return error == EAGAIN || error == EWOULDBLOCK; }

}  // namespace

char* Stream::scratch() noexcept {
  thread_local std::unique_ptr<char[]> buffer(new char[kScratchSize]);
  return buffer.get();
}

bool Stream::open(Handler* handler) noexcept {
  handler_ = handler;
  // EV_CLOSED (EPOLLRDHUP): a FIN that arrives with the last bytes leaves nothing to wake us
  // once those bytes are read, so the edge that brought it must say so.
  constexpr short kWhat = EV_READ | EV_WRITE | EV_CLOSED | EV_ET | EV_PERSIST;
  if (fd_ < 0 || event_assign(&event_, base_, fd_, kWhat, &Stream::onEvent, this) != 0 ||
      event_add(&event_, nullptr) != 0) {
    return false;
  }
  registered_ = true;
  return true;
}

void Stream::activate(short what) noexcept {
  if (registered_) {
    event_active(&event_, what, 0);
  }
}

void Stream::onEvent(evutil_socket_t, short what, void* self) {
  auto* stream = static_cast<Stream*>(self);
  if ((what & (EV_READ | EV_CLOSED)) != 0 && !stream->eof_) {
    stream->readable_ = true;
  }
  if ((what & EV_CLOSED) != 0) {
    stream->fin_seen_ = true;
  }
  if ((what & EV_WRITE) != 0) {
    stream->writable_ = true;
  }
  // EPOLLERR arrives as exactly EV_READ | EV_WRITE (libevent's epoll backend drops EV_CLOSED for
  // it). Kept until a read tells: an activate(EV_READ) re-delivering an edge must not clear it.
  if ((what & (EV_READ | EV_WRITE | EV_CLOSED)) == (EV_READ | EV_WRITE)) {
    stream->error_may_wait_ = true;
  }
  if (stream->handler_ != nullptr) {
    stream->handler_->onStreamEvent(*stream, what);
  }
}

evbuffer* Stream::input() noexcept {
  if (input_ == nullptr) {
    input_ = evbuffer_new();
  }
  return input_;
}

evbuffer* Stream::output() noexcept {
  if (output_ == nullptr) {
    output_ = evbuffer_new();
  }
  return output_;
}

size_t Stream::inputLength() const noexcept {
  return input_ != nullptr ? evbuffer_get_length(input_) : 0;
}

size_t Stream::outputLength() const noexcept {
  return output_ != nullptr ? evbuffer_get_length(output_) : 0;
}

void Stream::releaseBuffers() noexcept {
  for (evbuffer** buffer : {&input_, &output_}) {
    if (*buffer != nullptr && evbuffer_get_length(*buffer) == 0) {
      evbuffer_free(*buffer);
      *buffer = nullptr;
    }
  }
}

bool Stream::shortReadDrained() noexcept {
  if (fin_seen_) {
    return false;
  }
  if (error_may_wait_) {
    error_may_wait_ = false;
    return false;
  }
  readable_ = false;
  return true;
}

Stream::ReadEnd Stream::readToInput(size_t limit) noexcept {
  if (eof_) {
    return ReadEnd::kEof;
  }
  evbuffer* buffer = input();
  if (buffer == nullptr) {
    error_ = ENOMEM;
    return ReadEnd::kError;
  }
  while (readable_) {
    const size_t held = evbuffer_get_length(buffer);
    if (held >= limit) {
      return ReadEnd::kLimit;
    }
    // Read into the thread's scratch buffer and copy what came: libevent then allocates a chain
    // the size of the bytes held, not of the read asked for.
    const size_t want = std::min(limit - held, kScratchSize);
    char* const bytes = scratch();
    const ssize_t n = ::recv(fd_, bytes, want, 0);
    if (n > 0) {
      if (evbuffer_add(buffer, bytes, static_cast<size_t>(n)) != 0) {
        error_ = ENOMEM;
        return ReadEnd::kError;
      }
      if (static_cast<size_t>(n) < want && shortReadDrained()) {
        break;
      }
      continue;
    }
    if (n == 0) {
      setEof();
      return ReadEnd::kEof;
    }
    if (errno == EINTR) {
      continue;
    }
    if (wouldBlock(errno)) {
      setReadable(false);
      break;
    }
    error_ = errno;
    setReadable(false);
    return ReadEnd::kError;
  }
  return ReadEnd::kDrained;
}

bool Stream::write(const void* data, size_t length) noexcept {
  const auto* bytes = static_cast<const char*>(data);
  if (outputLength() == 0) {
    while (length > 0 && writable_) {
      const ssize_t n = ::send(fd_, bytes, length, MSG_NOSIGNAL);
      if (n >= 0) {
        bytes += n;
        length -= static_cast<size_t>(n);
      } else if (errno == EINTR) {
        continue;
      } else if (wouldBlock(errno)) {
        writable_ = false;
      } else {
        error_ = errno;
        return false;
      }
    }
  }
  if (length > 0) {
    evbuffer* buffer = output();
    if (buffer == nullptr || evbuffer_add(buffer, bytes, length) != 0) {
      error_ = ENOMEM;
      return false;
    }
  }
  return true;
}

bool Stream::flush() noexcept {
  while (outputLength() > 0 && writable_) {
    if (evbuffer_write(output_, fd_) >= 0) {
      continue;  // until empty, or EAGAIN says the send buffer is full
    }
    if (errno == EINTR) {
      continue;
    }
    if (wouldBlock(errno)) {
      writable_ = false;
      break;
    }
    error_ = errno;
    return false;
  }
  return true;
}

void Stream::close(bool reset) noexcept {
  if (registered_) {
    event_del(&event_);
    registered_ = false;
  }
  if (fd_ >= 0) {
    if (reset) {
      setResetOnClose(fd_);
    }
    ::close(fd_);
    fd_ = -1;
  }
  for (evbuffer** buffer : {&input_, &output_}) {
    if (*buffer != nullptr) {
      evbuffer_free(*buffer);
      *buffer = nullptr;
    }
  }
  handler_ = nullptr;
  readable_ = writable_ = false;
}

}  // namespace acr
