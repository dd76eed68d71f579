#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <new>

namespace acr {

// Memory for the per-connection objects of the data path: fixed-size slots in 64 KiB spans of
// their own, one set of spans per size class, mapped with mmap(2) apart from malloc's heap. Three
// slabs: tunnels() for what a relaying tunnel keeps (Connection, its streams, its packed log
// record, its entries in the worker's and OwnUpstreams' tables), handshakes() for what only the
// handshake needs (Connection::Handshake, the dialer), and libevent() for libevent's own small
// allocations (useSlabForLibevent: its per-descriptor entries, kept for the process's life, and
// the buffers of a handshake, which are not).
//
// Why (memory per idle tunnel, issue 9 section 2; bench/e2e/PROFILE.md section 10): from glibc's
// malloc, a burst of handshakes interleaves the objects a relaying tunnel keeps with the ones
// only its handshake needs. Once the handshakes are over the heap is full of holes between live
// tunnels, no page of it wholly free, and malloc keeps every one of them (500 idle tunnels held
// 3.8 KiB of RSS each for 1.7 KB of live objects). Here objects of one size share spans, a span
// of handshake state empties as its handshakes end, and an empty span is unmapped: a relaying
// tunnel's pages hold relaying tunnels. (Several slabs, because a Connection and its Handshake
// are of one size class: in one slab they would share spans again.)
//
// A span that empties stays mapped as its class's spare while the class has no spare, so that a
// load moving across a span boundary does not map and unmap one each time; any further empty
// span is unmapped at once, and trimSpares() gives the spares' pages back after a burst. Sizes
// above kMaxSlot are not for a slab: allocate() refuses them (SlabAllocator falls back to operator
// new).
//
// Thread-safe: one mutex per slab, and a slot may be freed on another thread than the one that
// took it. The three process slabs put a small per-thread cache in front of it (up to
// kCachedSlots free slots per size class and thread, filled and emptied kCachedSlots / 2 at a time
// under one lock): a tunnel takes and gives back about 24 slots, and with two workers the mutex's
// cache line went from core to core for each (bench/e2e/PROFILE.md section 15). A cached slot
// stays counted in its span, so a thread's cache can keep at most kCachedSlots slots per class
// from being unmapped; a thread's cache goes back to the slab when the thread ends, and the
// calling thread's in trimSpares(). A test's own Slab has no cache. In AddressSanitizer builds a
// free slot, cached or not, is poisoned, so that a use after free still reports.
class Slab {
 public:
  static constexpr size_t kSpanBytes = 64 * 1024;
  static constexpr size_t kGranule = 32;      // slot sizes are multiples of this (and so aligned)
  static constexpr size_t kMaxSlot = 2048;    // a libevent buffer chain's 1,024 bytes fit
  static constexpr size_t kCachedSlots = 16;  // per thread and size class (process slabs)

  // The process's two slabs: made on first use, never destroyed (an object may be freed during
  // static destruction).
  static Slab& tunnels() noexcept;
  static Slab& handshakes() noexcept;
  static Slab& libevent() noexcept;

  Slab() = default;
  // Unmaps every span (a test's own slab; every slot must have been freed).
  ~Slab();
  Slab(const Slab&) = delete;
  Slab& operator=(const Slab&) = delete;

  // A slot of at least `size` bytes (1..kMaxSlot), aligned to kGranule. Throws std::bad_alloc
  // when no span can be mapped.
  void* allocate(size_t size);
  // Gives back a slot allocate(size) returned, with the same `size`.
  void deallocate(void* slot, size_t size) noexcept;

  // Returns the pages of every spare span but its first to the kernel (MADV_DONTNEED), after
  // giving the calling thread's cached slots back: after a burst (Worker, at most once a second),
  // so that the spares of the handshakes' size classes do not keep the burst's peak resident. The
  // spans stay mapped; their next use faults in fresh pages. Returns the number of spares trimmed.
  size_t trimSpares() noexcept;
  // trimSpares() of the three process slabs.
  static void trimAllSpares() noexcept;

  struct Usage {
    size_t spans = 0;  // mapped, spares included
    size_t slots =
        0;  // allocated and not freed (slots in other threads' caches count as allocated)
  };
  Usage usage() const;

 private:
  struct Span;
  static constexpr size_t kClasses = kMaxSlot / kGranule;
  static constexpr int kUncached = -1;
  static constexpr int kProcessSlabs = 3;
  explicit Slab(int cache_index) : cache_index_(cache_index) {}

