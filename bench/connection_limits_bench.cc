// What the connection limits add to every accept: ConnectionLimits::admit() and the slot's
// release (a lock, one probe of the per-client table, two atomics each way), with the table as
// full as a busy proxy keeps it: 4096 connections open (the default --max-connections) from
// 512 clients, one in four of them IPv6. The client of each iteration walks over those
// addresses, so the probes see the table's real collisions.
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "bench_support.h"
#include "proxy/connection_limits.h"

namespace acr {
namespace {

std::vector<IpAddress> clientAddresses(size_t count) {
  std::mt19937_64 random(7);
  std::vector<IpAddress> out;
  for (size_t i = 0; i < count; ++i) {
    if (i % 4 == 3) {
      out.push_back(IpAddress::v6((Uint128{0x20010db8} << 96) | (Uint128{random()} << 32) | i));
    } else {
      out.push_back(IpAddress::v4(0x0a000000u | static_cast<uint32_t>(random() & 0xffffff)));
    }
  }
  return out;
}

void BM_ConnectionLimitsAdmitRelease(benchmark::State& state) {
  ProxySettings settings;
  settings.max_connections = 4096 + 1;
  settings.max_connections_per_client = 1024;
  settings.max_connections_per_listener = 0;
  std::atomic<uint64_t> active{0};
  ConnectionLimits limits(2, settings.max_connections, active);
  const std::vector<IpAddress> clients = clientAddresses(512);
  std::vector<ConnectionSlot> open;
  open.reserve(4096);
  for (size_t i = 0; i < 4096; ++i) {
    open.push_back(limits.admit(i % 2, clients[i % clients.size()], settings).slot);
  }
  size_t next = 0;
  const size_t allocations_before = bench::allocationCount();
  for (auto _ : state) {
    ConnectionLimits::Admission admission =
        limits.admit(next % 2, clients[next % clients.size()], settings);
    benchmark::DoNotOptimize(admission.slot.held());
    admission.slot.release();
    ++next;
  }
  state.counters["allocs_per_accept"] =
      static_cast<double>(bench::allocationCount() - allocations_before) /
      static_cast<double>(std::max<int64_t>(1, state.iterations()));
}
BENCHMARK(BM_ConnectionLimitsAdmitRelease);

// A client's first connection and its last: the entry is inserted and erased (backward shift)
// every iteration, the table's most expensive path.
void BM_ClientCountsNewClient(benchmark::State& state) {
  ClientCounts counts(4096, 42);
  const std::vector<IpAddress> clients = clientAddresses(1024);
  for (size_t i = 0; i < 512; ++i) {
    counts.tryAdd(clients[i], 0);
  }
  size_t next = 512;
  for (auto _ : state) {
    const IpAddress& client = clients[next];
    benchmark::DoNotOptimize(counts.tryAdd(client, 1024));
    counts.remove(client);
    next = next + 1 == clients.size() ? 512 : next + 1;
  }
}
BENCHMARK(BM_ClientCountsNewClient);

}  // namespace
}  // namespace acr
