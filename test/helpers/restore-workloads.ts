/**
 * Workloads for restore tests. Each sets up state before it prints "ready",
 * then on SIGUSR1 checks that state from the inside and prints "ok" or
 * "bad WHAT", so a restored copy verifies itself.
 */
import { buildC } from "./target";

/**
 * restoretarget DIR: memory (anonymous, heap, a private file mapping it wrote
 * to, a shared one), two threads (one blocked in read() on a pipe, one in a
 * nanosleep loop), fds with positions and sharing, a pipe with data, signal
 * actions, a blocked SIGUSR2 queued with a value, an alternate signal stack and
 * an interval timer. Prints "ready PID TID_READER TID_SLEEPER".
 */
export function restoreTarget(): string {
  return buildC("restoretarget", `
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define MIB (8u << 20)
static volatile sig_atomic_t check_requested, got_usr2;
static volatile int usr2_value;
static unsigned long long *anon;
static unsigned char *heap, *priv, *shared;
static int wake_pipe[2];
static volatile int reader_state; /* 0 waiting, 1 got 'x', 2 read failed */
static volatile unsigned long sleeper_rounds;
static volatile int sleeper_eintr_ok = 1;
static __thread unsigned long long tls_tag;
static volatile unsigned long long reader_tls, sleeper_tls;
static char altstack[65536];
static pid_t tids[2];

static void on_usr1(int s) { (void)s; check_requested = 1; }
static void on_usr2(int s, siginfo_t *si, void *u) { (void)s; (void)u; got_usr2 = 1; usr2_value = si->si_value.sival_int; }
static unsigned long long word(size_t k) { return (k * 0x9e3779b97f4a7c15ULL) ^ 0xfeedULL; }

static void only_main_gets_signals(void) {
  sigset_t all; sigfillset(&all); pthread_sigmask(SIG_BLOCK, &all, NULL);
}
static void *reader(void *p) {
  (void)p; only_main_gets_signals();
  tls_tag = 0xaaaa0001ULL; tids[0] = (pid_t)syscall(SYS_gettid);
  char c;
  ssize_t n = read(wake_pipe[0], &c, 1);   /* blocked here across dump and restore */
  reader_tls = tls_tag;
  reader_state = (n == 1 && c == 'x') ? 1 : 2;
  for (;;) pause();
}
static void on_urg(int s) { (void)s; }
static void *sleeper(void *p) {
  (void)p; only_main_gets_signals();
  /* SIGURG (handled, no SA_RESTART) is how the check wakes this thread. */
  sigset_t urg; sigemptyset(&urg); sigaddset(&urg, SIGURG); pthread_sigmask(SIG_UNBLOCK, &urg, NULL);
  tls_tag = 0xbbbb0002ULL; tids[1] = (pid_t)syscall(SYS_gettid);
  for (;;) {
    struct timespec ts = { 1000, 0 };
    if (nanosleep(&ts, NULL) != 0 && errno != EINTR) sleeper_eintr_ok = 0;
    sleeper_tls = tls_tag;
    sleeper_rounds++;
  }
}

#define BAD(what) do { printf("bad %s\\n", what); fflush(stdout); return; } while (0)
static void check(void) {
  for (size_t k = 0; k < MIB / 8; k++) if (anon[k] != word(k)) BAD("anonymous memory");
  for (size_t i = 0; i < (1u << 20); i++) if (heap[i] != (unsigned char)(i * 13)) BAD("heap");
  if (priv[0] != 'M' || priv[1] != 'M' || priv[4096] != (unsigned char)(4096 % 251)) BAD("private file mapping");
  for (size_t i = 0; i < 65536; i++) if (shared[i] != (unsigned char)(i % 251)) BAD("shared file mapping");
  if (lseek(10, 0, SEEK_CUR) != 5) BAD("position of fd 10");
  if (write(11, "X", 1) != 1 || lseek(10, 0, SEEK_CUR) != 6) BAD("fd 11 does not share fd 10's file");
  if (lseek(12, 0, SEEK_CUR) != 2) BAD("position of fd 12 (a separate open)");
  if (fcntl(13, F_GETFD) != FD_CLOEXEC || fcntl(10, F_GETFD) != 0) BAD("close-on-exec flags");
  char buf[16] = {0};
  if (read(20, buf, 8) != 8 || memcmp(buf, "pipedata", 8)) BAD("pipe data");
  struct sigaction sa;
  sigaction(SIGUSR1, NULL, &sa);
  if (sa.sa_handler != on_usr1 || !(sa.sa_flags & SA_RESTART) || !sigismember(&sa.sa_mask, SIGTERM)) BAD("SIGUSR1 action");
  stack_t ss; sigaltstack(NULL, &ss);
  if (ss.ss_sp != altstack || ss.ss_size != sizeof altstack) BAD("sigaltstack");
  struct itimerval it; getitimer(ITIMER_REAL, &it);
  if (it.it_value.tv_sec <= 0 || it.it_value.tv_sec > 5000 || it.it_interval.tv_sec != 5000) BAD("itimer");
  if (got_usr2) BAD("SIGUSR2 delivered while blocked");
  sigset_t usr2; sigemptyset(&usr2); sigaddset(&usr2, SIGUSR2);
  sigprocmask(SIG_UNBLOCK, &usr2, NULL);
  if (!got_usr2 || usr2_value != 42) BAD("pending SIGUSR2 lost or without its value");
  sigprocmask(SIG_BLOCK, &usr2, NULL);
  if (write(wake_pipe[1], "x", 1) != 1) BAD("wake pipe");
  for (int i = 0; i < 5000 && reader_state == 0; i++) usleep(1000);
  if (reader_state != 1) BAD("reader thread: read() did not go on after restore");
  if (reader_tls != 0xaaaa0001ULL) BAD("reader thread TLS");
  unsigned long before = sleeper_rounds;
  syscall(SYS_tgkill, getpid(), tids[1], SIGURG);
  for (int i = 0; i < 5000 && sleeper_rounds == before; i++) usleep(1000);
  if (sleeper_rounds == before) BAD("sleeper thread does not run");
  if (!sleeper_eintr_ok || sleeper_tls != 0xbbbb0002ULL) BAD("sleeper thread state");
  printf("ok\\n"); fflush(stdout);
}

int main(int argc, char **argv) {
  const char *dir = argc > 1 ? argv[1] : ".";
  char path[4096];
  anon = mmap(NULL, MIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  for (size_t k = 0; k < MIB / 8; k++) anon[k] = word(k);
  heap = malloc(1u << 20);
  for (size_t i = 0; i < (1u << 20); i++) heap[i] = (unsigned char)(i * 13);
  snprintf(path, sizeof path, "%s/data", dir);
  int df = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
  static unsigned char content[65536];
  for (size_t i = 0; i < sizeof content; i++) content[i] = (unsigned char)(i % 251);
  if (write(df, content, sizeof content) != sizeof content) return 2;
  priv = mmap(NULL, 65536, PROT_READ | PROT_WRITE, MAP_PRIVATE, df, 0);
  shared = mmap(NULL, 65536, PROT_READ, MAP_SHARED, df, 0);
  close(df);
  priv[0] = 'M'; priv[1] = 'M';
  snprintf(path, sizeof path, "%s/log", dir);
  int a = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
  if (write(a, "hello", 5) != 5) return 3;
  dup2(a, 10); close(a);
  dup2(10, 11);
  int b = open(path, O_RDONLY); lseek(b, 2, SEEK_SET); dup2(b, 12); close(b);
  int c = open("/dev/null", O_RDONLY | O_CLOEXEC); dup3(c, 13, O_CLOEXEC); close(c);
  int p[2]; if (pipe(p)) return 4;
  dup2(p[0], 20); dup2(p[1], 21); close(p[0]); close(p[1]);
  if (write(21, "pipedata", 8) != 8) return 5;
  if (pipe(wake_pipe)) return 6;

  struct sigaction sa; memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_usr1; sigemptyset(&sa.sa_mask); sigaddset(&sa.sa_mask, SIGTERM); sa.sa_flags = SA_RESTART;
  sigaction(SIGUSR1, &sa, NULL);
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_usr2; sa.sa_flags = SA_SIGINFO; sigemptyset(&sa.sa_mask);
  sigaction(SIGUSR2, &sa, NULL);
  sigset_t usr2; sigemptyset(&usr2); sigaddset(&usr2, SIGUSR2);
  sigprocmask(SIG_BLOCK, &usr2, NULL);
  union sigval v; v.sival_int = 42;
  sigqueue(getpid(), SIGUSR2, v);
  stack_t ss = { .ss_sp = altstack, .ss_size = sizeof altstack, .ss_flags = 0 };
  sigaltstack(&ss, NULL);
  struct itimerval it = { { 5000, 0 }, { 4000, 0 } };
  signal(SIGALRM, SIG_IGN);
  memset(&sa, 0, sizeof sa); sa.sa_handler = on_urg; sigemptyset(&sa.sa_mask);
  sigaction(SIGURG, &sa, NULL);
  sigset_t urg; sigemptyset(&urg); sigaddset(&urg, SIGURG); sigprocmask(SIG_BLOCK, &urg, NULL);
  setitimer(ITIMER_REAL, &it, NULL);

  pthread_t t1, t2;
  pthread_create(&t1, NULL, reader, NULL);
  pthread_create(&t2, NULL, sleeper, NULL);
  while (!tids[0] || !tids[1]) usleep(1000);
  usleep(20000);
  /* SIGUSR1 only inside sigsuspend: one sent before the wait (just after a
     restore, say) stays pending instead of being lost before a pause(). */
  sigset_t wait_mask, usr1; sigprocmask(SIG_BLOCK, NULL, &wait_mask);
  sigemptyset(&usr1); sigaddset(&usr1, SIGUSR1); sigprocmask(SIG_BLOCK, &usr1, NULL);
  printf("ready %d %d %d\\n", getpid(), tids[0], tids[1]);
  fflush(stdout);
  for (;;) {
    while (!check_requested) sigsuspend(&wait_mask);
    check_requested = 0;
    check();
  }
}
`);
}

