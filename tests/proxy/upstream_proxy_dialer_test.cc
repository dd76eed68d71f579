#include "proxy/upstream_proxy_dialer.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <optional>
#include <string>
#include <thread>

#include "dns/resolver.h"
#include "proxy/own_upstreams.h"
#include "proxy/socket_options.h"

namespace acr {
namespace {

using namespace std::chrono_literals;
using Outcome = UpstreamProxyResult::Outcome;

// A scripted upstream proxy on 127.0.0.1: accepts one connection, reads the request head, writes
// `answer`, then closes at once (`linger` 0) or after `linger`. Bounded: 5 s to accept and read.
class ScriptedProxy {
 public:
  ScriptedProxy(std::string answer, std::chrono::milliseconds linger)
      : answer_(std::move(answer)), linger_(linger) {
    listener_ = socket(AF_INET, SOCK_STREAM, 0);
    const SocketAddress any = SocketAddress::from(*IpAddress::parse("127.0.0.1"), 0);
    EXPECT_EQ(bind(listener_, any.get(), any.length), 0);
    EXPECT_EQ(listen(listener_, 4), 0);
    port_ = localAddress(listener_)->port();
    thread_ = std::thread([this] { serve(); });
  }
  ~ScriptedProxy() {
    thread_.join();
    close(listener_);
  }
  uint16_t port() const { return port_; }
  // The request head received (complete once the dial has ended).
  const std::string& request() const { return request_; }

 private:
  void serve() {
    pollfd accept_poll{listener_, POLLIN, 0};
    if (poll(&accept_poll, 1, 5000) != 1) {
      return;
    }
    const int fd = accept(listener_, nullptr, nullptr);
    char buffer[4096];
    while (request_.find("\r\n\r\n") == std::string::npos && request_.size() < 65536) {
      pollfd read_poll{fd, POLLIN, 0};
      if (poll(&read_poll, 1, 5000) != 1) {
        break;
      }
      const ssize_t got = recv(fd, buffer, sizeof(buffer), 0);
      if (got <= 0) {
        break;
      }
      request_.append(buffer, static_cast<size_t>(got));
    }
    if (!answer_.empty()) {
      EXPECT_EQ(send(fd, answer_.data(), answer_.size(), MSG_NOSIGNAL),
                static_cast<ssize_t>(answer_.size()));
    }
    std::this_thread::sleep_for(linger_);
    close(fd);
  }

  std::string answer_;
  std::chrono::milliseconds linger_;
  int listener_ = -1;
  uint16_t port_ = 0;
  std::string request_;
  std::thread thread_;
};

class UpstreamProxyDialerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    base_ = event_base_new();
    ResolverOptions options;
    options.servers = {"127.0.0.1:9"};  // never asked: the upstream proxy is an IP literal
    resolver_ = std::make_unique<Resolver>(base_, options);
  }
  void TearDown() override {
    resolver_.reset();
    event_base_free(base_);
  }

  // Dials the upstream proxy on 127.0.0.1:port for a tunnel to myreg.azurecr.io:443 with Basic
  // credentials, and runs the loop until the result (bounded: 500 turns, `budget`).
  UpstreamProxyResult dial(uint16_t port, std::chrono::milliseconds budget = 5000ms) {
    settings_ = {"127.0.0.1", port, "Basic YWxpY2U6czNjcmV0", "http://127.0.0.1"};
    DialOptions options;
    options.deadline = std::chrono::steady_clock::now() + budget;
    options.own_upstreams = &own_;
    std::optional<UpstreamProxyResult> result;
    dialer_ = std::make_unique<UpstreamProxyDialer>(
        base_, *resolver_, settings_, options,
        [&result](UpstreamProxyResult r) { result = std::move(r); });
    dialer_->start("myreg.azurecr.io:443");
    for (int i = 0; i < 500 && !result; ++i) {
      event_base_loop(base_, EVLOOP_ONCE);
    }
    EXPECT_TRUE(result);
    return result ? std::move(*result) : UpstreamProxyResult{};
  }

  event_base* base_ = nullptr;
  std::unique_ptr<Resolver> resolver_;
  UpstreamProxySettings settings_;
  OwnUpstreams own_;
  std::unique_ptr<UpstreamProxyDialer> dialer_;
};

