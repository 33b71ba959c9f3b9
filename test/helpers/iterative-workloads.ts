/**
 * A workload for iterative dumps: memory that changes between rounds in a
 * way the test can predict, and that can check itself.
 */
import { buildC } from "./target";

/**
 * dirtytarget MIB STRIDE: MIB MiB of anonymous memory. Round 0 fills every
 * page; each SIGUSR2 starts round R+1 and rewrites the pages p with
 * p % STRIDE == R % STRIDE (one page in STRIDE), so that page p holds the
 * contents of the last round that wrote it — a formula, so no table of
 * generations has to change (and be saved) with the pages. Prints
 * "ready ADDR BYTES" at start and "dirtied N round R" after each round; on
 * SIGUSR1 checks every page and prints "ok round R" or "bad N round R".
 */
export function dirtyTarget(): string {
  return buildC("dirtytarget", `
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
static volatile sig_atomic_t dirty_requested, check_requested;
static sigset_t wait_old;
static void on_usr1(int s) { (void)s; check_requested = 1; }
static void on_usr2(int s) { (void)s; dirty_requested = 1; }
static unsigned long long *region;
static size_t pages, stride;
static unsigned long round_no;
/* The round whose contents page p holds now. */
static unsigned long gen_of(size_t p) {
  if (round_no == 0) return 0;
  unsigned long back = (unsigned long)((round_no - 1 + stride - p % stride) % stride);
  return back >= round_no ? 0 : round_no - back;
}
static inline unsigned long long word(size_t p, size_t k, unsigned long gen) {
  return ((p * 512 + k) * 0x9e3779b97f4a7c15ULL) ^ (gen * 0x100000001b3ULL) ^ 0x5eedULL;
}
static void fill(size_t p, unsigned long gen) {
  for (size_t k = 0; k < 512; k++) region[p * 512 + k] = word(p, k, gen);
}
int main(int argc, char **argv) {
  size_t mib = argc > 1 ? strtoul(argv[1], 0, 10) : 16;
  stride = argc > 2 ? strtoul(argv[2], 0, 10) : 16;
  pages = (mib << 20) / 4096;
  region = mmap(NULL, pages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (region == MAP_FAILED) return 2;
  for (size_t p = 0; p < pages; p++) fill(p, 0);
  signal(SIGUSR1, on_usr1);
  signal(SIGUSR2, on_usr2);
  { sigset_t wait_block; sigemptyset(&wait_block); sigaddset(&wait_block, SIGUSR1); sigaddset(&wait_block, SIGUSR2);
    /* Handled signals arrive only inside sigsuspend: a pause() loop loses one that lands between its flag check and the call. */
    sigprocmask(SIG_BLOCK, &wait_block, &wait_old); }
  printf("ready %llx %zu\\n", (unsigned long long)region, pages * 4096);
  fflush(stdout);
  for (;;) {
    sigsuspend(&wait_old);
    if (dirty_requested) {
      dirty_requested = 0;
      size_t n = 0;
      round_no++;
      for (size_t p = (round_no - 1) % stride; p < pages; p += stride) { fill(p, round_no); n++; }
      printf("dirtied %zu round %lu\\n", n, round_no);
      fflush(stdout);
    }
    if (check_requested) {
      check_requested = 0;
      size_t bad = 0;
      for (size_t p = 0; p < pages; p++) {
        unsigned long g = gen_of(p);
        for (size_t k = 0; k < 512; k++) if (region[p * 512 + k] != word(p, k, g)) { bad++; break; }
      }
      if (bad) printf("bad %zu round %lu\\n", bad, round_no); else printf("ok round %lu\\n", round_no);
      fflush(stdout);
    }
  }
}
`);
}

/**
 * watchtarget DIR N: creates files DIR/f0 … DIR/f(N-1) and watches each with
 * one inotify fd (IN_MODIFY | IN_ATTRIB), then prints "ready FD". On SIGUSR1
 * it writes to every file through its watch-independent path DIR/fK — or,
 * after a rename, whatever the test arranged — and reads the events: it
 * prints "ok N" when every watch reported a modification on its own wd, else
 * "bad …".
 */
