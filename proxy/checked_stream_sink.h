#pragma once

#include <spdlog/sinks/base_sink.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <string>

namespace acr {

// A spdlog sink that writes each formatted line to a file descriptor with write(2), unbuffered,
// like spdlog's stdout sink, but notices when the write fails (a full disk behind a redirected
// stdout, a closed pipe, /dev/full): the access log must not vanish silently while the proxy keeps
// serving. On the first failed line, and then at most once per `report_interval` while writes
// keep failing, `report` is told how many lines were lost so far and why (errno); on the first
// line written after failures it is told that the log is writable again. Lines are never
// retried or buffered: a lost line (or the rest of a partly written one) is counted, not kept.
// Thread-safe (spdlog's sink mutex). `report` runs under that mutex, so it must not log to this
// sink.
class CheckedStreamSink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  using Clock = std::chrono::steady_clock;
  using Report = std::function<void(const std::string& message)>;

  CheckedStreamSink(int fd, Report report,
                    Clock::duration report_interval = std::chrono::seconds(10));

  // Lines that could not be written since the start.
  uint64_t lostLines();

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override;
  void flush_() override {}

 private:
  int fd_;
  Report report_;
  Clock::duration report_interval_;
  uint64_t lost_ = 0;
  bool failing_ = false;
  std::optional<Clock::time_point> last_report_;
};

}  // namespace acr
