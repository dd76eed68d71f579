#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace acr {

// Escaping of untrusted bytes (an SNI, a CONNECT target, a client-chosen sentence part) for the
// access log, so that no field can end its line or forge another one. Pure functions: no I/O, no
// locale, any input bytes (NUL, invalid UTF-8) accepted.
class LogEscaper {
 public:
  // Plain-text log (--log-format text): every byte outside printable ASCII 0x20..0x7e is written
  // as `\xHH` (two lowercase hex digits) and a backslash as `\\`, so the output is printable ASCII
  // only and decodes back to exactly the input. With `token` true a space is written as `\x20`
  // too, for fields that must stay one word (the target, the client).
  static void appendText(std::string& out, std::string_view text, bool token);
  // The same written at `out`, which has room for textBound(text.size()) bytes; returns the end.
  static char* writeText(char* out, std::string_view text, bool token) noexcept;
  static constexpr size_t textBound(size_t size) noexcept { return 4 * size; }  // each as \xHH

  // JSON string (RFC 8259) with its quotes: `"` and `\` escaped, every byte below 0x20 or from
  // 0x7f up written as \u00HH. The output is printable ASCII, hence valid UTF-8 whatever the input
  // (bytes of invalid UTF-8 read back as the code points U+0080..U+00FF).
  static void appendJson(std::string& out, std::string_view text);
  // The same written at `out`, which has room for jsonBound(text.size()) bytes; returns the end.
  // For a line built in memory sized once for all its fields (AccessLog::write).
  static char* writeJson(char* out, std::string_view text) noexcept;
  static constexpr size_t jsonBound(size_t size) noexcept { return 6 * size + 2; }  // \u00HH, ""
};

}  // namespace acr
