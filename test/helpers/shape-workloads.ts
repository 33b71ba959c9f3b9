/**
 * Workloads shaped like real programs: a pre-forking server whose workers
 * share anonymous memory, a Python multiprocessing pool, a tree with zombies
 * and a daemon in a session of its own.
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { buildC, tempDir } from "./target";

/**
 * An nginx-style server: the master listens on 127.0.0.1 (an ephemeral port),
 * then forks 2 workers that accept on the shared socket. Before the fork it
 * sets up shared memory of every shape:
 *   - 3 pages of MAP_SHARED|MAP_ANONYMOUS with the middle page unmapped (one
 *     object, two areas; page 2 at pgoff 2),
 *   - 2 pages of /dev/zero mapped shared,
 *   - 2 pages of a memfd mapped shared, its fd closed (only the mapping holds it),
 *   - 2 pages of shared anonymous memory moved with mremap.
 * Page 0 of each holds counters the workers bump every millisecond; its last
 * page holds a pattern nobody writes. A connection gets "N PID\n": N from a
 * counter in shared memory, so it goes on across workers and across a restore.
 * On SIGUSR1 the master checks that both workers still bump every counter in
 * every region and that the patterns are whole: "ok" or "bad <why>".
 * Prints "ready PORT MASTER WORKER1 WORKER2".
 */
export function preforkTarget(): string {
  return buildC("prefork", String.raw`
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#define PG 4096
#define NW 2
#define NR 4
struct slots { atomic_long beat[NW]; atomic_long served; };
static char *region[NR];
static const int last_page[NR] = { 2, 1, 1, 1 };
static const char *names[NR] = { "anon (split)", "/dev/zero", "memfd", "anon (moved)" };
static volatile sig_atomic_t check;
static void on_usr1(int s) { (void)s; check = 1; }
static void fill(char *p, int seed) { for (int i = 0; i < PG; i++) p[i] = (char)(i * 7 + seed); }
static int whole(const char *p, int seed) { for (int i = 0; i < PG; i++) if (p[i] != (char)(i * 7 + seed)) return 0; return 1; }
static struct slots *S(int r) { return (struct slots *)region[r]; }
static void die(const char *what) { perror(what); exit(1); }

static void worker(int w, int lfd) {
  for (;;) {
    for (int r = 0; r < NR; r++) atomic_fetch_add(&S(r)->beat[w], 1);
    struct pollfd p = { .fd = lfd, .events = POLLIN };
    if (poll(&p, 1, 1) <= 0) continue;
    int c = accept(lfd, NULL, NULL);
    if (c < 0) continue;
    char line[64];
    int n = snprintf(line, sizeof line, "%ld %d\n", atomic_fetch_add(&S(0)->served, 1) + 1, getpid());
    if (write(c, line, n) != n) {}
    close(c);
  }
}

int main(void) {
  char *a = mmap(NULL, 3 * PG, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (a == MAP_FAILED) die("mmap anon");
  if (munmap(a + PG, PG)) die("munmap");
  region[0] = a;
  FILE *z = fopen("/dev/zero", "r+");
  if (!z) die("/dev/zero");
  region[1] = mmap(NULL, 2 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, fileno(z), 0);
  if (region[1] == MAP_FAILED) die("mmap /dev/zero");
  fclose(z);
  int mfd = memfd_create("prefork-slots", 0);
  if (mfd < 0 || ftruncate(mfd, 2 * PG)) die("memfd");
  region[2] = mmap(NULL, 2 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
  if (region[2] == MAP_FAILED) die("mmap memfd");
  close(mfd);
  char *m = mmap(NULL, 2 * PG, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  char *to = mmap(NULL, 2 * PG, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED || to == MAP_FAILED) die("mmap to move");
  region[3] = mremap(m, 2 * PG, 2 * PG, MREMAP_MAYMOVE | MREMAP_FIXED, to);
  if (region[3] == MAP_FAILED) die("mremap");
  for (int r = 0; r < NR; r++) fill(region[r] + last_page[r] * PG, r + 1);

  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
  socklen_t len = sizeof sa;
  int yes = 1; /* as nginx: a restarted server may bind while its old connections linger in TIME_WAIT */
  if (lfd < 0 || setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes) || bind(lfd, (struct sockaddr *)&sa, sizeof sa) || listen(lfd, 64) || getsockname(lfd, (struct sockaddr *)&sa, &len)) die("listen");

  pid_t w[NW];
  for (int i = 0; i < NW; i++) {
    w[i] = fork();
    if (w[i] < 0) die("fork");
    if (w[i] == 0) worker(i, lfd);
  }
  signal(SIGUSR1, on_usr1);
  printf("ready %d %d %d %d\n", ntohs(sa.sin_port), getpid(), w[0], w[1]);
  fflush(stdout);
  for (;;) {
    /* Polled, not pause(): a restored thread resumes before its restarted
       pause(), and a SIGUSR1 landing then would be handled and lost. */
    while (!check) usleep(10000);
    check = 0;
    long before[NR][NW];
    for (int r = 0; r < NR; r++) for (int i = 0; i < NW; i++) before[r][i] = atomic_load(&S(r)->beat[i]);
    usleep(200000);
    char why[160] = "";
    for (int r = 0; r < NR && !why[0]; r++) {
      if (!whole(region[r] + last_page[r] * PG, r + 1)) snprintf(why, sizeof why, "%s: pattern changed", names[r]);
      for (int i = 0; i < NW && !why[0]; i++)
        if (atomic_load(&S(r)->beat[i]) <= before[r][i]) snprintf(why, sizeof why, "%s: worker %d's writes not seen", names[r], i);
    }
    for (int i = 0; i < NW && !why[0]; i++) if (kill(w[i], 0)) snprintf(why, sizeof why, "worker %d gone", i);
    printf(why[0] ? "bad %s\n" : "ok\n", why);
    fflush(stdout);
  }
}
`);
}