/**
 * sharedtree DIR: a root, its child and grandchild, all holding fd 10 (one
 * open file of DIR/shared, inherited) and fd 11/12 (a pipe the children
 * report through). On SIGUSR1 the root writes "R" through fd 10 and signals
 * the child, which checks that the shared position moved, writes "C" and
 * signals the grandchild, which does the same with "G"; each reports over the
 * pipe and the root prints "ok" or "bad ...". Each checks that it finds the
 * position where the previous writer left it, which only a shared file does. Prints "ready ROOT CHILD GRANDCHILD".
 */
export function sharedTreeTarget(): string {
  return buildC("sharedtree", `
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
static volatile sig_atomic_t check_requested;
static void on_usr1(int s) { (void)s; check_requested = 1; }
static pid_t next_pid;
static int rounds;
static sigset_t wait_old;
/* The three write in turn (R, C, G) through one shared position, so each
   finds it where the one before left it: 5 bytes of "start", 3 per round. */
static void relay(char mark) {
  int turn = mark == 'R' ? 0 : mark == 'C' ? 1 : 2;
  off_t before = lseek(10, 0, SEEK_CUR);
  char report = (before == 5 + 3 * rounds + turn && write(10, &mark, 1) == 1) ? mark : '!';
  rounds++;
  if (next_pid) {
    kill(next_pid, SIGUSR1);
  }
  if (write(12, &report, 1) != 1) _exit(9);
}
static void serve(char mark) {
  for (;;) { while (!check_requested) sigsuspend(&wait_old); check_requested = 0; relay(mark); }
}
int main(int argc, char **argv) {
  char path[4096];
  snprintf(path, sizeof path, "%s/shared", argc > 1 ? argv[1] : ".");
  int f = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
  dup2(f, 10); close(f);
  if (write(10, "start", 5) != 5) return 2;
  int p[2]; if (pipe(p)) return 3;
  dup2(p[0], 11); dup2(p[1], 12); close(p[0]); close(p[1]);
  struct sigaction sa; memset(&sa, 0, sizeof sa); sa.sa_handler = on_usr1; sigaction(SIGUSR1, &sa, NULL);
  { sigset_t wait_block; sigemptyset(&wait_block); sigaddset(&wait_block, SIGUSR1); sigaddset(&wait_block, SIGUSR2);
    /* Handled signals arrive only inside sigsuspend: a pause() loop loses one that lands between its flag check and the call. */
    sigprocmask(SIG_BLOCK, &wait_block, &wait_old); }
  int ready[2]; if (pipe(ready)) return 4;
  pid_t child = fork();
  if (child == 0) {
    pid_t grandchild = fork();
    if (grandchild == 0) { close(ready[0]); close(ready[1]); serve('G'); }
    next_pid = grandchild;
    if (write(ready[1], &grandchild, sizeof grandchild) != sizeof grandchild) return 5;
    close(ready[0]); close(ready[1]);
    serve('C');
  }
  pid_t grandchild;
  if (read(ready[0], &grandchild, sizeof grandchild) != sizeof grandchild) return 6;
  close(ready[0]); close(ready[1]);
  next_pid = child;
  printf("ready %d %d %d\\n", getpid(), child, grandchild);
  fflush(stdout);
  for (;;) {
    while (!check_requested) sigsuspend(&wait_old);
    check_requested = 0;
    relay('R');
    char got[3] = {0};
    for (int i = 0; i < 3; i++) if (read(11, &got[i], 1) != 1) got[i] = '?';
    /* Order of the reports depends on scheduling; each mark must come back once. */
    int r = 0, c = 0, g = 0;
    for (int i = 0; i < 3; i++) { r += got[i] == 'R'; c += got[i] == 'C'; g += got[i] == 'G'; }
    if (r == 1 && c == 1 && g == 1) printf("ok\\n"); else printf("bad reports %c%c%c\\n", got[0], got[1], got[2]);
    fflush(stdout);
  }
}
`);
}

