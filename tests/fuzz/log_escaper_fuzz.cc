// libFuzzer target for LogEscaper (proxy/log_escaper.h): on any bytes, both forms must be
// printable ASCII (no line break can reach the log) and must decode back to exactly the input,
// and the char* writers must stay within their stated bounds (each writes into memory of exactly
// textBound or jsonBound bytes, where AddressSanitizer sees one byte past it).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>

#include "proxy/log_escaper.h"

namespace {

int hexValue(char c) {
  if (c >= '0' && c <= '9') {
    return c - '0';
  }
  if (c >= 'a' && c <= 'f') {
    return c - 'a' + 10;
  }
  std::abort();
}

void requirePrintable(const std::string& out) {
  for (const char c : out) {
    if (c < 0x20 || c >= 0x7f) {
      std::abort();
    }
  }
}

std::string decodeText(const std::string& out, bool token) {
  std::string in;
  for (size_t i = 0; i < out.size(); ++i) {
    if (token && out[i] == ' ') {
      std::abort();
    }
    if (out[i] != '\\') {
      in += out[i];
    } else if (i + 1 < out.size() && out[i + 1] == '\\') {
      in += '\\';
      ++i;
    } else if (i + 3 < out.size() && out[i + 1] == 'x') {
      in += static_cast<char>(hexValue(out[i + 2]) * 16 + hexValue(out[i + 3]));
      i += 3;
    } else {
      std::abort();
    }
  }
  return in;
}

std::string decodeJson(const std::string& out) {
  if (out.size() < 2 || out.front() != '"' || out.back() != '"') {
    std::abort();
  }
  std::string in;
  for (size_t i = 1; i + 1 < out.size(); ++i) {
    if (out[i] == '"') {
      std::abort();
    }
    if (out[i] != '\\') {
      in += out[i];
    } else if (out[i + 1] == '"' || out[i + 1] == '\\') {
      in += out[++i];
    } else if (i + 6 < out.size() && out.compare(i + 1, 3, "u00") == 0) {
      in += static_cast<char>(hexValue(out[i + 4]) * 16 + hexValue(out[i + 5]));
      i += 5;
    } else {
      std::abort();
    }
  }
  return in;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  for (const bool token : {true, false}) {
    std::string out;
    acr::LogEscaper::appendText(out, input, token);
    requirePrintable(out);
    if (decodeText(out, token) != input) {
      std::abort();
    }
  }
  std::string out;
  acr::LogEscaper::appendJson(out, input);
  requirePrintable(out);
  if (decodeJson(out) != input) {
    std::abort();
  }
  // The writers, into memory of exactly their bound: the same bytes as the appenders.
  for (const bool token : {true, false}) {
    const size_t bound = acr::LogEscaper::textBound(size);
    const auto memory = std::make_unique<char[]>(bound);
    const char* end = acr::LogEscaper::writeText(memory.get(), input, token);
    std::string appended;
    acr::LogEscaper::appendText(appended, input, token);
    if (std::string_view(memory.get(), static_cast<size_t>(end - memory.get())) != appended) {
      std::abort();
    }
  }
  const auto memory = std::make_unique<char[]>(acr::LogEscaper::jsonBound(size));
  const char* end = acr::LogEscaper::writeJson(memory.get(), input);
  if (std::string_view(memory.get(), static_cast<size_t>(end - memory.get())) != out) {
    std::abort();
  }
  return 0;
}
