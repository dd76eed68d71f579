#include "proxy/log_escaper.h"

#include <array>

namespace acr {
namespace {

constexpr char kHex[] = "0123456789abcdef";

// Which bytes each format escapes, as tables: one load per byte on the plain runs.
struct EscapeTables {
  std::array<bool, 256> text{};   // plain text, a sentence
  std::array<bool, 256> token{};  // plain text, a one-word field (a space too)
  std::array<bool, 256> json{};
};
constexpr EscapeTables makeEscapeTables() {
  EscapeTables tables;
  for (int c = 0; c < 256; ++c) {
    const bool outside = c < 0x20 || c >= 0x7f;
    tables.text[c] = outside || c == '\\';
    tables.token[c] = tables.text[c] || c == ' ';
    tables.json[c] = outside || c == '\\' || c == '"';
  }
  return tables;
}
constexpr EscapeTables kEscapes = makeEscapeTables();

// Appends `text`, each byte for which `escaped(c)` holds written by `escape(out, c)`; the runs of
// bytes between are appended whole, one append each (a byte at a time was ~25 instructions per
// byte, a tenth of a tunnel's user-space cost for its log line).
template <typename Escaped, typename Escape>
void appendEscaped(std::string& out, std::string_view text, Escaped escaped, Escape escape) {
  const char* p = text.data();
  const char* const end = p + text.size();
  while (p < end) {
    const char* const run = p;
    while (p < end && !escaped(static_cast<unsigned char>(*p))) {
      ++p;
    }
    out.append(run, static_cast<size_t>(p - run));
    if (p < end) {
      escape(out, static_cast<unsigned char>(*p));
      ++p;
    }
  }
}

}  // namespace

void LogEscaper::appendText(std::string& out, std::string_view text, bool token) {
  appendEscaped(
      out, text,
      [&table = token ? kEscapes.token : kEscapes.text](unsigned char c) { return table[c]; },
      [](std::string& to, unsigned char c) {
        if (c == '\\') {
          to += "\\\\";
        } else {
          const char hex[] = {'\\', 'x', kHex[c >> 4], kHex[c & 0xf]};
          to.append(hex, sizeof(hex));
        }
      });
}

void LogEscaper::appendJson(std::string& out, std::string_view text) {
  out += '"';
  appendEscaped(
      out, text, [](unsigned char c) { return kEscapes.json[c]; },
      [](std::string& to, unsigned char c) {
        if (c == '"' || c == '\\') {
          const char pair[] = {'\\', static_cast<char>(c)};
          to.append(pair, sizeof(pair));
        } else {
          const char code[] = {'\\', 'u', '0', '0', kHex[c >> 4], kHex[c & 0xf]};
          to.append(code, sizeof(code));
        }
      });
  out += '"';
}

}  // namespace acr
