#include "proxy/slab.h"

#include <sanitizer/asan_interface.h>
#include <sys/mman.h>

#include <cassert>
#include <cstring>

namespace acr {

// A span's first kHeaderBytes: its bookkeeping. Slots follow, carved in order from `carved` on
// first use (so that a span only touches the pages its slots have reached); a freed slot holds
// the next free one in its first bytes.
struct Slab::Span {
  Span* prev = nullptr;
  Span* next = nullptr;
  void* free = nullptr;  // freed slots, last freed first
  uint32_t carved;       // offset of the first slot never handed out
  uint32_t live = 0;     // slots handed out and not freed
  uint32_t size_class;
  bool listed = false;  // on its class's partial list
};

namespace {

constexpr size_t kHeaderBytes = 64;
static_assert(kHeaderBytes % Slab::kGranule == 0 && kHeaderBytes >= sizeof(void*) * 6);

// A free slot's link to the next one: its first bytes, read and written with the rest of the
// slot poisoned.
void* readLink(void* slot) noexcept {
  ASAN_UNPOISON_MEMORY_REGION(slot, sizeof(void*));
  void* next;
  std::memcpy(&next, slot, sizeof(void*));
  return next;
}

}  // namespace

thread_local Slab::ThreadCache Slab::thread_cache_;
thread_local Slab::ThreadCacheFlusher Slab::thread_cache_flusher_;

Slab& Slab::tunnels() noexcept {
  static Slab* const slab = new Slab(0);
  return *slab;
}

Slab& Slab::handshakes() noexcept {
  static Slab* const slab = new Slab(1);
  return *slab;
}

Slab& Slab::libevent() noexcept {
  static Slab* const slab = new Slab(2);
  return *slab;
}

Slab& Slab::processSlab(int cache_index) noexcept {
  switch (cache_index) {
    case 0:
      return tunnels();
    case 1:
      return handshakes();
    default:
      return libevent();
  }
}

void Slab::CacheBin::push(void* slot, size_t bytes) noexcept {
  std::memcpy(slot, &head, sizeof(void*));
  ASAN_POISON_MEMORY_REGION(slot, bytes);
  head = slot;
  ++count;
}

void* Slab::CacheBin::pop() noexcept {
  void* slot = head;
  head = readLink(slot);
  --count;
  return slot;
}

Slab::ThreadCacheFlusher::~ThreadCacheFlusher() {
  ThreadCache& cache = thread_cache_;
  cache.dead = true;
  for (int index = 0; index < kProcessSlabs; ++index) {
    processSlab(index).flushBins(cache.bins[index]);
  }
}

Slab::CacheBins* Slab::threadBins() noexcept {
  ThreadCache& cache = thread_cache_;
  if (cache_index_ == kUncached || cache.dead) {
    return nullptr;
  }
  if (!cache.armed) {
    cache.armed = true;
    thread_cache_flusher_.constructed = true;  // constructs it: its destructor runs at the end
  }
  return &cache.bins[cache_index_];
}

void Slab::flushBin(CacheBin& bin, size_t size_class, uint32_t keep) noexcept {
  std::lock_guard lock(mutex_);
  while (bin.count > keep) {
    deallocateLocked(bin.pop(), size_class);
  }
}

void Slab::flushBins(CacheBins& bins) noexcept {
  for (size_t size_class = 0; size_class < kClasses; ++size_class) {
    if (bins[size_class].count > 0) {
      flushBin(bins[size_class], size_class, 0);
    }
  }
}

void Slab::refillBin(CacheBin& bin, size_t size_class) {
  const size_t bytes = slotBytes(size_class);
  std::lock_guard lock(mutex_);
  for (size_t taken = 0; taken < kCachedSlots / 2; ++taken) {
    void* slot;
    try {
      slot = allocateLocked(size_class);
    } catch (const std::bad_alloc&) {
      if (taken == 0) {
        throw;
      }
      return;
    }
    bin.push(slot, bytes);
  }
}

Slab::~Slab() {
  for (SizeClass& size_class : classes_) {
    if (size_class.spare != nullptr) {
      unmapSpan(size_class.spare);
    }
    while (size_class.partial != nullptr) {
      Span* span = size_class.partial;
      unlink(size_class.partial, span);
      unmapSpan(span);
    }
  }
}

void* Slab::allocate(size_t size) {
  if (size == 0 || size > kMaxSlot) {
    throw std::bad_alloc();
  }
  const size_t index = classOf(size);
  if (CacheBins* bins = threadBins()) {
    CacheBin& bin = (*bins)[index];
    if (bin.count == 0) {
      refillBin(bin, index);
    }
    void* slot = bin.pop();
    ASAN_UNPOISON_MEMORY_REGION(slot, slotBytes(index));
    return slot;
  }
  std::lock_guard lock(mutex_);
  return allocateLocked(index);
}

void* Slab::allocateLocked(size_t index) {
  const size_t bytes = slotBytes(index);
  SizeClass& size_class = classes_[index];
  Span* span = size_class.partial;
  if (span == nullptr) {
    if (size_class.spare != nullptr) {
      span = size_class.spare;
      size_class.spare = nullptr;
    } else {
      span = mapSpan(index);
    }
    link(size_class.partial, span);
  }
  char* slot;
  if (span->free != nullptr) {
    slot = static_cast<char*>(span->free);
    span->free = readLink(slot);
  } else {
    slot = reinterpret_cast<char*>(span) + span->carved;
    span->carved += static_cast<uint32_t>(bytes);
  }
  ASAN_UNPOISON_MEMORY_REGION(slot, bytes);
  ++span->live;
  ++slots_;
  if (span->free == nullptr && span->carved + bytes > kSpanBytes) {
    unlink(size_class.partial, span);  // full
  }
  return slot;
}

void Slab::deallocate(void* slot, size_t size) noexcept {
  if (slot == nullptr) {
    return;
  }
  const size_t index = classOf(size);
  assert(
      reinterpret_cast<Span*>(reinterpret_cast<uintptr_t>(slot) & ~(kSpanBytes - 1))->size_class ==
      index);
  if (CacheBins* bins = threadBins()) {
    CacheBin& bin = (*bins)[index];
    if (bin.count == kCachedSlots) {
      flushBin(bin, index, kCachedSlots / 2);
    }
    bin.push(slot, slotBytes(index));
    return;
  }
  std::lock_guard lock(mutex_);
  deallocateLocked(slot, index);
}

void Slab::deallocateLocked(void* slot, size_t index) noexcept {
  auto* span = reinterpret_cast<Span*>(reinterpret_cast<uintptr_t>(slot) & ~(kSpanBytes - 1));
  assert(span->size_class == index);
  ASAN_UNPOISON_MEMORY_REGION(slot, sizeof(void*));
  std::memcpy(slot, &span->free, sizeof(void*));
  span->free = slot;
  ASAN_POISON_MEMORY_REGION(slot, slotBytes(index));
  --span->live;
  --slots_;
  SizeClass& size_class = classes_[index];
  if (span->live > 0) {
    if (!span->listed) {
      link(size_class.partial, span);  // was full
    }
    return;
  }
  if (span->listed) {
    unlink(size_class.partial, span);
  }
  if (size_class.spare == nullptr) {
    size_class.spare = span;
  } else {
    unmapSpan(span);
  }
}

size_t Slab::trimSpares() noexcept {
  constexpr size_t kPage = 4096;
  if (CacheBins* bins = threadBins()) {
    flushBins(*bins);
  }
  std::lock_guard lock(mutex_);
  size_t trimmed = 0;
  for (SizeClass& size_class : classes_) {
    Span* span = size_class.spare;
    if (span == nullptr || span->carved <= kPage) {
      continue;  // nothing past the first page was touched
    }
    // Empty, so carving starts again; the first page (the header's) stays as it is.
    span->free = nullptr;
    span->carved = kHeaderBytes;
    ASAN_POISON_MEMORY_REGION(reinterpret_cast<char*>(span) + kHeaderBytes,
                              kSpanBytes - kHeaderBytes);
    madvise(reinterpret_cast<char*>(span) + kPage, kSpanBytes - kPage, MADV_DONTNEED);
    ++trimmed;
  }
  return trimmed;
}

void Slab::trimAllSpares() noexcept {
  tunnels().trimSpares();
  handshakes().trimSpares();
  libevent().trimSpares();
}

Slab::Usage Slab::usage() const {
  size_t cached = 0;  // this thread's: not in use by anything
  if (cache_index_ != kUncached && !thread_cache_.dead) {
    for (const CacheBin& bin : thread_cache_.bins[cache_index_]) {
      cached += bin.count;
    }
  }
  std::lock_guard lock(mutex_);
  return Usage{spans_, slots_ - cached};
}

Slab::Span* Slab::mapSpan(size_t size_class) {
  // Twice the size, then the unaligned ends unmapped: a span is kSpanBytes-aligned, so that
  // deallocate() finds its header from a slot's address.
  void* mapped =
      mmap(nullptr, 2 * kSpanBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mapped == MAP_FAILED) {
    throw std::bad_alloc();
  }
  const auto start = reinterpret_cast<uintptr_t>(mapped);
  const uintptr_t aligned = (start + kSpanBytes - 1) & ~(kSpanBytes - 1);
  if (aligned > start) {
    munmap(mapped, aligned - start);
  }
  const uintptr_t end = start + 2 * kSpanBytes;
  if (end > aligned + kSpanBytes) {
    munmap(reinterpret_cast<void*>(aligned + kSpanBytes), end - aligned - kSpanBytes);
  }
  auto* span = new (reinterpret_cast<void*>(aligned)) Span;
  span->carved = kHeaderBytes;
  span->size_class = static_cast<uint32_t>(size_class);
  ASAN_POISON_MEMORY_REGION(reinterpret_cast<char*>(aligned) + kHeaderBytes,
                            kSpanBytes - kHeaderBytes);
  ++spans_;
  return span;
}

void Slab::unmapSpan(Span* span) noexcept {
  // The shadow memory too: a later mapping at this address must not read as poisoned.
  ASAN_UNPOISON_MEMORY_REGION(span, kSpanBytes);
  munmap(span, kSpanBytes);
  --spans_;
}

void Slab::link(Span*& head, Span* span) noexcept {
  span->prev = nullptr;
  span->next = head;
  if (head != nullptr) {
    head->prev = span;
  }
  head = span;
  span->listed = true;
}

void Slab::unlink(Span*& head, Span* span) noexcept {
  if (span->prev != nullptr) {
    span->prev->next = span->next;
  } else {
    head = span->next;
  }
  if (span->next != nullptr) {
    span->next->prev = span->prev;
  }
  span->prev = span->next = nullptr;
  span->listed = false;
}

}  // namespace acr
