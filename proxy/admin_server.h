#pragma once

#include <event2/event.h>

#include <string>
#include <vector>

#include "conf/policy_factory.h"
#include "conf/proxy_settings.h"
#include "proxy/proxy_context.h"

struct evhttp;
struct evhttp_request;

namespace acr {

// The admin HTTP endpoint (--admin ADDR:PORT), served by libevent's evhttp on the event loop it
// is given (the main thread's), never on a worker's:
//   GET /metrics  Prometheus text exposition 0.0.4 (Metrics::render plus the ProxyStats counters)
//   GET /healthz  200 "ok" while the process runs
//   GET /readyz   200 "ready"; 503 before the first policy is loaded and once draining began
//   GET /policy   the effective policy as a JSON object (policyJson)
// HEAD is accepted wherever GET is; another method is 405 (with Allow), another path 404. It
// has no authentication: conf/ refuses a non-loopback address unless admin_allow_remote.
class AdminServer {
 public:
  // Binds `address` on `base` and serves from then on. Throws std::runtime_error naming the
  // address when it cannot bind.
  AdminServer(event_base* base, ProxyContext& context, const SocketAddress& address);
  // Closes the listening socket and every admin connection still open, so that the event loop
  // has nothing of the admin server left. Call on the loop's thread, while `base` exists.
  ~AdminServer();
  AdminServer(const AdminServer&) = delete;
  AdminServer& operator=(const AdminServer&) = delete;

  // The policy as JSON: generation, host patterns with their origins, ports, explicit allowed
  // and denied CIDRs with counts, the allowed-prefix count, service tags (file, changeNumber,
  // names) and strict_ip.
  // `warnings`: ProxyContext::listenerWarnings, shown as "listener_warnings"; `needs_restart`:
  // ProxyContext::needsRestart, the TOML keys of settings a reload could not apply.
  static std::string policyJson(const PolicySnapshot& snapshot, uint64_t generation,
                                const std::vector<std::string>& warnings = {},
                                const std::vector<std::string>& needs_restart = {});

 private:
  static void onRequest(evhttp_request* request, void* self);
  void handle(evhttp_request* request);

  ProxyContext& context_;
  evhttp* http_ = nullptr;
};

}  // namespace acr