/**
 * credtarget: gives itself groups [1234], gids 2000/2001/2002, uids
 * 1000/1001/1002 (which clears its capabilities and its dumpable flag), then
 * sets dumpable again, a parent-death signal and a 3000-fd soft limit, and
 * prints "ready". On SIGUSR1 it checks all of them again.
 */
export function credTarget(): string {
  return buildC("credtarget", `
#define _GNU_SOURCE
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>
static volatile sig_atomic_t check_requested;
static sigset_t wait_old;
static void on_usr1(int s) { (void)s; check_requested = 1; }
static const char *cap_line(const char *name) {
  static char line[256];
  FILE *f = fopen("/proc/self/status", "r");
  if (!f) return "";
  while (fgets(line, sizeof line, f)) if (!strncmp(line, name, strlen(name))) { fclose(f); return line; }
  fclose(f);
  return "";
}
int main(void) {
  gid_t g = 1234;
  struct rlimit rl = { 3000, 4000 };
  if (setrlimit(RLIMIT_NOFILE, &rl) || setgroups(1, &g) || setresgid(2000, 2001, 2002) || setresuid(1000, 1001, 1002)) return 2;
  if (prctl(PR_SET_DUMPABLE, 1) || prctl(PR_SET_PDEATHSIG, SIGWINCH)) return 3;
  signal(SIGUSR1, on_usr1);
  { sigset_t wait_block; sigemptyset(&wait_block); sigaddset(&wait_block, SIGUSR1); sigaddset(&wait_block, SIGUSR2);
    /* Handled signals arrive only inside sigsuspend: a pause() loop loses one that lands between its flag check and the call. */
    sigprocmask(SIG_BLOCK, &wait_block, &wait_old); }
  printf("ready %d\\n", getpid()); fflush(stdout);
  for (;;) {
    while (!check_requested) sigsuspend(&wait_old);
    check_requested = 0;
    uid_t r, e, s; gid_t gr, ge, gs; gid_t groups[8];
    getresuid(&r, &e, &s); getresgid(&gr, &ge, &gs);
    int n = getgroups(8, groups);
    getrlimit(RLIMIT_NOFILE, &rl);
    if (r != 1000 || e != 1001 || s != 1002) printf("bad uids %u %u %u\\n", r, e, s);
    else if (gr != 2000 || ge != 2001 || gs != 2002) printf("bad gids\\n");
    else if (n != 1 || groups[0] != 1234) printf("bad groups\\n");
    else if (strcmp(cap_line("CapEff:"), "CapEff:\\t0000000000000000\\n") || strcmp(cap_line("CapPrm:"), "CapPrm:\\t0000000000000000\\n")) printf("bad capabilities\\n");
    else if (rl.rlim_cur != 3000 || rl.rlim_max != 4000) printf("bad rlimit\\n");
    else if (prctl(PR_GET_DUMPABLE) != 1) printf("bad dumpable\\n");
    else { int sig = 0; prctl(PR_GET_PDEATHSIG, &sig); if (sig != SIGWINCH) printf("bad pdeathsig %d\\n", sig); else printf("ok\\n"); }
    fflush(stdout);
  }
}
`);
}

