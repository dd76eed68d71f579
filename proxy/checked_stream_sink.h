#pragma once

#include <spdlog/details/null_mutex.h>
#include <spdlog/sinks/base_sink.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

namespace acr {

// How CheckedStreamSink batches (outside the class: GCC needs the default member initialisers
// complete before a default argument uses them).
struct StreamBatching {
  using Clock = std::chrono::steady_clock;
  Clock::duration window = std::chrono::milliseconds(20);  // longest a line waits
  size_t flush_bytes = 64 * 1024;                          // a batch this large is written at once
  size_t max_queued = 4 * 1024 * 1024;
};

// The access log's spdlog sink: lines are formatted on the event loop that logs them and queued;
// a writer thread of the sink's own writes the queue to a file descriptor in batches, so a
// connection never costs the loop a write(2) (issue 9: one write per 64 KiB or per 20 ms window,
// not one per line). A slow reader behind the descriptor (a pipe to a stalled journald) never
// blocks a loop either: past `max_queued` bytes, new lines are dropped and counted.
//
// It notices when a write fails (a full disk behind a redirected stdout, a closed pipe,
// /dev/full): the access log must not vanish silently while the proxy keeps serving. On the first
// failed batch (or the first dropped line), and then at most once per `report_interval` while
// writes keep failing, `report` is told how many lines were lost so far and why; on the first
// batch written after failures it is told that the log is writable again. Lines are never retried:
// a lost line (or the rest of a partly written one) is counted, not kept.
//
// Nothing queued is lost at a clean exit: flush() (spdlog's, also called by the destructor)
// writes the queue from the calling thread. Thread-safe: any thread may log and flush. `report`
// runs on the writer thread or in flush(), never under the queue's lock, and must not log to
// this sink.
class CheckedStreamSink final : public spdlog::sinks::base_sink<spdlog::details::null_mutex> {
 public:
  using Clock = std::chrono::steady_clock;
  using Report = std::function<void(const std::string& message)>;
  using Batching = StreamBatching;

  CheckedStreamSink(int fd, Report report,
                    Clock::duration report_interval = std::chrono::seconds(10),
                    Batching batching = Batching());
  ~CheckedStreamSink() override;
  CheckedStreamSink(const CheckedStreamSink&) = delete;
  CheckedStreamSink& operator=(const CheckedStreamSink&) = delete;

  // Lines that could not be written since the start (write failures and full-queue drops).
  uint64_t lostLines();

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override;
  void flush_() override { writeQueued(); }

 private:
  void writerLoop();
  // Writes what is queued now; serialised by write_mutex_, so batches keep their order.
  void writeQueued();
  void noteResult(size_t lost, size_t dropped, int error);

  const int fd_;
  const Report report_;
  const Clock::duration report_interval_;
  const Batching batching_;

  std::mutex queue_mutex_;  // guards the members up to the writer's
  std::condition_variable wake_;
  std::string queue_;
  size_t queued_lines_ = 0;
  size_t dropped_ = 0;  // lines refused for a full queue since the last batch
  bool stopping_ = false;

  std::mutex write_mutex_;  // taken before queue_mutex_, never after; guards the members below
  std::string writing_;     // the batch being written (its capacity is kept)
  std::atomic<uint64_t> lost_{0};  // written under write_mutex_
  bool failing_ = false;
  std::optional<Clock::time_point> last_report_;

  std::thread writer_;  // last: started once everything above exists
};

}  // namespace acr
