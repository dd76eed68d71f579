#pragma once

#include <chrono>

#include "dns/dns_answer.h"

namespace acr {

// Receives a Resolver's outcomes as they happen, so that a process can aggregate them (proxy/
// turns them into metrics) without dns/ knowing about it. Called on the resolver's event-loop
// thread; one observer may be shared by the resolvers of several threads, so implementations
// must be thread-safe, cheap and must not throw.
class DnsObserver {
 public:
  virtual ~DnsObserver() = default;

  // resolve() of a valid name answered from the cache (positive or negative).
  virtual void onCacheHit() noexcept = 0;
  // resolve() of a valid name not in the cache (joining a resolution in flight included).
  virtual void onCacheMiss() noexcept = 0;
  // A resolution (one name in flight, shared by its waiters) ended with `status`, `elapsed` after
  // it started.
  virtual void onResolution(DnsStatus status, std::chrono::nanoseconds elapsed) noexcept = 0;
  // The resolver replaced its c-ares channel (resolv.conf changed, or a refused or timed-out
  // resolution; see Resolver).
  virtual void onChannelReset() noexcept = 0;
};

}  // namespace acr
