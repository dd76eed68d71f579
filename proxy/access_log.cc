#include "proxy/access_log.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cassert>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <limits>

#include "proxy/log_escaper.h"
#include "proxy/slab.h"

namespace acr {

AccessLog::AccessLog(std::shared_ptr<spdlog::logger> logger, bool json)
    : logger_(std::move(logger)), json_(json) {}

template <typename From, typename To>
void PackedAccessRecord::copyScalars(const From& from, To& to) noexcept {
  to.listener = from.listener;
  to.reason = from.reason;
  to.group = from.group;
  to.dns_ms = from.dns_ms;
  to.connect_ms = from.connect_ms;
  to.decision_ms = from.decision_ms;
  to.group_series = from.group_series;
  to.port = from.port;
  to.allowed = from.allowed;
  to.incomplete = from.incomplete;
  to.would_deny = from.would_deny;
  to.ech = from.ech;
}

PackedAccessRecord::PackedAccessRecord(const AccessRecord& record)
    : attempt_count_(static_cast<uint32_t>(record.attempts.size())) {
  copyScalars(record, scalars_);
  const std::string* const fixed[kFixedTexts] = {&record.client,       &record.target,
                                                 &record.original_dst, &record.dialled,
                                                 &record.rule,         &record.sentence};
  const size_t count = kFixedTexts + attempt_count_;
  size_t bytes = 0;
  for (const std::string* text : fixed) {
    bytes += text->size();
  }
  for (const std::string& attempt : record.attempts) {
    bytes += attempt.size();
  }
  const size_t size = count * sizeof(uint32_t) + bytes;
  texts_ = std::unique_ptr<char[], TextsDeleter>(
      size <= Slab::kMaxSlot ? static_cast<char*>(Slab::tunnels().allocate(size)) : new char[size],
      TextsDeleter{size});
  char* lengths = texts_.get();
  char* out = lengths + count * sizeof(uint32_t);
  const auto put = [&](const std::string& text) {
    const auto length = static_cast<uint32_t>(text.size());
    std::memcpy(lengths, &length, sizeof(length));
    lengths += sizeof(length);
    std::memcpy(out, text.data(), text.size());
    out += text.size();
  };
  for (const std::string* text : fixed) {
    put(*text);
  }
  for (const std::string& attempt : record.attempts) {
    put(attempt);
  }
}

void PackedAccessRecord::TextsDeleter::operator()(char* texts) const noexcept {
  if (texts == nullptr) {
    return;
  }
  if (bytes <= Slab::kMaxSlot) {
    Slab::tunnels().deallocate(texts, bytes);
  } else {
    delete[] texts;
  }
}

AccessRecord PackedAccessRecord::unpack() const {
  AccessRecord record;
  unpackInto(record);
  return record;
}

void PackedAccessRecord::unpackInto(AccessRecord& record) const {
  copyScalars(scalars_, record);
  // What only the end sets starts empty, as in a new record.
  record.bytes_up = 0;
  record.bytes_down = 0;
  record.total_ms = 0;
  record.closed_by = {};
  record.phase = {};
  const size_t count = kFixedTexts + attempt_count_;
  const char* lengths = texts_.get();
  const char* in = lengths + count * sizeof(uint32_t);
  const auto take = [&](std::string& text) {
    uint32_t length = 0;
    if (texts_ != nullptr) {
      std::memcpy(&length, lengths, sizeof(length));
      lengths += sizeof(length);
    }
    text.assign(in, length);
    in += length;
  };
  for (std::string* text : {&record.client, &record.target, &record.original_dst, &record.dialled,
                            &record.rule, &record.sentence}) {
    take(*text);
  }
  record.attempts.resize(texts_ != nullptr ? attempt_count_ : 0);
  for (std::string& attempt : record.attempts) {
    take(attempt);
  }
}

std::string_view outcomeName(Outcome outcome) noexcept {
  switch (outcome) {
    case Outcome::kAllow:
      return "allow";
    case Outcome::kIncomplete:
      return "incomplete";
    case Outcome::kWouldDeny:
      return "would_deny";
    case Outcome::kDeny:
      break;
  }
  return "deny";
}

void AccessLog::appendJsonString(std::string& out, std::string_view text) {
  LogEscaper::appendJson(out, text);
}

namespace {

// Writes the time now as "2026-12-06T04:20:31.123Z" (UTC, milliseconds; kTimestampLength bytes)
// and returns the end. The part up to the seconds is formatted once per second and thread
// (gmtime_r takes glibc's time-zone lock and snprintf is ~2,000 instructions: a third of the log
// line's cost when done for every line).
constexpr size_t kTimestampLength = 24;
char* writeTimestamp(char* out) noexcept {
  const auto now = std::chrono::system_clock::now();
  const std::time_t seconds = std::chrono::system_clock::to_time_t(now);
  const auto millis = static_cast<unsigned>(
      std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000);
  thread_local std::time_t cached_second = -1;
  thread_local char cached[32];
  thread_local size_t cached_length = 0;
  if (seconds != cached_second) {
    std::tm utc;
    gmtime_r(&seconds, &utc);
    const int n =
        std::snprintf(cached, sizeof(cached), "%04d-%02d-%02dT%02d:%02d:%02d", utc.tm_year + 1900,
                      utc.tm_mon + 1, utc.tm_mday, utc.tm_hour, utc.tm_min, utc.tm_sec);
    // 19 bytes until the year 10000; never more than the line's bound allows.
    cached_length = n > 0 ? std::min<size_t>(static_cast<size_t>(n), kTimestampLength - 5) : 0;
    cached_second = seconds;
  }
  std::memcpy(out, cached, cached_length);
  out += cached_length;
  const char fraction[] = {'.', static_cast<char>('0' + millis / 100),
                           static_cast<char>('0' + millis / 10 % 10),
                           static_cast<char>('0' + millis % 10), 'Z'};
  std::memcpy(out, fraction, sizeof(fraction));
  return out + sizeof(fraction);
}

void appendTimestamp(std::string& out) {
  char buffer[kTimestampLength];
  out.append(buffer, static_cast<size_t>(writeTimestamp(buffer) - buffer));
}

std::string timestamp() {
  std::string out;
  appendTimestamp(out);
  return out;
}

// Appends `value` in decimal (std::to_chars: no locale, no allocation).
void appendInteger(std::string& out, uint64_t value) {
  char buffer[24];
  const auto [end, ec] = std::to_chars(buffer, buffer + sizeof(buffer), value);
  out.append(buffer, static_cast<size_t>(end - buffer));
}

// The most a number's text takes in a line: a uint64_t in decimal, and "%.3f" of any double (309
// digits before the point).
constexpr size_t kMaxIntegerText = 20;
constexpr size_t kMaxMillisText = 320;

// Writes "%.3f" of `value` as printf does, and returns the end. std::to_chars does the same
// exactly (~500 instructions per value, a third of a log line's own cost); this is ~50 for the
// values a line holds. Why it is exact: a double's 53 significant bits times 1000's 10 fit in
// long double's 64, so `value * 1000` is exact there, and so is its rounding to the nearest
// integer, ties to even, as printf rounds. Anything else (negative, -0, NaN, infinite, 1e15 ms
// and up) goes to std::to_chars.
char* writeMillis(char* out, double value) noexcept {
  if constexpr (std::numeric_limits<long double>::digits >= 64) {
    if (!std::signbit(value) && value < 1e15) {
      const long double scaled = static_cast<long double>(value) * 1000;
      auto thousandths = static_cast<uint64_t>(scaled);  // floor: scaled is not negative
      const long double rest = scaled - static_cast<long double>(thousandths);
      if (rest > 0.5L || (rest == 0.5L && (thousandths & 1) != 0)) {
        ++thousandths;
      }
      out = std::to_chars(out, out + 20, thousandths / 1000).ptr;
      const auto fraction = static_cast<unsigned>(thousandths % 1000);
      out[0] = '.';
      out[1] = static_cast<char>('0' + fraction / 100);
      out[2] = static_cast<char>('0' + fraction / 10 % 10);
      out[3] = static_cast<char>('0' + fraction % 10);
      return out + 4;
    }
  }
  return std::to_chars(out, out + kMaxMillisText, value, std::chars_format::fixed, 3).ptr;
}

// Writes a line's pieces one after another into memory the caller sized for all of them.
class LineWriter {
 public:
  explicit LineWriter(char* at) noexcept : at_(at) {}
  char* at() const noexcept { return at_; }

