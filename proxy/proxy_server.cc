#include "proxy/proxy_server.h"

#include <event2/thread.h>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <thread>

#include "conf/config.h"
#include "proxy/checked_stream_sink.h"
#include "proxy/pipe_pool.h"

namespace acr {
namespace {

// Each tunnel holds two descriptors; keep room for listeners, DNS and logs.
constexpr size_t kSpareDescriptors = 64;

size_t raiseDescriptorLimit() {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0) {
    return 1024;
  }
  if (limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    setrlimit(RLIMIT_NOFILE, &limit);
    getrlimit(RLIMIT_NOFILE, &limit);
  }
  return static_cast<size_t>(limit.rlim_cur);
}

unsigned workerCount(const ProxySettings& settings) {
  return settings.workers != 0 ? settings.workers
                               : std::max(1u, std::thread::hardware_concurrency());
}

// The listening sockets systemd passed (socket activation), or none. The environment is unset so
// that children do not inherit the claim.
std::vector<int> inheritedSockets() {
  const int count = sd_listen_fds(1);
  if (count < 0) {
    throw std::runtime_error(std::string("socket activation: ") + std::strerror(-count));
  }
  std::vector<int> fds;
  for (int i = 0; i < count; ++i) {
    fds.push_back(SD_LISTEN_FDS_START + i);
  }
  return fds;
}

// "a, b, c": settings named in the reload line and the STATUS line.
std::string joinKeys(const std::vector<std::string>& keys) {
  std::string out;
  for (const std::string& key : keys) {
    out += (out.empty() ? "" : ", ") + key;
  }
  return out;
}

std::string jsonEscaped(std::string_view text) {
  std::string out;
  AccessLog::appendJsonString(out, text);
  return out.substr(1, out.size() - 2);
}

// True when stderr is the journal's stream: systemd sets JOURNAL_STREAM to its "device:inode".
// Checked against stderr itself: a process started with a redirected stderr (a test reading a
// pipe) but the variable inherited prints plain lines.
bool stderrIsJournal() {
  const char* stream = std::getenv("JOURNAL_STREAM");
  unsigned long long device = 0;
  unsigned long long inode = 0;
  if (stream == nullptr || std::sscanf(stream, "%llu:%llu", &device, &inode) != 2) {
    return false;
  }
  struct stat info {};
  return fstat(STDERR_FILENO, &info) == 0 && info.st_dev == device && info.st_ino == inode;
}

// The "%*" flag: the syslog priority prefix ("<3>" for errors) that the journal reads off each
// stderr line (SyslogLevelPrefix=, on by default) and strips, so `journalctl -p err` finds errors.
class JournalPriorityFlag : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& message, const std::tm&,
              spdlog::memory_buf_t& out) override {
    const char* prefix = "<6>";
    switch (message.level) {
      case spdlog::level::trace:
      case spdlog::level::debug:
        prefix = "<7>";
        break;
      case spdlog::level::warn:
        prefix = "<4>";
        break;
      case spdlog::level::err:
        prefix = "<3>";
        break;
      case spdlog::level::critical:
        prefix = "<2>";
        break;
      default:
        break;
    }
    out.append(prefix, prefix + std::strlen(prefix));
  }
  std::unique_ptr<custom_flag_formatter> clone() const override {
    return std::make_unique<JournalPriorityFlag>();
  }
};

}  // namespace

AccessLog makeAccessLog(bool json) {
  auto service = spdlog::get("acr-egress");
  if (!service) {
    service = spdlog::stderr_logger_mt("acr-egress");
    service->flush_on(spdlog::level::info);
  }
  auto access = spdlog::get("access");
  if (!access) {
    // A failing access log (disk full behind stdout) is reported in the service log.
    auto sink = std::make_shared<CheckedStreamSink>(
        STDOUT_FILENO,
        [service](const std::string& message) { service->error("{}", jsonEscaped(message)); });
    access = std::make_shared<spdlog::logger>("access", std::move(sink));
    spdlog::register_logger(access);
    access->set_pattern("%v");  // no flush_on: the sink batches; run() flushes at exit
  }
  std::string pattern = json ? R"({"time":"%Y-%m-%dT%H:%M:%S.%eZ","level":"%l","message":"%v"})"
                             : "%Y-%m-%dT%H:%M:%S.%e %l %v";
  if (stderrIsJournal()) {
    pattern = "%*" + pattern;
  }
  auto formatter = std::make_unique<spdlog::pattern_formatter>(spdlog::pattern_time_type::utc);
  formatter->add_flag<JournalPriorityFlag>('*').set_pattern(pattern);
  service->set_formatter(std::move(formatter));
  spdlog::set_default_logger(service);
  return AccessLog(access, json);
}

