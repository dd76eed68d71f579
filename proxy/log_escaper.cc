#include "proxy/log_escaper.h"

#include <array>
#include <bit>
#include <cstdint>
#include <cstring>

namespace acr {
namespace {

constexpr char kHex[] = "0123456789abcdef";

// The bytes each format escapes besides the control and non-ASCII ones (below 0x20, from 0x7f up).
constexpr std::array<uint8_t, 1> kTextExtras = {'\\'};        // plain text, a sentence
constexpr std::array<uint8_t, 2> kTokenExtras = {'\\', ' '};  // plain text, a one-word field
constexpr std::array<uint8_t, 2> kJsonExtras = {'\\', '"'};

// The same as tables: one load per byte where findEscaped() goes a byte at a time.
struct EscapeTables {
  std::array<bool, 256> text{};
  std::array<bool, 256> token{};
  std::array<bool, 256> json{};
};
constexpr EscapeTables makeEscapeTables() {
  EscapeTables tables;
  const auto mark = [](std::array<bool, 256>& table, const auto& extras) {
    for (int c = 0; c < 256; ++c) {
      table[c] = c < 0x20 || c >= 0x7f;
    }
    for (const uint8_t c : extras) {
      table[c] = true;
    }
  };
  mark(tables.text, kTextExtras);
  mark(tables.token, kTokenExtras);
  mark(tables.json, kJsonExtras);
  return tables;
}
constexpr EscapeTables kEscapes = makeEscapeTables();

// The first byte from `p` on that `escaped` names (bytes below 0x20, from 0x7f up, and the
// format's `extra` ones), or `end`. Eight bytes at a time where a word fits: the table loop was
// about five instructions per byte, and a log line's texts are hundreds of plain bytes. Each test
// below may also flag a byte after one that it flags rightly (a borrow runs upwards), never one
// before it, so the lowest flagged byte is exact.
template <size_t kExtras>
const char* findEscaped(const char* p, const char* const end, const std::array<bool, 256>& escaped,
                        const std::array<uint8_t, kExtras>& extra) {
  if constexpr (std::endian::native == std::endian::little) {
    constexpr uint64_t kOnes = 0x0101010101010101;
    constexpr uint64_t kHighs = 0x8080808080808080;
    const auto zero_bytes = [](uint64_t word) { return (word - kOnes) & ~word & kHighs; };
    for (; end - p >= 8; p += 8) {
      uint64_t word;
      std::memcpy(&word, p, sizeof(word));
      uint64_t flagged = ((word - kOnes * 0x20) & ~word & kHighs)  // below 0x20
                         | (word & kHighs)                         // 0x80 and up
                         | zero_bytes(word ^ (kOnes * 0x7f));
      for (const uint8_t byte : extra) {
        flagged |= zero_bytes(word ^ (kOnes * byte));
      }
      if (flagged != 0) {
        return p + std::countr_zero(flagged) / 8;
      }
    }
  }
  while (p < end && !escaped[static_cast<unsigned char>(*p)]) {
    ++p;
  }
  return p;
}

// Writes `text` at `out`, each byte `escaped` names written by `escape(out, c)` (which returns
// the end of what it wrote); the runs of bytes between are copied whole (a byte at a time was ~25
// instructions per byte, a tenth of a tunnel's user-space cost for its log line). Returns the end.
template <size_t kExtras, typename Escape>
char* writeEscaped(char* out, std::string_view text, const std::array<bool, 256>& escaped,
                   const std::array<uint8_t, kExtras>& extra, Escape escape) noexcept {
  const char* p = text.data();
  const char* const end = p + text.size();
  while (p < end) {
    const char* const run = p;
    p = findEscaped(p, end, escaped, extra);
    std::memcpy(out, run, static_cast<size_t>(p - run));
    out += p - run;
    if (p < end) {
      out = escape(out, static_cast<unsigned char>(*p));
      ++p;
    }
  }
  return out;
}

// `write(at)` into `out`, given room for `bound` bytes beyond its end.
template <typename Write>
void appendWritten(std::string& out, size_t bound, Write write) {
  const size_t at = out.size();
  out.resize(at + bound);
  out.resize(static_cast<size_t>(write(out.data() + at) - out.data()));
}

}  // namespace

char* LogEscaper::writeText(char* out, std::string_view text, bool token) noexcept {
  const auto escape = [](char* to, unsigned char c) {
    if (c == '\\') {
      to[0] = to[1] = '\\';
      return to + 2;
    }
    to[0] = '\\';
    to[1] = 'x';
    to[2] = kHex[c >> 4];
    to[3] = kHex[c & 0xf];
    return to + 4;
  };
  return token ? writeEscaped(out, text, kEscapes.token, kTokenExtras, escape)
               : writeEscaped(out, text, kEscapes.text, kTextExtras, escape);
}

char* LogEscaper::writeJson(char* out, std::string_view text) noexcept {
  *out++ = '"';
  out = writeEscaped(out, text, kEscapes.json, kJsonExtras, [](char* to, unsigned char c) {
    to[0] = '\\';
    if (c == '"' || c == '\\') {
      to[1] = static_cast<char>(c);
      return to + 2;
    }
    to[1] = 'u';
    to[2] = to[3] = '0';
    to[4] = kHex[c >> 4];
    to[5] = kHex[c & 0xf];
    return to + 6;
  });
  *out++ = '"';
  return out;
}

void LogEscaper::appendText(std::string& out, std::string_view text, bool token) {
  appendWritten(out, textBound(text.size()), [&](char* at) { return writeText(at, text, token); });
}

void LogEscaper::appendJson(std::string& out, std::string_view text) {
  appendWritten(out, jsonBound(text.size()), [&](char* at) { return writeJson(at, text); });
}

}  // namespace acr