/**
 * State the kernel keeps per area and per process that a restore must put
 * back: areas that are MAP_LOCKED, MADV_SEQUENTIAL, MADV_RANDOM and
 * MAP_DROPPABLE (each area's smaps VmFlags line is kept at start and compared
 * on SIGUSR1), a membarrier registration (PRIVATE_EXPEDITED works only when
 * registered), the audit login uid (set to 4321 where the kernel allows) and
 * a bounding set without CAP_MKNOD.
 * Prints "ready PID LOGINUID"; its self-check answers "ok" or "bad ...".
 * An optional argument: MiB of ordinary memory to hold besides (written).
 */
export function kernelStateTarget(): string {
  return buildC("kernelstatetarget", `
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>
#ifndef MAP_DROPPABLE
#define MAP_DROPPABLE 0x08
#endif
#define NAREAS 4
static volatile sig_atomic_t check_requested;
static void on_usr1(int s) { (void)s; check_requested = 1; }
static char *areas[NAREAS];
static char flags_then[NAREAS][256];
/* The VmFlags line of the area starting at addr. */
static int vmflags(char *addr, char *out) {
  char line[512], want[32];
  snprintf(want, sizeof want, "%lx-", (unsigned long)addr);
  FILE *f = fopen("/proc/self/smaps", "r");
  int in = 0;
  if (!f) return -1;
  while (fgets(line, sizeof line, f)) {
    if (!strncmp(line, want, strlen(want))) in = 1;
    else if (in && !strncmp(line, "VmFlags:", 8)) { strcpy(out, line); fclose(f); return 0; }
  }
  fclose(f);
  return -1;
}
int main(int argc, char **argv) {
  long pg = sysconf(_SC_PAGESIZE);
  /* Optional ballast: MiB of ordinary memory, written, to make the process big. */
  size_t ballast = argc > 1 ? (size_t)atol(argv[1]) << 20 : 0;
  if (ballast) {
    char *b = mmap(0, ballast, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (b == MAP_FAILED) return 8;
    memset(b, 7, ballast);
  }
  /* Separated by a gap each so that the kernel cannot merge them. */
  char *base = mmap(0, 16 * pg, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  int advice[NAREAS] = { -1, MADV_SEQUENTIAL, MADV_RANDOM, -1 };
  for (int i = 0; i < NAREAS; i++) {
    int kind = i == 0 ? MAP_PRIVATE | MAP_LOCKED : i == 3 ? MAP_DROPPABLE : MAP_PRIVATE;
    areas[i] = mmap(base + (i * 4 + 1) * pg, 2 * pg, PROT_READ | PROT_WRITE, kind | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    if (areas[i] == MAP_FAILED) { printf("mmap %d failed\\n", i); return 2; }
    if (advice[i] >= 0 && madvise(areas[i], 2 * pg, advice[i])) return 3;
    memset(areas[i], 'a' + i, 2 * pg);
    if (vmflags(areas[i], flags_then[i])) return 4;
  }
  if (syscall(SYS_membarrier, 1 << 4 /* REGISTER_PRIVATE_EXPEDITED */, 0, 0)) return 5;
  if (prctl(PR_CAPBSET_DROP, 27 /* CAP_MKNOD */, 0, 0, 0)) return 7;
  int fd = open("/proc/self/loginuid", O_WRONLY);
  if (fd >= 0) { (void)!write(fd, "4321", 4); close(fd); }
  char luid[32] = "";
  fd = open("/proc/self/loginuid", O_RDONLY);
  if (fd < 0 || read(fd, luid, sizeof luid - 1) <= 0) return 6;
  close(fd);
  signal(SIGUSR1, on_usr1);
  printf("ready %d %s\\n", getpid(), luid); fflush(stdout);
  for (;;) {
    while (!check_requested) usleep(10000);
    check_requested = 0;
    char now[256], luid_now[32] = "";
    int bad = 0;
    for (int i = 0; i < NAREAS && !bad; i++) {
      if (vmflags(areas[i], now) || strcmp(now, flags_then[i])) { printf("bad area %d: %s then, %s now\\n", i, flags_then[i], now); bad = 1; }
      else if (i != 3 && areas[i][0] != 'a' + i) { printf("bad area %d contents\\n", i); bad = 1; }
    }
    fd = open("/proc/self/loginuid", O_RDONLY);
    if (fd >= 0) { (void)!read(fd, luid_now, sizeof luid_now - 1); close(fd); }
    if (!bad && strcmp(luid, luid_now)) { printf("bad loginuid %s, was %s\\n", luid_now, luid); bad = 1; }
    if (!bad && syscall(SYS_membarrier, 1 << 3 /* PRIVATE_EXPEDITED */, 0, 0)) { printf("bad membarrier: not registered\\n"); bad = 1; }
    if (!bad && prctl(PR_CAPBSET_READ, 27, 0, 0, 0) != 0) { printf("bad bounding set: CAP_MKNOD is back\\n"); bad = 1; }
    if (!bad) printf("ok\\n");
    fflush(stdout);
  }
}
`);
}

