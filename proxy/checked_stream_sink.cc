#include "proxy/checked_stream_sink.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace acr {

CheckedStreamSink::CheckedStreamSink(int fd, Report report, Clock::duration report_interval,
                                     Batching batching)
    : fd_(fd),
      report_(std::move(report)),
      report_interval_(report_interval),
      batching_(batching),
      writer_([this] { writerLoop(); }) {}

CheckedStreamSink::~CheckedStreamSink() {
  {
    const std::lock_guard<std::mutex> lock(queue_mutex_);
    stopping_ = true;
  }
  wake_.notify_one();
  writer_.join();
  writeQueued();
}

uint64_t CheckedStreamSink::lostLines() {
  // Not under write_mutex_: the writer may be blocked in write(2) on a stalled reader.
  const std::lock_guard<std::mutex> lock(queue_mutex_);
  return lost_.load(std::memory_order_relaxed) + dropped_;
}

void CheckedStreamSink::sink_it_(const spdlog::details::log_msg& msg) {
  // One buffer per thread, kept: an access-log line is longer than the buffer's 250 inline bytes,
  // and a fresh one cost one or two allocations per line.
  thread_local spdlog::memory_buf_t formatted;
  formatted.clear();
  bool wake = false;
  {
    // The formatter caches the last timestamp, so it is used under the lock too.
    const std::lock_guard<std::mutex> lock(queue_mutex_);
    formatter_->format(msg, formatted);
    if (queue_.size() + formatted.size() > batching_.max_queued) {
      ++dropped_;
      wake = true;
    } else {
      // The first line of a batch starts the writer's window; a full batch ends it early.
      wake = queue_.empty();
      queue_.append(formatted.data(), formatted.size());
      ++queued_lines_;
      wake = wake || queue_.size() >= batching_.flush_bytes;
    }
  }
  if (wake) {
    wake_.notify_one();
  }
}

void CheckedStreamSink::writerLoop() {
  std::unique_lock<std::mutex> lock(queue_mutex_);
  while (!stopping_) {
    // Wait for a line, then for the window to close or a full batch: a burst of lines shares
    // one write(2).
    wake_.wait(lock, [&] { return stopping_ || !queue_.empty() || dropped_ > 0; });
    if (stopping_) {
      break;
    }
    wake_.wait_for(lock, batching_.window, [&] {
      return stopping_ || queue_.size() >= batching_.flush_bytes || dropped_ > 0;
    });
    lock.unlock();
    writeQueued();
    lock.lock();
  }
}

void CheckedStreamSink::writeQueued() {
  const std::lock_guard<std::mutex> write_lock(write_mutex_);
  size_t lines = 0;
  size_t dropped = 0;
  writing_.clear();
  {
    const std::lock_guard<std::mutex> lock(queue_mutex_);
    writing_.swap(queue_);
    std::swap(lines, queued_lines_);
    std::swap(dropped, dropped_);
  }
  const char* data = writing_.data();
  size_t left = writing_.size();
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
  // Each line ends in '\n': the lines not (or only partly) written are the newlines left.
  const size_t lost = static_cast<size_t>(std::count(data, data + left, '\n'));
  if (lines > 0 || dropped > 0) {
    noteResult(lost, dropped, error);
  }
  if (writing_.capacity() > batching_.flush_bytes * 2) {
    std::string().swap(writing_);  // a burst's buffer is not kept for good
  }
}

void CheckedStreamSink::noteResult(size_t lost, size_t dropped, int error) {
  if (lost == 0 && dropped == 0) {
    if (failing_) {
      failing_ = false;
      last_report_.reset();
      report_("access log writable again; " +
              std::to_string(lost_.load(std::memory_order_relaxed)) + " lines lost so far");
    }
    return;
  }
  lost_.fetch_add(lost + dropped, std::memory_order_relaxed);
  failing_ = true;
  const Clock::time_point now = Clock::now();
  if (!last_report_ || now - *last_report_ >= report_interval_) {
    last_report_ = now;
    const std::string why =
        lost > 0 ? "access log write failed (" + std::string(std::strerror(error)) + ")"
                 : "access log queue full (" + std::to_string(batching_.max_queued) +
                       " bytes waiting for a slow reader)";
    report_(why + "; still serving; " + std::to_string(lost_.load(std::memory_order_relaxed)) +
            " lines lost so far");
  }
}

}  // namespace acr
