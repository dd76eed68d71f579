// End-to-end load generator for bench/e2e/run.py: opens tunnels through a proxy (or straight to
// a redirected address) and sends a real ClientHello capture, no TLS crypto, so the proxy's own
// cost dominates. One libevent loop, non-blocking sockets, raw events (no bufferevents: the
// generator shares the machine with the proxy under test and must stay cheap).
//
// A tunnel: connect() -> [connect mode: "CONNECT host:port", wait for the 200 head] -> send the
// hello -> read the answer until --answer bytes (or EOF when --answer is 0) -> close. Its latency
// runs from connect() to the answer's last byte.
//
// Modes of use (all bounded in time and count):
//   rate:  --concurrency C --duration S [--count N]: keeps C tunnels in flight for S seconds;
//   bulk:  --answer 1073741824 --concurrency 16 --count 16: N tunnels each moving the answer;
//   idle:  --idle N: opens N tunnels, reads each answer, prints {"idle_ready":N} and holds them
//          until stdin closes or --hold seconds pass, then closes them all.
// Prints one JSON object on stdout: tunnels, errors (by kind), tunnels_per_s, p50/p90/p99_ms,
// bytes, mb_per_s.
#include <arpa/inet.h>
#include <event2/event.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

constexpr double kMaxDurationSeconds = 600;
constexpr double kMaxHoldSeconds = 600;
constexpr int kMaxConcurrency = 20000;
constexpr size_t kReadChunk = 256 * 1024;

struct Options {
  std::string mode = "sni";  // sni | connect
  std::string target;        // ADDR:PORT the tunnels connect to
  std::string host;          // CONNECT host (connect mode)
  int port = 443;            // CONNECT port (connect mode)
  std::string hello_path;
  int concurrency = 32;
  double duration = 5;
  uint64_t count = 0;  // 0: no cap other than --duration
  uint64_t answer = 1024;
  int idle = 0;
  double hold = 60;
  double timeout = 10;  // per tunnel
};

[[noreturn]] void usage(const char* message) {
  std::fprintf(stderr,
               "load_gen: %s\nusage: load_gen --target ADDR:PORT --hello FILE [--mode sni|connect]"
               " [--host NAME] [--port N] [--concurrency C] [--duration S] [--count N]"
               " [--answer BYTES] [--idle N --hold S] [--timeout S]\n",
               message);
  std::exit(2);
}

Options parseOptions(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage(("missing value for " + a).c_str());
      return argv[++i];
    };
    if (a == "--mode") {
      o.mode = value();
    } else if (a == "--target") {
      o.target = value();
    } else if (a == "--host") {
      o.host = value();
    } else if (a == "--port") {
      o.port = std::stoi(value());
    } else if (a == "--hello") {
      o.hello_path = value();
    } else if (a == "--concurrency") {
      o.concurrency = std::stoi(value());
    } else if (a == "--duration") {
      o.duration = std::stod(value());
    } else if (a == "--count") {
      o.count = std::stoull(value());
    } else if (a == "--answer") {
      o.answer = std::stoull(value());
    } else if (a == "--idle") {
      o.idle = std::stoi(value());
    } else if (a == "--hold") {
      o.hold = std::stod(value());
    } else if (a == "--timeout") {
      o.timeout = std::stod(value());
    } else {
      usage(("unknown option " + a).c_str());
    }
  }
  if (o.mode != "sni" && o.mode != "connect") usage("--mode is sni or connect");
  if (o.target.empty() || o.hello_path.empty()) usage("--target and --hello are required");
  if (o.mode == "connect" && o.host.empty()) usage("connect mode needs --host");
  if (o.concurrency < 1 || o.concurrency > kMaxConcurrency) usage("bad --concurrency");
  if (o.idle < 0 || o.idle > kMaxConcurrency) usage("bad --idle");
  o.duration = std::clamp(o.duration, 0.1, kMaxDurationSeconds);
  o.hold = std::clamp(o.hold, 0.1, kMaxHoldSeconds);
  o.timeout = std::clamp(o.timeout, 0.1, kMaxDurationSeconds);
  return o;
}

