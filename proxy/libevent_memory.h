#pragma once

namespace acr {

// Makes libevent allocate its memory of up to Slab::kMaxSlot bytes from Slab::libevent(), the
// rest from malloc (event_set_mem_functions). Call once, first thing in the process that runs the
// proxy: before any libevent call, since memory libevent took from malloc must not come back to
// these functions (a process that used libevent already, such as a test's, must not call it).
//
// Why: libevent keeps an entry per descriptor number for the life of its event_base, made the
// first time a number is used. In a burst of new connections those entries are made between the
// handshakes' buffers, and after the burst each one, 32 bytes, keeps a page of freed handshake
// memory resident (slab.h; bench/e2e/PROFILE.md section 10).
void useSlabForLibevent();

}  // namespace acr
