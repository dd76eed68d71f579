// What a tunnel's slab slots cost: a tunnel takes about a dozen slots from the process slabs
// (its Connection, Handshake, Streams, dialer attempt, packed log record, OwnUpstreams entries,
// libevent's small blocks) and gives them back on the same worker. Here: 12 slots of 48 to 1,152
// bytes, in 10 size classes, taken and freed per iteration. "Cached" is a process slab with its
// per-thread cache (Slab::tunnels()); "Locked" is a Slab of its own, which has no cache: every
// call takes the slab's mutex, as every call did before the cache. On 1 and 2 threads at once:
// with 2, both take the same mutex, whose cache line then moves between the cores
// (bench/e2e/PROFILE.md section 15).
#include <benchmark/benchmark.h>

#include <array>
#include <cstddef>

#include "proxy/slab.h"

namespace acr {
namespace {

constexpr std::array<size_t, 12> kTunnelSlots = {1152, 704, 192, 192, 256, 96,
                                                 320,  48,  48,  64,  128, 1056};

void cycle(Slab& slab, benchmark::State& state) {
  std::array<void*, kTunnelSlots.size()> slots;
  for (auto _ : state) {
    for (size_t i = 0; i < kTunnelSlots.size(); ++i) {
      slots[i] = slab.allocate(kTunnelSlots[i]);
    }
    benchmark::DoNotOptimize(slots.data());
    for (size_t i = 0; i < kTunnelSlots.size(); ++i) {
      slab.deallocate(slots[i], kTunnelSlots[i]);
    }
  }
  state.SetItemsProcessed(state.iterations());  // tunnels
}

void BM_SlabTunnelCached(benchmark::State& state) { cycle(Slab::tunnels(), state); }

void BM_SlabTunnelLocked(benchmark::State& state) {
  static Slab* const slab = new Slab;  // shared by the benchmark's threads; never unmapped
  cycle(*slab, state);
}

BENCHMARK(BM_SlabTunnelCached)->Threads(1)->Threads(2)->UseRealTime();
BENCHMARK(BM_SlabTunnelLocked)->Threads(1)->Threads(2)->UseRealTime();

}  // namespace
}  // namespace acr
