#include "filters/connect_request_parser.h"

#include <gtest/gtest.h>

#include <memory>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

namespace acr {
namespace {

using namespace std::string_literals;

constexpr std::string_view kCurlHead =
    "CONNECT myreg.azurecr.io:443 HTTP/1.1\r\n"
    "Host: myreg.azurecr.io:443\r\n"
    "User-Agent: curl/7.88.1\r\n"
    "Proxy-Connection: Keep-Alive\r\n"
    "\r\n";

constexpr std::string_view kGoHead =
    "CONNECT myreg.azurecr.io:443 HTTP/1.1\r\n"
    "Host: myreg.azurecr.io:443\r\n"
    "User-Agent: Go-http-client/1.1\r\n"
    "\r\n";

// The start of a TLS 1.3 ClientHello, as pipelined after the head by optimistic clients.
const std::string kClientHelloStart = "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"s;

// A CONNECT head for `target` with a matching Host header and `extra` header lines.
std::string connectHead(std::string_view target, std::string_view extra = "") {
  return "CONNECT " + std::string(target) + " HTTP/1.1\r\nHost: " + std::string(target) + "\r\n" +
         std::string(extra) + "\r\n";
}

// A CONNECT head for `target` whose Host header carries `host_value`.
std::string withHost(std::string_view target, std::string_view host_value) {
  return "CONNECT " + std::string(target) + " HTTP/1.1\r\nHost: " + std::string(host_value) +
         "\r\n\r\n";
}

// What one parse produced, with views recorded as text so runs on different buffers compare.
struct Outcome {
  ConnectStatus status = ConnectStatus::kNeedMore;
  ConnectError error = ConnectError::kNone;
  std::string host;
  bool host_is_ipv6 = false;
  uint16_t port = 0;
  std::string method;
  uint8_t http_minor = 1;
  std::string host_header;
  bool host_header_mismatch = false;
  size_t head_length = 0;
  bool operator==(const Outcome&) const = default;
};

Outcome outcomeOf(ConnectStatus status, const ConnectRequestParser& parser) {
  const ConnectRequest& r = parser.request();
  return {status,
          parser.error(),
          std::string(r.host),
          r.host_is_ipv6,
          r.port,
          std::string(r.method),
          r.http_minor,
          std::string(r.host_header),
          r.host_header_mismatch,
          r.head_length};
}

Outcome parseWhole(std::string_view input, size_t max = ConnectRequestParser::kDefaultMaxHeadSize) {
  ConnectRequestParser parser(max);
  return outcomeOf(parser.parse(input), parser);
}

// Feeds growing prefixes, one more byte per call, until a final status or the end of input.
Outcome parseByteByByte(std::string_view input,
                        size_t max = ConnectRequestParser::kDefaultMaxHeadSize) {
  ConnectRequestParser parser(max);
  ConnectStatus status = parser.parse(input.substr(0, 0));
  for (size_t n = 1; n <= input.size() && status == ConnectStatus::kNeedMore; ++n) {
    status = parser.parse(input.substr(0, n));
  }
  return outcomeOf(status, parser);
}

struct Case {
  std::string name;
  std::string input;
  ConnectStatus status;
  ConnectError error;
  std::string host = "";  // checked when non-empty
  uint16_t port = 0;      // checked when non-zero
  bool host_is_ipv6 = false;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

constexpr ConnectStatus kNeedMore = ConnectStatus::kNeedMore;
constexpr ConnectStatus kDone = ConnectStatus::kDone;
constexpr ConnectStatus kMalformed = ConnectStatus::kMalformed;
constexpr ConnectStatus kNotAllowed = ConnectStatus::kMethodNotAllowed;
constexpr ConnectStatus kTooLarge = ConnectStatus::kTooLarge;

std::vector<Case> cases() {
  using E = ConnectError;
  const std::string host = "myreg.azurecr.io";
  const std::string line = "CONNECT " + host + ":443 HTTP/1.1\r\n";
  const std::string host_line = "Host: " + host + ":443\r\n";
  std::string many_headers = line + host_line;
  for (int i = 0; i < 200; ++i) {
    many_headers += "X-Filler-" + std::to_string(i) + ": 1\r\n";
  }
  many_headers += "\r\n";
  return {
      // C1: baseline heads from real clients.
      {"C1_Curl7881", std::string(kCurlHead), kDone, E::kNone, host, 443},
      {"C1_GoNetHttp", std::string(kGoHead), kDone, E::kNone, host, 443},
      {"C1_GoWithProxyAuthorization",
       line + host_line + "User-Agent: Go-http-client/1.1\r\n" +
           "Proxy-Authorization: Basic dXNlcjpwYXNz\r\n\r\n",
       kDone, E::kNone, host, 443},
      {"C1_Http10WithoutHost", "CONNECT " + host + ":443 HTTP/1.0\r\n\r\n", kDone, E::kNone, host,
       443},
      {"C1_Http10WithHost", "CONNECT " + host + ":443 HTTP/1.0\r\n" + host_line + "\r\n", kDone,
       E::kNone, host, 443},
      {"C1_HostNameAnyCaseNoSpace", line + "hOsT:" + host + ":443\r\n\r\n", kDone, E::kNone, host,
       443},
      {"C1_ValueOwsWithTabs", line + "Host: \t" + host + ":443 \t\r\nX-Empty:\r\n\r\n", kDone,
       E::kNone, host, 443},
      {"C1_ObsTextInValue", line + host_line + "X-Name: m\xc3\xbcller\r\n\r\n", kDone, E::kNone,
       host, 443},
      {"C1_ContentLengthIgnored", line + host_line + "Content-Length: 5\r\n\r\n", kDone, E::kNone,
       host, 443},
      {"C1_Port1", connectHead(host + ":1"), kDone, E::kNone, host, 1},
      {"C1_Port65535", connectHead(host + ":65535"), kDone, E::kNone, host, 65535},
      {"C1_TrailingDotLeftToPolicy", connectHead(host + ".:443"), kDone, E::kNone, host + ".", 443},
      {"C1_Host253Bytes", connectHead(std::string(250, 'a') + ".io:443"), kDone, E::kNone},

      // C2: ports.
      {"C2_NoPort", connectHead(host), kMalformed, E::kBadPort},
      {"C2_EmptyPort", connectHead(host + ":"), kMalformed, E::kBadPort},
      {"C2_Port0", connectHead(host + ":0"), kMalformed, E::kBadPort},
      {"C2_Port65536", connectHead(host + ":65536"), kMalformed, E::kBadPort},
      {"C2_Port99999", connectHead(host + ":99999"), kMalformed, E::kBadPort},
      {"C2_SixDigitPort", connectHead(host + ":443443"), kMalformed, E::kBadPort},
      {"C2_NegativePort", connectHead(host + ":-1"), kMalformed, E::kBadPort},
      {"C2_ServiceNamePort", connectHead(host + ":https"), kMalformed, E::kBadPort},
      {"C2_LeadingZeroPort", connectHead(host + ":0443"), kMalformed, E::kBadPort},
      {"C2_PlusSignPort", connectHead(host + ":+443"), kMalformed, E::kBadPort},
      {"C2_TrailingSpaceAfterPort", "CONNECT " + host + ":443  HTTP/1.1\r\n" + host_line + "\r\n",
       kMalformed, E::kBadRequestLine},
      {"C2_Ipv6NoPort", connectHead("[::1]"), kMalformed, E::kBadPort},
      {"C2_Ipv6EmptyPort", connectHead("[::1]:"), kMalformed, E::kBadPort},

      // C3: only authority-form targets.
      {"C3_AbsoluteForm", withHost("https://" + host + ":443/", host), kMalformed, E::kBadTarget},
      {"C3_OriginForm", withHost("/", host), kMalformed, E::kBadTarget},
      {"C3_Asterisk", withHost("*", host), kMalformed, E::kBadTarget},
      {"C3_Userinfo", withHost("user@" + host + ":443", host), kMalformed, E::kBadTarget},
      {"C3_Path", withHost(host + ":443/v2/", host), kMalformed, E::kBadTarget},
      {"C3_Query", withHost(host + ":443?x=1", host), kMalformed, E::kBadTarget},
      {"C3_Fragment", withHost(host + ":443#f", host), kMalformed, E::kBadTarget},
      {"C3_PercentEncodedHost", withHost("%6dyreg.azurecr.io:443", host), kMalformed,
       E::kBadTarget},
      {"C3_EmptyHost", withHost(":443", host), kMalformed, E::kBadTarget},
      {"C3_Host254Bytes", withHost(std::string(251, 'a') + ".io:443", host), kMalformed,
       E::kBadTarget},
      {"C3_TwoColons", withHost(host + ":443:443", host), kMalformed, E::kBadTarget},

      // C4: only CONNECT, decided on the request line alone.
      {"C4_GetAbsoluteForm", "GET http://" + host + "/v2/ HTTP/1.1\r\nHost: " + host + "\r\n\r\n",
       kNotAllowed, E::kMethodNotAllowed},
      {"C4_GetOriginForm", "GET / HTTP/1.1\r\nHost: " + host + "\r\n\r\n", kNotAllowed,
       E::kMethodNotAllowed},
      {"C4_OptionsAsterisk", "OPTIONS * HTTP/1.1\r\n", kNotAllowed, E::kMethodNotAllowed},
      {"C4_LowercaseConnect", "connect " + host + ":443 HTTP/1.1\r\n", kNotAllowed,
       E::kMethodNotAllowed},
      {"C4_DecidedBeforeBadHeaders", "GET / HTTP/1.1\r\nHost : x\r\n", kNotAllowed,
       E::kMethodNotAllowed},
      {"C4_MalformedGetIsBadRequestLine", "GET  / HTTP/1.1\r\n", kMalformed, E::kBadRequestLine},
      {"C4_GetHttp09", "GET /\r\n", kMalformed, E::kBadVersion},

      // C5: Host disagreement and Host count.
      {"C5_HostOtherName", withHost(host + ":443", "evil.example"), kDone, E::kNone, host, 443},
      {"C5_DuplicateHost", line + host_line + host_line + "\r\n", kMalformed, E::kDuplicateHost},
      {"C5_DuplicateHostOtherCase", line + host_line + "HOST: evil.example\r\n\r\n", kMalformed,
       E::kDuplicateHost},
      {"C5_DuplicateHostHttp10",
       "CONNECT " + host + ":443 HTTP/1.0\r\n" + host_line + host_line + "\r\n", kMalformed,
       E::kDuplicateHost},
      {"C5_MissingHostHttp11", line + "User-Agent: x\r\n\r\n", kMalformed, E::kMissingHost},
      {"C5_EmptyHostValue", line + "Host:\r\n\r\n", kMalformed, E::kBadHeader},
      {"C5_HostWithPath", withHost(host + ":443", host + "/v2/"), kMalformed, E::kBadHeader},
      {"C5_HostWithBadPort", withHost(host + ":443", host + ":0443"), kMalformed, E::kBadHeader},

      // C6: header and request-line syntax.
      {"C6_SpaceBeforeColon", line + "Host : " + host + ":443\r\n\r\n", kMalformed, E::kBadHeader},
      {"C6_TabBeforeColon", line + host_line + "X-A\t: 1\r\n\r\n", kMalformed, E::kBadHeader},
      {"C6_EmptyHeaderName", line + host_line + ": x\r\n\r\n", kMalformed, E::kBadHeader},
      {"C6_NoColon", line + host_line + "X-A 1\r\n\r\n", kMalformed, E::kBadHeader},
      {"C6_ObsFoldSpace", line + host_line + "X-A: 1\r\n 2\r\n\r\n", kMalformed, E::kBadHeader},
      {"C6_ObsFoldTab", line + host_line + "X-A: 1\r\n\t2\r\n\r\n", kMalformed, E::kBadHeader},
      {"C6_BareCrInValue", line + host_line + "X-A: 1\r2\r\n\r\n", kMalformed, E::kBadHeader},
      {"C6_BareCrEndsValue", line + host_line + "X-A: 1\r\r\n\r\n", kMalformed, E::kBadHeader},
      {"C6_NulInValue",
       line + host_line +
           "X-A: 1\0"
           "2\r\n\r\n"s,
       kMalformed, E::kBadHeader},
      {"C6_NulInName", line + "Ho\0st: x\r\n\r\n"s, kMalformed, E::kBadHeader},
      {"C6_DelInValue", line + host_line + "X-A: \x7f\r\n\r\n", kMalformed, E::kBadHeader},
      {"C6_NonTokenName", line + host_line + "X(A): 1\r\n\r\n", kMalformed, E::kBadHeader},
      {"C6_NonAsciiName", line + host_line + "X-\xc3\xa4: 1\r\n\r\n", kMalformed, E::kBadHeader},
      {"C6_DoubleSpaceAfterMethod", "CONNECT  " + host + ":443 HTTP/1.1\r\n" + host_line + "\r\n",
       kMalformed, E::kBadRequestLine},
      {"C6_LeadingSpace", " " + line + host_line + "\r\n", kMalformed, E::kBadRequestLine},
      {"C6_TrailingSpaceAfterVersion",
       "CONNECT " + host + ":443 HTTP/1.1 \r\n" + host_line + "\r\n", kMalformed,
       E::kBadRequestLine},
      {"C6_TabSeparator", "CONNECT\t" + host + ":443 HTTP/1.1\r\n" + host_line + "\r\n", kMalformed,
       E::kBadRequestLine},
      {"C6_NulInRequestLine", "CONNECT " + host + "\0:443 HTTP/1.1\r\n"s, kMalformed,
       E::kBadRequestLine},
      {"C6_BareCrInRequestLine", "CONNECT " + host + ":443\rHTTP/1.1\r\n", kMalformed,
       E::kBadRequestLine},
      {"C6_EmptyFirstLine", "\r\n" + line + host_line + "\r\n", kMalformed, E::kBadRequestLine},
      {"C6_NoSpaces", "CONNECT\r\n", kMalformed, E::kBadRequestLine},
      {"C6_NonTokenMethod", "CONN(ECT " + host + ":443 HTTP/1.1\r\n", kMalformed,
       E::kBadRequestLine},
      {"C6_VersionMissing", "CONNECT " + host + ":443\r\n" + host_line + "\r\n", kMalformed,
       E::kBadVersion},
      {"C6_Version12", "CONNECT " + host + ":443 HTTP/1.2\r\n" + host_line + "\r\n", kMalformed,
       E::kBadVersion},
      {"C6_Version20", "CONNECT " + host + ":443 HTTP/2.0\r\n" + host_line + "\r\n", kMalformed,
       E::kBadVersion},
      {"C6_LowercaseVersion", "CONNECT " + host + ":443 http/1.1\r\n" + host_line + "\r\n",
       kMalformed, E::kBadVersion},
      {"C6_VersionSuffix", "CONNECT " + host + ":443 HTTP/1.10\r\n" + host_line + "\r\n",
       kMalformed, E::kBadVersion},

      // C7: LF-only and mixed line endings.
      {"C7_LfOnly", "CONNECT h:443 HTTP/1.1\nHost: h:443\n\n", kMalformed, E::kBareLf},
      {"C7_LfAfterRequestLine", "CONNECT h:443 HTTP/1.1\nHost: h:443\r\n\r\n", kMalformed,
       E::kBareLf},
      {"C7_LfAfterHeader", "CONNECT h:443 HTTP/1.1\r\nHost: h:443\n\r\n", kMalformed, E::kBareLf},
      {"C7_LfEndsHead", "CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\n", kMalformed, E::kBareLf},
      {"C7_LfFirstByte", "\n", kMalformed, E::kBareLf},

      // C8: oversized heads, stopped at the cap.
      {"C8_HugeTarget", connectHead(std::string(9000, 'a') + ":443"), kTooLarge, E::kTooLarge},
      {"C8_200Headers", many_headers, kTooLarge, E::kTooLarge},
      {"C8_64KiBWithoutTerminator", line + host_line + "X-A: " + std::string(65536, 'x'), kTooLarge,
       E::kTooLarge},
      {"C8_GetWith64KiBPath", "GET /" + std::string(65536, 'x'), kTooLarge, E::kTooLarge},

      // C11: the wrong protocol on the proxy port.
      {"C11_TlsClientHello", kClientHelloStart, kMalformed, E::kTlsOnProxyPort},
      {"C11_TlsFirstByteOnly", "\x16", kMalformed, E::kTlsOnProxyPort},
      {"C11_Http2Preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", kMalformed, E::kHttp2Preface},

      // C12: brackets hold a valid IPv6 literal or nothing.
      {"C12_BracketedName", withHost("[" + host + "]:443", host), kMalformed, E::kBadTarget},
      {"C12_Bracketed300Bytes", withHost("[" + std::string(300, 'a') + "]:443", host), kMalformed,
       E::kBadTarget},
      {"C12_Loopback", connectHead("[::1]:443"), kDone, E::kNone, "::1", 443, true},
      {"C12_ZoneId", withHost("[2603:1030::1%eth0]:443", host), kMalformed, E::kBadTarget},
      {"C12_UnclosedBracket", withHost("[::1:443", host), kMalformed, E::kBadTarget},
      {"C12_EmptyBrackets", withHost("[]:443", host), kMalformed, E::kBadTarget},
      {"C12_NoColonAfterBracket", withHost("[::1]443", host), kMalformed, E::kBadTarget},
      {"C12_UnbracketedIpv6", withHost("::1:443", host), kMalformed, E::kBadTarget},
      {"C12_StrayCloseBracket", withHost("a]:443", host), kMalformed, E::kBadTarget},
      {"C12_Ipv4InBrackets", withHost("[127.0.0.1]:443", host), kMalformed, E::kBadTarget},
      {"C12_AzureIpv6", connectHead("[2603:1030:800:5::bfee:a418]:443"), kDone, E::kNone,
       "2603:1030:800:5::bfee:a418", 443, true},
      {"C12_Longest45ByteLiteral",
       connectHead("[ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255]:443"), kDone, E::kNone,
       "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255", 443, true},
      {"C12_46ByteLiteral", withHost("[0ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255]:443", host),
       kMalformed, E::kBadTarget},

      // B4, B6, B9: hosts the parser passes through for the policy to judge.
      {"B4_UnderscoreName", connectHead("a_b.azurecr.io:443"), kDone, E::kNone, "a_b.azurecr.io",
       443},
      {"B4_Utf8Name", withHost("m\xc3\xbcller.azurecr.io:443", host), kMalformed, E::kBadTarget},
      {"B6_StorageIpv4", connectHead("20.60.1.1:443"), kDone, E::kNone, "20.60.1.1", 443},
      {"B6_MappedIpv4", connectHead("[::ffff:8.8.8.8]:443"), kDone, E::kNone, "::ffff:8.8.8.8", 443,
       true},
      {"B9_ShortIpv4", connectHead("127.1:443"), kDone, E::kNone, "127.1", 443},
      {"B9_DecimalIpv4", connectHead("2130706433:443"), kDone, E::kNone, "2130706433", 443},
      {"B9_HexIpv4", connectHead("0x7f.0.0.1:443"), kDone, E::kNone, "0x7f.0.0.1", 443},

      // Incomplete heads wait for more bytes.
      {"Empty", "", kNeedMore, E::kNone},
      {"RequestLineOnly", line, kNeedMore, E::kNone},
      {"EndsWithCr", line + host_line + "\r", kNeedMore, E::kNone},
  };
}

class ConnectRequestParserCaseTest : public testing::TestWithParam<Case> {};

// Each catalogue case ends in the expected status and reason, with the expected target.
TEST_P(ConnectRequestParserCaseTest, ParsesToExpectedOutcome) {
  const Case& c = GetParam();
  const Outcome outcome = parseWhole(c.input);
  EXPECT_EQ(outcome.status, c.status);
  EXPECT_EQ(outcome.error, c.error) << connectErrorName(outcome.error);
  if (!c.host.empty()) {
    EXPECT_EQ(outcome.host, c.host);
  }
  if (c.port != 0) {
    EXPECT_EQ(outcome.port, c.port);
  }
  EXPECT_EQ(outcome.host_is_ipv6, c.host_is_ipv6);
  if (c.status == kDone) {
    EXPECT_EQ(outcome.head_length, c.input.size());
  }
}

// Delivering a case one byte per call reaches exactly the outcome of one whole delivery.
TEST_P(ConnectRequestParserCaseTest, ByteByByteMatchesWhole) {
  const Case& c = GetParam();
  EXPECT_EQ(parseByteByByte(c.input), parseWhole(c.input));
}

INSTANTIATE_TEST_SUITE_P(Catalogue, ConnectRequestParserCaseTest, testing::ValuesIn(cases()),
                         [](const testing::TestParamInfo<Case>& param) {
                           return param.param.name;
                         });

// curl 7.88's head yields the target, the Host value and a head_length covering all of it.
TEST(ConnectRequestParserTest, C1CurlHeadFields) {
  ConnectRequestParser parser;
  ASSERT_EQ(parser.parse(kCurlHead), kDone);
  const ConnectRequest& r = parser.request();
  EXPECT_EQ(r.method, "CONNECT");
  EXPECT_EQ(r.host, "myreg.azurecr.io");
  EXPECT_EQ(r.port, 443);
  EXPECT_FALSE(r.host_is_ipv6);
  EXPECT_EQ(r.http_minor, 1);
  EXPECT_EQ(r.host_header, "myreg.azurecr.io:443");
  EXPECT_FALSE(r.host_header_mismatch);
  EXPECT_EQ(r.head_length, kCurlHead.size());
  EXPECT_EQ(parser.error(), ConnectError::kNone);
}

// Go's net/http head (docker, skopeo) yields the same request as curl's.
TEST(ConnectRequestParserTest, C1GoHeadFields) {
  ConnectRequestParser parser;
  ASSERT_EQ(parser.parse(kGoHead), kDone);
  EXPECT_EQ(parser.request().host, "myreg.azurecr.io");
  EXPECT_EQ(parser.request().port, 443);
  EXPECT_EQ(parser.request().host_header, "myreg.azurecr.io:443");
  EXPECT_EQ(parser.request().head_length, kGoHead.size());
}

// The request views alias the input of the final call: the target host points into it.
TEST(ConnectRequestParserTest, ViewsAliasInput) {
  ConnectRequestParser parser;
  ASSERT_EQ(parser.parse(kGoHead), kDone);
  EXPECT_EQ(parser.request().host.data(), kGoHead.data() + 8);
  EXPECT_EQ(parser.request().method.data(), kGoHead.data());
}

// Views stay correct when every call passes a fresh copy of the stream and older copies are freed.
TEST(ConnectRequestParserTest, ViewsFollowMovedBuffer) {
  ConnectRequestParser parser;
  std::unique_ptr<std::string> buffer;
  ConnectStatus status = kNeedMore;
  for (size_t n = 0; n <= kCurlHead.size() && status == kNeedMore; ++n) {
    buffer = std::make_unique<std::string>(kCurlHead.substr(0, n));
    status = parser.parse(*buffer);
  }
  ASSERT_EQ(status, kDone);
  EXPECT_EQ(parser.request().method, "CONNECT");
  EXPECT_EQ(parser.request().host, "myreg.azurecr.io");
  EXPECT_EQ(parser.request().host_header, "myreg.azurecr.io:443");
  EXPECT_EQ(parser.request().host.data(), buffer->data() + 8);
}

// C9: a ClientHello pipelined after the head is left alone and head_length marks where it starts.
TEST(ConnectRequestParserTest, C9PipelinedClientHelloStartsAtHeadLength) {
  const std::string input = std::string(kGoHead) + kClientHelloStart;
  const Outcome whole = parseWhole(input);
  ASSERT_EQ(whole.status, kDone);
  EXPECT_EQ(whole.head_length, kGoHead.size());
  EXPECT_EQ(input.substr(whole.head_length), kClientHelloStart);
  EXPECT_EQ(parseByteByByte(input), whole);
}

// C9: after a head for a denied host, a second pipelined CONNECT is not read.
TEST(ConnectRequestParserTest, C9SecondPipelinedConnectIsNotRead) {
  const std::string first = connectHead("evil.example:443");
  const std::string input = first + connectHead("myreg.azurecr.io:443");
  const Outcome outcome = parseWhole(input);
  ASSERT_EQ(outcome.status, kDone);
  EXPECT_EQ(outcome.host, "evil.example");
  EXPECT_EQ(outcome.head_length, first.size());
}

// C10: a CONNECT sent after the head is tunnel data, even when it is malformed.
TEST(ConnectRequestParserTest, C10TextAfterHeadIsTunnelData) {
  const std::string input = std::string(kCurlHead) + "CONNECT other:443 HTTP/1.1\n\0\n"s;
  const Outcome outcome = parseWhole(input);
  ASSERT_EQ(outcome.status, kDone);
  EXPECT_EQ(outcome.host, "myreg.azurecr.io");
  EXPECT_EQ(outcome.head_length, kCurlHead.size());
}

// C4: a non-CONNECT is refused once its request line ends, with the method kept for the log.
TEST(ConnectRequestParserTest, C4MethodKnownAtEndOfRequestLine) {
  ConnectRequestParser parser;
  const std::string_view input = "GET http://myreg.azurecr.io/v2/ HTTP/1.0\r\n";
  EXPECT_EQ(parser.parse(input.substr(0, input.size() - 1)), kNeedMore);
  EXPECT_EQ(parser.parse(input), kNotAllowed);
  EXPECT_EQ(parser.error(), ConnectError::kMethodNotAllowed);
  EXPECT_EQ(parser.request().method, "GET");
  EXPECT_EQ(parser.request().http_minor, 0);
}

// C11: a TLS record byte is refused at once, before any further byte arrives.
TEST(ConnectRequestParserTest, C11TlsDetectedOnFirstByte) {
  ConnectRequestParser parser;
  EXPECT_EQ(parser.parse("\x16"), kMalformed);
  EXPECT_EQ(parser.error(), ConnectError::kTlsOnProxyPort);
  EXPECT_EQ(connectErrorName(parser.error()), "tls_to_proxy_port");
}

struct MismatchCase {
  std::string name;
  std::string target;
  std::string host_value;
  bool mismatch;
};

void PrintTo(const MismatchCase& c, std::ostream* os) { *os << c.name; }

class ConnectRequestParserMismatchTest : public testing::TestWithParam<MismatchCase> {};

// C5: host_header_mismatch is set exactly when Host names another host or port than the target.
TEST_P(ConnectRequestParserMismatchTest, FlagsOnlyRealDisagreement) {
  const MismatchCase& c = GetParam();
  const Outcome outcome = parseWhole(withHost(c.target, c.host_value));
  ASSERT_EQ(outcome.status, kDone) << connectErrorName(outcome.error);
  EXPECT_EQ(outcome.host_header_mismatch, c.mismatch);
  EXPECT_EQ(outcome.host_header, c.host_value);
}

INSTANTIATE_TEST_SUITE_P(
    HostHeader, ConnectRequestParserMismatchTest,
    testing::Values(
        MismatchCase{"C5_SameHostAndPort", "myreg.azurecr.io:443", "myreg.azurecr.io:443", false},
        MismatchCase{"C5_HostWithoutPort", "myreg.azurecr.io:443", "myreg.azurecr.io", false},
        MismatchCase{"C5_HostOtherCase", "myreg.azurecr.io:443", "MyReg.AzureCR.io:443", false},
        MismatchCase{"C5_OtherName", "myreg.azurecr.io:443", "evil.example", true},
        MismatchCase{"C5_OtherPort", "myreg.azurecr.io:443", "myreg.azurecr.io:8443", true},
        MismatchCase{"C5_SuffixName", "myreg.azurecr.io:443", "myreg.azurecr.io.evil:443", true},
        MismatchCase{"C5_Ipv6SameAddressOtherText", "[::1]:443", "[0:0::1]:443", false},
        MismatchCase{"C5_Ipv6WithoutPort", "[2603:1030::1]:443", "[2603:1030::1]", false},
        MismatchCase{"C5_Ipv6OtherAddress", "[::1]:443", "[::2]:443", true},
        MismatchCase{"C5_Ipv6TargetNameHost", "[::1]:443", "localhost:443", true},
        MismatchCase{"C5_NameTargetIpv6Host", "myreg.azurecr.io:443", "[::1]:443", true}),
    [](const testing::TestParamInfo<MismatchCase>& param) { return param.param.name; });

// A head of `size` bytes: a Go-style head padded by one header line to exactly that length.
std::string headOfSize(size_t size) {
  const std::string prefix = std::string(kGoHead.substr(0, kGoHead.size() - 2)) + "X-Pad: ";
  const std::string suffix = "\r\n\r\n";
  return prefix + std::string(size - prefix.size() - suffix.size(), 'p') + suffix;
}

// C8: a head of max-1 or max bytes is accepted and one of max+1 bytes is refused, for any cap.
TEST(ConnectRequestParserTest, C8SizeCapBoundary) {
  for (size_t max : {size_t{128}, size_t{1000}, ConnectRequestParser::kDefaultMaxHeadSize}) {
    SCOPED_TRACE(max);
    for (size_t size : {max - 1, max}) {
      const std::string head = headOfSize(size);
      ASSERT_EQ(head.size(), size);
      const Outcome outcome = parseWhole(head + kClientHelloStart, max);
      EXPECT_EQ(outcome.status, kDone);
      EXPECT_EQ(outcome.head_length, size);
      EXPECT_EQ(parseByteByByte(head, max), outcome);
    }
    const std::string head = headOfSize(max + 1);
    EXPECT_EQ(parseWhole(head, max).status, kTooLarge);
    EXPECT_EQ(parseByteByByte(head, max).status, kTooLarge);
    // Only max bytes are needed to refuse it.
    EXPECT_EQ(parseWhole(std::string_view(head).substr(0, max), max).status, kTooLarge);
    EXPECT_EQ(parseWhole(std::string_view(head).substr(0, max - 1), max).status, kNeedMore);
  }
}

// C8: 64 header lines are accepted and a 65th is refused as too large.
TEST(ConnectRequestParserTest, C8HeaderCountCap) {
  auto withHeaders = [](size_t count) {
    std::string head = "CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n";
    for (size_t i = 1; i < count; ++i) {
      head += "X-" + std::to_string(i) + ": 1\r\n";
    }
    return head + "\r\n";
  };
  EXPECT_EQ(parseWhole(withHeaders(ConnectRequestParser::kMaxHeaderCount)).status, kDone);
  const Outcome over = parseWhole(withHeaders(ConnectRequestParser::kMaxHeaderCount + 1));
  EXPECT_EQ(over.status, kTooLarge);
  EXPECT_EQ(over.error, ConnectError::kTooLarge);
}

// C8: 64 KiB without a terminator is refused after reading no more than the cap.
TEST(ConnectRequestParserTest, C8NoTerminatorStopsAtCap) {
  std::string input = "CONNECT h:443 HTTP/1.1\r\nX-A: " + std::string(65536, 'x');
  ConnectRequestParser parser;
  // Bytes past the cap are never read: a CR LF CR LF placed there does not end the head.
  input.replace(ConnectRequestParser::kDefaultMaxHeadSize, 4, "\r\n\r\n");
  EXPECT_EQ(parser.parse(input), kTooLarge);
  EXPECT_EQ(parser.error(), ConnectError::kTooLarge);
  EXPECT_EQ(connectErrorName(parser.error()), "head_too_large");
}

// The scan resumes where it stopped: lines already checked are not read again on later calls.
TEST(ConnectRequestParserTest, CompletedLinesAreNotRescanned) {
  ConnectRequestParser parser;
  std::string input(kGoHead);
  const size_t request_line_end = input.find("\r\n") + 2;
  ASSERT_EQ(parser.parse(std::string_view(input).substr(0, request_line_end + 3)), kNeedMore);
  // Out of contract on purpose: bytes of the finished request line are overwritten with NUL.
  input.replace(12, 4, std::string(4, '\0'));
  EXPECT_EQ(parser.parse(input), kDone);
}

// Once a status is final, later calls return it without reading their input.
TEST(ConnectRequestParserTest, FinalStatusIsSticky) {
  ConnectRequestParser parser;
  ASSERT_EQ(parser.parse("GET / HTTP/1.1\r\n"), kNotAllowed);
  EXPECT_EQ(parser.parse(kGoHead), kNotAllowed);
  EXPECT_EQ(parser.error(), ConnectError::kMethodNotAllowed);
}

// reset() lets one parser read a second stream as if new.
TEST(ConnectRequestParserTest, ResetStartsOver) {
  ConnectRequestParser parser(128);
  ASSERT_EQ(parser.parse("GET / HTTP/1.1\r\n"), kNotAllowed);
  parser.reset();
  ASSERT_EQ(parser.parse(kGoHead), kDone);
  EXPECT_EQ(parser.error(), ConnectError::kNone);
  EXPECT_EQ(parser.request().host, "myreg.azurecr.io");
  parser.reset();
  EXPECT_EQ(parser.parse(headOfSize(129)), kTooLarge);
}

// An empty read, and the same prefix passed again, leave the parser waiting.
TEST(ConnectRequestParserTest, EmptyAndRepeatedInputNeedMore) {
  ConnectRequestParser parser;
  EXPECT_EQ(parser.parse(""), kNeedMore);
  EXPECT_EQ(parser.parse(""), kNeedMore);
  EXPECT_EQ(parser.parse(kGoHead.substr(0, 10)), kNeedMore);
  EXPECT_EQ(parser.parse(kGoHead.substr(0, 10)), kNeedMore);
  EXPECT_EQ(parser.parse(kGoHead), kDone);
}

// Reason ids are the stable strings logs, metrics and X-Acr-Egress-Reason depend on.
TEST(ConnectRequestParserTest, ErrorNamesAreStable) {
  using E = ConnectError;
  EXPECT_EQ(connectErrorName(E::kNone), "none");
  EXPECT_EQ(connectErrorName(E::kBadRequestLine), "bad_request_line");
  EXPECT_EQ(connectErrorName(E::kBadTarget), "bad_target");
  EXPECT_EQ(connectErrorName(E::kBadPort), "bad_port");
  EXPECT_EQ(connectErrorName(E::kBadVersion), "bad_version");
  EXPECT_EQ(connectErrorName(E::kBadHeader), "bad_header");
  EXPECT_EQ(connectErrorName(E::kMissingHost), "missing_host");
  EXPECT_EQ(connectErrorName(E::kDuplicateHost), "duplicate_host");
  EXPECT_EQ(connectErrorName(E::kBareLf), "bare_lf");
  EXPECT_EQ(connectErrorName(E::kTlsOnProxyPort), "tls_to_proxy_port");
  EXPECT_EQ(connectErrorName(E::kHttp2Preface), "http2_preface");
  EXPECT_EQ(connectErrorName(E::kMethodNotAllowed), "connect_only");
  EXPECT_EQ(connectErrorName(E::kTooLarge), "head_too_large");
}

}  // namespace
}  // namespace acr