/**
 * A tree with zombies and its own groups: the root (a session leader, started
 * with setsid) forks a child that exits with 7, one killed by SIGUSR2, a
 * daemon that calls setsid, and a job in a process group of its own; the
 * last two sleep. The root reaps nobody until SIGUSR1; then it waits for
 * both zombies and prints "ok" when their statuses are right ("bad ..."
 * otherwise). Prints "ready ROOT EXITED SIGNALED DAEMON JOB".
 */
export function zombieTreeTarget(): string {
  return buildC("zombietree", String.raw`
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t check;
static void on_usr1(int s) { (void)s; check = 1; }

int main(void) {
  sigset_t usr1;
  sigemptyset(&usr1);
  sigaddset(&usr1, SIGUSR1);
  signal(SIGUSR1, on_usr1);
  pid_t exited = fork();
  if (exited == 0) _exit(7);
  pid_t signaled = fork();
  if (signaled == 0) { signal(SIGUSR2, SIG_DFL); raise(SIGUSR2); _exit(1); }
  pid_t daemon = fork();
  if (daemon == 0) { setsid(); for (;;) pause(); }
  pid_t job = fork();
  if (job == 0) { setpgid(0, 0); for (;;) pause(); }
  setpgid(job, job);
  printf("ready %d %d %d %d %d\n", getpid(), exited, signaled, daemon, job);
  fflush(stdout);
  for (;;) {
    /* Polled, not pause(): a restored thread resumes before its restarted
       pause(), and a SIGUSR1 landing then would be handled and lost. */
    while (!check) usleep(10000);
    check = 0;
    int s1 = -1, s2 = -1;
    pid_t r1 = waitpid(exited, &s1, WNOHANG), r2 = waitpid(signaled, &s2, WNOHANG);
    if (r1 == exited && WIFEXITED(s1) && WEXITSTATUS(s1) == 7 && r2 == signaled && WIFSIGNALED(s2) && WTERMSIG(s2) == SIGUSR2) printf("ok\n");
    else printf("bad waitpid %d→%d status %#x, %d→%d status %#x\n", exited, r1, s1, signaled, r2, s2);
    fflush(stdout);
  }
}
`);
}

/**
 * A Python multiprocessing pool (fork context) of 3 workers sharing a
 * Value, an Array and an mmap(-1) region: each worker copies the generation
 * the parent wrote into the region to its Array slot and adds 1 to the
 * Value under a Lock. On SIGUSR1 the parent writes a new generation and
 * prints "ok" once every worker has echoed it and the Value has grown
 * ("bad ..." after 10 s). Prints "ready PARENT W1 W2 W3".
 */