ProxyServer::ProxyServer(ProxySettings settings, PolicySnapshot snapshot, Reloader reload)
    : current_(snapshot), reload_(std::move(reload)) {
  evthread_use_pthreads();
  std::signal(SIGPIPE, SIG_IGN);
  // First, so that every later message goes to the service log (stderr), never into the access
  // log on stdout.
  AccessLog access_log = makeAccessLog(settings.json_log);
  descriptors_ = raiseDescriptorLimit();
  capConnections(settings);
  pipes_per_worker_ = pipesPerWorker(settings);
  pipe_descriptors_ = pipes_per_worker_ * 2 * workerCount(settings);
  context_ =
      std::make_unique<ProxyContext>(std::move(settings), snapshot.policy, std::move(access_log));
  base_ = event_base_new();
  context_->setSnapshot(snapshot);
}

size_t ProxyServer::pipesPerWorker(const ProxySettings& settings) const {
  if (settings.max_connections == 0) {
    return PipePool::kMaxPipes;  // no connection count promised: a pipe that cannot be had copies
  }
  // Only descriptors that max_connections tunnels (two each) do not need: at the limit, splicing
  // must not make an accept(2) fail.
  const size_t promised = kSpareDescriptors + settings.max_connections * 2;
  const size_t left = descriptors_ > promised ? descriptors_ - promised : 0;
  return std::min(PipePool::kMaxPipes, left / 2 / workerCount(settings));
}

void ProxyServer::capConnections(ProxySettings& settings) const {
  // Room for listeners, DNS and logs, and for the pipes the workers were given at start.
  const size_t reserved = kSpareDescriptors + pipe_descriptors_;
  const size_t affordable = descriptors_ > reserved * 2 ? (descriptors_ - reserved) / 2 : 1;
  if (settings.max_connections > affordable) {
    spdlog::warn("max_connections {} needs more descriptors than the limit {} allows; using {}",
                 settings.max_connections, descriptors_, affordable);
    settings.max_connections = affordable;
  }
}

ProxyServer::~ProxyServer() {
  for (event* signal : signals_) {
    event_free(signal);
  }
  if (watchdog_ != nullptr) {
    event_free(watchdog_);
  }
  if (drain_check_ != nullptr) {
    event_free(drain_check_);
  }
  admin_.reset();
  local_addresses_.reset();
  workers_.clear();
  if (base_ != nullptr) {
    event_base_free(base_);
  }
}

