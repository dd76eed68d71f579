#pragma once

#include <event2/event.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "dns/dns_answer.h"
#include "dns/dns_cache.h"
#include "dns/dns_observer.h"
#include "dns/dns_server.h"

struct ares_addrinfo;

namespace acr {

class AresChannel;

struct ResolverOptions {
  // "ADDR", "ADDR:PORT", "V6" or "[V6]:PORT" (DnsServer::parse). Empty: resolv_conf_path.
  std::vector<std::string> servers;
  std::string resolv_conf_path = "/etc/resolv.conf";
  std::chrono::milliseconds timeout{5000};  // total time budget of one resolution, then kTimeout
  std::chrono::seconds min_ttl{5};
  std::chrono::seconds max_ttl{300};
  std::chrono::seconds negative_ttl{30};  // kNxDomain / kNoAddresses; failures are never cached
  size_t max_cache_entries = 10000;       // least recently used beyond this; 0: no cache
  size_t max_pending = 1024;              // names in flight; beyond: immediate kFailure
  DnsObserver* observer = nullptr;        // told of cache hits, misses and resolutions; not owned
};

// Counters of one Resolver. A "resolution" is one name in flight, shared by all its waiters.
struct ResolverStats {
  uint64_t cache_hits = 0;      // resolve() answered from the cache (positive or negative)
  uint64_t cache_misses = 0;    // resolve() of a valid name not in the cache, coalesced included
  uint64_t coalesced = 0;       // resolve() that joined a resolution already in flight
  uint64_t queries = 0;         // c-ares A+AAAA lookups started, re-issues after a reset included
  uint64_t timeouts = 0;        // resolutions that ended kTimeout
  uint64_t failures = 0;        // resolutions that ended kFailure, invalid names, max_pending hits
  uint64_t nxdomain = 0;        // resolutions that ended kNxDomain
  uint64_t channel_resets = 0;  // c-ares channels replaced by a new one (see Resolver)
};

// Resolves host names to their A and AAAA addresses with c-ares, on one libevent loop, through a
// TTL-bounded LRU cache. One per event loop thread; not thread-safe; every callback runs on that
// loop.
//
// Recovery: c-ares 1.18 never re-reads resolv.conf and has no ares_reinit, so the Resolver makes
// a new channel (channel_resets) before starting a query when resolv.conf changed (its identity,
// size and mtime are checked at most once per second) or when an earlier resolution ended in
// connection refused or timeout; at most one new channel per second. Resolutions in flight on the
// old channel are not lost: they are started again on the new one, within their original
// deadline. A new channel that cannot be made (unreadable resolv.conf, ...) keeps the old one.
class Resolver {
 public:
  using Callback = std::function<void(const DnsAnswer&)>;

  // Throws std::invalid_argument naming the option for an invalid option (a server that does not
  // parse, timeout <= 0, min_ttl > max_ttl, negative TTLs, max_pending 0), and
  // std::runtime_error when c-ares cannot make its channel.
  Resolver(event_base* base, ResolverOptions options);
  // Drops every pending request without calling its callback. Must not run from inside one of
  // this Resolver's callbacks.
  ~Resolver();
  Resolver(const Resolver&) = delete;
  Resolver& operator=(const Resolver&) = delete;

  // Resolves `name` (case-insensitive, one trailing dot ignored) to its A and AAAA addresses.
  // When the answer is known at once, `callback` runs before resolve() returns and the result is
  // 0: a cache hit (from_cache), an IP literal (itself, kOk, TTL 0), a name that is not a valid
  // HostName (kFailure), or max_pending names already in flight (kFailure). Otherwise `callback`
  // runs later from the event loop, exactly once unless cancelled, and the result is a ticket
  // for cancel(). Concurrent requests for one name share one c-ares lookup. Only the exact name
  // is looked up: no search domains, no HOSTALIASES. Callbacks may call resolve() and cancel().
  // The answer a callback is given lives until the callback returns or calls resolve(): a cache
  // hit is the cache's own entry, not a copy, so a callback keeps what it needs by copying it.
  //
  // The A and AAAA lookups run side by side. When `first_family` is given and one of them ends
  // with addresses while the other is still running (RFC 8305 §3), `first_family` runs once from
  // the event loop with those addresses (kOk, ttl 0, never cached, never from_cache), before
  // `callback` runs with the whole answer, which repeats them. It never runs for an answer known
  // at once, for a waiter that joined after the first family answered, or after cancel().
  uint64_t resolve(std::string_view name, Callback callback, Callback first_family = nullptr);

