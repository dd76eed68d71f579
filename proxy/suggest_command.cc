#include "proxy/suggest_command.h"

#include <charconv>
#include <fstream>
#include <iostream>
#include <optional>
#include <string_view>

#include "conf/policy_suggester.h"

namespace acr {
namespace {

constexpr const char* kUsage =
    "usage: acr-egress suggest [--min-count N] LOGFILE...   (\"-\": standard input)\n";

std::optional<uint64_t> parseCount(std::string_view text) {
  uint64_t count = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), count);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size() || count == 0) {
    return std::nullopt;
  }
  return count;
}

}  // namespace

int runSuggestCommand(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  uint64_t min_count = 1;
  std::vector<std::string> files;
  for (size_t i = 0; i < args.size(); ++i) {
    std::optional<std::string> value;
    if (args[i] == "--min-count") {
      if (i + 1 >= args.size()) {
        err << "acr-egress suggest: --min-count: missing value\n" << kUsage;
        return 2;
      }
      value = args[++i];
    } else if (args[i].starts_with("--min-count=")) {
      value = args[i].substr(12);
    } else if (args[i].starts_with("--")) {
      err << "acr-egress suggest: " << args[i] << ": unknown option\n" << kUsage;
      return 2;
    } else {
      files.push_back(args[i]);
      continue;
    }
    const auto count = parseCount(*value);
    if (!count) {
      err << "acr-egress suggest: invalid --min-count '" << *value
          << "': expected a number from 1\n";
      return 2;
    }
    min_count = *count;
  }
  if (files.empty()) {
    err << kUsage;
    return 2;
  }
  PolicySuggester suggester;
  uint64_t lines = 0;
  uint64_t ignored = 0;
  uint64_t unreadable = 0;
  for (const std::string& file : files) {
    std::ifstream stream;
    std::istream* in = &std::cin;
    if (file != "-") {
      stream.open(file, std::ios::binary);
      if (!stream) {
        err << "acr-egress suggest: " << file << ": cannot open the log file\n";
        return 2;
      }
      in = &stream;
    }
    std::string line;
    while (std::getline(*in, line)) {
      if (line.empty()) {
        continue;
      }
      ++lines;
      switch (suggester.addLine(line)) {
        case PolicySuggester::LineStatus::kCounted:
          break;
        case PolicySuggester::LineStatus::kIgnored:
          ++ignored;
          break;
        case PolicySuggester::LineStatus::kUnreadable:
          ++unreadable;
          break;
      }
    }
    if (in->bad()) {
      err << "acr-egress suggest: " << file << ": cannot read the log file\n";
      return 2;
    }
  }
  const std::string toml = suggester.toToml(min_count);
  if (toml.empty()) {
    err << "acr-egress suggest: no host name was let through " << min_count << " times or more in "
        << lines
        << " lines: nothing to suggest (a policy without host rules means the embedded "
           "default)\n";
    return 1;
  }
  out << "# acr-egress suggest: " << suggester.connections() << " connections let through, from "
      << lines << " log lines (" << ignored << " denials or other lines ignored, " << unreadable
      << " unreadable)";
  if (min_count > 1) {
    out << "; names and ports seen fewer than " << min_count << " times are left out";
  }
  out << ".\n" << toml;
  return 0;
}

}  // namespace acr
