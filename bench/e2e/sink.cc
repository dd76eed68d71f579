// The upstream of bench/e2e/run.py: accepts connections, reads the first TLS record (the
// ClientHello the load generator sent through the proxy), writes --answer bytes, then closes
// (or, with --hold, keeps the tunnel open until the client closes: idle tunnels). The answer
// comes from one static buffer, so a 1 GiB bulk answer costs the sink only its write(2)s.
// One libevent loop; exits on SIGTERM/SIGINT or after --lifetime seconds (bounded).
#include <arpa/inet.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace {

constexpr size_t kChunk = 256 * 1024;
constexpr size_t kMaxRecord = 5 + 16384 + 2048;

struct Options {
  std::vector<std::string> listen;
  uint64_t answer = 1024;
  bool hold = false;
  double lifetime = 1800;
};

[[noreturn]] void usage(const char* message) {
  std::fprintf(stderr,
               "sink: %s\nusage: sink --listen ADDR:PORT [--listen ...] [--answer BYTES] [--hold]"
               " [--lifetime S]\n",
               message);
  std::exit(2);
}

char g_answer[kChunk];

struct Conn {
  int fd = -1;
  event* ev = nullptr;
  std::string hello;
  bool writing = false;
  bool answered = false;
  uint64_t left = 0;
  const Options* o = nullptr;
  event_base* base = nullptr;
};

void closeConn(Conn* c) {
  event_free(c->ev);
  close(c->fd);
  delete c;
}

void watch(Conn* c, short what);

// The first record is complete once 5 + length bytes arrived (or at once for non-TLS input).
bool helloComplete(const std::string& h) {
  if (h.empty()) return false;
  if (static_cast<unsigned char>(h[0]) != 0x16) return true;
  if (h.size() < 5) return false;
  size_t len = (static_cast<unsigned char>(h[3]) << 8) | static_cast<unsigned char>(h[4]);
  return h.size() >= 5 + len;
}

void onConn(evutil_socket_t, short, void* arg) {
  auto* c = static_cast<Conn*>(arg);
  if (!c->writing) {
    char buf[4096];
    ssize_t n = recv(c->fd, buf, sizeof buf, 0);
    if (n < 0 && errno == EAGAIN) return;
    if (n <= 0) return closeConn(c);
    if (c->answered) return;  // hold mode: bytes after the answer are discarded
    c->hello.append(buf, static_cast<size_t>(n));
    if (!helloComplete(c->hello) && c->hello.size() < kMaxRecord) return;
    c->answered = true;
    c->left = c->o->answer;
    if (c->left == 0) {
      if (!c->o->hold) closeConn(c);
      return;
    }
    c->writing = true;
    return watch(c, EV_WRITE);
  }
  while (c->left > 0) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(c->left, kChunk));
    ssize_t w = send(c->fd, g_answer, n, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EAGAIN) return;
      return closeConn(c);
    }
    c->left -= static_cast<uint64_t>(w);
  }
  if (!c->o->hold) return closeConn(c);
  // Hold: wait for the client's EOF (reads after the answer are discarded).
  c->writing = false;
  watch(c, EV_READ);
}

void watch(Conn* c, short what) {
  event_del(c->ev);
  event_assign(c->ev, c->base, c->fd, what | EV_PERSIST, onConn, c);
  event_add(c->ev, nullptr);
}

struct Listener {
  int fd;
  const Options* o;
  event_base* base;
};

void onAccept(evutil_socket_t fd, short, void* arg) {
  auto* l = static_cast<Listener*>(arg);
  for (int i = 0; i < 64; ++i) {
    int cfd = accept4(fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (cfd < 0) return;
    auto* c = new Conn;
    c->fd = cfd;
    c->o = l->o;
    c->base = l->base;
    c->ev = event_new(l->base, cfd, EV_READ | EV_PERSIST, onConn, c);
    event_add(c->ev, nullptr);
  }
}

void onStop(evutil_socket_t, short, void* arg) {
  event_base_loopexit(static_cast<event_base*>(arg), nullptr);
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage(("missing value for " + a).c_str());
      return argv[++i];
    };
    if (a == "--listen") {
      o.listen.push_back(value());
    } else if (a == "--answer") {
      o.answer = std::stoull(value());
    } else if (a == "--hold") {
      o.hold = true;
    } else if (a == "--lifetime") {
      o.lifetime = std::clamp(std::stod(value()), 1.0, 86400.0);
    } else {
      usage(("unknown option " + a).c_str());
    }
  }
  if (o.listen.empty()) usage("--listen is required");
  for (size_t i = 0; i < kChunk; ++i) g_answer[i] = static_cast<char>('a' + i % 26);
  std::signal(SIGPIPE, SIG_IGN);

  event_base* base = event_base_new();
  std::vector<Listener> listeners;
  listeners.reserve(o.listen.size());
  for (const auto& text : o.listen) {
    auto colon = text.rfind(':');
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(static_cast<uint16_t>(std::stoi(text.substr(colon + 1))));
    if (colon == std::string::npos ||
        inet_pton(AF_INET, text.substr(0, colon).c_str(), &sa.sin_addr) != 1) {
      usage("--listen is IPv4 ADDR:PORT");
    }
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 || listen(fd, 4096) != 0) {
      std::perror(("sink: " + text).c_str());
      return 1;
    }
    listeners.push_back({fd, &o, base});
  }
  std::vector<event*> events;
  for (auto& l : listeners) {
    events.push_back(event_new(base, l.fd, EV_READ | EV_PERSIST, onAccept, &l));
    event_add(events.back(), nullptr);
  }
  events.push_back(evsignal_new(base, SIGTERM, onStop, base));
  event_add(events.back(), nullptr);
  events.push_back(evsignal_new(base, SIGINT, onStop, base));
  event_add(events.back(), nullptr);
  events.push_back(evtimer_new(base, onStop, base));
  timeval tv{static_cast<time_t>(o.lifetime), 0};
  event_add(events.back(), &tv);
  std::printf("{\"sink_ready\":true}\n");
  std::fflush(stdout);
  event_base_dispatch(base);
  for (auto* e : events) event_free(e);
  event_base_free(base);
  return 0;
}