sockaddr_in parseAddress(const std::string& text) {
  sockaddr_in sa{};
  auto colon = text.rfind(':');
  if (colon == std::string::npos) usage("--target is ADDR:PORT (IPv4)");
  sa.sin_family = AF_INET;
  sa.sin_port = htons(static_cast<uint16_t>(std::stoi(text.substr(colon + 1))));
  if (inet_pton(AF_INET, text.substr(0, colon).c_str(), &sa.sin_addr) != 1) {
    usage("--target address is not IPv4");
  }
  return sa;
}

class LoadGen;

// One tunnel. Owned by LoadGen::tunnels_; freed when it finishes.
struct Tunnel {
  enum class Phase { kConnecting, kSendingHead, kReadingHead, kSendingHello, kReading, kHeld };
  LoadGen* gen = nullptr;
  int fd = -1;
  event* ev = nullptr;
  Phase phase = Phase::kConnecting;
  Clock::time_point start;
  size_t sent = 0;
  std::string head;
  uint64_t received = 0;
};

class LoadGen {
 public:
  explicit LoadGen(Options o) : o_(std::move(o)), address_(parseAddress(o_.target)) {
    std::ifstream in(o_.hello_path, std::ios::binary);
    hello_.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    if (hello_.empty()) usage("cannot read --hello file (or it is empty)");
    connect_head_ = "CONNECT " + o_.host + ":" + std::to_string(o_.port) +
                    " HTTP/1.1\r\nHost: " + o_.host + ":" + std::to_string(o_.port) + "\r\n\r\n";
    base_ = event_base_new();
    buffer_.resize(kReadChunk);
  }
  ~LoadGen() {
    if (stdin_ev_) event_free(stdin_ev_);
    if (tick_) event_free(tick_);
    event_base_free(base_);
  }

  int run() {
    begin_ = Clock::now();
    deadline_ = begin_ + std::chrono::duration_cast<Clock::duration>(
                             std::chrono::duration<double>(o_.idle ? o_.timeout : o_.duration));
    tick_ = event_new(base_, -1, EV_PERSIST, &LoadGen::onTick, this);
    timeval tv{0, 50 * 1000};
    event_add(tick_, &tv);
    int first = o_.idle ? o_.idle : o_.concurrency;
    for (int i = 0; i < first; ++i) startTunnel();
    event_base_dispatch(base_);
    end_ = Clock::now();
    report();
    return 0;
  }

 private:
  static void onTick(evutil_socket_t, short, void* arg) { static_cast<LoadGen*>(arg)->tick(); }
  static void onStdin(evutil_socket_t fd, short, void* arg) {
    char b[256];
    ssize_t n = read(fd, b, sizeof b);
    if (n <= 0) static_cast<LoadGen*>(arg)->releaseHeld();
  }
  static void onEvent(evutil_socket_t, short what, void* arg) {
    auto* t = static_cast<Tunnel*>(arg);
    t->gen->step(t, what);
  }

  bool mayStart() const {
    if (o_.idle) return false;
    if (o_.count && started_ >= o_.count) return false;
    return Clock::now() < deadline_;
  }

  void startTunnel() {
    ++started_;
    auto t = std::make_unique<Tunnel>();
    t->gen = this;
    t->start = Clock::now();
    t->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (t->fd < 0) {
      ++errors_["socket"];  // no retry from here: tick() tops the tunnels up again
      return;
    }
    int one = 1;
    setsockopt(t->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(t->fd, reinterpret_cast<const sockaddr*>(&address_), sizeof address_) != 0 &&
        errno != EINPROGRESS) {
      close(t->fd);
      ++errors_["connect"];
      return;
    }
    Tunnel* raw = t.get();
    raw->ev = event_new(base_, raw->fd, EV_WRITE | EV_PERSIST, &LoadGen::onEvent, raw);
    event_add(raw->ev, nullptr);
    tunnels_.emplace(raw, std::move(t));
  }

  void setInterest(Tunnel* t, short what) {
    event_del(t->ev);
    event_assign(t->ev, base_, t->fd, what | EV_PERSIST, &LoadGen::onEvent, t);
    event_add(t->ev, nullptr);
  }

