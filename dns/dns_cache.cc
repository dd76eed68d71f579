#include "dns/dns_cache.h"

namespace acr {

const DnsAnswer* DnsCache::find(std::string_view name, Clock::time_point now) {
  const auto found = index_.find(name);
  if (found == index_.end()) {
    return nullptr;
  }
  const List::iterator it = found->second;
  if (now >= it->expires) {
    erase(it);
    return nullptr;
  }
  lru_.splice(lru_.begin(), lru_, it);
  return &it->answer;
}

void DnsCache::insert(std::string_view name, const DnsAnswer& answer, Clock::time_point now) {
  if (const auto found = index_.find(name); found != index_.end()) {
    erase(found->second);
  }
  if (max_entries_ == 0 || answer.ttl <= std::chrono::seconds::zero()) {
    return;
  }
  lru_.push_front(Entry{std::string(name), answer, now + answer.ttl});
  lru_.front().answer.from_cache = true;
  index_.emplace(lru_.front().name, lru_.begin());
  while (index_.size() > max_entries_) {
    erase(std::prev(lru_.end()));
  }
}

void DnsCache::reset(size_t max_entries) {
  index_.clear();
  lru_.clear();
  max_entries_ = max_entries;
}

void DnsCache::erase(List::iterator it) {
  index_.erase(it->name);
  lru_.erase(it);
}

}  // namespace acr
