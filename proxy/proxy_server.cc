#include "proxy/proxy_server.h"

#include <event2/thread.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <systemd/sd-daemon.h>
#include <time.h>

#include <chrono>
#include <csignal>
#include <stdexcept>
#include <thread>

#include "conf/config.h"

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

std::string jsonEscaped(std::string_view text) {
  std::string out;
  AccessLog::appendJsonString(out, text);
  return out.substr(1, out.size() - 2);
}

}  // namespace

AccessLog makeAccessLog(bool json) {
  auto access = spdlog::get("access");
  if (!access) {
    access = spdlog::stdout_logger_mt("access");
    access->set_pattern("%v");
    access->flush_on(spdlog::level::info);
  }
  auto service = spdlog::get("acr-egress");
  if (!service) {
    service = spdlog::stderr_logger_mt("acr-egress");
    service->flush_on(spdlog::level::info);
  }
  service->set_pattern(json ? R"({"time":"%Y-%m-%dT%H:%M:%S.%eZ","level":"%l","message":"%v"})"
                            : "%Y-%m-%dT%H:%M:%S.%e %l %v",
                       spdlog::pattern_time_type::utc);
  spdlog::set_default_logger(service);
  return AccessLog(access, json);
}

ProxyServer::ProxyServer(ProxySettings settings, PolicySnapshot snapshot, Reloader reload)
    : reload_(std::move(reload)) {
  evthread_use_pthreads();
  std::signal(SIGPIPE, SIG_IGN);
  const size_t descriptors = raiseDescriptorLimit();
  const size_t affordable =
      descriptors > kSpareDescriptors * 2 ? (descriptors - kSpareDescriptors) / 2 : 1;
  if (settings.max_connections > affordable) {
    spdlog::warn("max_connections {} needs more descriptors than the limit {} allows; using {}",
                 settings.max_connections, descriptors, affordable);
    settings.max_connections = affordable;
  }
  const bool json = settings.json_log;
  context_ =
      std::make_unique<ProxyContext>(std::move(settings), snapshot.policy, makeAccessLog(json));
  base_ = event_base_new();
}

ProxyServer::~ProxyServer() {
  for (event* signal : signals_) {
    event_free(signal);
  }
  if (watchdog_ != nullptr) {
    event_free(watchdog_);
  }
  workers_.clear();
  if (base_ != nullptr) {
    event_base_free(base_);
  }
}

int ProxyServer::run() {
  const ProxySettings& settings = context_->settings();
  unsigned count = settings.workers;
  if (count == 0) {
    count = std::max(1u, std::thread::hardware_concurrency());
  }
  for (unsigned i = 0; i < count; ++i) {
    workers_.push_back(std::make_unique<Worker>(*context_));
    workers_.back()->bindListeners();
  }
  for (const int signal : {SIGTERM, SIGINT, SIGHUP}) {
    event* handler = evsignal_new(base_, signal, &ProxyServer::onSignal, this);
    event_add(handler, nullptr);
    signals_.push_back(handler);
  }
  for (auto& worker : workers_) {
    worker->start();
  }
  std::string listening;
  for (const ListenerSettings& listener : settings.listeners) {
    listening += (listening.empty() ? "" : ", ") + std::string(listenerKindName(listener.kind)) +
                 " " + listener.text;
  }
  spdlog::info("{}",
               jsonEscaped("listening: " + listening + "; workers: " + std::to_string(count)));
  event_base_dispatch(base_);
  for (auto& worker : workers_) {
    worker->join();
  }
  spdlog::info("stopped");
  return 0;
}

void ProxyServer::onSignal(evutil_socket_t signal, short, void* self) {
  auto* server = static_cast<ProxyServer*>(self);
  if (signal == SIGHUP) {
    server->reload();
    return;
  }
  spdlog::info("{}", jsonEscaped("draining on signal " + std::to_string(signal)));
  server->draining_ = true;
  sd_notify(0, "STOPPING=1\nSTATUS=draining");
  if (server->watchdog_ != nullptr) {
    event_del(server->watchdog_);
  }
  for (auto& worker : server->workers_) {
    worker->drain(server->context_->settings().drain_timeout);
  }
  for (event* handler : server->signals_) {
    event_del(handler);
  }
  // The main loop ends once its signal events are gone; run() then joins the workers.
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
  try {
    PolicySnapshot snapshot = reload_();
    context_->setPolicy(snapshot.policy);
    spdlog::info("reloaded the policy");
  } catch (const ConfigError& error) {
    spdlog::error(
        "{}", jsonEscaped(std::string("reload failed, keeping the old policy: ") + error.what()));
  }
}

}  // namespace acr
