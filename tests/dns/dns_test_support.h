#pragma once

// Real peers for the DNS tests, all on loopback: dnsmasq processes, and an in-process UDP server
// (driven by the test's own event loop) that answers with whatever bytes a test wants, or never.

#include <arpa/inet.h>
#include <event2/event.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

extern char** environ;

namespace acr::dnstest {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// Runs `base` until `done()` holds or `limit` has passed. Returns the number of loop passes
// (each EVLOOP_ONCE blocks until at least one event fires), so that tests can assert no spin.
inline int runUntil(event_base* base, const std::function<bool()>& done,
                    std::chrono::milliseconds limit) {
  bool expired = false;
  event* guard = evtimer_new(
      base, [](evutil_socket_t, short, void* flag) { *static_cast<bool*>(flag) = true; }, &expired);
  const timeval tv{static_cast<time_t>(limit.count() / 1000),
                   static_cast<suseconds_t>((limit.count() % 1000) * 1000)};
  evtimer_add(guard, &tv);
  int passes = 0;
  while (!done() && !expired) {
    event_base_loop(base, EVLOOP_ONCE);
    ++passes;
  }
  event_free(guard);
  return passes;
}

inline void runFor(event_base* base, std::chrono::milliseconds duration) {
  runUntil(
      base, [] { return false; }, duration);
}

// A socket address for "127.0.0.1"-style or "::1"-style `address` and `port`.
struct Endpoint {
  sockaddr_storage storage{};
  socklen_t length = 0;

  Endpoint(const std::string& address, uint16_t port) {
    if (address.find(':') != std::string::npos) {
      auto* sin6 = reinterpret_cast<sockaddr_in6*>(&storage);
      sin6->sin6_family = AF_INET6;
      sin6->sin6_port = htons(port);
      inet_pton(AF_INET6, address.c_str(), &sin6->sin6_addr);
      length = sizeof(sockaddr_in6);
    } else {
      auto* sin = reinterpret_cast<sockaddr_in*>(&storage);
      sin->sin_family = AF_INET;
      sin->sin_port = htons(port);
      inet_pton(AF_INET, address.c_str(), &sin->sin_addr);
      length = sizeof(sockaddr_in);
    }
  }
  int family() const { return storage.ss_family; }
  sockaddr* get() { return reinterpret_cast<sockaddr*>(&storage); }
  uint16_t port() const {
    return ntohs(family() == AF_INET6 ? reinterpret_cast<const sockaddr_in6*>(&storage)->sin6_port
                                      : reinterpret_cast<const sockaddr_in*>(&storage)->sin_port);
  }
};

// "ADDR:PORT" or "[V6]:PORT", as ResolverOptions::servers takes it.
inline std::string serverText(const std::string& address, uint16_t port) {
  const bool v6 = address.find(':') != std::string::npos;
  return (v6 ? "[" + address + "]" : address) + ":" + std::to_string(port);
}

// A port on `address` that is free for both UDP and TCP right now (the kernel's choice).
inline uint16_t freePort(const std::string& address = "127.0.0.1") {
  for (int attempt = 0; attempt < 50; ++attempt) {
    Endpoint endpoint(address, 0);
    const int udp = socket(endpoint.family(), SOCK_DGRAM, 0);
    socklen_t length = sizeof(endpoint.storage);
    if (bind(udp, endpoint.get(), endpoint.length) != 0 ||
        getsockname(udp, endpoint.get(), &length) != 0) {
      close(udp);
      continue;
    }
    const int tcp = socket(endpoint.family(), SOCK_STREAM, 0);
    const bool tcp_free = bind(tcp, endpoint.get(), endpoint.length) == 0;
    close(tcp);
    close(udp);
    if (tcp_free) {
      return endpoint.port();
    }
  }
  return 0;
}

// A DNS query for `name` (no trailing dot) of `type` (1 = A, 28 = AAAA), recursion desired.
inline std::string dnsQuery(uint16_t id, std::string_view name, uint16_t type) {
  std::string packet = {static_cast<char>(id >> 8),
                        static_cast<char>(id & 0xff),
                        0x01,
                        0x00,
                        0x00,
                        0x01,
                        0x00,
                        0x00,
                        0x00,
                        0x00,
                        0x00,
                        0x00};
  size_t begin = 0;
  while (begin <= name.size()) {
    size_t end = name.find('.', begin);
    if (end == std::string_view::npos) {
      end = name.size();
    }
    packet.push_back(static_cast<char>(end - begin));
    packet.append(name.substr(begin, end - begin));
    begin = end + 1;
  }
  packet.push_back(0);
  packet += {static_cast<char>(type >> 8), static_cast<char>(type & 0xff), 0x00, 0x01};
  return packet;
}

// One dnsmasq process serving only what its arguments say (no upstream, no /etc/hosts, no
// /etc/dnsmasq.conf), logging every query to a file of its own. Killed by the destructor.
class Dnsmasq {
 public:
  static constexpr const char* kBinary = "/usr/sbin/dnsmasq";