int ProxyServer::run() {
  const std::shared_ptr<const ProxySettings> current = context_->settings();
  const ProxySettings& settings = *current;
  const unsigned count = workerCount(settings);
  const std::vector<int> inherited = inheritedSockets();
  std::vector<bool> used(inherited.size(), false);
  for (unsigned i = 0; i < count; ++i) {
    workers_.push_back(std::make_unique<Worker>(*context_, pipes_per_worker_));
    workers_.back()->bindListeners(inherited, used);
  }
  for (size_t i = 0; i < inherited.size(); ++i) {
    if (!used[i]) {
      throw std::runtime_error("socket-activated descriptor " + std::to_string(inherited[i]) +
                               " matches no configured listener; add its address as --connect, "
                               "--transparent or --sni");
    }
  }
  if (!workers_.empty()) {
    context_->setListenerWarnings(workers_.front()->transparentWarnings());
  }
  // Each worker listens on its own duplicate; systemd keeps the original for the next start.
  for (const int fd : inherited) {
    close(fd);
  }
  // Before the loops start: every dial is checked against the current local addresses.
  local_addresses_ = std::make_unique<LocalAddressMonitor>(
      base_, context_->listeningAddresses(),
      [context = context_.get()](std::shared_ptr<const LocalAddresses> addresses) {
        context->setLocalAddresses(std::move(addresses));
      });
  for (const int signal : {SIGTERM, SIGINT, SIGHUP}) {
    event* handler = evsignal_new(base_, signal, &ProxyServer::onSignal, this);
    event_add(handler, nullptr);
    signals_.push_back(handler);
  }
  if (settings.admin) {
    admin_ = std::make_unique<AdminServer>(base_, *context_, *settings.admin);
    spdlog::info("{}", jsonEscaped("admin endpoint on " + settings.admin->toString()));
  }
  for (unsigned i = 0; i < workers_.size(); ++i) {
    workers_[i]->start(i);
  }
  std::string listening;
  for (const ListenerSettings& listener : settings.listeners) {
    listening += (listening.empty() ? "" : ", ") + std::string(listenerKindName(listener.kind)) +
                 " " + listener.text;
  }
  spdlog::info("{}", jsonEscaped("listening: " + listening + "; workers: " + std::to_string(count) +
                                 (inherited.empty() ? "" : "; socket activation")));
  for (const std::string& warning : context_->listenerWarnings()) {
    spdlog::warn("{}", jsonEscaped(warning));
  }
  for (const std::string& warning : current_.warnings) {
    spdlog::warn("{}", jsonEscaped(warning));
  }
  if (context_->hasTransparentListener() && !settings.mark) {
    spdlog::warn(
        "transparent listener without --mark: the firewall rule cannot exclude the proxy's own "
        "upstream connections; connections looped back are refused (reason proxy_loop)");
  }
  uint64_t watchdog_usec = 0;
  if (sd_watchdog_enabled(0, &watchdog_usec) > 0 && watchdog_usec > 0) {
    watchdog_usec_ = watchdog_usec;
    watchdog_ = event_new(base_, -1, EV_PERSIST, &ProxyServer::onWatchdog, this);
    const uint64_t period = watchdog_usec / 4;
    const timeval tv{static_cast<time_t>(period / 1'000'000),
                     static_cast<suseconds_t>(period % 1'000'000)};
    event_add(watchdog_, &tv);
  }
  notifyStatus("READY=1");
  event_base_dispatch(base_);
  admin_.reset();
  local_addresses_.reset();
  for (auto& worker : workers_) {
    worker->join();
  }
  if (auto access = spdlog::get("access")) {
    access->flush();  // every line of the drained connections, before "stopped"
  }
  spdlog::info("stopped");
  return 0;
}

void ProxyServer::onSignal(evutil_socket_t signal, short, void* self) {
  auto* server = static_cast<ProxyServer*>(self);
  if (server->draining_) {
    // The handlers stay installed while draining, so a repeated TERM/INT or a HUP cannot fall
    // back to the default action and kill the tunnels that are finishing.
    spdlog::info("{}", jsonEscaped("draining already; ignoring signal " + std::to_string(signal)));
    return;
  }
  if (signal == SIGHUP) {
    server->reload();
    return;
  }
  server->startDrain(signal);
}