export function multiprocessingScript(): string {
  const path = join(tempDir("mp"), "pool.py");
  writeFileSync(path, `
import ctypes, mmap, multiprocessing as mp, os, signal, struct, sys, time

def work(i, total, echoes, region, lock):
    while True:
        gen = struct.unpack_from("q", region, 0)[0]
        with lock:
            total.value += 1
        echoes[i] = gen
        time.sleep(0.005)

if __name__ == "__main__":
    ctx = mp.get_context("fork")
    total = ctx.Value(ctypes.c_long, 0)
    echoes = ctx.Array(ctypes.c_long, 3)
    region = mmap.mmap(-1, 4096)
    lock = ctx.Lock()
    workers = [ctx.Process(target=work, args=(i, total, echoes, region, lock)) for i in range(3)]
    for w in workers: w.start()
    asked = []
    signal.signal(signal.SIGUSR1, lambda s, f: asked.append(1))
    print("ready", os.getpid(), *[w.pid for w in workers], flush=True)
    gen = 0
    while True:
        # Polled, not signal.pause(): a signal handled just before the pause would be lost.
        time.sleep(0.01)
        while asked:
            asked.pop()
            gen += 1000
            struct.pack_into("q", region, 0, gen)
            with lock:
                start = total.value
            until = time.time() + 10
            while time.time() < until and not (all(e == gen for e in echoes) and total.value > start + 3):
                time.sleep(0.01)
            if all(e == gen for e in echoes) and total.value > start + 3:
                print("ok", flush=True)
            else:
                print("bad echoes", list(echoes), "want", gen, "total", start, "->", total.value, flush=True)
`);
  return path;
}

/**
 * An unlinked sparse file, both open and mapped: 64 MiB long with data only
 * at 0 and at 32 MiB; its first page is mapped shared, then the file is
 * unlinked. Beside it an unlinked FIFO holding 8 unread bytes. On SIGUSR1 it
 * checks that the fd and the mapping are one inode again (a write through
 * the fd shows in the mapping), the data, the size, that the holes are
 * holes, and the FIFO's bytes and flags: "ok" or "bad <why>". Prints
 * "ready PID".
 */
export function sparseGhostTarget(): string {
  return buildC("sparseghost", String.raw`
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define MIB (1 << 20)
static volatile sig_atomic_t check;
static void on_usr1(int s) { (void)s; check = 1; }

int main(int argc, char **argv) {
  char path[4096];
  snprintf(path, sizeof path, "%s/sparse", argv[1]);
  int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0640);
  if (fd < 0 || ftruncate(fd, 64 * MIB) || pwrite(fd, "head", 4, 0) != 4 || pwrite(fd, "tail", 4, 32 * MIB) != 4) return 1;
  char *map = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (map == MAP_FAILED || unlink(path)) return 1;
  snprintf(path, sizeof path, "%s/fifo", argv[1]);
  if (mkfifo(path, 0640)) return 1;
  int ff = open(path, O_RDWR | O_NONBLOCK);
  if (ff < 0 || write(ff, "fifodata", 8) != 8 || unlink(path)) return 1;
  int fifo_flags = fcntl(ff, F_GETFL);
  signal(SIGUSR1, on_usr1);
  printf("ready %d\n", getpid());
  fflush(stdout);
  int round = 0;
  for (;;) {
    /* Polled, not pause(): a restored thread resumes before its restarted
       pause(), and a SIGUSR1 landing then would be handled and lost. */
    while (!check) usleep(10000);
    check = 0;
    char tail[5] = "", word[8];
    struct stat st;
    const char *why = NULL;
    snprintf(word, sizeof word, "w%d", round++);
    if (pread(fd, tail, 4, 32 * MIB) != 4 || strcmp(tail, "tail")) why = "the data at 32 MiB";
    else if (memcmp(map, round == 1 ? "head" : "w", round == 1 ? 4 : 1)) why = "the mapped first page";
    else if (fstat(fd, &st) || st.st_size != 64 * MIB || st.st_nlink != 0) why = "size or link count";
    else if (lseek(fd, 4096, SEEK_HOLE) != 4096 || lseek(fd, 4096, SEEK_DATA) != 32 * MIB) why = "the holes";
    else if (pwrite(fd, word, strlen(word) + 1, 0) < 0 || strcmp(map, word)) why = "a write through the fd is not seen in the mapping";
    else if (fstat(ff, &st) || !S_ISFIFO(st.st_mode) || st.st_nlink != 0 || fcntl(ff, F_GETFL) != fifo_flags) why = "the FIFO's inode or flags";
    else {
      char got[9] = "";
      if (read(ff, got, 8) != 8 || strcmp(got, "fifodata") || write(ff, got, 8) != 8) why = "the FIFO's unread bytes";
    }
    printf(why ? "bad %s\n" : "ok\n", why);
    fflush(stdout);
  }
}
`);
}

