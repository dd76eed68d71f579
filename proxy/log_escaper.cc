#include "proxy/log_escaper.h"

namespace acr {
namespace {

constexpr char kHex[] = "0123456789abcdef";

}  // namespace

void LogEscaper::appendText(std::string& out, std::string_view text, bool token) {
  for (const unsigned char c : text) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c < 0x20 || c >= 0x7f || (token && c == ' ')) {
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 0xf];
    } else {
      out += static_cast<char>(c);
    }
  }
}

void LogEscaper::appendJson(std::string& out, std::string_view text) {
  out += '"';
  for (const unsigned char c : text) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20 || c >= 0x7f) {
      out += "\\u00";
      out += kHex[c >> 4];
      out += kHex[c & 0xf];
    } else {
      out += static_cast<char>(c);
    }
  }
  out += '"';
}

}  // namespace acr