  Dnsmasq() = default;
  Dnsmasq(const Dnsmasq&) = delete;
  Dnsmasq& operator=(const Dnsmasq&) = delete;
  ~Dnsmasq() {
    stop();
    if (!dir_.empty()) {
      std::error_code ignored;
      std::filesystem::remove_all(dir_, ignored);
    }
  }

  // Starts dnsmasq on address:port (port 0: a free one) with `records` as extra arguments and
  // waits until it answers. False, with the reason in `error`, when it does not come up.
  bool start(const std::string& address, uint16_t port, const std::vector<std::string>& records,
             std::string& error) {
    if (dir_.empty()) {
      char templ[] = "/tmp/acr-dns-test-XXXXXX";
      if (mkdtemp(templ) == nullptr) {
        error = "mkdtemp failed";
        return false;
      }
      dir_ = templ;
    }
    for (int attempt = 0; attempt < 5; ++attempt) {
      const uint16_t chosen = port != 0 ? port : freePort(address);
      if (spawn(address, chosen, records, error) && waitReady(address, chosen, error)) {
        address_ = address;
        port_ = chosen;
        return true;
      }
      stop();
      if (port != 0) {
        break;  // a fixed port that is taken does not become free by retrying
      }
    }
    return false;
  }

  void stop() {
    if (pid_ <= 0) {
      return;
    }
    kill(pid_, SIGTERM);
    const auto deadline = Clock::now() + 3s;
    while (waitpid(pid_, nullptr, WNOHANG) == 0) {
      if (Clock::now() > deadline) {
        kill(pid_, SIGKILL);
        waitpid(pid_, nullptr, 0);
        break;
      }
      std::this_thread::sleep_for(5ms);
    }
    pid_ = -1;
  }

  uint16_t port() const { return port_; }
  std::string server() const { return serverText(address_, port_); }

  // How many queries of `type` ("A", "AAAA") for `name` dnsmasq has logged.
  int countQueries(std::string_view type, std::string_view name) const {
    std::ifstream in(log_);
    const std::string needle = "query[" + std::string(type) + "] " + std::string(name) + " from";
    int count = 0;
    for (std::string line; std::getline(in, line);) {
      count += line.find(needle) != std::string::npos ? 1 : 0;
    }
    return count;
  }

 private:
  bool spawn(const std::string& address, uint16_t port, const std::vector<std::string>& records,
             std::string& error) {
    log_ = dir_ + "/queries.log";
    stderr_ = dir_ + "/stderr.txt";
    std::vector<std::string> args = {kBinary,
                                     "--keep-in-foreground",
                                     "--conf-file=/dev/null",
                                     "--no-resolv",
                                     "--no-hosts",
                                     "--pid-file=",
                                     "--user=root",
                                     "--bind-interfaces",
                                     "--listen-address=" + address,
                                     "--port=" + std::to_string(port),
                                     "--log-queries",
                                     "--log-facility=" + log_};
    args.insert(args.end(), records.begin(), records.end());
    std::vector<char*> argv;
    for (std::string& arg : args) {
      argv.push_back(arg.data());
    }
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&actions, 1, stderr_.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                     0644);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    const int rc = posix_spawn(&pid_, kBinary, &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    if (rc != 0) {
      pid_ = -1;
      error = std::string("posix_spawn ") + kBinary + ": " + std::strerror(rc);
      return false;
    }
    return true;
  }

