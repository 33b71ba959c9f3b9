/**
 * C workloads holding every kind of fd the files dump knows, at fixed fd
 * numbers, with sharing the tests know: dup, fork inheritance, SCM_RIGHTS,
 * separate opens of one file at one offset. On SIGUSR1 the parent checks that
 * the dump consumed nothing (pipe, FIFO and socket data still queued, the
 * eventfd counter, memfd contents) and prints "ok" or "bad WHAT".
 */
import { buildC } from "./target";

/** Fixed fd numbers of fdtarget. */
export const FD = {
  FILE_A: 10, FILE_A_DUP: 11, FILE_A_AGAIN: 12, APPEND: 13, CLOEXEC: 14, GHOST: 15,
  PIPE_R: 20, PIPE_W: 21, FIFO: 22, EVENTFD: 23, EPOLL: 24, SIGNALFD: 25, TIMERFD: 26, MEMFD: 27,
  STREAM_A: 30, STREAM_B: 31, DGRAM_A: 32, DGRAM_B: 33, UNIX_LISTEN: 34, TCP_LISTEN: 35,
  PASSED: 40, CHILD_OWN: 41,
} as const;

export const DATA = {
  pipe: "data waiting in the pipe",
  fifo: "data waiting in the fifo",
  streamToB: "hello, B",
  streamToA: "hello back, A!",
  dgrams: ["first datagram", "second, longer datagram"],
  ghost: "contents of a file that was unlinked while open\n",
  fileA: "0123456789".repeat(30),
} as const;

/**
 * fdtarget DIR: files in DIR; forks one child that shares the inherited fds,
 * opens CHILD_OWN itself and passes another open file to the parent over a
 * unix socket (the parent keeps it as PASSED). Prints "ready PARENT CHILD TCPPORT".
 */
