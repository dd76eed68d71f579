#include "proxy/slab.h"

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <new>
#include <random>
#include <thread>
#include <unordered_map>
#include <vector>

namespace acr {
namespace {

// Pages of [address, address + bytes) the process has resident (mincore).
size_t residentPages(const void* address, size_t bytes) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> pages((bytes + page - 1) / page);
  if (mincore(const_cast<void*>(address), bytes, pages.data()) != 0) {
    ADD_FAILURE() << "mincore: " << std::strerror(errno);
    return 0;
  }
  return static_cast<size_t>(std::count_if(pages.begin(), pages.end(),
                                           [](unsigned char flags) { return (flags & 1) != 0; }));
}

uintptr_t spanOf(const void* slot) {
  return reinterpret_cast<uintptr_t>(slot) & ~(Slab::kSpanBytes - 1);
}

// Every size from 1 to kMaxSlot gets a slot of its own, aligned to the granule, inside a span and
// past its header; 0 and anything larger are refused.
TEST(SlabTest, GivesAlignedSlotsForEverySizeAndRefusesOthers) {
  Slab slab;
  std::vector<std::pair<void*, size_t>> slots;
  for (size_t size = 1; size <= Slab::kMaxSlot; ++size) {
    void* slot = slab.allocate(size);
    ASSERT_EQ(reinterpret_cast<uintptr_t>(slot) % Slab::kGranule, 0u) << size;
    ASSERT_GT(reinterpret_cast<uintptr_t>(slot), spanOf(slot)) << size;
    ASSERT_LE(reinterpret_cast<uintptr_t>(slot) + size, spanOf(slot) + Slab::kSpanBytes) << size;
    std::memset(slot, 0xA5, size);  // the whole slot is ours (ASan would report otherwise)
    slots.emplace_back(slot, size);
  }
  EXPECT_EQ(slab.usage().slots, Slab::kMaxSlot);
  EXPECT_THROW(slab.allocate(0), std::bad_alloc);
  EXPECT_THROW(slab.allocate(Slab::kMaxSlot + 1), std::bad_alloc);
  for (const auto& [slot, size] : slots) {
    slab.deallocate(slot, size);
  }
  EXPECT_EQ(slab.usage().slots, 0u);
}

// Random allocations and frees of random sizes, each slot filled with its own pattern: no slot
// overlaps another, and every live slot still holds its pattern at the end (against a map of what
// was written).
TEST(SlabTest, LiveSlotsNeverOverlapUnderRandomUse) {
  Slab slab;
  std::mt19937 random(20261206);
  std::map<uintptr_t, std::pair<size_t, uint8_t>> live;  // slot -> size, pattern
  std::vector<uintptr_t> order;
  for (int step = 0; step < 200000; ++step) {
    if (!order.empty() && random() % 100 < 45) {
      const size_t pick = random() % order.size();
      const uintptr_t slot = order[pick];
      order[pick] = order.back();
      order.pop_back();
      const size_t size = live.at(slot).first;
      const uint8_t pattern = live.at(slot).second;
      const auto* bytes = reinterpret_cast<const uint8_t*>(slot);
      ASSERT_TRUE(std::all_of(bytes, bytes + size, [&](uint8_t b) { return b == pattern; }));
      slab.deallocate(reinterpret_cast<void*>(slot), size);
      live.erase(slot);
      continue;
    }
    const size_t size = 1 + random() % (random() % 4 == 0 ? Slab::kMaxSlot : 256);
    auto slot = reinterpret_cast<uintptr_t>(slab.allocate(size));
    const auto next = live.lower_bound(slot);
    ASSERT_TRUE(next == live.end() || next->first >= slot + size) << "overlaps the next slot";
    if (next != live.begin()) {
      const auto previous = std::prev(next);
      ASSERT_LE(previous->first + previous->second.first, slot) << "overlaps the previous slot";
    }
    const auto pattern = static_cast<uint8_t>(random());
    std::memset(reinterpret_cast<void*>(slot), pattern, size);
    live[slot] = {size, pattern};
    order.push_back(slot);
  }
  EXPECT_EQ(slab.usage().slots, live.size());
  for (const auto& item : live) {
    const uintptr_t slot = item.first;
    const std::pair<size_t, uint8_t> entry = item.second;
    const auto* bytes = reinterpret_cast<const uint8_t*>(slot);
    ASSERT_TRUE(
        std::all_of(bytes, bytes + entry.first, [&](uint8_t b) { return b == entry.second; }));
    slab.deallocate(reinterpret_cast<void*>(slot), entry.first);
  }
  EXPECT_EQ(slab.usage().slots, 0u);
  EXPECT_LE(slab.usage().spans, Slab::kMaxSlot / Slab::kGranule) << "at most one spare per class";
}

// A class's empty spans are unmapped but one (its spare), which the next allocation takes
// instead of mapping another: a load moving across a span boundary maps nothing.
TEST(SlabTest, KeepsOneSpareSpanPerClassAndUnmapsTheRest) {
  Slab slab;
  constexpr size_t kSize = 960;  // Connection's class
  std::vector<void*> slots;
  while (slab.usage().spans < 4) {
    slots.push_back(slab.allocate(kSize));
  }
  for (void* slot : slots) {
    slab.deallocate(slot, kSize);
  }
  EXPECT_EQ(slab.usage().spans, 1u);
  EXPECT_EQ(slab.usage().slots, 0u);
  for (int i = 0; i < 1000; ++i) {  // across the boundary, one object at a time
    slab.deallocate(slab.allocate(kSize), kSize);
  }
  EXPECT_EQ(slab.usage().spans, 1u);
}

// Frees fill the spans that still hold slots before a spare is taken, and a span that was full
// takes allocations again once a slot of it is freed.
TEST(SlabTest, ReusesFreedSlotsBeforeMappingMore) {
  Slab slab;
  constexpr size_t kSize = 192;
  void* probe = slab.allocate(kSize);
  while (spanOf(slab.allocate(kSize)) == spanOf(probe)) {
  }
  // The span of `probe` is full now, and a second span holds one slot.
  EXPECT_EQ(slab.usage().spans, 2u);
  slab.deallocate(probe, kSize);
  const size_t spans = slab.usage().spans;
  void* again = slab.allocate(kSize);
  EXPECT_EQ(again, probe) << "the freed slot of the full span is taken again";
  EXPECT_EQ(slab.usage().spans, spans);
}

// trimSpares gives the pages of a spare span back (all but its first), and the span serves
// allocations again afterwards, from fresh pages.
TEST(SlabTest, TrimSparesReturnsTheSparesPages) {
  Slab slab;
  constexpr size_t kSize = 1024;
  std::vector<void*> slots;
  void* first = slab.allocate(kSize);
  slots.push_back(first);
  while (slots.size() < (Slab::kSpanBytes / kSize) - 1) {
    void* slot = slab.allocate(kSize);
    ASSERT_EQ(spanOf(slot), spanOf(first));
    std::memset(slot, 1, kSize);
    slots.push_back(slot);
  }
  const auto* span = reinterpret_cast<const char*>(spanOf(first));
  EXPECT_EQ(residentPages(span, Slab::kSpanBytes), Slab::kSpanBytes / 4096);
  for (void* slot : slots) {
    slab.deallocate(slot, kSize);
  }
  ASSERT_EQ(slab.usage().spans, 1u);
  EXPECT_EQ(residentPages(span, Slab::kSpanBytes), Slab::kSpanBytes / 4096) << "a spare stays";
  EXPECT_EQ(slab.trimSpares(), 1u);
  EXPECT_EQ(residentPages(span, Slab::kSpanBytes), 1u);
  EXPECT_EQ(slab.trimSpares(), 0u) << "nothing past the first page to give back";
  void* reused = slab.allocate(kSize);
  EXPECT_EQ(spanOf(reused), spanOf(first)) << "the spare serves again";
  std::memset(reused, 2, kSize);
  slab.deallocate(reused, kSize);
}

// A slot may be freed on another thread than the one that took it (a connection's objects are
// freed on its worker; a table's entries on any), with both threads busy at once.
TEST(SlabTest, SlotsMayBeFreedOnAnotherThread) {
  Slab slab;
  std::vector<void*> handed(20000);
  std::thread producer([&] {
    for (void*& slot : handed) {
      slot = slab.allocate(64);
      std::memset(slot, 7, 64);
    }
  });
  std::vector<void*> own;
  for (int i = 0; i < 20000; ++i) {
    own.push_back(slab.allocate(64));
  }
  producer.join();
  std::thread consumer([&] {
    for (void* slot : handed) {
      slab.deallocate(slot, 64);
    }
  });
  for (void* slot : own) {
    slab.deallocate(slot, 64);
  }
  consumer.join();
  EXPECT_EQ(slab.usage().slots, 0u);
  EXPECT_EQ(slab.usage().spans, 1u);
}

// The process slabs keep a few freed slots per thread and size class for that thread's next
// allocations, without the slab's lock; a thread's cache goes back to the slab when the thread
// ends, so that no slot is lost with it (usage() counts the slots of other threads' caches as in
// use: a lost cache would show as slots never freed).
TEST(SlabTest, AThreadsCachedSlotsGoBackWhenItEnds) {
  Slab& slab = Slab::handshakes();
  constexpr size_t kSize = 1800;  // a size class no object of the tests uses
  const size_t before = slab.usage().slots;
  std::thread worker([&] {
    std::vector<void*> slots;
    for (size_t i = 0; i < 3 * Slab::kCachedSlots; ++i) {
      slots.push_back(slab.allocate(kSize));
    }
    for (void* slot : slots) {
      slab.deallocate(slot, kSize);
    }
    // The last one freed is the next one handed out: from the cache.
    void* again = slab.allocate(kSize);
    EXPECT_EQ(again, slots.back());
    slab.deallocate(again, kSize);
    EXPECT_EQ(slab.usage().slots, before) << "this thread's cached slots are not in use";
  });
  worker.join();
  EXPECT_EQ(slab.usage().slots, before) << "the ended thread's cache went back to the slab";
}

// A slot a process slab hands out on one thread may be freed on another; every one comes back.
TEST(SlabTest, ProcessSlabSlotsMayBeFreedOnAnotherThread) {
  Slab& slab = Slab::tunnels();
  constexpr size_t kSize = 1900;
  const size_t before = slab.usage().slots;
  std::vector<void*> handed(5000);
  std::thread producer([&] {
    for (void*& slot : handed) {
      slot = slab.allocate(kSize);
      std::memset(slot, 7, kSize);
    }
  });
  producer.join();
  std::thread consumer([&] {
    for (void* slot : handed) {
      slab.deallocate(slot, kSize);
    }
  });
  consumer.join();
  EXPECT_EQ(slab.usage().slots, before);
}

// SlabAllocator serves a node-based table from Slab::tunnels() and its growing bucket array,
// once larger than a slot, from operator new; the table works as any other.
TEST(SlabTest, AllocatorServesAGrowingHashTable) {
  const size_t before = Slab::tunnels().usage().slots;
  {
    std::unordered_map<int, int, std::hash<int>, std::equal_to<int>,
                       SlabAllocator<std::pair<const int, int>>>
        table;
    for (int i = 0; i < 5000; ++i) {
      table[i] = i * 3;
    }
    EXPECT_GE(Slab::tunnels().usage().slots, before + 5000);
    for (int i = 0; i < 5000; i += 2) {
      table.erase(i);
    }
    for (int i = 0; i < 5000; ++i) {
      EXPECT_EQ(table.count(i), i % 2 == 1 ? 1u : 0u);
    }
    EXPECT_EQ(table.at(4999), 4999 * 3);
  }
  EXPECT_EQ(Slab::tunnels().usage().slots, before);
}

#if defined(__SANITIZE_ADDRESS__)
// In AddressSanitizer builds a freed slot is poisoned: a use after free is reported as it is for
// malloc's memory.
TEST(SlabDeathTest, UseAfterFreeIsReported) {
  Slab slab;
  auto* slot = static_cast<volatile char*>(slab.allocate(100));
  slot[0] = 1;
  slab.deallocate(const_cast<char*>(slot), 100);
  EXPECT_DEATH(slot[50] = 2, "use-after-poison");
}

// The same for a slot that went into a process slab's per-thread cache.
TEST(SlabDeathTest, UseAfterFreeOfACachedSlotIsReported) {
  auto* slot = static_cast<volatile char*>(Slab::tunnels().allocate(100));
  slot[0] = 1;
  Slab::tunnels().deallocate(const_cast<char*>(slot), 100);
  EXPECT_DEATH(slot[50] = 2, "use-after-poison");
}
#endif

}  // namespace
}  // namespace acr