/**
 * A daemon's UDP sockets: a server bound to 127.0.0.1 (an ephemeral port), a
 * client connected to it, an IPv6 socket bound with IPV6_FREEBIND to an
 * address this host does not have, and an unbound UDP and an unbound TCP
 * socket. On SIGUSR1 the client sends to the server, which must see it come
 * from the client's address and port and answer; the other sockets must be
 * as they were: "ok" or "bad <why>". Prints "ready PID SERVERPORT".
 */
export function udpTarget(): string {
  return buildC("udpdaemon", String.raw`
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static volatile sig_atomic_t check;
static void on_usr1(int s) { (void)s; check = 1; }

int main(void) {
  int srv = socket(AF_INET, SOCK_DGRAM, 0), cli = socket(AF_INET, SOCK_DGRAM, 0);
  int free6 = socket(AF_INET6, SOCK_DGRAM, 0), loose = socket(AF_INET, SOCK_DGRAM, 0), tcp = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) }, ca;
  socklen_t len = sizeof sa;
  if (bind(srv, (struct sockaddr *)&sa, sizeof sa) || getsockname(srv, (struct sockaddr *)&sa, &len)) return 1;
  if (connect(cli, (struct sockaddr *)&sa, sizeof sa)) return 1;
  len = sizeof ca;
  if (getsockname(cli, (struct sockaddr *)&ca, &len)) return 1;
  int one = 1;
  struct sockaddr_in6 s6 = { .sin6_family = AF_INET6, .sin6_port = htons(0) };
  inet_pton(AF_INET6, "2001:db8::7", &s6.sin6_addr);
  if (setsockopt(free6, SOL_IPV6, 78 /* IPV6_FREEBIND */, &one, sizeof one) || bind(free6, (struct sockaddr *)&s6, sizeof s6)) return 1;
  len = sizeof s6;
  getsockname(free6, (struct sockaddr *)&s6, &len);
  signal(SIGUSR1, on_usr1);
  printf("ready %d %d\n", getpid(), ntohs(sa.sin_port));
  fflush(stdout);
  for (;;) {
    /* Polled, not pause(): a restored thread resumes before its restarted
       pause(), and a SIGUSR1 landing then would be handled and lost. */
    while (!check) usleep(10000);
    check = 0;
    const char *why = NULL;
    char buf[16] = "";
    struct sockaddr_in from, now;
    struct sockaddr_in6 n6;
    socklen_t fl = sizeof from, nl = sizeof now, n6l = sizeof n6;
    if (send(cli, "ping", 4, 0) != 4) why = "send from the connected client";
    else if (recvfrom(srv, buf, sizeof buf, 0, (struct sockaddr *)&from, &fl) != 4 || memcmp(buf, "ping", 4)) why = "the server's datagram";
    else if (from.sin_port != ca.sin_port || from.sin_addr.s_addr != ca.sin_addr.s_addr) why = "the datagram's sender is not the client";
    else if (sendto(srv, "pong", 4, 0, (struct sockaddr *)&from, fl) != 4 || recv(cli, buf, sizeof buf, 0) != 4 || memcmp(buf, "pong", 4)) why = "the answer";
    else if (getsockname(free6, (struct sockaddr *)&n6, &n6l) || memcmp(&n6.sin6_addr, &s6.sin6_addr, 16) || n6.sin6_port != s6.sin6_port) why = "the free-bound IPv6 socket's address";
    else if (getsockname(loose, (struct sockaddr *)&now, &nl) || now.sin_port != 0) why = "the unbound UDP socket got bound";
    else {
      int type = 0;
      socklen_t tl = sizeof type;
      nl = sizeof now;
      if (getsockopt(tcp, SOL_SOCKET, SO_TYPE, &type, &tl) || type != SOCK_STREAM || getsockname(tcp, (struct sockaddr *)&now, &nl) || now.sin_port != 0) why = "the unbound TCP socket";
    }
    printf(why ? "bad %s\n" : "ok\n", why);
    fflush(stdout);
  }
}
`);
}

/**
 * A shell-like parent with a job in a process group of its own (so the
 * group is not orphaned and SIGTSTP stops it). Prints "ready PARENT JOB".
 */