  void raw(std::string_view text) noexcept {
    std::memcpy(at_, text.data(), text.size());
    at_ += text.size();
  }
  void raw(char c) noexcept { *at_++ = c; }
  void json(std::string_view text) noexcept { at_ = LogEscaper::writeJson(at_, text); }
  void field(std::string_view key, std::string_view value) noexcept {
    raw(key);
    json(value);
  }
  void integer(uint64_t value) noexcept {
    at_ = std::to_chars(at_, at_ + kMaxIntegerText, value).ptr;
  }
  void millis(double value) noexcept { at_ = writeMillis(at_, value); }
  void timestamp() noexcept { at_ = writeTimestamp(at_); }

 private:
  char* at_;
};

// The same pieces, counted at the most each can take: a line's pieces go through this first, so
// that the memory LineWriter fills is sized by the code that fills it, not by a second list of
// the fields.
class LineBound {
 public:
  size_t bytes() const noexcept { return bytes_; }

  void raw(std::string_view text) noexcept { bytes_ += text.size(); }
  void raw(char) noexcept { ++bytes_; }
  void json(std::string_view text) noexcept { bytes_ += LogEscaper::jsonBound(text.size()); }
  void field(std::string_view key, std::string_view value) noexcept {
    raw(key);
    json(value);
  }
  void integer(uint64_t) noexcept { bytes_ += kMaxIntegerText; }
  void millis(double) noexcept { bytes_ += kMaxMillisText; }
  void timestamp() noexcept { bytes_ += kTimestampLength; }

