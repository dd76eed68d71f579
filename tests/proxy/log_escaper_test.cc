#include "proxy/log_escaper.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <random>
#include <string>

namespace acr {
namespace {

std::string text(std::string_view in, bool token) {
  std::string out;
  LogEscaper::appendText(out, in, token);
  return out;
}

std::string json(std::string_view in) {
  std::string out;
  LogEscaper::appendJson(out, in);
  return out;
}

// A host name is written unchanged: escaping costs nothing on the usual path.
TEST(LogEscaperTest, PlainNameIsUnchanged) {
  EXPECT_EQ(text("myreg.azurecr.io", true), "myreg.azurecr.io");
  EXPECT_EQ(json("myreg.azurecr.io"), "\"myreg.azurecr.io\"");
}

// CR, LF, ESC, DEL, NUL and non-ASCII bytes cannot reach the text log raw: a forged line is
// impossible (the review's SNI "x\n... allow host_allowed").
TEST(LogEscaperTest, TextEscapesControlAndNonAsciiBytes) {
  EXPECT_EQ(text(std::string_view("a\r\nb\x1b[31m\x7f\0\xc3\xa9", 13), false),
            "a\\x0d\\x0ab\\x1b[31m\\x7f\\x00\\xc3\\xa9");
}

// The backslash is escaped too, so that "\x0a" typed by a client stays distinguishable.
TEST(LogEscaperTest, TextEscapesBackslash) { EXPECT_EQ(text("a\\x0ab", false), "a\\\\x0ab"); }

// A token field keeps its one word: a space would let a target forge the next fields.
TEST(LogEscaperTest, TokenEscapesSpaceSentenceKeepsIt) {
  EXPECT_EQ(text("a b", true), "a\\x20b");
  EXPECT_EQ(text("a b", false), "a b");
}

// JSON: control bytes and every byte of invalid UTF-8 become \u00XX; the output is ASCII.
TEST(LogEscaperTest, JsonEscapesControlBytesAndInvalidUtf8) {
  EXPECT_EQ(json(std::string_view("\"\\\n\x1b\xff\xc3", 6)),
            "\"\\\"\\\\\\u000a\\u001b\\u00ff\\u00c3\"");
}

// Every byte value escapes to printable ASCII in both forms.
TEST(LogEscaperTest, EveryByteEscapesToPrintableAscii) {
  for (int b = 0; b < 256; ++b) {
    const std::string in(1, static_cast<char>(b));
    for (const std::string& out : {text(in, true), text(in, false), json(in)}) {
      for (const char c : out) {
        EXPECT_TRUE(c >= 0x20 && c < 0x7f) << "byte " << b;
      }
    }
  }
}

// The escapers append runs of plain bytes whole; the result is byte for byte what escaping one
// byte at a time gives (the reference below, the contract in log_escaper.h), for random texts
// whose bytes are mostly plain with escapes in runs, at the ends and alone, and for every byte in
// every position of the word-at-a-time scan.
TEST(LogEscaperTest, RunsAreEscapedAsByteByByte) {
  const auto reference_text = [](std::string_view in, bool token) {
    std::string out;
    for (const unsigned char c : in) {
      char buffer[8];
      if (c == '\\') {
        out += "\\\\";
      } else if (c < 0x20 || c >= 0x7f || (token && c == ' ')) {
        std::snprintf(buffer, sizeof(buffer), "\\x%02x", c);
        out += buffer;
      } else {
        out += static_cast<char>(c);
      }
    }
    return out;
  };
  const auto reference_json = [](std::string_view in) {
    std::string out = "\"";
    for (const unsigned char c : in) {
      char buffer[8];
      if (c == '"' || c == '\\') {
        out += '\\';
        out += static_cast<char>(c);
      } else if (c < 0x20 || c >= 0x7f) {
        std::snprintf(buffer, sizeof(buffer), "\\u%04x", c);
        out += buffer;
      } else {
        out += static_cast<char>(c);
      }
    }
    return out + "\"";
  };
  std::mt19937 random(9);
  for (int i = 0; i < 20000; ++i) {
    std::string in(random() % 40, 'a');
    for (char& c : in) {
      const unsigned kind = random() % 8;
      c = static_cast<char>(kind == 0 ? random() % 256 : kind == 1 ? ' ' : 'a' + random() % 26);
    }
    EXPECT_EQ(text(in, true), reference_text(in, true)) << i;
    EXPECT_EQ(text(in, false), reference_text(in, false)) << i;
    EXPECT_EQ(json(in), reference_json(in)) << i;
  }
  // The plain runs are scanned eight bytes at a time: every byte value in every lane of the first
  // three words and in the tail, alone among plain bytes, and next to a byte that is escaped too.
  for (int b = 0; b < 256; ++b) {
    for (size_t at = 0; at < 27; ++at) {
      for (const char neighbour : {'a', ' ', '!', '\x7f'}) {
        std::string in(27, 'a');
        in[at] = static_cast<char>(b);
        in[(at + 1) % in.size()] = neighbour;
        ASSERT_EQ(text(in, true), reference_text(in, true)) << b << " at " << at;
        ASSERT_EQ(text(in, false), reference_text(in, false)) << b << " at " << at;
        ASSERT_EQ(json(in), reference_json(in)) << b << " at " << at;
      }
    }
  }
}

}  // namespace
}  // namespace acr
