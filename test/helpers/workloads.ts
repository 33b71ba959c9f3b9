/**
 * C workloads for dump tests. Each prints "ready ..." with what the test needs
 * to know, then blocks in a system call (so its registers and memory hold
 * still), and on SIGUSR1 checks its own state and prints "ok" or "bad ...".
 */
import { readFileSync } from "node:fs";
import { buildC, waitFor } from "./target";

/** Pattern word k of a region, the same formula the C code uses. */
export function patternWord(k: bigint, seed: bigint): bigint {
  return BigInt.asUintN(64, (k * 0x9e3779b97f4a7c15n) ^ seed);
}

export const PATTERN_C = `
static inline unsigned long long pattern_word(unsigned long long k, unsigned long long seed) {
  return (k * 0x9e3779b97f4a7c15ULL) ^ seed;
}
`;

/**
 * memtarget MIB THREADS: MIB MiB of anonymous memory filled with a pattern,
 * THREADS extra threads each blocked on a condition variable (a futex) with a
 * thread-local value.
 * Prints "ready ADDR BYTES TID..." .
 */
export function memTarget(): string {
  return buildC("memtarget", `
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>
${PATTERN_C}
#define SEED 0x5eed1234abcdULL
static volatile sig_atomic_t check_requested;
static unsigned long long *region;
static size_t region_bytes;
static __thread unsigned long long tls_value;
static unsigned long long thread_values[64];
static volatile int thread_ok[64];
static int nthreads;
static pthread_mutex_t gate_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate = PTHREAD_COND_INITIALIZER;
static unsigned gate_generation;
static pid_t tids[64];

static void on_usr1(int sig) { (void)sig; check_requested = 1; }

struct targ { int i; };
static void *thread_main(void *p) {
  int i = ((struct targ *)p)->i;
  /* Only main may take SIGUSR1. A process-directed signal goes to any thread
     that does not block it, and the kernel passes over one that is stopped or
     already has a signal pending (as a thread just let go by a tracer does);
     a worker would then run the handler while main sleeps on in pause(). */
  sigset_t usr1; sigemptyset(&usr1); sigaddset(&usr1, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &usr1, NULL);
  tls_value = 0x7700000000ULL + (unsigned long long)i;
  thread_values[i] = tls_value;
  tids[i] = (pid_t)syscall(SYS_gettid);
  unsigned seen = 0;
  for (;;) {
    pthread_mutex_lock(&gate_lock);
    while (gate_generation == seen) pthread_cond_wait(&gate, &gate_lock);
    seen = gate_generation;
    pthread_mutex_unlock(&gate_lock);
    thread_ok[i] = (tls_value == 0x7700000000ULL + (unsigned long long)i) ? 1 : 2;
  }
  return NULL;
}

int main(int argc, char **argv) {
  size_t mib = argc > 1 ? strtoul(argv[1], 0, 10) : 16;
  nthreads = argc > 2 ? atoi(argv[2]) : 0;
  region_bytes = mib << 20;
  region = mmap(NULL, region_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (region == MAP_FAILED) return 2;
  for (size_t k = 0; k < region_bytes / 8; k++) region[k] = pattern_word(k, SEED);
  struct sigaction sa; memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_usr1; sigemptyset(&sa.sa_mask); sigaddset(&sa.sa_mask, SIGUSR2);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGUSR1, &sa, NULL);
  static struct targ targs[64];
  pthread_t th[64];
  for (int i = 0; i < nthreads; i++) { targs[i].i = i; pthread_create(&th[i], NULL, thread_main, &targs[i]); }
  for (int i = 0; i < nthreads; i++) while (!tids[i]) usleep(1000);
  printf("ready %llx %zu", (unsigned long long)region, region_bytes);
  for (int i = 0; i < nthreads; i++) printf(" %d", tids[i]);
  printf("\\n");
  fflush(stdout);
  /* SIGUSR1 blocked but inside sigsuspend: a pause() loop loses a signal that
     lands between its flag check and the call (as one does right after a
     tracer lets the thread go and it re-issues the interrupted pause). */
  sigset_t usr1, old;
  sigemptyset(&usr1); sigaddset(&usr1, SIGUSR1);
  sigprocmask(SIG_BLOCK, &usr1, &old);
  for (;;) {
    while (!check_requested) sigsuspend(&old);
    check_requested = 0;
    size_t bad = 0;
    for (size_t k = 0; k < region_bytes / 8; k++) if (region[k] != pattern_word(k, SEED)) bad++;
    for (int i = 0; i < nthreads; i++) thread_ok[i] = 0;
    pthread_mutex_lock(&gate_lock);
    gate_generation++;
    pthread_cond_broadcast(&gate);
    pthread_mutex_unlock(&gate_lock);
    for (int i = 0; i < nthreads; i++) { int spins = 0; while (!thread_ok[i] && spins++ < 5000) usleep(1000); if (thread_ok[i] != 1) bad++; }
    if (bad) printf("bad %zu\\n", bad); else printf("ok\\n");
    fflush(stdout);
  }
}
`);
}

/**
 * treetarget [MIB]: a root that forks a child that forks a grandchild; each
 * first fills MIB MiB (default 0) of private memory; all three block in
 * pause(). Prints "ready ROOT CHILD GRANDCHILD".
 */
