#include "proxy/libevent_memory.h"

#include <event2/event.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>

#include "proxy/slab.h"

namespace acr {
namespace {

// Before every block: its size and where it came from, since libevent's free and realloc are
// given only the pointer. 16 bytes keep the block aligned as malloc's are.
struct alignas(16) Header {
  size_t size;   // as asked for
  size_t total;  // size + the header; from the slab when <= Slab::kMaxSlot
};
static_assert(sizeof(Header) == 16);

void* allocate(size_t size) noexcept {
  const size_t total = size + sizeof(Header);
  void* block;
  if (total <= Slab::kMaxSlot) {
    try {
      block = Slab::libevent().allocate(total);
    } catch (const std::bad_alloc&) {
      return nullptr;
    }
  } else {
    block = std::malloc(total);
    if (block == nullptr) {
      return nullptr;
    }
  }
  auto* header = static_cast<Header*>(block);
  header->size = size;
  header->total = total;
  return header + 1;
}

void release(void* pointer) noexcept {
  if (pointer == nullptr) {
    return;
  }
  Header* header = static_cast<Header*>(pointer) - 1;
  if (header->total <= Slab::kMaxSlot) {
    Slab::libevent().deallocate(header, header->total);
  } else {
    std::free(header);
  }
}

void* reallocate(void* pointer, size_t size) noexcept {
  if (pointer == nullptr) {
    return allocate(size);
  }
  Header* header = static_cast<Header*>(pointer) - 1;
  void* moved = allocate(size);
  if (moved == nullptr) {
    return nullptr;  // the old block stays, as realloc(3) leaves it
  }
  std::memcpy(moved, pointer, std::min(size, header->size));
  release(pointer);
  return moved;
}

}  // namespace

void useSlabForLibevent() { event_set_mem_functions(&allocate, &reallocate, &release); }

}  // namespace acr