export function jobParentTarget(): string {
  return buildC("jobparent", String.raw`
#include <stdio.h>
#include <unistd.h>
int main(void) {
  pid_t job = fork();
  if (job == 0) { setpgid(0, 0); for (;;) pause(); }
  setpgid(job, job);
  printf("ready %d %d\n", getpid(), job);
  fflush(stdout);
  for (;;) pause();
}
`);
}

/**
 * A daemon's netlink sockets: a route socket (bound by the kernel's choice
 * of port id, in the link group and in group 33, past the first 32), a
 * uevent socket in its multicast group 1, and one never bound. On SIGUSR1
 * it checks that each has its port id and groups, and that the route socket
 * still answers a request (RTM_GETLINK for lo): "ok" or "bad <why>".
 * With the argument "low", no group past 32 (CRIU 4.2 refuses those).
 * Prints "ready PID".
 */
export function netlinkTarget(): string {
  return buildC("netlinkdaemon", String.raw`
#define _GNU_SOURCE
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static volatile sig_atomic_t check;
static void on_usr1(int s) { (void)s; check = 1; }

static int addr_of(int fd, struct sockaddr_nl *a) { socklen_t l = sizeof *a; return getsockname(fd, (struct sockaddr *)a, &l); }
static int groups_of(int fd, unsigned g[4]) { socklen_t l = 4 * sizeof g[0]; memset(g, 0, 4 * sizeof g[0]); return getsockopt(fd, SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, g, &l); }

int main(int argc, char **argv) {
  int high = !(argc > 1 && !strcmp(argv[1], "low"));
  int route = socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE), uevent = socket(AF_NETLINK, SOCK_DGRAM, NETLINK_KOBJECT_UEVENT);
  int loose = socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE);
  struct sockaddr_nl a = { .nl_family = AF_NETLINK, .nl_groups = RTMGRP_LINK }, u = { .nl_family = AF_NETLINK, .nl_groups = 1 };
  int g33 = 33; /* the first group past the 32 a sockaddr can name */
  if (bind(route, (struct sockaddr *)&a, sizeof a) || (high && setsockopt(route, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &g33, sizeof g33))) return 1;
  if (bind(uevent, (struct sockaddr *)&u, sizeof u)) return 2;
  struct sockaddr_nl ra0, ua0, la0;
  unsigned rg0[4], ug0[4];
  if (addr_of(route, &ra0) || addr_of(uevent, &ua0) || addr_of(loose, &la0) || groups_of(route, rg0) || groups_of(uevent, ug0)) return 3;
  signal(SIGUSR1, on_usr1);
  printf("ready %d\n", getpid());
  fflush(stdout);
  for (;;) {
    /* Polled, not pause(): a restored thread resumes before its restarted
       pause(), and a SIGUSR1 landing then would be handled and lost. */
    while (!check) usleep(10000);
    check = 0;
    const char *why = NULL;
    struct sockaddr_nl ra, ua, la;
    unsigned rg[4], ug[4];
    if (addr_of(route, &ra) || ra.nl_pid != ra0.nl_pid) why = "the route socket's port id";
    else if (groups_of(route, rg) || memcmp(rg, rg0, sizeof rg) || rg[1] != (high ? 1u : 0u)) why = "the route socket's groups";
    else if (addr_of(uevent, &ua) || ua.nl_pid != ua0.nl_pid || groups_of(uevent, ug) || memcmp(ug, ug0, sizeof ug)) why = "the uevent socket";
    else if (addr_of(loose, &la) || la.nl_pid != 0) why = "the unbound socket got bound";
    else {
      struct { struct nlmsghdr h; struct ifinfomsg i; } req = { .h = { .nlmsg_len = sizeof req, .nlmsg_type = RTM_GETLINK, .nlmsg_flags = NLM_F_REQUEST, .nlmsg_seq = 7 }, .i = { .ifi_family = AF_UNSPEC, .ifi_index = 1 } };
      char buf[8192];
      ssize_t n;
      if (send(route, &req, sizeof req, 0) != sizeof req) why = "a request on the route socket";
      else {
        /* Skip any link event that came meanwhile: the answer is the message with our sequence number. */
        why = "no answer from the kernel";
        while ((n = recv(route, buf, sizeof buf, 0)) > 0) {
          struct nlmsghdr *h = (struct nlmsghdr *)buf;
          if (h->nlmsg_seq == 7) { why = h->nlmsg_type == RTM_NEWLINK ? NULL : "an error answer"; break; }
        }
      }
    }
    printf(why ? "bad %s\n" : "ok\n", why);
    fflush(stdout);
  }
}
`);
}
