#pragma once

#include <chrono>
#include <cstddef>
#include <list>
#include <string>
#include <string_view>
#include <unordered_map>

#include "dns/dns_answer.h"

namespace acr {

// Answers by normalised name, each kept for its DnsAnswer::ttl, at most `max_entries` of them:
// inserting beyond that evicts the least recently used entry. Clock-free: callers pass `now`, so
// the cache is tested without sleeping. An entry whose expiry has been reached is never returned.
// Expired entries are dropped when looked up or evicted, so size() may count some of them; it
// never exceeds max_entries.
class DnsCache {
 public:
  using Clock = std::chrono::steady_clock;

  // max_entries 0 disables the cache (insert stores nothing).
  explicit DnsCache(size_t max_entries) : max_entries_(max_entries) {}
  DnsCache(const DnsCache&) = delete;
  DnsCache& operator=(const DnsCache&) = delete;

  // The answer stored for `name` if it is still valid at `now` (and marks it most recently used),
  // else null. The pointer is valid until the next call of a non-const method.
  const DnsAnswer* find(std::string_view name, Clock::time_point now);

  // Stores `answer`, marked from_cache (what find() hands out is a cache hit, passed on as it is,
  // without a copy), for answer.ttl from `now`, replacing an entry of the same
  // name. An answer with a TTL of 0 is not stored, and removes the older entry.
  void insert(std::string_view name, const DnsAnswer& answer, Clock::time_point now);

  size_t size() const noexcept { return index_.size(); }
  size_t maxEntries() const noexcept { return max_entries_; }
  // Forgets every entry and holds at most `max_entries` from now on (a reload's DNS settings).
  void reset(size_t max_entries);

 private:
  struct Entry {
    std::string name;
    DnsAnswer answer;
    Clock::time_point expires;
  };
  using List = std::list<Entry>;

  void erase(List::iterator it);

  size_t max_entries_;
  List lru_;  // front: most recently used
  // Keys view the names held by the list nodes, which never move.
  std::unordered_map<std::string_view, List::iterator> index_;
};

}  // namespace acr