  // Writes `data` from t->sent on; true when all of it is out.
  bool writeSome(Tunnel* t, const std::string& data) {
    while (t->sent < data.size()) {
      ssize_t n = send(t->fd, data.data() + t->sent, data.size() - t->sent, MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EAGAIN) return false;
        fail(t, "send");
        return false;
      }
      t->sent += static_cast<size_t>(n);
    }
    return true;
  }

  void step(Tunnel* t, short what) {
    (void)what;
    switch (t->phase) {
      case Tunnel::Phase::kConnecting: {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(t->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0) return fail(t, "connect");
        t->sent = 0;
        if (o_.mode == "connect") {
          t->phase = Tunnel::Phase::kSendingHead;
        } else {
          t->phase = Tunnel::Phase::kSendingHello;
        }
        return step(t, EV_WRITE);
      }
      case Tunnel::Phase::kSendingHead:
        if (!writeSome(t, connect_head_)) return;
        t->phase = Tunnel::Phase::kReadingHead;
        return setInterest(t, EV_READ);
      case Tunnel::Phase::kReadingHead: {
        ssize_t n = recv(t->fd, buffer_.data(), 4096, 0);
        if (n < 0 && errno == EAGAIN) return;
        if (n <= 0) return fail(t, n == 0 ? "closed_in_head" : "reset_in_head");
        t->head.append(buffer_.data(), static_cast<size_t>(n));
        auto end = t->head.find("\r\n\r\n");
        if (end == std::string::npos) {
          if (t->head.size() > 8192) return fail(t, "head_too_large");
          return;
        }
        if (t->head.compare(0, 9, "HTTP/1.1 ") != 0 && t->head.compare(0, 9, "HTTP/1.0 ") != 0) {
          return fail(t, "bad_head");
        }
        if (t->head.compare(9, 3, "200") != 0) return fail(t, "status_" + t->head.substr(9, 3));
        t->received = t->head.size() - (end + 4);  // answer bytes that came with the head
        t->sent = 0;
        t->phase = Tunnel::Phase::kSendingHello;
        setInterest(t, EV_WRITE);
        return step(t, EV_WRITE);
      }
      case Tunnel::Phase::kSendingHello:
        if (!writeSome(t, hello_)) return;
        t->phase = Tunnel::Phase::kReading;
        if (o_.answer && t->received >= o_.answer) return finish(t);
        return setInterest(t, EV_READ);
      case Tunnel::Phase::kReading:
        for (int reads = 0; reads < 16; ++reads) {
          ssize_t n = recv(t->fd, buffer_.data(), buffer_.size(), 0);
          if (n < 0) {
            if (errno == EAGAIN) return;
            return fail(t, "reset_in_answer");
          }
          if (n == 0) {
            if (o_.answer && t->received < o_.answer) return fail(t, "short_answer");
            return finish(t);
          }
          t->received += static_cast<uint64_t>(n);
          if (o_.answer && t->received >= o_.answer) return finish(t);
        }
        return;
      case Tunnel::Phase::kHeld: {
        // A held tunnel should see nothing; EOF or reset means the path dropped it.
        ssize_t n = recv(t->fd, buffer_.data(), buffer_.size(), 0);
        if (n < 0 && errno == EAGAIN) return;
        if (n > 0) return;
        --held_;
        return fail(t, "dropped_while_idle");
      }
    }
  }

  void finish(Tunnel* t) {
    auto now = Clock::now();
    latencies_us_.push_back(
        std::chrono::duration_cast<std::chrono::microseconds>(now - t->start).count());
    bytes_ += t->received;
    ++done_;
    if (o_.idle) {
      t->phase = Tunnel::Phase::kHeld;
      ++held_;
      if (held_ == o_.idle) announceIdle();
      return;
    }
    destroy(t);
    if (mayStart()) startTunnel();
    maybeStop();
  }

  void fail(Tunnel* t, const std::string& kind) {
    ++errors_[kind];
    if (t) destroy(t);
    if (o_.idle) {
      if (done_ + errorCount() >= static_cast<uint64_t>(o_.idle) && held_ < o_.idle) {
        announceIdle();
      }
      return;
    }
    if (mayStart()) startTunnel();
    maybeStop();
  }

  uint64_t errorCount() const {
    uint64_t n = 0;
    for (auto& [k, v] : errors_) n += v;
    return n;
  }

  void destroy(Tunnel* t) {
    event_free(t->ev);
    close(t->fd);
    tunnels_.erase(t);
  }

  void maybeStop() {
    if (tunnels_.empty() && !mayStart()) event_base_loopexit(base_, nullptr);
  }

  void announceIdle() {
    if (announced_) return;
    announced_ = true;
    std::printf("{\"idle_ready\":%d,\"errors\":%llu}\n", held_,
                static_cast<unsigned long long>(errorCount()));
    std::fflush(stdout);
    hold_until_ = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                     std::chrono::duration<double>(o_.hold));
    stdin_ev_ = event_new(base_, 0, EV_READ | EV_PERSIST, &LoadGen::onStdin, this);
    event_add(stdin_ev_, nullptr);
  }

  void releaseHeld() {
    if (released_) return;
    released_ = true;
    std::vector<Tunnel*> all;
    for (auto& [raw, owned] : tunnels_) all.push_back(raw);
    for (Tunnel* t : all) destroy(t);
    event_base_loopexit(base_, nullptr);
  }

  // Every 50 ms: tunnels past --timeout fail; the idle hold ends at --hold.
  void tick() {
    auto now = Clock::now();
    auto limit =
        std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o_.timeout));
    std::vector<Tunnel*> late;
    for (auto& [raw, owned] : tunnels_) {
      if (raw->phase != Tunnel::Phase::kHeld && now - raw->start > limit) late.push_back(raw);
    }
    for (Tunnel* t : late) {
      if (tunnels_.count(t)) fail(t, "timeout");
    }
    // Tunnels that could not even start (socket or connect failed at once) are replaced here,
    // at most one batch per tick, so that such failures cannot recurse or spin.
    if (!o_.idle) {
      for (int i = 0; i < o_.concurrency && tunnels_.size() < static_cast<size_t>(o_.concurrency) &&
                      mayStart();
           ++i) {
        startTunnel();
      }
    }
    if (o_.idle) {
      if (announced_ && now > hold_until_) releaseHeld();
      // Bounded even if the tunnels never come up.
      if (!announced_ && now > deadline_ + limit) announceIdle();
    } else {
      maybeStop();
    }
  }

  double percentileMs(double p) {
    if (latencies_us_.empty()) return 0;
    size_t index = static_cast<size_t>(p * static_cast<double>(latencies_us_.size() - 1) + 0.5);
    std::nth_element(latencies_us_.begin(), latencies_us_.begin() + static_cast<long>(index),
                     latencies_us_.end());
    return static_cast<double>(latencies_us_[index]) / 1000.0;
  }

  void report() {
    double elapsed = std::chrono::duration<double>(end_ - begin_).count();
    std::string errors = "{";
    for (auto& [k, v] : errors_) {
      if (errors.size() > 1) errors += ",";
      errors += "\"" + k + "\":" + std::to_string(v);
    }
    errors += "}";
    double p50 = percentileMs(0.50), p90 = percentileMs(0.90), p99 = percentileMs(0.99);
    std::printf(
        "{\"mode\":\"%s\",\"concurrency\":%d,\"idle\":%d,\"tunnels\":%llu,\"errors\":%llu,"
        "\"error_kinds\":%s,\"elapsed_s\":%.4f,\"tunnels_per_s\":%.1f,\"p50_ms\":%.3f,"
        "\"p90_ms\":%.3f,\"p99_ms\":%.3f,\"bytes\":%llu,\"mb_per_s\":%.1f}\n",
        o_.mode.c_str(), o_.concurrency, o_.idle, static_cast<unsigned long long>(done_),
        static_cast<unsigned long long>(errorCount()), errors.c_str(), elapsed,
        elapsed > 0 ? static_cast<double>(done_) / elapsed : 0.0, p50, p90, p99,
        static_cast<unsigned long long>(bytes_),
        elapsed > 0 ? static_cast<double>(bytes_) / 1e6 / elapsed : 0.0);
    std::fflush(stdout);
  }

  Options o_;
  sockaddr_in address_;
  std::string hello_;
  std::string connect_head_;
  event_base* base_ = nullptr;
  event* tick_ = nullptr;
  event* stdin_ev_ = nullptr;
  std::vector<char> buffer_;
  std::map<Tunnel*, std::unique_ptr<Tunnel>> tunnels_;
  std::map<std::string, uint64_t> errors_;
  std::vector<int64_t> latencies_us_;
  Clock::time_point begin_, end_, deadline_, hold_until_;
  uint64_t started_ = 0;
  uint64_t done_ = 0;
  uint64_t bytes_ = 0;
  int held_ = 0;
  bool announced_ = false;
  bool released_ = false;
};

}  // namespace

int main(int argc, char** argv) {
  LoadGen gen(parseOptions(argc, argv));
  return gen.run();
}