 private:
  size_t bytes_ = 0;
};

// The JSON line's pieces, into a LineBound or a LineWriter. Each key comes with its comma, quotes
// and colon (`R"(,"client":)"`): one copy of a length known when compiling.
template <typename Out>
void writeJsonLine(Out& out, const AccessRecord& r) {
  out.raw(R"({"time":")");
  out.timestamp();  // nothing in it needs escaping
  out.raw('"');
  out.field(R"(,"listener":)", r.listener);
  out.field(R"(,"client":)", r.client);
  if (!r.group.empty()) {  // only a client group's connections: the top-level policy has none
    out.field(R"(,"group":)", r.group);
  }
  out.field(R"(,"target":)", r.target);
  out.raw(R"(,"port":)");
  out.integer(r.port);
  if (!r.original_dst.empty()) {
    out.field(R"(,"original_dst":)", r.original_dst);
  }
  if (!r.dialled.empty()) {
    out.field(R"(,"dialled":)", r.dialled);
  }
  if (!r.attempts.empty()) {
    out.raw(R"(,"attempts":[)");
    for (size_t i = 0; i < r.attempts.size(); ++i) {
      if (i != 0) {
        out.raw(',');
      }
      out.json(r.attempts[i]);
    }
    out.raw(']');
  }
  out.field(R"(,"decision":)", decisionName(r));
  if (r.allowed && r.would_deny) {
    out.raw(R"(,"would_deny":true)");
  }
  out.field(R"(,"reason":)", r.reason);
  if (!r.rule.empty()) {
    out.field(R"(,"rule":)", r.rule);
  }
  out.field(R"(,"message":)", r.sentence);
  out.raw(R"(,"bytes_up":)");
  out.integer(r.bytes_up);
  out.raw(R"(,"bytes_down":)");
  out.integer(r.bytes_down);
  if (r.dns_ms >= 0) {
    out.raw(R"(,"dns_ms":)");
    out.millis(r.dns_ms);
  }
  if (r.connect_ms >= 0) {
    out.raw(R"(,"connect_ms":)");
    out.millis(r.connect_ms);
  }
  out.raw(R"(,"total_ms":)");
  out.millis(r.total_ms);
  out.field(R"(,"closed_by":)", r.closed_by);
  out.field(R"(,"phase":)", r.phase);
  if (r.ech) {
    out.raw(R"(,"ech":true)");
  }
  out.raw('}');
}

}  // namespace

void AccessLog::write(const AccessRecord& r) const {
  if (!json_) {
    // One buffer per thread, its capacity kept from line to line: no allocation per line.
    thread_local std::string line;
    line.clear();
    // Every field that can carry a client's bytes is escaped: one connection, one line.
    appendTimestamp(line);
    line += ' ';
    LogEscaper::appendText(line, r.listener, true);
    line += ' ';
    LogEscaper::appendText(line, r.client, true);
    line += " -> ";
    LogEscaper::appendText(line, r.target, true);
    line += ':';
    appendInteger(line, r.port);
    line += ' ';
    line += decisionName(r);
    line += ' ';
    if (r.allowed && r.would_deny) {
      line += "would_deny ";
    }
    LogEscaper::appendText(line, r.reason, true);
    line += " up=";
    appendInteger(line, r.bytes_up);
    line += " down=";
    appendInteger(line, r.bytes_down);
    line += " closed_by=";
    LogEscaper::appendText(line, r.closed_by, true);
    line += " phase=";
    LogEscaper::appendText(line, r.phase, true);
    if (!r.group.empty()) {
      line += " group=";
      LogEscaper::appendText(line, r.group, true);
    }
    if (!r.attempts.empty()) {
      line += " attempts=";
      for (size_t i = 0; i < r.attempts.size(); ++i) {
        line += (i == 0 ? "" : ",");
        // One space-free token: "192.0.2.1:443/connected,...".
        std::string attempt = r.attempts[i];
        std::replace(attempt.begin(), attempt.end(), ' ', '/');
        LogEscaper::appendText(line, attempt, true);
      }
    }
    line += r.ech ? " ech=true " : " ";
    LogEscaper::appendText(line, r.sentence, false);
    logger_->info(line);
    return;
  }
  // JSON: the line is written into memory sized for its worst case first (every text byte
  // escaped to six), so that no piece checks capacity or grows the buffer.
  LineBound bound;
  writeJsonLine(bound, r);
  // One buffer per thread, kept for its next lines; allocated at exactly a line's bound when it
  // grows, so that AddressSanitizer would see a piece written past it.
  thread_local std::unique_ptr<char[]> line;
  thread_local size_t line_capacity = 0;
  if (line_capacity < bound.bytes()) {
    line = std::make_unique_for_overwrite<char[]>(bound.bytes());
    line_capacity = bound.bytes();
  }
  LineWriter out(line.get());
  writeJsonLine(out, r);
  assert(out.at() <= line.get() + bound.bytes());
  logger_->info(std::string_view(line.get(), static_cast<size_t>(out.at() - line.get())));
}

void AccessLog::writeSuppressed(uint64_t suppressed, uint32_t rate) const {
  const std::string sentence = std::to_string(suppressed) +
                               " refused connections were not logged (deny_log_rate " +
                               std::to_string(rate) + "/s); /metrics counts every one";
  if (!json_) {
    logger_->info(timestamp() + " log_suppressed " + std::to_string(suppressed) + " " + sentence);
    return;
  }
  std::string line = "{\"time\":";
  appendJsonString(line, timestamp());
  line += ",\"decision\":\"deny\",\"reason\":\"log_suppressed\",\"suppressed\":" +
          std::to_string(suppressed) + ",\"message\":";
  appendJsonString(line, sentence);
  line += "}";
  logger_->info(line);
}

}  // namespace acr
