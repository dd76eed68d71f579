#include "proxy/checked_stream_sink.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace acr {

CheckedStreamSink::CheckedStreamSink(int fd, Report report, Clock::duration report_interval)
    : fd_(fd), report_(std::move(report)), report_interval_(report_interval) {}

uint64_t CheckedStreamSink::lostLines() {
  const std::lock_guard<std::mutex> lock(mutex_);
  return lost_;
}

void CheckedStreamSink::sink_it_(const spdlog::details::log_msg& msg) {
  spdlog::memory_buf_t formatted;
  formatter_->format(msg, formatted);
  const char* data = formatted.data();
  size_t left = formatted.size();
  int error = 0;
  while (left > 0) {
    const ssize_t n = ::write(fd_, data, left);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      error = n < 0 ? errno : EIO;
      break;
    }
    data += n;
    left -= static_cast<size_t>(n);
  }
  if (left == 0) {
    if (failing_) {
      failing_ = false;
      last_report_.reset();
      report_("access log writable again; " + std::to_string(lost_) + " lines lost so far");
    }
    return;
  }
  ++lost_;
  failing_ = true;
  const Clock::time_point now = Clock::now();
  if (!last_report_ || now - *last_report_ >= report_interval_) {
    last_report_ = now;
    report_("access log write failed (" + std::string(std::strerror(error)) + "); still serving; " +
            std::to_string(lost_) + " lines lost so far");
  }
}

}  // namespace acr
