#include "proxy/access_log.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>

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

// Appends the time now as "2026-12-06T04:20:31.123Z" (UTC, milliseconds). The part up to the
// seconds is formatted once per second and thread (gmtime_r takes glibc's time-zone lock and
// snprintf is ~2,000 instructions: a third of the log line's cost when done for every line).
void appendTimestamp(std::string& out) {
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
    cached_length = n > 0 ? std::min(static_cast<size_t>(n), sizeof(cached) - 1) : 0;
    cached_second = seconds;
  }
  out.append(cached, cached_length);
  const char fraction[] = {'.', static_cast<char>('0' + millis / 100),
                           static_cast<char>('0' + millis / 10 % 10),
                           static_cast<char>('0' + millis % 10), 'Z'};
  out.append(fraction, sizeof(fraction));
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

}  // namespace

void AccessLog::write(const AccessRecord& r) const {
  std::string line;
  line.reserve(512);
  if (!json_) {
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
  auto field = [&](const char* name, std::string_view value) {
    line += line.size() > 1 ? ",\"" : "\"";
    line += name;
    line += "\":";
    appendJsonString(line, value);
  };
  auto number = [&](const char* name, double value) {
    line += ",\"";
    line += name;
    line += "\":";
    // As "%.3f" would write it (std::to_chars is specified as printf in the C locale).
    char buffer[64];
    const auto [end, ec] =
        std::to_chars(buffer, buffer + sizeof(buffer), value, std::chars_format::fixed, 3);
    line.append(buffer, static_cast<size_t>(end - buffer));
  };
  auto integer = [&](const char* name, uint64_t value) {
    line += ",\"";
    line += name;
    line += "\":";
    appendInteger(line, value);
  };
  line = "{\"time\":\"";
  appendTimestamp(line);  // nothing in it needs escaping
  line += '"';
  field("listener", r.listener);
  field("client", r.client);
  if (!r.group.empty()) {  // only a client group's connections: the top-level policy has none
    field("group", r.group);
  }
  field("target", r.target);
  integer("port", r.port);
  if (!r.original_dst.empty()) {
    field("original_dst", r.original_dst);
  }
  if (!r.dialled.empty()) {
    field("dialled", r.dialled);
  }
  if (!r.attempts.empty()) {
    line += ",\"attempts\":[";
    for (size_t i = 0; i < r.attempts.size(); ++i) {
      if (i != 0) {
        line += ',';
      }
      appendJsonString(line, r.attempts[i]);
    }
    line += ']';
  }
  field("decision", decisionName(r));
  if (r.allowed && r.would_deny) {
    line += ",\"would_deny\":true";
  }
  field("reason", r.reason);
  if (!r.rule.empty()) {
    field("rule", r.rule);
  }
  field("message", r.sentence);
  integer("bytes_up", r.bytes_up);
  integer("bytes_down", r.bytes_down);
  if (r.dns_ms >= 0) {
    number("dns_ms", r.dns_ms);
  }
  if (r.connect_ms >= 0) {
    number("connect_ms", r.connect_ms);
  }
  number("total_ms", r.total_ms);
  field("closed_by", r.closed_by);
  field("phase", r.phase);
  if (r.ech) {
    line += ",\"ech\":true";
  }
  line += "}";
  logger_->info(line);
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