// A 2xx opens the tunnel: the request is CONNECT name:port with the credentials, and the bytes
// after the answer's head are left for the relay, byte-exact.
TEST_F(UpstreamProxyDialerTest, TwoHundredOpensTunnelAndKeepsEarlyBytes) {
  ScriptedProxy proxy("HTTP/1.1 200 Connection established\r\nVia: squid\r\n\r\nEARLY", 300ms);
  UpstreamProxyResult result = dial(proxy.port());
  ASSERT_EQ(result.outcome, Outcome::kTunnel);
  ASSERT_NE(result.dial.upstream, nullptr);
  EXPECT_EQ(result.status, 200);
  std::string early;
  evbuffer* input = result.dial.upstream->input();
  early.resize(evbuffer_get_length(input));
  evbuffer_remove(input, early.data(), early.size());
  const int fd = result.dial.upstream->fd();
  for (int i = 0; i < 50 && early.size() < 5; ++i) {  // the rest may still be in the socket
    pollfd read_poll{fd, POLLIN, 0};
    char buffer[16];
    if (poll(&read_poll, 1, 100) == 1) {
      const ssize_t got = recv(fd, buffer, sizeof(buffer), 0);
      if (got <= 0) {
        break;
      }
      early.append(buffer, static_cast<size_t>(got));
    }
  }
  EXPECT_EQ(early, "EARLY");
  ASSERT_TRUE(result.dial.local);
  EXPECT_TRUE(own_.contains(*result.dial.local, *result.dial.endpoint));
  own_.remove(*result.dial.local, *result.dial.endpoint);
  result.dial.upstream.reset();  // closes it
  EXPECT_EQ(proxy.request(),
            "CONNECT myreg.azurecr.io:443 HTTP/1.1\r\nHost: myreg.azurecr.io:443\r\n"
            "Proxy-Authorization: Basic YWxpY2U6czNjcmV0\r\n\r\n");
}

// Every other status is a refusal naming it; an answer that is not HTTP is malformed; either way
// the connection is closed and nothing stays registered.
TEST_F(UpstreamProxyDialerTest, RefusalsAndMalformedAnswers) {
  {
    ScriptedProxy proxy(
        "HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 3\r\n\r\nabc", 0ms);
    const UpstreamProxyResult result = dial(proxy.port());
    EXPECT_EQ(result.outcome, Outcome::kRefused);
    EXPECT_EQ(result.status, 407);
    EXPECT_EQ(result.status_line, "HTTP/1.1 407 Proxy Authentication Required");
    EXPECT_EQ(result.dial.upstream, nullptr);
    EXPECT_FALSE(result.dial.local);
  }
  {
    ScriptedProxy proxy("SSH-2.0-OpenSSH_9.2\r\n\r\n", 0ms);
    const UpstreamProxyResult result = dial(proxy.port());
    EXPECT_EQ(result.outcome, Outcome::kMalformed);
    EXPECT_EQ(result.status_line, "SSH-2.0-OpenSSH_9.2");
  }
}

// Closed before a complete head, silent past the deadline, and nothing listening: kClosed,
// kTimeout and kDialFailed (ECONNREFUSED).
TEST_F(UpstreamProxyDialerTest, ClosedSilentAndUnreachable) {
  {
    ScriptedProxy proxy("HTTP/1.1 200", 0ms);
    EXPECT_EQ(dial(proxy.port()).outcome, Outcome::kClosed);
  }
  {
    ScriptedProxy proxy("", 1500ms);
    const auto started = std::chrono::steady_clock::now();
    EXPECT_EQ(dial(proxy.port(), 300ms).outcome, Outcome::kTimeout);
    EXPECT_LT(std::chrono::steady_clock::now() - started, 1200ms);
  }
  const int probe = socket(AF_INET, SOCK_STREAM, 0);
  const SocketAddress any = SocketAddress::from(*IpAddress::parse("127.0.0.1"), 0);
  ASSERT_EQ(bind(probe, any.get(), any.length), 0);
  const uint16_t closed_port = localAddress(probe)->port();
  close(probe);
  const UpstreamProxyResult result = dial(closed_port);
  EXPECT_EQ(result.outcome, Outcome::kDialFailed);
  EXPECT_EQ(result.dial.error, ECONNREFUSED);
}

}  // namespace
}  // namespace acr
