#include "proxy/connection_limits.h"

#include <algorithm>
#include <cassert>
#include <random>

namespace acr {
namespace {

// Reserved up front for at most this many distinct clients (65536 x 2 slots x 24 bytes = 3 MiB);
// a larger max_connections grows the table only if that many clients really come.
constexpr size_t kMaxReservedClients = 65536;

uint64_t randomSeed() {
  std::random_device device;
  return (uint64_t{device()} << 32) ^ device();
}

}  // namespace

ConnectionSlot& ConnectionSlot::operator=(ConnectionSlot&& other) noexcept {
  if (this != &other) {
    release();
    limits_ = other.limits_;
    listener_ = other.listener_;
    client_ = other.client_;
    other.limits_ = nullptr;
  }
  return *this;
}

void ConnectionSlot::release() noexcept {
  if (limits_ != nullptr) {
    limits_->release(listener_, client_);
    limits_ = nullptr;
  }
}

ConnectionLimits::ConnectionLimits(size_t listeners, size_t expected_clients,
                                   std::atomic<uint64_t>& active)
    : listener_count_(listeners),
      listeners_(std::make_unique<std::atomic<uint64_t>[]>(std::max<size_t>(listeners, 1))),
      active_(active),
      clients_(std::min(expected_clients, kMaxReservedClients), randomSeed()) {}

ConnectionLimits::Admission ConnectionLimits::admit(size_t listener, const IpAddress& client,
                                                    const ProxySettings& settings) {
  assert(listener < std::max<size_t>(listener_count_, 1));
  Admission admission;
  // Each count is taken first and given back on a refusal further down: exact under
  // concurrency, at the price of a connection refused while another one was being refused.
  {
    std::lock_guard lock(mutex_);
    if (!clients_.tryAdd(client, settings.max_connections_per_client)) {
      admission.refusal = CloseReason::kClientOverloaded;
      admission.limit = settings.max_connections_per_client;
      return admission;
    }
  }
  const size_t per_listener = settings.max_connections_per_listener;
  const uint64_t on_listener = listeners_[listener].fetch_add(1, std::memory_order_relaxed);
  if (per_listener != 0 && on_listener >= per_listener) {
    listeners_[listener].fetch_sub(1, std::memory_order_relaxed);
    std::lock_guard lock(mutex_);
    clients_.remove(client);
    admission.refusal = CloseReason::kListenerOverloaded;
    admission.limit = per_listener;
    return admission;
  }
  if (active_.fetch_add(1, std::memory_order_relaxed) >= settings.max_connections) {
    active_.fetch_sub(1, std::memory_order_relaxed);
    listeners_[listener].fetch_sub(1, std::memory_order_relaxed);
    std::lock_guard lock(mutex_);
    clients_.remove(client);
    admission.refusal = CloseReason::kOverloaded;
    admission.limit = settings.max_connections;
    return admission;
  }
  admission.slot.limits_ = this;
  admission.slot.listener_ = listener;
  admission.slot.client_ = client;
  return admission;
}

void ConnectionLimits::release(size_t listener, const IpAddress& client) noexcept {
  active_.fetch_sub(1, std::memory_order_relaxed);
  listeners_[listener].fetch_sub(1, std::memory_order_relaxed);
  std::lock_guard lock(mutex_);
  clients_.remove(client);
}

size_t ConnectionLimits::clientCount(const IpAddress& client) const {
  std::lock_guard lock(mutex_);
  return clients_.count(client);
}

size_t ConnectionLimits::clients() const {
  std::lock_guard lock(mutex_);
  return clients_.clients();
}

}  // namespace acr