export function treeTarget(): string {
  return buildC("treetarget", `
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/types.h>
static void fill(size_t mib) {
  if (!mib) return;
  char *m = mmap(NULL, mib << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m != MAP_FAILED) memset(m, 0x5a, mib << 20);
}
int main(int argc, char **argv) {
  size_t mib = argc > 1 ? strtoul(argv[1], 0, 10) : 0;
  int p[2];
  if (pipe(p)) return 2;
  pid_t child = fork();
  if (child == 0) {
    pid_t grandchild = fork();
    if (grandchild == 0) { close(p[0]); close(p[1]); fill(mib); for (;;) pause(); }
    fill(mib);
    if (write(p[1], &grandchild, sizeof grandchild) != sizeof grandchild) return 3;
    close(p[0]); close(p[1]);
    for (;;) pause();
  }
  pid_t grandchild;
  if (read(p[0], &grandchild, sizeof grandchild) != sizeof grandchild) return 4;
  fill(mib);
  close(p[0]); close(p[1]);
  printf("ready %d %d %d\\n", getpid(), child, grandchild);
  fflush(stdout);
  for (;;) pause();
}
`);
}

/**
 * vmatarget N: N one-page anonymous mappings with a page-sized hole between
 * each (so none merge), protections alternating rw / r, page i holding i.
 * Prints "ready BASE N". On SIGUSR1 checks every page.
 */
export function vmaTarget(): string {
  return buildC("vmatarget", `
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
static volatile sig_atomic_t check_requested;
static sigset_t wait_old;
static void on_usr1(int s) { (void)s; check_requested = 1; }
int main(int argc, char **argv) {
  int n = argc > 1 ? atoi(argv[1]) : 4096;
  size_t pg = 4096;
  char *base = mmap(NULL, 2 * pg * n, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (base == MAP_FAILED) return 2;
  munmap(base, 2 * pg * n);
  for (int i = 0; i < n; i++) {
    char *p = mmap(base + 2 * pg * i, pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (p == MAP_FAILED) return 3;
    memset(p, 0, pg);
    memcpy(p, &i, sizeof i);
    p[pg - 1] = (char)(i * 7);
    if (i % 2) mprotect(p, pg, PROT_READ);
  }
  signal(SIGUSR1, on_usr1);
  { sigset_t wait_block; sigemptyset(&wait_block); sigaddset(&wait_block, SIGUSR1); sigaddset(&wait_block, SIGUSR2);
    /* Handled signals arrive only inside sigsuspend: a pause() loop loses one that lands between its flag check and the call. */
    sigprocmask(SIG_BLOCK, &wait_block, &wait_old); }
  printf("ready %llx %d\\n", (unsigned long long)base, n);
  fflush(stdout);
  for (;;) {
    while (!check_requested) sigsuspend(&wait_old);
    check_requested = 0;
    int bad = 0;
    for (int i = 0; i < n; i++) {
      char *p = base + 2 * pg * i; int v; memcpy(&v, p, sizeof v);
      if (v != i || p[pg - 1] != (char)(i * 7)) bad++;
    }
    if (bad) printf("bad %d\\n", bad); else printf("ok\\n");
    fflush(stdout);
  }
}
`);
}

/**
 * filetarget PATH: maps the 8-page file PATH three times — read-only shared,
 * private read-write (writes page 2), private read-exec at offset one page —
 * and prints "ready SHARED PRIVATE EXEC".
 */
export function fileTarget(): string {
  return buildC("filetarget", `
#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>
int main(int argc, char **argv) {
  if (argc < 2) return 2;
  int fd = open(argv[1], O_RDONLY);
  if (fd < 0) return 3;
  size_t pg = 4096;
  char *shared = mmap(NULL, 8 * pg, PROT_READ, MAP_SHARED, fd, 0);
  char *priv = mmap(NULL, 8 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  char *exec = mmap(NULL, 2 * pg, PROT_READ | PROT_EXEC, MAP_PRIVATE, fd, pg);
  if (shared == MAP_FAILED || priv == MAP_FAILED || exec == MAP_FAILED) return 4;
  close(fd);
  volatile char sink = shared[0] + exec[0] + priv[pg * 5];
  (void)sink;
  priv[2 * pg + 10] = 'W';
  printf("ready %llx %llx %llx\\n", (unsigned long long)shared, (unsigned long long)priv, (unsigned long long)exec);
  fflush(stdout);
  for (;;) pause();
}
`);
}

/**
 * Ask a memtarget or vmatarget to check itself (SIGUSR1, unless the caller
 * already `sent` it); resolves with its next verdict line.
 */
export async function selfCheck(pid: number, out: string, opts: { sent?: boolean } = {}): Promise<string> {
  const before = readFileSync(out, "utf8").split("\n").length;
  if (!opts.sent) process.kill(pid, "SIGUSR1");
  let verdict = "";
  await waitFor("the workload's self-check", () => {
    verdict = readFileSync(out, "utf8").split("\n").slice(before - 1).find((l) => /^(ok|bad)/.test(l)) ?? "";
    return verdict !== "";
  }, 20000);
  return verdict;
}