export function watchTarget(): string {
  return buildC("watchtarget", `
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <unistd.h>
static volatile sig_atomic_t check_requested;
static sigset_t wait_old;
static void on_usr1(int s) { (void)s; check_requested = 1; }
int main(int argc, char **argv) {
  const char *dir = argv[1];
  int n = atoi(argv[2]);
  int ifd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (ifd < 0) return 2;
  int *fds = calloc(n, sizeof *fds);
  char path[4096];
  for (int i = 0; i < n; i++) {
    snprintf(path, sizeof path, "%s/f%d", dir, i);
    int fd = open(path, O_CREAT | O_WRONLY, 0644);
    if (fd < 0) return 3;
    close(fd);
    if (inotify_add_watch(ifd, path, IN_MODIFY | IN_ATTRIB) != i + 1) return 4;
  }
  /* Files are reopened by the names they have then; the test may rename them. */
  signal(SIGUSR1, on_usr1);
  { sigset_t wait_block; sigemptyset(&wait_block); sigaddset(&wait_block, SIGUSR1); sigaddset(&wait_block, SIGUSR2);
    /* Handled signals arrive only inside sigsuspend: a pause() loop loses one that lands between its flag check and the call. */
    sigprocmask(SIG_BLOCK, &wait_block, &wait_old); }
  printf("ready %d\\n", ifd);
  fflush(stdout);
  for (;;) {
    while (!check_requested) sigsuspend(&wait_old);
    check_requested = 0;
    char *seen = calloc(n + 1, 1);
    for (int i = 0; i < n; i++) {
      snprintf(path, sizeof path, "%s/f%d", dir, i);
      int fd = open(path, O_WRONLY | O_APPEND);
      if (fd < 0) { snprintf(path, sizeof path, "%s/g%d", dir, i); fd = open(path, O_WRONLY | O_APPEND); }
      if (fd < 0 || write(fd, "x", 1) != 1) { printf("bad open f%d\\n", i); fflush(stdout); goto next; }
      close(fd);
    }
    usleep(100000);
    char buf[65536] __attribute__((aligned(8)));
    for (;;) {
      ssize_t len = read(ifd, buf, sizeof buf);
      if (len <= 0) break;
      for (char *p = buf; p < buf + len;) {
        struct inotify_event *ev = (struct inotify_event *)p;
        if ((ev->mask & IN_MODIFY) && ev->wd >= 1 && ev->wd <= n) seen[ev->wd] = 1;
        p += sizeof *ev + ev->len;
      }
    }
    int missing = 0;
    for (int i = 1; i <= n; i++) if (!seen[i]) missing++;
    if (missing) printf("bad %d watches saw no event\\n", missing); else printf("ok %d\\n", n);
    fflush(stdout);
  next:
    free(seen);
  }
}
`);
}

/**
 * respawntarget: a root that forks one child; the child fills 4 MiB with a
 * pattern of its generation and waits. On SIGUSR2 the root kills the child
 * and starts a new one under the same pid (clone3 with set_tid), one
 * generation on, and prints "respawned PID GEN". On SIGUSR1 the root asks the
 * child to check its memory; the child prints "ok GEN" or "bad GEN".
 * Prints "ready ROOT CHILD" at start.
 */
export function respawnTarget(): string {
  return buildC("respawntarget", `
#define _GNU_SOURCE
#include <linux/sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#define WORDS ((4 << 20) / 8)
static volatile sig_atomic_t usr1, usr2;
static sigset_t wait_old;
static void on_usr1(int s) { (void)s; usr1 = 1; }
static void on_usr2(int s) { (void)s; usr2 = 1; }
static unsigned gen;
static inline unsigned long long word(size_t k) { return (k * 0x9e3779b97f4a7c15ULL) ^ ((unsigned long long)gen << 40); }
static void child_main(void) {
  unsigned long long *m = mmap(NULL, WORDS * 8, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  for (size_t k = 0; k < WORDS; k++) m[k] = word(k);
  for (;;) {
    while (!usr1) sigsuspend(&wait_old);
    usr1 = 0;
    size_t bad = 0;
    for (size_t k = 0; k < WORDS; k++) if (m[k] != word(k)) bad++;
    printf(bad ? "bad %u\\n" : "ok %u\\n", gen);
    fflush(stdout);
  }
}
static pid_t spawn(pid_t want) {
  struct clone_args a;
  memset(&a, 0, sizeof a);
  a.exit_signal = SIGCHLD;
  if (want) { a.set_tid = (uint64_t)(uintptr_t)&want; a.set_tid_size = 1; }
  pid_t p = (pid_t)syscall(SYS_clone3, &a, sizeof a);
  if (p == 0) { child_main(); _exit(0); }
  return p;
}
int main(void) {
  signal(SIGUSR1, on_usr1);
  signal(SIGUSR2, on_usr2);
  { sigset_t wait_block; sigemptyset(&wait_block); sigaddset(&wait_block, SIGUSR1); sigaddset(&wait_block, SIGUSR2);
    /* Handled signals arrive only inside sigsuspend: a pause() loop loses one that lands between its flag check and the call. */
    sigprocmask(SIG_BLOCK, &wait_block, &wait_old); }
  pid_t child = spawn(0);
  if (child < 0) return 2;
  printf("ready %d %d\\n", getpid(), child);
  fflush(stdout);
  for (;;) {
    sigsuspend(&wait_old);
    if (usr2) {
      usr2 = 0;
      kill(child, SIGKILL);
      waitpid(child, NULL, 0);
      gen++;
      pid_t again = spawn(child);
      if (again != child) { printf("bad respawn %d\\n", again); fflush(stdout); continue; }
      printf("respawned %d %u\\n", child, gen);
      fflush(stdout);
    }
    if (usr1) { usr1 = 0; kill(child, SIGUSR1); }
  }
}
`);
}
