#include "proxy/libevent_memory.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

#include "proxy/slab.h"

namespace acr {
namespace {

// What a process that runs the proxy does with libevent, after useSlabForLibevent(): an
// event_base, events on descriptors (their per-descriptor entries), buffers growing past a slot
// (realloc and malloc's side) and shrinking. Exits 0 when every byte read back is right and the
// slab held libevent's small blocks while they lived and none once all were freed.
[[noreturn]] void runLibeventOnTheSlab() {
  useSlabForLibevent();
  event_base* base = event_base_new();
  if (base == nullptr) {
    std::_Exit(10);
  }
  const size_t before = Slab::libevent().usage().slots;
  if (before == 0) {
    std::_Exit(11);  // the base's own small blocks are not in the slab
  }
  int pair[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, pair) != 0) {
    std::_Exit(12);
  }
  event* readable = event_new(
      base, pair[0], EV_READ | EV_PERSIST, [](evutil_socket_t, short, void*) {}, nullptr);
  event_add(readable, nullptr);
  evbuffer* buffer = evbuffer_new();
  std::string expected;
  for (int i = 0; i < 2000; ++i) {  // small adds, then chains far larger than a slot
    const std::string piece(static_cast<size_t>(i % 97 + 1) * (i < 1000 ? 1 : 50),
                            static_cast<char>('a' + i % 26));
    evbuffer_add(buffer, piece.data(), piece.size());
    expected += piece;
  }
  const size_t length = evbuffer_get_length(buffer);
  const auto* bytes = reinterpret_cast<const char*>(evbuffer_pullup(buffer, -1));
  if (length != expected.size() || std::string(bytes, length) != expected) {
    std::_Exit(13);
  }
  evbuffer_free(buffer);
  event_free(readable);
  event_base_free(base);
  close(pair[0]);
  close(pair[1]);
  std::_Exit(Slab::libevent().usage().slots == 0 ? 0 : 14);
}

// libevent's memory through the slab (a fresh process: useSlabForLibevent must come before any
// libevent call, and this test binary's other tests call libevent).
TEST(LibeventMemoryDeathTest, LibeventRunsOnTheSlab) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(runLibeventOnTheSlab(), ::testing::ExitedWithCode(0), "");
}

}  // namespace
}  // namespace acr
