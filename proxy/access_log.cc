#include "proxy/access_log.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdio>
#include <ctime>

namespace acr {

AccessLog::AccessLog(std::shared_ptr<spdlog::logger> logger, bool json)
    : logger_(std::move(logger)), json_(json) {}

void AccessLog::appendJsonString(std::string& out, std::string_view text) {
  out += '"';
  for (unsigned char c : text) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      default:
        if (c < 0x20 || c >= 0x7f) {
          char escape[8];
          std::snprintf(escape, sizeof(escape), "\\u%04x", c);
          out += escape;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  out += '"';
}

namespace {

std::string timestamp() {
  const auto now = std::chrono::system_clock::now();
  const std::time_t seconds = std::chrono::system_clock::to_time_t(now);
  const auto millis =
      std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm utc;
  gmtime_r(&seconds, &utc);
  char buffer[64];
  std::snprintf(buffer, sizeof(buffer), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", utc.tm_year + 1900,
                utc.tm_mon + 1, utc.tm_mday, utc.tm_hour, utc.tm_min, utc.tm_sec,
                static_cast<int>(millis));
  return buffer;
}

}  // namespace

void AccessLog::write(const AccessRecord& r) const {
  std::string line;
  line.reserve(512);
  if (!json_) {
    line = timestamp() + " " + std::string(r.listener) + " " + r.client + " -> " + r.target + ":" +
           std::to_string(r.port) + " " + (r.allowed ? "allow " : "deny ") +
           (r.allowed && r.would_deny ? "would_deny " : "") + std::string(r.reason) +
           " up=" + std::to_string(r.bytes_up) + " down=" + std::to_string(r.bytes_down) +
           " closed_by=" + std::string(r.closed_by) + " phase=" + std::string(r.phase) + " " +
           r.sentence;
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
    char buffer[32];
    std::snprintf(buffer, sizeof(buffer), "%.3f", value);
    line += buffer;
  };
  auto integer = [&](const char* name, uint64_t value) {
    line += ",\"";
    line += name;
    line += "\":";
    line += std::to_string(value);
  };
  line = "{";
  field("time", timestamp());
  field("listener", r.listener);
  field("client", r.client);
  field("target", r.target);
  integer("port", r.port);
  if (!r.original_dst.empty()) {
    field("original_dst", r.original_dst);
  }
  if (!r.dialled.empty()) {
    field("dialled", r.dialled);
  }
  field("decision", r.allowed ? "allow" : "deny");
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
