#include "proxy/connection.h"

#include <arpa/inet.h>
#include <event2/thread.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <spdlog/sinks/null_sink.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "conf/command_line.h"
#include "conf/policy_factory.h"
#include "conf/proxy_settings.h"
#include "proxy/proxy_context.h"
#include "proxy/worker.h"

// Connection's state machine on real loopback sockets: a Worker runs its event loop on a thread,
// listening on a socket the test bound on 127.0.0.1 (handed over as systemd would), and the test
// talks to it with plain blocking sockets. Upstreams are a sink listener on 127.0.0.1 that echoes
// what it reads, and a port nothing listens on. Outcomes are read from the connection counters
// (listener, decision, reason), the same data the access log and /metrics show.

namespace acr {
namespace {

using namespace std::chrono_literals;

int listenOnLoopback() {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const int on = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
  EXPECT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  EXPECT_EQ(listen(fd, 64), 0);
  return fd;
}

uint16_t portOf(int fd) {
  sockaddr_in address{};
  socklen_t length = sizeof(address);
  getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
  return ntohs(address.sin_port);
}

// A loopback port with nothing listening: bound, then closed.
uint16_t closedPort() {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address));
  const uint16_t port = portOf(fd);
  close(fd);
  return port;
}

int connectTo(uint16_t port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = htons(port);
  EXPECT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  const timeval timeout{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  return fd;
}

void sendAll(int fd, std::string_view data) {
  while (!data.empty()) {
    const ssize_t sent = send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    ASSERT_GT(sent, 0);
    data.remove_prefix(static_cast<size_t>(sent));
  }
}

// Everything until EOF (or an error: `reset` tells whether it was ECONNRESET).
std::string readToEnd(int fd, bool* reset = nullptr) {
  std::string out;
  char buffer[4096];
  for (;;) {
    const ssize_t n = recv(fd, buffer, sizeof(buffer), 0);
    if (n > 0) {
      out.append(buffer, static_cast<size_t>(n));
      continue;
    }
    if (reset != nullptr) {
      *reset = n < 0 && errno == ECONNRESET;
    }
    return out;
  }
}

// Reads one HTTP response head ("...\r\n\r\n").
std::string readHead(int fd) {
  std::string out;
  char c;
  while (out.find("\r\n\r\n") == std::string::npos && recv(fd, &c, 1, 0) == 1) {
    out += c;
  }
  return out;
}

// Accepts connections and echoes each one's bytes back until its FIN, then closes it.
class EchoSink {
 public:
  EchoSink() : fd_(listenOnLoopback()), port_(portOf(fd_)) {
    thread_ = std::thread([this] {
      for (;;) {
        const int client = accept(fd_, nullptr, nullptr);
        if (client < 0 || stopping_) {
          if (client >= 0) {
            close(client);
          }
          return;
        }
        const std::string data = readToEnd(client);
        // The proxy may have reset this side already: no assertion on the echo.
        for (size_t sent = 0; sent < data.size();) {
          const ssize_t n = send(client, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
          if (n <= 0) {
            break;
          }
          sent += static_cast<size_t>(n);
        }
        close(client);
      }
    });
  }
  ~EchoSink() {
    stopping_ = true;
    close(connectTo(port_));  // wakes accept()
    thread_.join();
    close(fd_);
  }
  uint16_t port() const noexcept { return port_; }

 private:
  const int fd_;
  const uint16_t port_;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

// One Worker with one listener of `kind` on 127.0.0.1, policy and settings from command-line
// options (loopback allowed with --allow-cidr, the ports given allowed with --port).
class Proxy {
 public:
  Proxy(ListenerKind kind, std::vector<std::string> args) {
    setenv("ACR_EGRESS_CONFIG", "", 1);  // no /etc configuration file
    evthread_use_pthreads();             // drain() comes from this thread
    const int listener = listenOnLoopback();
    port_ = portOf(listener);
    const std::string address = "127.0.0.1:" + std::to_string(port_);
    args.push_back(kind == ListenerKind::kConnect ? "--connect" : "--sni");
    args.push_back(address);
    const CommandLine command_line = parseCommandLine(args);
    PolicySnapshot snapshot = buildPolicy(command_line.config.policy);
    auto logger = std::make_shared<spdlog::logger>("connection_test",
                                                   std::make_shared<spdlog::sinks::null_sink_mt>());
    context_ = std::make_unique<ProxyContext>(buildProxySettings(command_line.config),
                                              snapshot.policy, AccessLog(logger, true));
    worker_ = std::make_unique<Worker>(*context_, PipePool::kMaxPipes);
    std::vector<bool> used(1, false);
    worker_->bindListeners({listener}, used);
    close(listener);  // the worker listens on its duplicate
    EXPECT_TRUE(used[0]);
    worker_->start(0);
  }
  ~Proxy() { stop(); }
  // Drains with deadline 0 (open connections end as shutdown) and joins the loop.
  void stop() {
    if (worker_ != nullptr) {
      worker_->drain(0ms);
      worker_->join();
      worker_.reset();
    }
  }
  uint16_t port() const noexcept { return port_; }

  // Waits (up to 20 s) until `count` connections ended with (decision, reason) on `kind`.
  bool waitFor(ListenerKind kind, Outcome decision, CloseReason reason, uint64_t count = 1) {
    const auto deadline = std::chrono::steady_clock::now() + 20s;
    while (std::chrono::steady_clock::now() < deadline) {
      if (context_->metrics().connections().count(kind, decision, reason) >= count) {
        return true;
      }
      std::this_thread::sleep_for(10ms);
    }
    return false;
  }
  const ProxyStats& stats() const { return context_->stats(); }
  const ConnectionLimits& limits() const { return context_->limits(); }
  // Waits (up to 10 s) until no connection holds a slot of the limits.
  bool waitForNoSlots() const {
    const IpAddress loopback = IpAddress::v4(0x7f000001);
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    while (std::chrono::steady_clock::now() < deadline) {
      if (limits().active() == 0 && limits().listenerCount(0) == 0 &&
          limits().clientCount(loopback) == 0 && limits().clients() == 0) {
        return true;
      }
      std::this_thread::sleep_for(10ms);
    }
    return false;
  }

 private:
  uint16_t port_ = 0;
  std::unique_ptr<ProxyContext> context_;
  std::unique_ptr<Worker> worker_;
};

std::string reasonHeader(const std::string& head) {
  const std::string key = "X-Acr-Egress-Reason: ";
  const size_t at = head.find(key);
  if (at == std::string::npos) {
    return {};
  }
  return head.substr(at + key.size(), head.find("\r\n", at) - at - key.size());
}

std::string connectHead(uint16_t port) {
  return "CONNECT 127.0.0.1:" + std::to_string(port) +
         " HTTP/1.1\r\nHost: 127.0.0.1:" + std::to_string(port) + "\r\n\r\n";
}

// kReadHead, timer: a client that sends nothing gets 408 head_timeout.
TEST(ConnectionTest, HeadTimeoutAnswers408) {
  Proxy proxy(ListenerKind::kConnect, {"--head-timeout", "200ms"});
  const int client = connectTo(proxy.port());
  const std::string head = readHead(client);
  EXPECT_EQ(head.rfind("HTTP/1.1 408 ", 0), 0u) << head;
  EXPECT_EQ(reasonHeader(head), "head_timeout");
  close(client);
  EXPECT_TRUE(proxy.waitFor(ListenerKind::kConnect, Outcome::kDeny, CloseReason::kHeadTimeout));
}

// kReadHead, malformed head: 400 with the parser's reason, from the close-reason table.
TEST(ConnectionTest, MalformedHeadAnswers400) {
  Proxy proxy(ListenerKind::kConnect, {});
  const int client = connectTo(proxy.port());
  sendAll(client, "CONNECT nohostport HTTP/1.1\r\n\r\n");
  const std::string head = readHead(client);
  EXPECT_EQ(head.rfind("HTTP/1.1 400 ", 0), 0u) << head;
  const std::string reason = reasonHeader(head);
  EXPECT_EQ(reason, "bad_port");  // no ":port"
  close(client);
  EXPECT_TRUE(proxy.waitFor(ListenerKind::kConnect, Outcome::kDeny, CloseReason::kBadPort));
}

// kReadHead, policy: a host no pattern allows gets 403 host_not_allowed and is never dialled.
TEST(ConnectionTest, DeniedHostAnswers403) {
  Proxy proxy(ListenerKind::kConnect, {"--allow-host", "allowed.example"});
  const int client = connectTo(proxy.port());
  sendAll(client, "CONNECT denied.example:443 HTTP/1.1\r\nHost: denied.example:443\r\n\r\n");
  const std::string head = readHead(client);
  EXPECT_EQ(head.rfind("HTTP/1.1 403 ", 0), 0u) << head;
  EXPECT_EQ(reasonHeader(head), "host_not_allowed");
  // kRefuse: the refusal is followed by the proxy's FIN.
  EXPECT_NE(readToEnd(client).find("acr-egress: denied"), std::string::npos);
  close(client);
  EXPECT_TRUE(proxy.waitFor(ListenerKind::kConnect, Outcome::kDeny, CloseReason::kHostNotAllowed));
}

// kReadHead, client EOF: a client that leaves mid-head is counted as client_closed.
TEST(ConnectionTest, ClientClosingMidHeadIsClientClosed) {
  Proxy proxy(ListenerKind::kConnect, {});
  const int client = connectTo(proxy.port());
  sendAll(client, "CONNECT 127.0.0.1:443 HTTP/1.1\r\n");
  close(client);
  EXPECT_TRUE(
      proxy.waitFor(ListenerKind::kConnect, Outcome::kIncomplete, CloseReason::kClientClosed));
}

// kConnect, dial failure: an allowed literal whose port refuses gets 502 upstream_refused.
TEST(ConnectionTest, UpstreamRefusedAnswers502) {
  const uint16_t port = closedPort();
  Proxy proxy(ListenerKind::kConnect,
              {"--allow-cidr", "127.0.0.0/8", "--port", std::to_string(port)});
  const int client = connectTo(proxy.port());
  sendAll(client, connectHead(port));
  const std::string head = readHead(client);
  EXPECT_EQ(head.rfind("HTTP/1.1 502 ", 0), 0u) << head;
  EXPECT_EQ(reasonHeader(head), "upstream_refused");
  close(client);
  EXPECT_TRUE(proxy.waitFor(ListenerKind::kConnect, Outcome::kDeny, CloseReason::kUpstreamRefused));
}

// kTunnelHello -> kRelay -> half-close: after the 200 the tunnel's bytes reach the upstream
// byte-exact, the client's FIN is passed on, the echo comes back, and both FINs end it as allowed.
TEST(ConnectionTest, RelaysAndPassesHalfClose) {
  EchoSink sink;
  Proxy proxy(ListenerKind::kConnect, {"--allow-cidr", "127.0.0.0/8", "--port",
                                       std::to_string(sink.port()), "--allow-non-tls"});
  const int client = connectTo(proxy.port());
  sendAll(client, connectHead(sink.port()));
  const std::string head = readHead(client);
  ASSERT_EQ(head, "HTTP/1.1 200 Connection established\r\n\r\n");
  std::string payload = "not TLS, relayed as is\n";
  for (int i = 0; i < 12; ++i) {
    payload += payload;  // ~94 KiB: more than the relay's high watermark
  }
  sendAll(client, payload);
  shutdown(client, SHUT_WR);
  bool reset = false;
  EXPECT_EQ(readToEnd(client, &reset), payload);
  EXPECT_FALSE(reset);
  close(client);
  EXPECT_TRUE(proxy.waitFor(ListenerKind::kConnect, Outcome::kAllow, CloseReason::kAddressAllowed));
  EXPECT_GE(proxy.stats().bytes_up.load(), payload.size());
  EXPECT_GE(proxy.stats().bytes_down.load(), payload.size());
  EXPECT_EQ(proxy.stats().active_tunnels.load(), 0u);
  EXPECT_EQ(proxy.stats().relay_buffered.load(), 0);
}

// kRelay, client reset: a client that resets mid-relay ends the tunnel (still an allowed one)
// and its counters and buffers are released.
TEST(ConnectionTest, ClientResetMidRelayEndsTheTunnel) {
  EchoSink sink;
  Proxy proxy(ListenerKind::kConnect, {"--allow-cidr", "127.0.0.0/8", "--port",
                                       std::to_string(sink.port()), "--allow-non-tls"});
  const int client = connectTo(proxy.port());
  sendAll(client, connectHead(sink.port()));
  ASSERT_EQ(readHead(client), "HTTP/1.1 200 Connection established\r\n\r\n");
  sendAll(client, "some bytes");
  const linger reset_on_close{1, 0};
  setsockopt(client, SOL_SOCKET, SO_LINGER, &reset_on_close, sizeof(reset_on_close));
  std::this_thread::sleep_for(100ms);
  close(client);
  EXPECT_TRUE(proxy.waitFor(ListenerKind::kConnect, Outcome::kAllow, CloseReason::kAddressAllowed));
  EXPECT_EQ(proxy.stats().active_tunnels.load(), 0u);
}

// kTunnelHello into kRelay: a client that resets right behind its first tunnel bytes (both in
// the proxy's socket before it reads them, on one edge that libevent reports as plain read and
// write readiness) ends the tunnel as soon as the relay starts, although the upstream (which
// answers only after the client's FIN) stays silent: not at the idle timeout.
TEST(ConnectionTest, ClientResetRightBehindItsFirstBytesEndsTheTunnel) {
  EchoSink sink;
  Proxy proxy(ListenerKind::kConnect, {"--allow-cidr", "127.0.0.0/8", "--port",
                                       std::to_string(sink.port()), "--allow-non-tls"});
  const int client = connectTo(proxy.port());
  sendAll(client, connectHead(sink.port()));
  ASSERT_EQ(readHead(client), "HTTP/1.1 200 Connection established\r\n\r\n");
  const linger reset_on_close{1, 0};
  setsockopt(client, SOL_SOCKET, SO_LINGER, &reset_on_close, sizeof(reset_on_close));
  sendAll(client, "some bytes");
  close(client);
  EXPECT_TRUE(proxy.waitFor(ListenerKind::kConnect, Outcome::kAllow, CloseReason::kAddressAllowed));
  EXPECT_EQ(proxy.stats().active_tunnels.load(), 0u);
}

// kTunnelHello, timer: after the 200 a tunnel that sends no ClientHello is reset (hello_timeout).
TEST(ConnectionTest, TunnelHelloTimeoutResets) {
  EchoSink sink;
  Proxy proxy(ListenerKind::kConnect, {"--allow-cidr", "127.0.0.0/8", "--port",
                                       std::to_string(sink.port()), "--head-timeout", "300ms"});
  const int client = connectTo(proxy.port());
  sendAll(client, connectHead(sink.port()));
  ASSERT_EQ(readHead(client), "HTTP/1.1 200 Connection established\r\n\r\n");
  bool reset = false;
  EXPECT_EQ(readToEnd(client, &reset), "");
  EXPECT_TRUE(reset);
  close(client);
  EXPECT_TRUE(proxy.waitFor(ListenerKind::kConnect, Outcome::kDeny, CloseReason::kHelloTimeout));
}

// kTunnelHello, not TLS (without --allow-non-tls): reset with not_tls, nothing relayed.
TEST(ConnectionTest, TunnelNotTlsResets) {
  EchoSink sink;
  Proxy proxy(ListenerKind::kConnect,
              {"--allow-cidr", "127.0.0.0/8", "--port", std::to_string(sink.port())});
  const int client = connectTo(proxy.port());
  sendAll(client, connectHead(sink.port()));
  ASSERT_EQ(readHead(client), "HTTP/1.1 200 Connection established\r\n\r\n");
  sendAll(client, "GET / HTTP/1.1\r\n\r\n");
  bool reset = false;
  readToEnd(client, &reset);
  EXPECT_TRUE(reset);
  close(client);
  EXPECT_TRUE(proxy.waitFor(ListenerKind::kConnect, Outcome::kDeny, CloseReason::kNotTls));
  EXPECT_EQ(proxy.stats().bytes_up.load(), 0u);
}

// kReadHello (sni listener), not TLS: reset at once with not_tls, never an HTTP answer.
TEST(ConnectionTest, SniListenerResetsNonTls) {
  Proxy proxy(ListenerKind::kSni, {});
  const int client = connectTo(proxy.port());
  sendAll(client, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
  bool reset = false;
  EXPECT_EQ(readToEnd(client, &reset), "");
  EXPECT_TRUE(reset);
  close(client);
  EXPECT_TRUE(proxy.waitFor(ListenerKind::kSni, Outcome::kDeny, CloseReason::kNotTls));
}

// kReadHello (sni listener), timer: a client that sends nothing is reset (hello_timeout).
TEST(ConnectionTest, SniHelloTimeoutResets) {
  Proxy proxy(ListenerKind::kSni, {"--head-timeout", "200ms"});
  const int client = connectTo(proxy.port());
  bool reset = false;
  EXPECT_EQ(readToEnd(client, &reset), "");
  EXPECT_TRUE(reset);
  close(client);
  EXPECT_TRUE(proxy.waitFor(ListenerKind::kSni, Outcome::kDeny, CloseReason::kHelloTimeout));
}

// kResolve: an allowed name whose lookup fails (the DNS server's port is closed) is refused
// with a dns_* reason and 502/504, never dialled.
TEST(ConnectionTest, DnsFailureAnswers5xx) {
  const uint16_t dns_port = closedPort();
  Proxy proxy(ListenerKind::kConnect,
              {"--allow-host", "name.example", "--dns-server",
               "127.0.0.1:" + std::to_string(dns_port), "--dns-timeout", "500ms"});
  const int client = connectTo(proxy.port());
  sendAll(client, "CONNECT name.example:443 HTTP/1.1\r\nHost: name.example:443\r\n\r\n");
  const std::string head = readHead(client);
  const std::string reason = reasonHeader(head);
  EXPECT_TRUE(reason == "dns_failure" || reason == "dns_timeout") << head;
  EXPECT_TRUE(head.rfind("HTTP/1.1 502 ", 0) == 0 || head.rfind("HTTP/1.1 504 ", 0) == 0) << head;
  close(client);
  EXPECT_TRUE(
      proxy.waitFor(ListenerKind::kConnect, Outcome::kDeny,
                    reason == "dns_timeout" ? CloseReason::kDnsTimeout : CloseReason::kDnsFailure));
}

}  // namespace
}  // namespace acr

namespace acr {
namespace {

// Every exit path gives its connection-limit slot back exactly once (THREATS R4): head timeout,
// malformed head, denied host, client gone mid-head, dial refused, a relayed tunnel, a client
// the client rules refuse, and the drain's abort. After each, the global, listener and client
// counts are back to 0 (a double release would wrap them, a missing one keep them above 0).
TEST(ConnectionTest, EveryExitPathReleasesItsSlot) {
  EchoSink sink;
  const uint16_t closed = closedPort();
  Proxy proxy(ListenerKind::kConnect,
              {"--head-timeout", "300ms", "--allow-cidr", "127.0.0.0/8", "--port",
               std::to_string(sink.port()), "--port", std::to_string(closed), "--allow-non-tls",
               "--max-connections-per-client", "3"});
  int client = connectTo(proxy.port());
  readHead(client);
  close(client);
  EXPECT_TRUE(proxy.waitFor(ListenerKind::kConnect, Outcome::kDeny, CloseReason::kHeadTimeout));
  EXPECT_TRUE(proxy.waitForNoSlots()) << "head_timeout";

  client = connectTo(proxy.port());
  sendAll(client, "CONNECT nohostport HTTP/1.1\r\n\r\n");
  readToEnd(client);
  close(client);
  EXPECT_TRUE(proxy.waitForNoSlots()) << "bad_port";

  client = connectTo(proxy.port());
  sendAll(client, "CONNECT denied.example:443 HTTP/1.1\r\nHost: denied.example:443\r\n\r\n");
  readToEnd(client);
  close(client);
  EXPECT_TRUE(proxy.waitForNoSlots()) << "host_not_allowed";

  client = connectTo(proxy.port());
  sendAll(client, "CONNECT 127.0.0.1:443 HTTP/1.1\r\n");
  close(client);
  EXPECT_TRUE(
      proxy.waitFor(ListenerKind::kConnect, Outcome::kIncomplete, CloseReason::kClientClosed));
  EXPECT_TRUE(proxy.waitForNoSlots()) << "client_closed";

  client = connectTo(proxy.port());
  sendAll(client, connectHead(closed));
  readToEnd(client);
  close(client);
  EXPECT_TRUE(proxy.waitForNoSlots()) << "upstream_refused";

  client = connectTo(proxy.port());
  sendAll(client, connectHead(sink.port()));
  ASSERT_EQ(readHead(client), "HTTP/1.1 200 Connection established\r\n\r\n");
  sendAll(client, "relayed");
  shutdown(client, SHUT_WR);
  EXPECT_EQ(readToEnd(client), "relayed");
  close(client);
  EXPECT_TRUE(proxy.waitForNoSlots()) << "relay";

  // Open when the drain aborts them: released by the abort's finish().
  const int open_tunnel = connectTo(proxy.port());
  sendAll(open_tunnel, connectHead(sink.port()));
  ASSERT_EQ(readHead(open_tunnel), "HTTP/1.1 200 Connection established\r\n\r\n");
  const int open_head = connectTo(proxy.port());
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (proxy.limits().active() < 2 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(proxy.limits().clientCount(IpAddress::v4(0x7f000001)), 2u);
  proxy.stop();
  EXPECT_EQ(proxy.limits().active(), 0u);
  EXPECT_EQ(proxy.limits().clients(), 0u);
  close(open_tunnel);
  close(open_head);

  Proxy refusing(ListenerKind::kConnect, {"--client-cidr", "192.0.2.0/24"});
  client = connectTo(refusing.port());
  EXPECT_EQ(reasonHeader(readHead(client)), "client_not_allowed");
  close(client);
  EXPECT_TRUE(refusing.waitForNoSlots()) << "client_not_allowed";
}

// --max-connections-per-client 2: with two connections of 127.0.0.1 open the third is answered
// 503 client_overloaded at accept, naming the limit; once one closes, the client is served again.
TEST(ConnectionTest, PerClientLimitAnswers503) {
  Proxy proxy(ListenerKind::kConnect, {"--max-connections-per-client", "2"});
  const int first = connectTo(proxy.port());
  const int second = connectTo(proxy.port());
  const int third = connectTo(proxy.port());
  const std::string head = readHead(third);
  EXPECT_EQ(head.rfind("HTTP/1.1 503 ", 0), 0u) << head;
  EXPECT_EQ(reasonHeader(head), "client_overloaded");
  EXPECT_NE(readToEnd(third).find("max_connections_per_client"), std::string::npos);
  close(third);
  EXPECT_TRUE(
      proxy.waitFor(ListenerKind::kConnect, Outcome::kDeny, CloseReason::kClientOverloaded));
  EXPECT_EQ(proxy.limits().clientCount(IpAddress::v4(0x7f000001)), 2u);
  close(first);
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (proxy.limits().clientCount(IpAddress::v4(0x7f000001)) > 1 &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(10ms);
  }
  const int again = connectTo(proxy.port());
  sendAll(again, "CONNECT nohostport HTTP/1.1\r\n\r\n");
  EXPECT_EQ(reasonHeader(readHead(again)), "bad_port");  // admitted: judged, not refused
  close(again);
  close(second);
}

}  // namespace
}  // namespace acr