  // The callback of `ticket` will not be called. Unknown or finished tickets are ignored. The
  // lookup itself goes on (others may share it) and its answer is still cached.
  void cancel(uint64_t ticket) noexcept;

  // New options (a reload): throws like the constructor and then changes nothing. When the
  // servers, the timeout, the TTL bounds or the cache size differ, the cache is emptied (its
  // answers came from the old servers and bounds) and, for servers or timeout, a new channel is
  // made, on which the resolutions in flight start again within their original deadline. The
  // observer is kept. Must not run from inside one of this Resolver's callbacks.
  void reconfigure(ResolverOptions options);

  ResolverStats stats() const noexcept { return stats_; }
  size_t cacheSize() const noexcept { return cache_.size(); }
  // Names in flight, including lookups abandoned at their deadline that c-ares has not ended.
  size_t pendingCount() const noexcept { return pending_.size() + orphans_; }

 private:
  using Clock = std::chrono::steady_clock;
  struct EventFree {
    void operator()(event* ev) const noexcept { event_free(ev); }
  };
  using EventPtr = std::unique_ptr<event, EventFree>;
  struct Pending;
  struct Query;
  // What tells a rewritten resolv.conf apart from the one the channel was made from.
  struct FileStamp {
    bool exists = false;
    uint64_t device = 0;
    uint64_t inode = 0;
    int64_t size = 0;
    int64_t mtime_ns = 0;
    friend bool operator==(const FileStamp&, const FileStamp&) = default;
  };

  static void onAresResult(void* arg, int status, int timeouts, ares_addrinfo* result);
  static void onDeadline(evutil_socket_t fd, short what, void* arg);
  static void onRenewEvent(evutil_socket_t fd, short what, void* arg);

  uint64_t addWaiter(Pending& pending, Callback callback, Callback first_family);
  void issue(Pending& pending);
  // Ends the resolution: caches `answer` when `cache` (and its status is cacheable), then calls
  // every waiter.
  void finish(Pending& pending, DnsAnswer answer, bool cache = true);
  void deliverFirstFamily(Pending& pending, const DnsAnswer& answer);
  static DnsAnswer merge(const DnsAnswer& v6, const DnsAnswer& v4);
  DnsAnswer makeAnswer(int status, const ares_addrinfo* result) const;
  void maybeRenewChannel(Clock::time_point now);
  void renewChannel();
  bool usesResolvConf() const noexcept { return servers_.empty(); }
  FileStamp statResolvConf() const;

  event_base* base_;
  ResolverOptions options_;
  std::vector<DnsServer> servers_;
  DnsCache cache_;
  std::unique_ptr<AresChannel> channel_;
  EventPtr renew_event_;  // runs renewChannel() from the loop when it was wanted mid-callback
  std::unordered_map<std::string, std::unique_ptr<Pending>> pending_;
  std::unordered_map<uint64_t, Pending*> tickets_;
  uint64_t next_ticket_ = 1;
  size_t orphans_ = 0;    // c-ares lookup pairs whose resolution already ended (deadline)
  bool issuing_ = false;  // inside AresChannel::getAddrInfo
  bool renew_wanted_ = false;
  std::optional<Clock::time_point> last_renew_;
  Clock::time_point last_resolv_check_;
  FileStamp resolv_stamp_;
  ResolverStats stats_;
};

}  // namespace acr