void ProxyServer::startDrain(int signal) {
  spdlog::info("{}", jsonEscaped("draining on signal " + std::to_string(signal)));
  draining_ = true;
  context_->setDraining();
  sd_notify(0, "STOPPING=1\nSTATUS=draining");
  if (watchdog_ != nullptr) {
    event_del(watchdog_);
  }
  for (auto& worker : workers_) {
    worker->drain(context_->settings()->drain_timeout);
  }
  drain_check_ = event_new(base_, -1, EV_PERSIST, &ProxyServer::onDrainCheck, this);
  static constexpr timeval kDrainCheck{0, 50'000};
  event_add(drain_check_, &kDrainCheck);
}

void ProxyServer::onDrainCheck(evutil_socket_t, short, void* self) {
  auto* server = static_cast<ProxyServer*>(self);
  for (const auto& worker : server->workers_) {
    if (!worker->stopped()) {
      return;
    }
  }
  // Every loop has ended; run() joins the threads.
  event_base_loopexit(server->base_, nullptr);
}

void ProxyServer::notifyStatus(const std::string& state) {
  std::string status = state + "\nSTATUS=serving; policy generation " + std::to_string(generation_);
  if (current_.service_tags_change_number) {
    status += "; service-tags changeNumber " + std::to_string(*current_.service_tags_change_number);
  }
  if (!context_->needsRestart().empty()) {
    status += "; needs a restart: " + joinKeys(context_->needsRestart());
  }
  sd_notify(0, status.c_str());
}

void ProxyServer::onWatchdog(evutil_socket_t, short, void* self) {
  auto* server = static_cast<ProxyServer*>(self);
  const int64_t now = std::chrono::duration_cast<std::chrono::milliseconds>(
                          std::chrono::steady_clock::now().time_since_epoch())
                          .count();
  // A loop that has not ticked for half the watchdog period is stuck: stop feeding the watchdog
  // so that systemd restarts the service.
  const int64_t limit = static_cast<int64_t>(server->watchdog_usec_ / 2000) + 1000;
  for (const auto& worker : server->workers_) {
    if (now - worker->lastHeartbeatMs() > limit) {
      spdlog::error("an event loop is stuck; not feeding the watchdog");
      return;
    }
  }
  sd_notify(0, "WATCHDOG=1");
}

void ProxyServer::reload() {
  if (!reload_) {
    return;
  }
  sd_notify(0, "RELOADING=1\nSTATUS=reloading");
  try {
    Reloaded reloaded = reload_();
    PolicySnapshot& snapshot = reloaded.policy;
    ProxySettings& settings = reloaded.settings;
    const std::shared_ptr<const ProxySettings> running = context_->settings();
    // Named by the table: what changed, and of that what cannot change without a restart.
    std::vector<std::string> applied;
    std::vector<std::string> needs_restart;
    for (const Setting setting : changedSettings(*running, settings)) {
      const SettingRow& row = settingRow(setting);
      (row.live ? applied : needs_restart).emplace_back(row.key);
    }
    keepRestartSettings(settings, *running);
    capConnections(settings);
    const std::string change = describePolicyChange(current_, snapshot);
    if (settings.json_log != running->json_log) {
      makeAccessLog(settings.json_log);  // the service log's format; the access log's follows
    }
    context_->setSettings(std::make_shared<const ProxySettings>(std::move(settings)));
    for (const auto& worker : workers_) {
      worker->applyDnsSettings();
    }
    context_->setSnapshot(snapshot);
    context_->setNeedsRestart(needs_restart);
    context_->metrics().recordReload(true);
    current_ = std::move(snapshot);
    ++generation_;
    if (current_.policy->revokeOnReload()) {
      for (const auto& worker : workers_) {
        worker->revokeDenied();
      }
    }
    // One line: the policy's change, then the settings applied and those that need a restart,
    // by their TOML keys.
    const bool settings_changed = !applied.empty() || !needs_restart.empty();
    std::string line = "reloaded the policy (generation " + std::to_string(generation_) + "): " +
                       (change == "no change" && settings_changed ? "policy unchanged" : change);
    if (!applied.empty()) {
      line += "; settings changed: " + joinKeys(applied);
    }
    if (!needs_restart.empty()) {
      line += "; needs a restart: " + joinKeys(needs_restart);
      // A warning: the file says one thing and the process does another until a restart.
      spdlog::warn("{}", jsonEscaped(line));
    } else {
      spdlog::info("{}", jsonEscaped(line));
    }
    for (const std::string& warning : current_.warnings) {
      spdlog::warn("{}", jsonEscaped(warning));
    }
    notifyStatus("READY=1");
  } catch (const std::exception& error) {
    // ConfigError for a bad file or value; anything else (e.g. out of memory) is no better a
    // reason to drop the policy that works.
    const std::string message =
        std::string("reload failed, keeping the old policy and settings: ") + error.what();
    spdlog::error("{}", jsonEscaped(message));
    context_->metrics().recordReload(false);
    sd_notify(0, ("READY=1\nSTATUS=" + message).c_str());
  }
}

}  // namespace acr