  // Ready when it answers a probe over UDP (any answer will do).
  bool waitReady(const std::string& address, uint16_t port, std::string& error) {
    Endpoint to(address, port);
    const int fd = socket(to.family(), SOCK_DGRAM, 0);
    const timeval tv{0, 50'000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    const std::string probe = dnsQuery(0x4242, "ready.probe", 1);
    const auto deadline = Clock::now() + 5s;
    bool ready = false;
    while (!ready && Clock::now() < deadline) {
      if (waitpid(pid_, nullptr, WNOHANG) == pid_) {
        pid_ = -1;
        break;
      }
      sendto(fd, probe.data(), probe.size(), 0, to.get(), to.length);
      char buffer[512];
      ready = recv(fd, buffer, sizeof(buffer), 0) > 0;
    }
    close(fd);
    if (!ready) {
      std::ifstream in(stderr_);
      std::stringstream text;
      text << in.rdbuf();
      error =
          "dnsmasq on " + address + ":" + std::to_string(port) + " did not come up: " + text.str();
    }
    return ready;
  }

  pid_t pid_ = -1;
  std::string dir_;
  std::string log_;
  std::string stderr_;
  std::string address_;
  uint16_t port_ = 0;
};

// A UDP "DNS server" on loopback inside the test process, served by the test's event loop. For
// every datagram it calls the responder, which returns the reply bytes or nothing (no reply).
// setDelay() makes it send some replies later (from the loop) instead of at once.
class FakeDnsServer {
 public:
  using Responder = std::function<std::optional<std::string>(std::string_view query)>;
  using Delay = std::function<std::chrono::milliseconds(std::string_view query)>;

  FakeDnsServer(event_base* base, Responder responder, const std::string& address = "127.0.0.1",
                uint16_t port = 0)
      : base_(base), responder_(std::move(responder)) {
    Endpoint endpoint(address, port);
    fd_ = socket(endpoint.family(), SOCK_DGRAM | SOCK_NONBLOCK, 0);
    socklen_t length = sizeof(endpoint.storage);
    if (bind(fd_, endpoint.get(), endpoint.length) != 0 ||
        getsockname(fd_, endpoint.get(), &length) != 0) {
      return;
    }
    port_ = endpoint.port();
    address_ = address;
    event_ = event_new(base, fd_, EV_READ | EV_PERSIST, &FakeDnsServer::onReadable, this);
    event_add(event_, nullptr);
  }
  FakeDnsServer(const FakeDnsServer&) = delete;
  FakeDnsServer& operator=(const FakeDnsServer&) = delete;
  ~FakeDnsServer() {
    for (Later* later : pending_) {
      event_free(later->timer);
      delete later;
    }
    if (event_ != nullptr) {
      event_free(event_);
    }
    close(fd_);
  }

  void setDelay(Delay delay) { delay_ = std::move(delay); }

  bool ok() const { return port_ != 0; }
  std::string server() const { return serverText(address_, port_); }
  int received() const { return received_; }

 private:
  static void onReadable(evutil_socket_t fd, short, void* arg) {
    auto* self = static_cast<FakeDnsServer*>(arg);
    char buffer[4096];
    sockaddr_storage from;
    socklen_t length = sizeof(from);
    const ssize_t n =
        recvfrom(fd, buffer, sizeof(buffer), 0, reinterpret_cast<sockaddr*>(&from), &length);
    if (n <= 0) {
      return;
    }
    ++self->received_;
    const std::optional<std::string> reply =
        self->responder_(std::string_view(buffer, static_cast<size_t>(n)));
    if (!reply) {
      return;
    }
    const std::chrono::milliseconds delay =
        self->delay_ ? self->delay_(std::string_view(buffer, static_cast<size_t>(n)))
                     : std::chrono::milliseconds(0);
    if (delay.count() <= 0) {
      sendto(fd, reply->data(), reply->size(), 0, reinterpret_cast<sockaddr*>(&from), length);
      return;
    }
    auto* later = new Later{self, *reply, from, length, nullptr};
    later->timer = evtimer_new(self->base_, &FakeDnsServer::onLater, later);
    const timeval tv{static_cast<time_t>(delay.count() / 1000),
                     static_cast<suseconds_t>((delay.count() % 1000) * 1000)};
    evtimer_add(later->timer, &tv);
    self->pending_.push_back(later);
  }

  struct Later {
    FakeDnsServer* server;
    std::string reply;
    sockaddr_storage to;
    socklen_t length;
    event* timer;
  };

  static void onLater(evutil_socket_t, short, void* arg) {
    auto* later = static_cast<Later*>(arg);
    FakeDnsServer* self = later->server;
    sendto(self->fd_, later->reply.data(), later->reply.size(), 0,
           reinterpret_cast<sockaddr*>(&later->to), later->length);
    self->pending_.erase(std::find(self->pending_.begin(), self->pending_.end(), later));
    event_free(later->timer);
    delete later;
  }

  event_base* base_;
  Responder responder_;
  Delay delay_;
  std::vector<Later*> pending_;
  int fd_ = -1;
  event* event_ = nullptr;
  std::string address_;
  uint16_t port_ = 0;
  int received_ = 0;
};

}  // namespace acr::dnstest
