#include "conf/upstream_proxy.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <charconv>
#include <cstring>

#include "filters/host_name.h"
#include "filters/ip_address.h"

namespace acr {
namespace {

// A credentials file is one short line; anything longer is not one.
constexpr size_t kMaxCredentialsSize = 4096;

const ConfigValue* scalar(const Config& config, Setting setting) {
  const auto it = config.settings.find(setting);
  return it == config.settings.end() || it->second.empty() ? nullptr : &it->second.back();
}

[[noreturn]] void fail(const ConfigValue& value, const std::string& what) {
  throw ConfigError(value.origin + ": " + what);
}

std::string base64(std::string_view bytes) {
  static constexpr char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  for (size_t i = 0; i < bytes.size(); i += 3) {
    uint32_t chunk = static_cast<uint8_t>(bytes[i]) << 16;
    if (i + 1 < bytes.size()) {
      chunk |= static_cast<uint8_t>(bytes[i + 1]) << 8;
    }
    if (i + 2 < bytes.size()) {
      chunk |= static_cast<uint8_t>(bytes[i + 2]);
    }
    out += kAlphabet[(chunk >> 18) & 63];
    out += kAlphabet[(chunk >> 12) & 63];
    out += i + 1 < bytes.size() ? kAlphabet[(chunk >> 6) & 63] : '=';
    out += i + 2 < bytes.size() ? kAlphabet[chunk & 63] : '=';
  }
  return out;
}

void parseUrl(const ConfigValue& value, UpstreamProxySettings& proxy) {
  const std::string expected = "': expected http://HOST:PORT (an IP address or a host name)";
  constexpr std::string_view kScheme = "http://";
  std::string_view rest = value.text;
  if (!rest.starts_with(kScheme)) {
    fail(value, "invalid upstream proxy '" + value.text + expected);
  }
  rest.remove_prefix(kScheme.size());
  if (rest.ends_with('/')) {
    rest.remove_suffix(1);
  }
  if (rest.find('@') != std::string_view::npos) {
    // Not echoed: the text holds a password.
    fail(value,
         "credentials in the upstream proxy URL are refused (they would sit on the command line "
         "and in the process list): put user:password in a file given with "
         "--upstream-proxy-credentials FILE (proxy.upstream_proxy_credentials)");
  }
  if (rest.find('/') != std::string_view::npos) {
    fail(value, "invalid upstream proxy '" + value.text + expected);
  }
  const size_t colon = rest.rfind(':');
  if (colon == std::string_view::npos) {
    fail(value, "invalid upstream proxy '" + value.text + "': the port is missing" + expected);
  }
  std::string_view host = rest.substr(0, colon);
  const std::string_view port_text = rest.substr(colon + 1);
  unsigned port = 0;
  const auto [end, ec] =
      std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (port_text.empty() || ec != std::errc() || end != port_text.data() + port_text.size() ||
      port == 0 || port > 65535) {
    fail(value, "invalid upstream proxy '" + value.text + "': bad port" + expected);
  }
  bool valid = false;
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
    const auto address = IpAddress::parse(host);
    valid = address && !address->isV4();
  } else if (IpAddress::parse(host)) {
    valid = host.find(':') == std::string_view::npos;  // a bare IPv6 address needs brackets
  } else {
    HostName name;
    valid = HostName::normalize(host, name) == HostName::Status::kOk;
  }
  if (!valid) {
    fail(value, "invalid upstream proxy '" + value.text + "': bad host" + expected);
  }
  proxy.host = std::string(host);
  proxy.port = static_cast<uint16_t>(port);
  proxy.text = value.text;
}

// The file's one line, `user:password`, as the Basic credentials it encodes (RFC 7617).
std::string readCredentials(const ConfigValue& value) {
  const std::string& path = value.text;
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) {
    fail(value,
         "cannot open the upstream proxy credentials file " + path + ": " + std::strerror(errno));
  }
  struct Closer {
    int fd;
    ~Closer() { close(fd); }
  } closer{fd};
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    fail(value, "the upstream proxy credentials file " + path + " is not a regular file");
  }
  if ((st.st_mode & (S_IROTH | S_IWOTH)) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof(mode), "%04o", static_cast<unsigned>(st.st_mode & 07777));
    fail(value, "the upstream proxy credentials file " + path + " is readable or writable by " +
                    "others (mode " + mode + "): it holds a password; chmod o-rw " + path);
  }
  std::string text;
  std::array<char, 512> buffer{};
  for (;;) {
    const ssize_t got = read(fd, buffer.data(), buffer.size());
    if (got < 0) {
      fail(value,
           "cannot read the upstream proxy credentials file " + path + ": " + std::strerror(errno));
    }
    if (got == 0) {
      break;
    }
    text.append(buffer.data(), static_cast<size_t>(got));
    if (text.size() > kMaxCredentialsSize) {
      fail(value, "the upstream proxy credentials file " + path +
                      " is too large (expected one "
                      "line user:password)");
    }
  }
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) {
    text.pop_back();
  }
  const size_t colon = text.find(':');
  bool valid = colon != std::string::npos && colon > 0;
  for (const char c : text) {
    valid = valid && static_cast<unsigned char>(c) >= 0x20 && c != 0x7f;
  }
  if (!valid) {
    fail(value, "the upstream proxy credentials file " + path +
                    " does not hold user:password on one line");
  }
  return "Basic " + base64(text);
}

}  // namespace

std::optional<UpstreamProxySettings> readUpstreamProxy(const Config& config) {
  const ConfigValue* url = scalar(config, Setting::kUpstreamProxy);
  const ConfigValue* credentials = scalar(config, Setting::kUpstreamProxyCredentials);
  if (url == nullptr || url->text.empty()) {
    if (credentials != nullptr) {
      fail(*credentials,
           "--upstream-proxy-credentials (proxy.upstream_proxy_credentials) needs "
           "--upstream-proxy (proxy.upstream_proxy)");
    }
    return std::nullopt;
  }
  UpstreamProxySettings proxy;
  parseUrl(*url, proxy);
  if (credentials != nullptr) {
    proxy.authorization = readCredentials(*credentials);
  }
  return proxy;
}

void checkUpstreamProxyPolicy(const PolicyConfig& policy, const UpstreamProxySettings* proxy) {
  if (proxy == nullptr) {
    return;
  }
  const std::string why =
      " cannot be enforced together with the upstream proxy " + proxy->text +
      ": the upstream proxy resolves the names, so acr-egress never sees the addresses they "
      "lead to; drop one of the two";
  if (policy.strict_ip) {
    throw ConfigError("--strict-ip (policy.strict_ip)" + why);
  }
  if (!policy.binds.empty()) {
    throw ConfigError(policy.binds.front().origin +
                      ": address binding (--bind-host-tag, [[policy.bind]])" + why);
  }
}

}  // namespace acr
