// The heap of an acr-egress under test, for bench/e2e/run.py --idle-probe (PROFILE.md section 9):
// loaded with LD_PRELOAD (run.py --wrap), it answers SIGPWR by writing glibc's mallinfo2() of the
// whole process (every arena) to /tmp/acr-heap-PID.txt, so that the RSS delta per idle tunnel can
// be split into live bytes (uordblks) and free bytes the allocator keeps (fordblks).
// Build: cc -shared -fPIC -O2 -o /tmp/heap_probe.so bench/e2e/heap_probe.c
// Bench-only: never linked into acr-egress (mallinfo2 in a signal handler is not async-safe; the
// probe is sent while every loop waits in epoll_wait).
#define _GNU_SOURCE
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

static void report(int signal_number) {
  (void)signal_number;
  char path[64];
  snprintf(path, sizeof(path), "/tmp/acr-heap-%d.txt", (int)getpid());
  FILE* out = fopen(path, "w");
  if (out == NULL) {
    return;
  }
  const struct mallinfo2 info = mallinfo2();
  fprintf(out, "in_use=%zu free=%zu arena=%zu mmapped=%zu\n", info.uordblks, info.fordblks,
          info.arena, info.hblkhd);
  fclose(out);
}

__attribute__((constructor)) static void install(void) { signal(SIGPWR, report); }