export function fdTarget(): string {
  return buildC("fdtarget", `
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <unistd.h>

static volatile sig_atomic_t check_requested;
static sigset_t wait_old;
static void on_usr1(int s) { (void)s; check_requested = 1; }
static void place(int fd, int at) { if (fd != at) { if (dup2(fd, at) < 0) exit(20); close(fd); } }
static char path[4096];
static const char *in(const char *dir, const char *name) { snprintf(path, sizeof path, "%s/%s", dir, name); return path; }

static void send_fd(int sock, int fd) {
  char c = 'F'; struct iovec iov = { &c, 1 };
  union { struct cmsghdr h; char buf[CMSG_SPACE(sizeof(int))]; } u;
  struct msghdr m = { 0 }; m.msg_iov = &iov; m.msg_iovlen = 1; m.msg_control = u.buf; m.msg_controllen = sizeof u.buf;
  struct cmsghdr *c1 = CMSG_FIRSTHDR(&m); c1->cmsg_level = SOL_SOCKET; c1->cmsg_type = SCM_RIGHTS; c1->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(c1), &fd, sizeof fd);
  if (sendmsg(sock, &m, 0) != 1) exit(30);
}
static int recv_fd(int sock) {
  char c; struct iovec iov = { &c, 1 };
  union { struct cmsghdr h; char buf[CMSG_SPACE(sizeof(int))]; } u;
  struct msghdr m = { 0 }; m.msg_iov = &iov; m.msg_iovlen = 1; m.msg_control = u.buf; m.msg_controllen = sizeof u.buf;
  if (recvmsg(sock, &m, 0) != 1) exit(31);
  int fd; memcpy(&fd, CMSG_DATA(CMSG_FIRSTHDR(&m)), sizeof fd); return fd;
}
/* Peek n bytes; 1 when they equal want. */
static int queued(int fd, const char *want, size_t n) {
  char buf[256]; ssize_t r = recv(fd, buf, sizeof buf, MSG_PEEK | MSG_DONTWAIT);
  return r == (ssize_t)n && memcmp(buf, want, n) == 0;
}

int main(int argc, char **argv) {
  if (argc < 2) return 2;
  const char *dir = argv[1];
  signal(SIGPIPE, SIG_IGN);
  int a = open(in(dir, "a.txt"), O_RDWR | O_CREAT, 0640);
  if (a < 0 || write(a, "${DATA.fileA}", ${DATA.fileA.length}) != ${DATA.fileA.length}) return 3;
  lseek(a, 100, SEEK_SET);
  place(a, ${FD.FILE_A});
  if (dup2(${FD.FILE_A}, ${FD.FILE_A_DUP}) < 0) return 4;
  int again = open(in(dir, "a.txt"), O_RDONLY);
  lseek(again, 100, SEEK_SET);            /* same file, same offset: only kcmp tells them apart */
  place(again, ${FD.FILE_A_AGAIN});
  place(open(in(dir, "log.txt"), O_WRONLY | O_CREAT | O_APPEND, 0600), ${FD.APPEND});
  place(open(in(dir, "a.txt"), O_RDONLY | O_CLOEXEC), ${FD.CLOEXEC});
  if (fcntl(${FD.CLOEXEC}, F_SETFD, FD_CLOEXEC)) return 5;
  fcntl(${FD.APPEND}, F_SETOWN, getpid());
  fcntl(${FD.APPEND}, F_SETSIG, SIGUSR2);
  int g = open(in(dir, "ghost.txt"), O_RDWR | O_CREAT, 0600);
  if (write(g, "${DATA.ghost.replace(/\n/g, "\\n")}", ${DATA.ghost.length}) != ${DATA.ghost.length}) return 6;
  unlink(in(dir, "ghost.txt"));
  place(g, ${FD.GHOST});

  int p[2]; if (pipe(p)) return 7;
  place(p[0], ${FD.PIPE_R}); place(p[1], ${FD.PIPE_W});
  if (write(${FD.PIPE_W}, "${DATA.pipe}", ${DATA.pipe.length}) != ${DATA.pipe.length}) return 8;
  if (mkfifo(in(dir, "fifo"), 0600)) return 9;
  place(open(in(dir, "fifo"), O_RDWR | O_NONBLOCK), ${FD.FIFO});
  if (write(${FD.FIFO}, "${DATA.fifo}", ${DATA.fifo.length}) != ${DATA.fifo.length}) return 10;

  place(eventfd(5, EFD_NONBLOCK), ${FD.EVENTFD});
  place(epoll_create1(0), ${FD.EPOLL});
  struct epoll_event ev = { .events = EPOLLIN, .data.u64 = 0x1234567890ULL };
  if (epoll_ctl(${FD.EPOLL}, EPOLL_CTL_ADD, ${FD.EVENTFD}, &ev)) return 11;
  ev.events = EPOLLIN | EPOLLET; ev.data.u64 = 77;
  if (epoll_ctl(${FD.EPOLL}, EPOLL_CTL_ADD, ${FD.PIPE_R}, &ev)) return 12;
  sigset_t mask; sigemptyset(&mask); sigaddset(&mask, SIGUSR2); sigaddset(&mask, SIGWINCH);
  place(signalfd(-1, &mask, SFD_NONBLOCK), ${FD.SIGNALFD});  /* dup2 in place() drops close-on-exec anyway */
  place(timerfd_create(CLOCK_MONOTONIC, 0), ${FD.TIMERFD});
  struct itimerspec its = { .it_interval = { 1, 500 }, .it_value = { 1000, 0 } };
  if (timerfd_settime(${FD.TIMERFD}, 0, &its, NULL)) return 13;
  int m = memfd_create("ckpt-test", MFD_ALLOW_SEALING);
  if (m < 0 || ftruncate(m, 5 * 4096)) return 14;
  for (int i = 0; i < 5; i++) if (i != 2) { char page[4096]; memset(page, 'a' + i, sizeof page); if (pwrite(m, page, 4096, i * 4096) != 4096) return 15; }
  lseek(m, 4096 + 7, SEEK_SET);
  fcntl(m, F_ADD_SEALS, F_SEAL_SHRINK);
  place(m, ${FD.MEMFD});

  int s[2]; if (socketpair(AF_UNIX, SOCK_STREAM, 0, s)) return 16;
  place(s[0], ${FD.STREAM_A}); place(s[1], ${FD.STREAM_B});
  send(${FD.STREAM_A}, "${DATA.streamToB}", ${DATA.streamToB.length}, 0);
  send(${FD.STREAM_B}, "${DATA.streamToA}", ${DATA.streamToA.length}, 0);
  int d[2]; if (socketpair(AF_UNIX, SOCK_DGRAM, 0, d)) return 17;
  place(d[0], ${FD.DGRAM_A}); place(d[1], ${FD.DGRAM_B});
  send(${FD.DGRAM_A}, "${DATA.dgrams[0]}", ${DATA.dgrams[0].length}, 0);
  send(${FD.DGRAM_A}, "${DATA.dgrams[1]}", ${DATA.dgrams[1].length}, 0);
  int l = socket(AF_UNIX, SOCK_STREAM, 0);
  struct sockaddr_un un = { .sun_family = AF_UNIX };
  snprintf(un.sun_path, sizeof un.sun_path, "%s", in(dir, "listen.sock"));
  if (bind(l, (struct sockaddr *)&un, sizeof un) || listen(l, 7)) return 18;
  place(l, ${FD.UNIX_LISTEN});
  int t = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1; setsockopt(t, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in sin = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
  socklen_t sl = sizeof sin;
  if (bind(t, (struct sockaddr *)&sin, sizeof sin) || listen(t, 9) || getsockname(t, (struct sockaddr *)&sin, &sl)) return 19;
  place(t, ${FD.TCP_LISTEN});

  int x[2]; if (socketpair(AF_UNIX, SOCK_STREAM, 0, x)) return 21;
  pid_t child = fork();
  if (child == 0) {
    close(x[0]);
    place(open(in(dir, "child.txt"), O_RDWR | O_CREAT, 0600), ${FD.CHILD_OWN});
    int passed = open(in(dir, "passed.txt"), O_RDWR | O_CREAT, 0600);
    if (write(passed, "xyz", 3) != 3) return 22;
    send_fd(x[1], passed);
    place(passed, ${FD.PASSED});
    close(x[1]);
    for (;;) pause();
  }
  close(x[1]);
  place(recv_fd(x[0]), ${FD.PASSED});
  close(x[0]);

  signal(SIGUSR1, on_usr1);
  { sigset_t wait_block; sigemptyset(&wait_block); sigaddset(&wait_block, SIGUSR1); sigaddset(&wait_block, SIGUSR2);
    /* Handled signals arrive only inside sigsuspend: a pause() loop loses one that lands between its flag check and the call. */
    sigprocmask(SIG_BLOCK, &wait_block, &wait_old); }
  printf("ready %d %d %d\\n", getpid(), child, ntohs(sin.sin_port));
  fflush(stdout);
  for (;;) {
    while (!check_requested) sigsuspend(&wait_old);
    check_requested = 0;
    const char *bad = NULL;
    int n = 0;
    if (ioctl(${FD.PIPE_R}, FIONREAD, &n) || n != ${DATA.pipe.length}) bad = "pipe";
    else if (ioctl(${FD.FIFO}, FIONREAD, &n) || n != ${DATA.fifo.length}) bad = "fifo";
    else if (!queued(${FD.STREAM_B}, "${DATA.streamToB}", ${DATA.streamToB.length})) bad = "stream B";
    else if (!queued(${FD.STREAM_A}, "${DATA.streamToA}", ${DATA.streamToA.length})) bad = "stream A";
    else if (!queued(${FD.DGRAM_B}, "${DATA.dgrams[0]}", ${DATA.dgrams[0].length})) bad = "dgram";
    else if (lseek(${FD.FILE_A}, 0, SEEK_CUR) != 100 || lseek(${FD.MEMFD}, 0, SEEK_CUR) != 4096 + 7) bad = "positions";
    else {
      int sk = 0; socklen_t skl = sizeof sk;
      if (getsockopt(${FD.DGRAM_B}, SOL_SOCKET, SO_PEEK_OFF, &sk, &skl) || sk != -1) bad = "peek offset";
    }
    if (bad) printf("bad %s\\n", bad); else printf("ok\\n");
    fflush(stdout);
  }
}
`);
}

