#include "dns/resolver.h"

#include <ares.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <cassert>
#include <climits>
#include <cstring>
#include <stdexcept>
#include <utility>

#include "dns/ares_channel.h"
#include "filters/host_name.h"

namespace acr {
namespace {

// Upper bound on new c-ares channels: failures come in bursts, and a burst needs one new channel.
constexpr std::chrono::seconds kMinRenewInterval{1};
constexpr std::chrono::seconds kResolvConfCheckInterval{1};

struct AddrInfoFree {
  void operator()(ares_addrinfo* info) const noexcept { ares_freeaddrinfo(info); }
};
using AddrInfoPtr = std::unique_ptr<ares_addrinfo, AddrInfoFree>;

timeval toTimeval(std::chrono::milliseconds duration) {
  const int64_t ms = duration.count();
  return timeval{static_cast<time_t>(ms / 1000), static_cast<suseconds_t>((ms % 1000) * 1000)};
}

std::optional<IpAddress> toIpAddress(const sockaddr* address) {
  if (address == nullptr) {
    return std::nullopt;
  }
  if (address->sa_family == AF_INET) {
    sockaddr_in in;
    std::memcpy(&in, address, sizeof(in));
    return IpAddress::v4(ntohl(in.sin_addr.s_addr));
  }
  if (address->sa_family == AF_INET6) {
    sockaddr_in6 in6;
    std::memcpy(&in6, address, sizeof(in6));
    std::array<uint8_t, 16> bytes;
    std::memcpy(bytes.data(), &in6.sin6_addr, bytes.size());
    return IpAddress::fromV6Bytes(bytes);
  }
  return std::nullopt;
}

DnsAnswer failureAnswer(DnsStatus status = DnsStatus::kFailure) {
  DnsAnswer answer;
  answer.status = status;
  return answer;
}

std::vector<DnsServer> parseServers(const std::vector<std::string>& texts) {
  std::vector<DnsServer> servers;
  for (const std::string& text : texts) {
    std::string why;
    const std::optional<DnsServer> server = DnsServer::parse(text, &why);
    if (!server) {
      throw std::invalid_argument("DNS server \"" + text + "\": " + why);
    }
    servers.push_back(*server);
  }
  return servers;
}

void validate(const ResolverOptions& options) {
  const auto fail = [](const std::string& what) { throw std::invalid_argument("DNS " + what); };
  if (options.timeout <= std::chrono::milliseconds::zero()) {
    fail("timeout must be > 0 ms, got " + std::to_string(options.timeout.count()) + " ms");
  }
  if (options.min_ttl < std::chrono::seconds::zero()) {
    fail("min_ttl must be >= 0 s, got " + std::to_string(options.min_ttl.count()) + " s");
  }
  if (options.max_ttl < options.min_ttl) {
    fail("max_ttl (" + std::to_string(options.max_ttl.count()) + " s) must be >= min_ttl (" +
         std::to_string(options.min_ttl.count()) + " s)");
  }
  if (options.negative_ttl < std::chrono::seconds::zero()) {
    fail("negative_ttl must be >= 0 s, got " + std::to_string(options.negative_ttl.count()) + " s");
  }
  if (options.max_pending == 0) {
    fail("max_pending must be >= 1");
  }
  if (options.servers.empty() && options.resolv_conf_path.empty()) {
    fail("resolv_conf_path must be set when no server is given");
  }
}

}  // namespace

// One name in flight and everyone waiting for it.
struct Resolver::Pending {
  Resolver* resolver = nullptr;
  std::string name;
  struct Waiter {
    Callback callback;
    Callback first_family;  // may be empty
  };
  std::map<uint64_t, Waiter> waiters;  // by ticket, i.e. in the order resolve() was called
  EventPtr deadline;                   // ends the resolution with kTimeout
  Clock::time_point started;           // for DnsObserver::onResolution
  Query* query = nullptr;              // the c-ares lookups running for it, if any
  bool first_family_sent = false;      // deliverFirstFamily ran
  // An answer c-ares gave from inside getAddrInfo; the deadline timer, re-armed to fire at once,
  // delivers it so that callbacks never run from inside resolve().
  std::optional<DnsAnswer> early;
};

// One A+AAAA lookup: two ares_getaddrinfo calls (AF_INET6 and AF_INET), so that each family's
// answer is known as soon as it arrives. c-ares calls back exactly once per half; the second call
// frees the Query. `pending` is null once the resolution ended without it (deadline): an orphan.
struct Resolver::Query {
  struct Half {
    Query* query = nullptr;
    size_t index = 0;  // 0: AAAA, 1: A
  };
  Resolver* resolver = nullptr;
  Pending* pending = nullptr;
  Half halves[2];
  std::optional<DnsAnswer> answers[2];  // by Half::index, as each half ends
  int outstanding = 2;                  // halves c-ares has not called back yet
  bool destroyed = false;               // a half ended with ARES_EDESTRUCTION
};

Resolver::Resolver(event_base* base, ResolverOptions options)
    : base_(base),
      options_(std::move(options)),
      servers_(parseServers(options_.servers)),
      cache_(options_.max_cache_entries) {
  validate(options_);
  renew_event_.reset(event_new(base_, -1, 0, &Resolver::onRenewEvent, this));
  if (!renew_event_) {
    throw std::runtime_error("DNS resolver: cannot create an event");
  }
  last_resolv_check_ = Clock::now();
  if (usesResolvConf()) {
    resolv_stamp_ = statResolvConf();
  }
  std::string error;
  channel_ =
      AresChannel::create(base_, {servers_, options_.resolv_conf_path, options_.timeout}, error);
  if (!channel_) {
    throw std::runtime_error("DNS resolver: " + error);
  }
}

void Resolver::reconfigure(ResolverOptions options) {
  validate(options);
  std::vector<DnsServer> servers = parseServers(options.servers);
  options.observer = options_.observer;
  const bool new_channel = servers != servers_ || options.timeout != options_.timeout ||
                           options.resolv_conf_path != options_.resolv_conf_path;
  const bool new_cache = new_channel || options.min_ttl != options_.min_ttl ||
                         options.max_ttl != options_.max_ttl ||
                         options.negative_ttl != options_.negative_ttl ||
                         options.max_cache_entries != options_.max_cache_entries;
  options_ = std::move(options);
  servers_ = std::move(servers);
  if (new_cache) {
    cache_.reset(options_.max_cache_entries);
  }
  if (new_channel) {
    renewChannel();
  }
}

Resolver::~Resolver() {
  assert(!channel_->processing());
  // Every c-ares callback runs now with ARES_EDESTRUCTION and frees its Query; the waiters are
  // then dropped uncalled.
  channel_.reset();
  pending_.clear();
  tickets_.clear();
}

uint64_t Resolver::resolve(std::string_view name, Callback callback, Callback first_family) {
  if (const std::optional<IpAddress> literal = IpAddress::parse(name)) {
    DnsAnswer answer;
    answer.status = DnsStatus::kOk;
    answer.addresses.push_back(*literal);
    callback(answer);
    return 0;
  }
  HostName host;
  if (HostName::normalize(name, host) != HostName::Status::kOk) {
    ++stats_.failures;
    callback(failureAnswer());
    return 0;
  }
  const Clock::time_point now = Clock::now();
  // A hit (nearly every tunnel's) allocates nothing: the cached answer goes to the callback as it
  // is (marked from_cache by the cache), and the key is built only for a miss.
  if (const DnsAnswer* cached = cache_.find(host.view(), now)) {
    ++stats_.cache_hits;
    if (options_.observer != nullptr) {
      options_.observer->onCacheHit();
    }
    callback(*cached);
    return 0;
  }
  std::string key(host.view());
  ++stats_.cache_misses;
  if (options_.observer != nullptr) {
    options_.observer->onCacheMiss();
  }
  if (const auto it = pending_.find(key); it != pending_.end()) {
    ++stats_.coalesced;
    return addWaiter(*it->second, std::move(callback),
                     it->second->first_family_sent ? nullptr : std::move(first_family));
  }
  if (pending_.size() + orphans_ >= options_.max_pending) {
    ++stats_.failures;
    callback(failureAnswer());
    return 0;
  }
  maybeRenewChannel(now);

  auto owned = std::make_unique<Pending>();
  Pending& pending = *owned;
  pending.resolver = this;
  pending.name = key;
  pending.started = now;
  pending.deadline.reset(evtimer_new(base_, &Resolver::onDeadline, &pending));
  const timeval budget = toTimeval(options_.timeout);
  if (!pending.deadline || evtimer_add(pending.deadline.get(), &budget) != 0) {
    ++stats_.failures;
    callback(failureAnswer());
    return 0;
  }
  pending_.emplace(std::move(key), std::move(owned));
  const uint64_t ticket = addWaiter(pending, std::move(callback), std::move(first_family));
  issue(pending);
  return ticket;
}

void Resolver::cancel(uint64_t ticket) noexcept {
  const auto it = tickets_.find(ticket);
  if (it == tickets_.end()) {
    return;
  }
  it->second->waiters.erase(ticket);
  tickets_.erase(it);
}

uint64_t Resolver::addWaiter(Pending& pending, Callback callback, Callback first_family) {
  const uint64_t ticket = next_ticket_++;
  pending.waiters.emplace(ticket, Pending::Waiter{std::move(callback), std::move(first_family)});
  tickets_.emplace(ticket, &pending);
  return ticket;
}

void Resolver::issue(Pending& pending) {
  auto* query = new Query;
  query->resolver = this;
  query->pending = &pending;
  query->halves[0] = {query, 0};
  query->halves[1] = {query, 1};
  pending.query = query;
  ++stats_.queries;
  issuing_ = true;
  // Both halves may call back from inside getAddrInfo (hosts file); the second one frees query.
  if (pending.name == "localhost") {
    // c-ares 1.18 leaks the name when it makes up "localhost" for AF_INET6 alone (its RFC 6761
    // fallback); this one name is looked up for both families at once, as one half.
    query->outstanding = 1;
    query->answers[1] = failureAnswer(DnsStatus::kNoAddresses);
    channel_->getAddrInfo(pending.name.c_str(), AF_UNSPEC, &Resolver::onAresResult,
                          &query->halves[0]);
  } else {
    channel_->getAddrInfo(pending.name.c_str(), AF_INET6, &Resolver::onAresResult,
                          &query->halves[0]);
    channel_->getAddrInfo(pending.name.c_str(), AF_INET, &Resolver::onAresResult,
                          &query->halves[1]);
  }
  issuing_ = false;
}

void Resolver::onAresResult(void* arg, int status, int /*timeouts*/, ares_addrinfo* result) {
  const Query::Half& half = *static_cast<Query::Half*>(arg);
  Query* query = half.query;
  const size_t index = half.index;
  const AddrInfoPtr info(result);
  Resolver& self = *query->resolver;
  const bool last = --query->outstanding == 0;
  const std::unique_ptr<Query> owned(last ? query : nullptr);
  Pending* pending = query->pending;
  if (pending == nullptr) {
    if (last) {
      --self.orphans_;
    }
    return;
  }
  if (status == ARES_EDESTRUCTION) {
    // The channel is being replaced (renewChannel starts the lookup again) or the Resolver is
    // being destroyed.
    query->destroyed = true;
  } else {
    if (status == ARES_ECONNREFUSED || status == ARES_ETIMEOUT) {
      // The server is gone or unreachable: it may come back elsewhere (resolv.conf) or on a
      // fresh socket. c-ares 1.18 also reports a REFUSED rcode as ARES_ECONNREFUSED.
      self.renew_wanted_ = true;
    }
    query->answers[index] = self.makeAnswer(status, info.get());
  }
  if (!last) {
    if (!query->destroyed && query->answers[index]->status == DnsStatus::kOk && !self.issuing_) {
      self.deliverFirstFamily(*pending, *query->answers[index]);
    }
    return;
  }
  pending->query = nullptr;
  if (query->destroyed) {
    return;
  }
  DnsAnswer answer = merge(*query->answers[0], *query->answers[1]);
  if (self.issuing_) {
    pending->early = std::move(answer);
    const timeval now{0, 0};
    evtimer_add(pending->deadline.get(), &now);
    return;
  }
  self.finish(*pending, std::move(answer));
}

void Resolver::onDeadline(evutil_socket_t, short, void* arg) {
  Pending& pending = *static_cast<Pending*>(arg);
  Resolver& self = *pending.resolver;
  if (pending.early) {
    DnsAnswer answer = std::move(*pending.early);
    self.finish(pending, std::move(answer));
    return;
  }
  self.renew_wanted_ = true;
  if (pending.query != nullptr) {
    for (const std::optional<DnsAnswer>& half : pending.query->answers) {
      if (half && half->status == DnsStatus::kOk) {
        // One family answered, the other did not in time: the half is usable, but not a
        // complete answer to cache.
        DnsAnswer answer = *half;
        self.finish(pending, std::move(answer), false);
        return;
      }
    }
  }
  self.finish(pending, failureAnswer(DnsStatus::kTimeout));
}

void Resolver::deliverFirstFamily(Pending& pending, const DnsAnswer& answer) {
  if (pending.first_family_sent) {
    return;
  }
  pending.first_family_sent = true;
  DnsAnswer partial = answer;
  partial.ttl = std::chrono::seconds(0);
  partial.from_cache = false;
  // A callback may cancel other waiters or add new ones: walk the tickets known now.
  std::vector<uint64_t> tickets;
  for (const auto& [ticket, waiter] : pending.waiters) {
    if (waiter.first_family) {
      tickets.push_back(ticket);
    }
  }
  for (const uint64_t ticket : tickets) {
    const auto it = pending.waiters.find(ticket);
    if (it == pending.waiters.end()) {
      continue;
    }
    const Callback callback = std::move(it->second.first_family);
    it->second.first_family = nullptr;
    callback(partial);
  }
}

DnsAnswer Resolver::merge(const DnsAnswer& v6, const DnsAnswer& v4) {
  const bool v6_ok = v6.status == DnsStatus::kOk;
  const bool v4_ok = v4.status == DnsStatus::kOk;
  if (v6_ok && v4_ok) {
    DnsAnswer answer = v6;
    for (const IpAddress& address : v4.addresses) {
      if (answer.addresses.size() < DnsAnswer::kMaxAddresses) {
        answer.addresses.push_back(address);
      }
    }
    answer.ttl = std::min(v6.ttl, v4.ttl);
    return answer;
  }
  if (v6_ok || v4_ok) {
    return v6_ok ? v6 : v4;  // as c-ares does for AF_UNSPEC: the family that answered
  }
  for (const DnsStatus status : {DnsStatus::kNxDomain, DnsStatus::kTimeout, DnsStatus::kFailure}) {
    if (v6.status == status || v4.status == status) {
      return v6.status == status ? v6 : v4;
    }
  }
  return v6;  // both kNoAddresses
}

void Resolver::onRenewEvent(evutil_socket_t, short, void* arg) {
  auto& self = *static_cast<Resolver*>(arg);
  if (self.renew_wanted_) {
    self.renewChannel();
  }
}

void Resolver::finish(Pending& pending, DnsAnswer answer, bool cache) {
  auto node = pending_.extract(pending.name);
  assert(node && node.mapped().get() == &pending);
  const std::unique_ptr<Pending> owned = std::move(node.mapped());
  if (owned->query != nullptr) {
    // c-ares goes on until its own timeouts end the lookup; onAresResult then only frees it.
    owned->query->pending = nullptr;
    owned->query = nullptr;
    ++orphans_;
  }
  switch (answer.status) {
    case DnsStatus::kOk:
    case DnsStatus::kNoAddresses:
      if (cache) {
        cache_.insert(owned->name, answer, Clock::now());
      }
      break;
    case DnsStatus::kNxDomain:
      ++stats_.nxdomain;
      cache_.insert(owned->name, answer, Clock::now());
      break;
    case DnsStatus::kTimeout:
      ++stats_.timeouts;
      break;
    case DnsStatus::kFailure:
    case DnsStatus::kCancelled:
      ++stats_.failures;
      break;
  }
  if (options_.observer != nullptr) {
    options_.observer->onResolution(answer.status, Clock::now() - owned->started);
  }
  // A callback may cancel waiters still in the list (cancel() finds them through tickets_) or
  // start new resolutions; `owned` keeps the list alive meanwhile.
  while (!owned->waiters.empty()) {
    const auto first = owned->waiters.begin();
    const uint64_t ticket = first->first;
    const Callback callback = std::move(first->second.callback);
    owned->waiters.erase(first);
    tickets_.erase(ticket);
    callback(answer);
  }
}

DnsAnswer Resolver::makeAnswer(int status, const ares_addrinfo* result) const {
  DnsAnswer answer;
  switch (status) {
    case ARES_SUCCESS:
      break;
    case ARES_ENOTFOUND:
      answer.status = DnsStatus::kNxDomain;
      answer.ttl = options_.negative_ttl;
      return answer;
    case ARES_ENODATA:
      answer.status = DnsStatus::kNoAddresses;
      answer.ttl = options_.negative_ttl;
      return answer;
    case ARES_ETIMEOUT:
      answer.status = DnsStatus::kTimeout;
      return answer;
    default:
      // ARES_ECONNREFUSED, ARES_ESERVFAIL, ARES_EREFUSED, ARES_EBADRESP, ARES_EBADNAME,
      // ARES_ENOMEM, ...: nothing usable, and nothing to cache.
      answer.status = DnsStatus::kFailure;
      return answer;
  }
  if (result == nullptr) {
    return answer;  // kFailure: success without a result is not a state c-ares promises
  }
  int min_ttl = INT_MAX;
  for (const ares_addrinfo_node* node = result->nodes; node != nullptr; node = node->ai_next) {
    min_ttl = std::min(min_ttl, node->ai_ttl);
    const std::optional<IpAddress> address = toIpAddress(node->ai_addr);
    if (address && answer.addresses.size() < DnsAnswer::kMaxAddresses &&
        std::find(answer.addresses.begin(), answer.addresses.end(), *address) ==
            answer.addresses.end()) {
      answer.addresses.push_back(*address);
    }
  }
  for (const ares_addrinfo_cname* cname = result->cnames; cname != nullptr; cname = cname->next) {
    min_ttl = std::min(min_ttl, cname->ttl);
  }
  if (answer.addresses.empty()) {
    answer.status = DnsStatus::kNoAddresses;
    answer.ttl = options_.negative_ttl;
    return answer;
  }
  answer.status = DnsStatus::kOk;
  answer.ttl =
      std::clamp(std::chrono::seconds(std::max(min_ttl, 0)), options_.min_ttl, options_.max_ttl);
  return answer;
}

void Resolver::maybeRenewChannel(Clock::time_point now) {
  if (usesResolvConf() && now - last_resolv_check_ >= kResolvConfCheckInterval) {
    last_resolv_check_ = now;
    if (statResolvConf() != resolv_stamp_) {
      renew_wanted_ = true;
    }
  }
  if (!renew_wanted_ || (last_renew_ && now - *last_renew_ < kMinRenewInterval)) {
    return;
  }
  if (channel_->processing()) {
    // Inside a c-ares callback the channel cannot be destroyed: renew from the loop, right after.
    event_active(renew_event_.get(), EV_TIMEOUT, 0);
    return;
  }
  renewChannel();
}

void Resolver::renewChannel() {
  renew_wanted_ = false;
  last_renew_ = Clock::now();
  const FileStamp stamp = usesResolvConf() ? statResolvConf() : FileStamp{};
  std::string error;
  std::unique_ptr<AresChannel> fresh =
      AresChannel::create(base_, {servers_, options_.resolv_conf_path, options_.timeout}, error);
  if (!fresh) {
    return;  // keep the channel we have: it is no worse than none
  }
  resolv_stamp_ = stamp;
  std::unique_ptr<AresChannel> old = std::exchange(channel_, std::move(fresh));
  // Fails the old channel's lookups with ARES_EDESTRUCTION: orphans are freed, the others lose
  // their Query and are started again below.
  old.reset();
  ++stats_.channel_resets;
  if (options_.observer != nullptr) {
    options_.observer->onChannelReset();
  }
  for (auto& [name, pending] : pending_) {
    if (pending->query == nullptr && !pending->early) {
      issue(*pending);
    }
  }
}

Resolver::FileStamp Resolver::statResolvConf() const {
  struct stat st;
  if (::stat(options_.resolv_conf_path.c_str(), &st) != 0) {
    return FileStamp{};
  }
  FileStamp stamp;
  stamp.exists = true;
  stamp.device = static_cast<uint64_t>(st.st_dev);
  stamp.inode = static_cast<uint64_t>(st.st_ino);
  stamp.size = static_cast<int64_t>(st.st_size);
  stamp.mtime_ns = static_cast<int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec;
  return stamp;
}

}  // namespace acr
