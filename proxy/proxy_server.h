#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "conf/policy_factory.h"
#include "proxy/admin_server.h"
#include "proxy/proxy_context.h"
#include "proxy/worker.h"

namespace acr {

// The running proxy: N workers (event loops on threads) sharing one ProxyContext, and the main
// thread's own loop for signals. SIGTERM/SIGINT drain: stop accepting, let tunnels finish until
// the drain deadline, exit 0; a repeated signal during the drain changes nothing. SIGHUP rebuilds
// the settings and the policy with `reload` off the event loops and swaps both in atomically; the
// settings the table marks live apply to new connections (DNS and log settings at once), the
// others keep their running value and are reported as needing a restart (log line, STATUS,
// /policy). On failure the old settings and policy stay (during a drain it is ignored). Listening
// sockets passed by systemd socket activation (sd_listen_fds) are used for the listeners whose
// address they carry. Under systemd (Type=notify) it reports READY, RELOADING, STOPPING and STATUS,
// and feeds the watchdog only while every event loop is alive.
class ProxyServer {
 public:
  // What a reload builds from the configuration: both or nothing (it throws ConfigError).
  struct Reloaded {
    ProxySettings settings;
    PolicySnapshot policy;
  };
  using Reloader = std::function<Reloaded()>;

  ProxyServer(ProxySettings settings, PolicySnapshot snapshot, Reloader reload);
  ~ProxyServer();

  // Binds the listeners (throws std::runtime_error naming the address), then serves until a
  // terminating signal. Returns the process exit status.
  int run();

 private:
  static void onSignal(evutil_socket_t signal, short, void* self);
  static void onWatchdog(evutil_socket_t, short, void* self);
  static void onDrainCheck(evutil_socket_t, short, void* self);
  void startDrain(int signal);
  void reload();
  void notifyStatus(const std::string& state);
  // Lowers max_connections to what the descriptor limit affords, with a warning.
  void capConnections(ProxySettings& settings) const;
  // How many pipes each worker may open for splicing (PipePool): descriptors left over by
  // max_connections' tunnels, at most PipePool::kMaxPipes.
  size_t pipesPerWorker(const ProxySettings& settings) const;

  std::unique_ptr<ProxyContext> context_;
  PolicySnapshot current_;  // what the running policy was built from (reload logs the change)
  uint64_t generation_ = 1;
  Reloader reload_;
  std::vector<std::unique_ptr<Worker>> workers_;
  event_base* base_ = nullptr;
  std::vector<event*> signals_;
  event* watchdog_ = nullptr;
  event* drain_check_ = nullptr;  // after a drain starts: ends the main loop once workers stop
  std::unique_ptr<AdminServer> admin_;  // --admin, on base_; reset when the main loop ends
  std::unique_ptr<LocalAddressMonitor> local_addresses_;  // on base_; feeds context_
  uint64_t watchdog_usec_ = 0;
  size_t descriptors_ = 0;       // RLIMIT_NOFILE after raising it
  size_t pipes_per_worker_ = 0;  // each worker's PipePool limit (pipesPerWorker at start)
  size_t pipe_descriptors_ = 0;  // what those pipes may hold, all workers together
  bool draining_ = false;
};

// Sets up spdlog: the access log on stdout (one line per connection), service messages on stderr,
// both JSON lines unless `json` is false.
AccessLog makeAccessLog(bool json);

}  // namespace acr