/**
 * oddfd MODE: one process holding an fd the dump must refuse (or, for "tty",
 * save only with --shell-job). Prints "ready PID" where PID is the process to
 * dump (for "tty", a child in its own session whose stdio is a pty slave).
 *   fanotify-fs      a fanotify fd with a filesystem mark (no image form for it)
 *   tcp-established  a connected TCP socket over loopback
 *   pending          a unix listener with a connection not yet accepted
 *   inflight         a unix socket with an fd in flight (SCM_RIGHTS, unread)
 *   tty              stdio on a pty
 */
export function oddFdTarget(): string {
  return buildC("oddfd", `
#define _GNU_SOURCE
#include <fcntl.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/fanotify.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int main(int argc, char **argv) {
  const char *mode = argc > 1 ? argv[1] : "";
  pid_t subject = getpid();
  if (!strcmp(mode, "fanotify-fs")) {
    int fa = fanotify_init(FAN_CLASS_NOTIF, O_RDONLY);
    if (fa < 0 || fanotify_mark(fa, FAN_MARK_ADD | FAN_MARK_FILESYSTEM, FAN_CLOSE_WRITE, AT_FDCWD, "/tmp")) return 2;
  } else if (!strcmp(mode, "tcp-established")) {
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t al = sizeof a;
    if (bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 1) || getsockname(l, (struct sockaddr *)&a, &al)) return 3;
    int c = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(c, (struct sockaddr *)&a, sizeof a)) return 4;
    if (accept(l, NULL, NULL) < 0) return 5;
  } else if (!strcmp(mode, "pending")) {
    int l = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un u = { .sun_family = AF_UNIX };
    snprintf(u.sun_path + 1, sizeof u.sun_path - 1, "ckpt-pending-%d", getpid());
    socklen_t ul = offsetof(struct sockaddr_un, sun_path) + 1 + strlen(u.sun_path + 1);
    if (bind(l, (struct sockaddr *)&u, ul) || listen(l, 4)) return 6;
    int c = socket(AF_UNIX, SOCK_STREAM, 0);
    if (connect(c, (struct sockaddr *)&u, ul)) return 7;
  } else if (!strcmp(mode, "inflight")) {
    int s[2];
    if (socketpair(AF_UNIX, SOCK_DGRAM, 0, s)) return 8;
    int fd = open("/dev/null", O_RDONLY);
    char c = 'F'; struct iovec iov = { &c, 1 };
    union { struct cmsghdr h; char buf[CMSG_SPACE(sizeof(int))]; } cm;
    struct msghdr m = { 0 }; m.msg_iov = &iov; m.msg_iovlen = 1; m.msg_control = cm.buf; m.msg_controllen = sizeof cm.buf;
    struct cmsghdr *h = CMSG_FIRSTHDR(&m); h->cmsg_level = SOL_SOCKET; h->cmsg_type = SCM_RIGHTS; h->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(h), &fd, sizeof fd);
    if (sendmsg(s[0], &m, 0) != 1) return 9;
  } else if (!strcmp(mode, "empty-datagram")) {
    /* A zero-length datagram, then one byte: a peek at an offset cannot step over the first. */
    int s[2];
    if (socketpair(AF_UNIX, SOCK_DGRAM, 0, s) || send(s[0], "", 0, 0) != 0 || send(s[0], "x", 1, 0) != 1) return 20;
  } else if (!strcmp(mode, "tty")) {
    int master = posix_openpt(O_RDWR | O_NOCTTY);
    if (master < 0 || grantpt(master) || unlockpt(master)) return 10;
    const char *slave = ptsname(master);
    int ready[2]; if (pipe(ready)) return 11;
    pid_t child = fork();
    if (child == 0) {
      close(master);
      setsid();
      int s = open(slave, O_RDWR);
      if (s < 0 || ioctl(s, TIOCSCTTY, 0)) _exit(12);
      struct winsize ws = { .ws_row = 33, .ws_col = 101 };
      ioctl(s, TIOCSWINSZ, &ws);
      dup2(s, 0); dup2(s, 1); dup2(s, 2); if (s > 2) close(s);
      close(ready[0]); close(ready[1]);
      for (;;) pause();
    }
    close(ready[1]);
    char c; if (read(ready[0], &c, 1) != 0) return 13;
    subject = child;
  } else {
    return 14;
  }
  printf("ready %d\\n", subject);
  fflush(stdout);
  for (;;) pause();
}
`);
}
