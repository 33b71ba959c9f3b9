/**
 * A TCP conversation for --tcp-established: a server that echoes numbered
 * lines and checks they come in order, and a client that sends them at a
 * steady pace and checks every echo. A byte lost or repeated in either
 * direction breaks the count on one side; a reset ends the client.
 */
import { buildC } from "./target";

/**
 * tcpserver ADDR PORT: accepts one client, echoes each line "N\n" after
 * checking N is the next number; prints "ready PID", and on SIGUSR1 "ok N"
 * (N lines so far) or "bad ...".
 */
export function tcpServer(): string {
  return buildC("tcpserver", `
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
static volatile sig_atomic_t check_requested;
static void on_usr1(int s) { (void)s; check_requested = 1; }
static unsigned long next_in = 1;
static int bad;
int main(int argc, char **argv) {
  struct sigaction sa = { .sa_handler = on_usr1 };
  sigaction(SIGUSR1, &sa, 0);
  int ls = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[2])) };
  inet_pton(AF_INET, argv[1], &a.sin_addr);
  if (bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 1)) { perror("listen"); return 1; }
  printf("ready %d\\n", getpid());
  fflush(stdout);
  int c;
  while ((c = accept(ls, 0, 0)) < 0) if (errno != EINTR) { perror("accept"); return 1; }
  char buf[65536], line[64];
  size_t ll = 0;
  int closed = 0;
  /* SIGUSR1 only inside ppoll: a check can never land between the flag test and the wait. */
  sigset_t usr1, open_mask;
  sigemptyset(&usr1);
  sigaddset(&usr1, SIGUSR1);
  sigprocmask(SIG_BLOCK, &usr1, &open_mask);
  for (;;) {
    if (check_requested) {
      check_requested = 0;
      if (bad) printf("bad in\\n"); else printf("ok %lu\\n", next_in - 1);
      fflush(stdout);
    }
    struct pollfd p = { .fd = c, .events = POLLIN };
    if (ppoll(&p, closed ? 0 : 1, 0, &open_mask) < 0) continue;
    if (closed) continue;
    ssize_t n = read(c, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) { printf("closed %lu\\n", next_in - 1); fflush(stdout); closed = 1; continue; }
    for (ssize_t i = 0; i < n; i++) {
      if (buf[i] != '\\n') { if (ll < sizeof line - 1) line[ll++] = buf[i]; continue; }
      line[ll] = 0;
      ll = 0;
      if (strtoul(line, 0, 10) != next_in) bad = 1;
      next_in++;
      char out[32];
      int len = snprintf(out, sizeof out, "%s\\n", line);
      for (int off = 0; off < len;) {
        ssize_t w = write(c, out + off, len - off);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) { perror("write"); return 1; }
        off += w;
      }
    }
  }
}
`);
}

/**
 * tcpclient ADDR PORT COUNT: connects, sends "1\\n" ... "COUNT\\n" one per
 * millisecond, and checks every echo; prints "connected", then "ok COUNT"
 * and exits 0, or "bad ..." (exit 1) or "error ..." (exit 2).
 */
export function tcpClient(): string {
  return buildC("tcpclient", `
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
static long long now_us(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1000000LL + t.tv_nsec / 1000; }
int main(int argc, char **argv) {
  unsigned long count = strtoul(argv[3], 0, 10);
  int s = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[2])) };
  inet_pton(AF_INET, argv[1], &a.sin_addr);
  if (connect(s, (struct sockaddr *)&a, sizeof a)) { printf("error connect %s\\n", strerror(errno)); return 2; }
  printf("connected\\n");
  fflush(stdout);
  unsigned long sent = 0, echoed = 0;
  long long next = now_us();
  char buf[65536], line[64];
  size_t ll = 0;
  while (echoed < count) {
    struct pollfd p = { .fd = s, .events = POLLIN | (sent < count ? POLLOUT : 0) };
    int wait = sent < count ? (int)((next - now_us()) / 1000) : 1000;
    if (wait < 0) wait = 0;
    if (poll(&p, 1, wait) < 0 && errno != EINTR) { printf("error poll %s\\n", strerror(errno)); return 2; }
    if (sent < count && now_us() >= next && (p.revents & POLLOUT)) {
      char out[32];
      int len = snprintf(out, sizeof out, "%lu\\n", sent + 1);
      if (write(s, out, len) != len) { printf("error write %s\\n", strerror(errno)); return 2; }
      sent++;
      next += 1000;
    }
    if (p.revents & (POLLIN | POLLERR | POLLHUP)) {
      ssize_t n = read(s, buf, sizeof buf);
      if (n <= 0) { printf("error read %s after %lu echoes\\n", n < 0 ? strerror(errno) : "EOF", echoed); return 2; }
      for (ssize_t i = 0; i < n; i++) {
        if (buf[i] != '\\n') { if (ll < sizeof line - 1) line[ll++] = buf[i]; continue; }
        line[ll] = 0;
        ll = 0;
        if (strtoul(line, 0, 10) != echoed + 1) { printf("bad echo %s, expected %lu\\n", line, echoed + 1); return 1; }
        echoed++;
      }
    }
  }
  printf("ok %lu\\n", echoed);
  return 0;
}
`);
}