/**
 * locktarget DIR: holds file locks on three files of DIR: on "posix" a write
 * lock on bytes 100-199 and a read lock from byte 1000 to the end (fcntl
 * F_SETLK); on "flock" an exclusive flock; on "ofd" an open file
 * description write lock on bytes 0-9 (F_OFD_SETLK). Prints "ready PID";
 * on SIGUSR1 it compares the /proc/locks lines of its three files with
 * those it saw at start ("ok" or "bad locks").
 */
export function lockTarget(): string {
  return buildC("locktarget", `
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
static volatile sig_atomic_t check_requested;
static void on_usr1(int s) { (void)s; check_requested = 1; }
static int cmp(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }
/* The /proc/locks lines of the inodes in ino[3], without their ordinals, sorted, joined. */
static void locks_of(const unsigned long *ino, char *out, size_t size) {
  static char lines[16][256];
  char *sorted[16], line[256];
  int n = 0;
  FILE *f = fopen("/proc/locks", "r");
  out[0] = 0;
  if (!f) return;
  while (n < 16 && fgets(line, sizeof line, f)) {
    for (int i = 0; i < 3; i++) {
      char want[64];
      snprintf(want, sizeof want, ":%lu ", ino[i]);
      if (strstr(line, want)) {
        char *p = strchr(line, ':'), *nl = strchr(line, '\\n');
        if (nl) *nl = ';';
        snprintf(lines[n], sizeof lines[n], "%s", p ? p + 1 : line);
        sorted[n] = lines[n]; n++; break;
      }
    }
  }
  fclose(f);
  qsort(sorted, n, sizeof *sorted, cmp);
  for (int i = 0; i < n; i++) strncat(out, sorted[i], size - strlen(out) - 1);
}
static int open_in(const char *dir, const char *name) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  return open(path, O_RDWR | O_CREAT, 0600);
}
static int lock(int fd, int cmd, short type, off_t start, off_t len) {
  struct flock l = { .l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len };
  return fcntl(fd, cmd, &l);
}
int main(int argc, char **argv) {
  if (argc < 2) return 2;
  int posix = open_in(argv[1], "posix"), fl = open_in(argv[1], "flock"), ofd = open_in(argv[1], "ofd");
  if (posix < 0 || fl < 0 || ofd < 0) return 3;
  if (lock(posix, F_SETLK, F_WRLCK, 100, 100) || lock(posix, F_SETLK, F_RDLCK, 1000, 0)) return 4;
  if (flock(fl, LOCK_EX | LOCK_NB)) return 5;
  if (lock(ofd, F_OFD_SETLK, F_WRLCK, 0, 10)) return 6;
  unsigned long ino[3];
  int fds[3] = { posix, fl, ofd };
  for (int i = 0; i < 3; i++) { struct stat st; if (fstat(fds[i], &st)) return 7; ino[i] = st.st_ino; }
  static char then[4096], now[4096];
  locks_of(ino, then, sizeof then);
  signal(SIGUSR1, on_usr1);
  printf("ready %d\\n", getpid()); fflush(stdout);
  for (;;) {
    while (!check_requested) usleep(10000);
    check_requested = 0;
    locks_of(ino, now, sizeof now);
    if (strcmp(then, now) || !then[0]) printf("bad locks: [%s] then, [%s] now\\n", then, now);
    else printf("ok\\n");
    fflush(stdout);
  }
}
`);
}