  // A thread's free slots of one process slab and size class, linked through their first bytes
  // (as a span's free list).
  struct CacheBin {
    void* head = nullptr;
    uint32_t count = 0;
    // `slot` (of `bytes`) onto the list, poisoned.
    void push(void* slot, size_t bytes) noexcept;
    // The last slot pushed, still poisoned but for its link bytes.
    void* pop() noexcept;
  };
  using CacheBins = std::array<CacheBin, kClasses>;
  // Plain data, so that it can still be read (`dead`) by code that frees a slot from a
  // thread_local destructor running after ~ThreadCacheFlusher.
  struct ThreadCache {
    std::array<CacheBins, kProcessSlabs> bins{};
    bool armed = false;  // thread_cache_flusher_ exists for this thread
    bool dead = false;   // the thread is ending: its frees go to the slab
  };
  // Gives the thread's cached slots back to their slabs when the thread ends.
  struct ThreadCacheFlusher {
    ~ThreadCacheFlusher();
    bool constructed = true;
  };
  static thread_local ThreadCache thread_cache_;
  static thread_local ThreadCacheFlusher thread_cache_flusher_;
  static Slab& processSlab(int cache_index) noexcept;
  // This thread's bins of this slab, or null when the slab (or the ending thread) caches nothing.
  CacheBins* threadBins() noexcept;
  // Moves slots from `bin` to the slab until `keep` are left (one lock).
  void flushBin(CacheBin& bin, size_t size_class, uint32_t keep) noexcept;
  // Empties every bin of `bins` into the slab.
  void flushBins(CacheBins& bins) noexcept;
  // Moves up to kCachedSlots / 2 slots from the slab to the empty `bin` (one lock). Throws
  // std::bad_alloc when not even one can be had.
  void refillBin(CacheBin& bin, size_t size_class);

  struct SizeClass {
    Span* partial = nullptr;  // spans with a slot in use and a free one (linked by prev/next)
    Span* spare = nullptr;    // an empty span kept mapped (on no list)
  };

  static size_t classOf(size_t size) noexcept { return (size - 1) / kGranule; }
  static size_t slotBytes(size_t size_class) noexcept { return (size_class + 1) * kGranule; }
  // The slab's own work, with mutex_ held.
  void* allocateLocked(size_t size_class);
  void deallocateLocked(void* slot, size_t size_class) noexcept;
  Span* mapSpan(size_t size_class);
  void unmapSpan(Span* span) noexcept;
  static void link(Span*& head, Span* span) noexcept;
  static void unlink(Span*& head, Span* span) noexcept;

  // Which of the process slabs (an index into ThreadCache), or kUncached.
  const int cache_index_ = kUncached;
  mutable std::mutex mutex_;
  std::array<SizeClass, kClasses> classes_{};
  size_t spans_ = 0;
  size_t slots_ = 0;
};

// A standard allocator over Slab::tunnels(), for the node-based tables a connection adds an
// entry to: requests larger than a slot (a hash table's bucket array) go to operator new.
template <typename T>
struct SlabAllocator {
  using value_type = T;

  SlabAllocator() noexcept = default;
  template <typename U>
  SlabAllocator(const SlabAllocator<U>&) noexcept {}  // NOLINT: implicit, as allocators are

  static_assert(alignof(T) <= alignof(std::max_align_t), "a slot is aligned as malloc's memory");

  T* allocate(size_t n) {
    const size_t bytes = n * sizeof(T);
    if (bytes <= Slab::kMaxSlot) {
      return static_cast<T*>(Slab::tunnels().allocate(bytes));
    }
    return static_cast<T*>(::operator new(bytes));
  }
  void deallocate(T* pointer, size_t n) noexcept {
    const size_t bytes = n * sizeof(T);
    if (bytes <= Slab::kMaxSlot) {
      Slab::tunnels().deallocate(pointer, bytes);
      return;
    }
    ::operator delete(pointer);
  }
  template <typename U>
  bool operator==(const SlabAllocator<U>&) const noexcept {
    return true;
  }
};

// Class-scope operator new and delete over one of the slabs, declared inside the class:
// ACR_SLAB_ALLOCATED(Connection, tunnels). A class larger than a slot does not compile.
#define ACR_SLAB_ALLOCATED(Class, slab)                                          \
  static void* operator new(size_t size) {                                       \
    static_assert(sizeof(Class) <= ::acr::Slab::kMaxSlot, "larger than a slot"); \
    return ::acr::Slab::slab().allocate(size);                                   \
  }                                                                              \
  static void operator delete(void* pointer, size_t size) noexcept {             \
    ::acr::Slab::slab().deallocate(pointer, size);                               \
  }

}  // namespace acr
