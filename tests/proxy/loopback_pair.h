#pragma once

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

namespace acr {

// A connected TCP pair on 127.0.0.1, for tests of code that owns one end of a real socket:
// `ours` non-blocking (the end a Stream takes), `peer` blocking (the test's side). Both -1 (and
// a failed expectation) when the pair could not be made.
struct LoopbackPair {
  int peer = -1;
  int ours = -1;
};

inline LoopbackPair connectedLoopbackPair() {
  LoopbackPair pair;
  const int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof(address);
  const bool listening = listener >= 0 &&
                         bind(listener, reinterpret_cast<sockaddr*>(&address), length) == 0 &&
                         listen(listener, 1) == 0 &&
                         getsockname(listener, reinterpret_cast<sockaddr*>(&address), &length) == 0;
  EXPECT_TRUE(listening);
  if (listening) {
    pair.peer = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    EXPECT_EQ(connect(pair.peer, reinterpret_cast<sockaddr*>(&address), length), 0);
    pair.ours = accept4(listener, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    EXPECT_GE(pair.ours, 0);
  }
  if (listener >= 0) {
    close(listener);
  }
  return pair;
}

}  // namespace acr