/**
 * vdsotarget: calls the vDSO's functions through libc (time, clock_gettime,
 * gettimeofday, clock_getres, sched_getcpu), which found them once at start
 * through AT_SYSINFO_EHDR and calls them by address ever after. Prints
 * "ready PID VDSO_BASE"; on SIGUSR1 compares each with its system call and
 * prints "ok" or "bad WHAT". A vDSO whose vvar data is missing returns 0
 * from time(), so a restore that leaves the old vDSO reading nothing fails.
 */
export function vdsoTarget(): string {
  return buildC("vdsotarget", `
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <sys/auxv.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
static volatile sig_atomic_t check_requested;
static void on_usr1(int s) { (void)s; check_requested = 1; }
static double secs(struct timespec t) { return t.tv_sec + t.tv_nsec / 1e9; }
static const char *check(void) {
  for (int round = 0; round < 1000; round++) {
    struct timespec v, k; struct timeval tv;
    time_t t = time(NULL), tk = syscall(SYS_time, NULL);
    if (t < tk - 1 || t > tk + 1) return "time";
    clock_gettime(CLOCK_REALTIME, &v); syscall(SYS_clock_gettime, CLOCK_REALTIME, &k);
    if (secs(v) < secs(k) - 1 || secs(v) > secs(k) + 1) return "clock_gettime realtime";
    syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &k); clock_gettime(CLOCK_MONOTONIC, &v);
    if (secs(v) < secs(k) || secs(v) > secs(k) + 1) return "clock_gettime monotonic";
    gettimeofday(&tv, NULL); syscall(SYS_clock_gettime, CLOCK_REALTIME, &k);
    if (tv.tv_sec < k.tv_sec - 1 || tv.tv_sec > k.tv_sec + 1) return "gettimeofday";
    if (clock_getres(CLOCK_MONOTONIC, &v) != 0 || v.tv_sec != 0 || v.tv_nsec <= 0) return "clock_getres";
    int cpu = sched_getcpu();
    if (cpu < 0 || cpu >= sysconf(_SC_NPROCESSORS_CONF)) return "sched_getcpu";
  }
  return 0;
}
int main(void) {
  sigset_t usr1, old;
  sigemptyset(&usr1); sigaddset(&usr1, SIGUSR1);
  sigprocmask(SIG_BLOCK, &usr1, &old);
  signal(SIGUSR1, on_usr1);
  const char *bad = check();
  if (bad) { printf("bad before: %s\\n", bad); return 1; }
  printf("ready %d %lx\\n", getpid(), getauxval(AT_SYSINFO_EHDR)); fflush(stdout);
  for (;;) {
    while (!check_requested) sigsuspend(&old);
    check_requested = 0;
    bad = check();
    if (bad) printf("bad %s\\n", bad); else printf("ok\\n");
    fflush(stdout);
  }
}
`);
}

/**
 * rewritetarget MIB THREADS [RATE]: MIB MiB of memory split into one stripe
 * per thread; each thread rewrites its stripe over and over as fast as it
 * can (or, with RATE, at RATE MiB/s for them all),
 * generation after generation, the first and last word of every page. Before
 * it writes a page it checks that the page still holds the previous
 * generation: any page from a later moment than the rest (a snapshot copied
 * after the write) is caught at once, by the original or by a restored copy.
 * Prints "ready PID ADDR BYTES"; on SIGUSR1 waits for every thread to finish
 * two more passes and prints "ok GEN" or "bad ...".
 */
export function rewriteTarget(): string {
  return buildC("rewritetarget", `
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>
#define PAGE 4096
static char *mem;
static size_t pages_per_thread;
static volatile unsigned long long gens[64];
static volatile long bad_page = -1;
static volatile unsigned long long bad_want, bad_got;
/* With a rate: nanoseconds each thread takes per MiB it writes. */
static long long mib_ns;
static void *writer(void *arg) {
  long t = (long)arg;
  char *base = mem + t * pages_per_thread * PAGE;
  for (unsigned long long gen = 1;; gen++) {
    for (size_t i = 0; i < pages_per_thread; i++) {
      volatile unsigned long long *w = (volatile unsigned long long *)(base + i * PAGE);
      if (w[0] != gen - 1 || w[PAGE / 8 - 1] != gen - 1) {
        if (bad_page < 0) { bad_want = gen - 1; bad_got = w[0]; bad_page = (long)(t * pages_per_thread + i); }
      }
      w[0] = gen;
      w[PAGE / 8 - 1] = gen;
      if (mib_ns && i % 256 == 255) { struct timespec d = { mib_ns / 1000000000LL, mib_ns % 1000000000LL }; nanosleep(&d, 0); }
    }
    gens[t] = gen;
  }
  return 0;
}
static volatile sig_atomic_t check_requested;
static void on_usr1(int s) { (void)s; check_requested = 1; }
int main(int argc, char **argv) {
  size_t mib = argc > 1 ? strtoul(argv[1], 0, 10) : 64;
  int threads = argc > 2 ? atoi(argv[2]) : 2;
  long rate = argc > 3 ? atol(argv[3]) : 0;
  if (rate > 0) mib_ns = 1000000000LL * threads / rate;
  if (threads < 1 || threads > 64) return 2;
  size_t bytes = mib << 20;
  pages_per_thread = bytes / PAGE / threads;
  /* Small pages whatever the machine's THP setting: the test is about pages. */
  prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0);
  mem = mmap(0, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) return 3;
  for (size_t i = 0; i < bytes; i += PAGE) mem[i] = 0;
  sigset_t usr1, old;
  sigemptyset(&usr1); sigaddset(&usr1, SIGUSR1);
  signal(SIGUSR1, on_usr1);
  sigprocmask(SIG_BLOCK, &usr1, &old);
  pthread_t th;
  for (long t = 0; t < threads; t++) if (pthread_create(&th, 0, writer, (void *)t)) return 4;
  printf("ready %d %lx %zu\\n", getpid(), (unsigned long)mem, bytes); fflush(stdout);
  for (;;) {
    while (!check_requested) sigsuspend(&old);
    check_requested = 0;
    unsigned long long start[64];
    for (int t = 0; t < threads; t++) start[t] = gens[t];
    for (int t = 0; t < threads; t++) {
      struct timespec ms = { 0, 1000000 };
      for (int w = 0; gens[t] < start[t] + 2 && w < 20000; w++) nanosleep(&ms, 0);
    }
    if (bad_page >= 0) printf("bad page %ld holds generation %llu, expected %llu\\n", bad_page, bad_got, bad_want);
    else {
      int stuck = -1;
      for (int t = 0; t < threads; t++) if (gens[t] < start[t] + 2) stuck = t;
      if (stuck >= 0) printf("bad thread %d made no progress\\n", stuck); else printf("ok %llu\\n", gens[0]);
    }
    fflush(stdout);
  }
}
`);
}
