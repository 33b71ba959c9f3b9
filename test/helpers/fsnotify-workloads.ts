/**
 * A workload holding an inotify fd and a fanotify fd, for dump and restore
 * tests of watches and marks.
 */
import { buildC } from "./target";

/** fd numbers and wds the workload sets up (the wds follow from the order it adds and removes watches). */
export const FSN = {
  INOTIFY_FD: 30,
  FANOTIFY_FD: 31,
  /** DIR/sub: IN_CREATE | IN_DELETE. */
  WD_SUB: 1,
  /** DIR/a.txt: IN_MODIFY. */
  WD_A: 2,
  /** DIR/b.txt: IN_CLOSE_WRITE | IN_ONESHOT (wds 3, 4 and 5 were DIR/gone.txt, added and removed again: a gap). */
  WD_B: 6,
  /** DIR itself: IN_MOVED_TO. */
  WD_DIR: 7,
} as const;

/** inotify and fanotify constants the tests compare masks with. */
export const IN_BITS = {
  MODIFY: 0x2, ATTRIB: 0x4, CLOSE_WRITE: 0x8, MOVED_TO: 0x80, CREATE: 0x100, DELETE: 0x200,
  ONESHOT: 0x80000000, IGNORED: 0x8000,
} as const;
export const FAN_BITS = { MODIFY: 0x2, CLOSE_WRITE: 0x8, CLOEXEC: 0x1, NONBLOCK: 0x2, MARK_IGNORED_SURV_MODIFY: 0x40 } as const;

/**
 * fsnotify DIR MNT MDIR: DIR holds sub/, a.txt, b.txt, c.txt and gone.txt;
 * MNT is a mount point and MDIR a directory on that mount holding m.txt and
 * quiet.txt. Sets up:
 *   fd 30: inotify (IN_NONBLOCK) watching DIR/sub, DIR/a.txt, DIR/b.txt and
 *          DIR with the wds and masks of FSN (gone.txt's watches removed);
 *   fd 31: fanotify (FAN_CLASS_NOTIF | FAN_NONBLOCK, close-on-exec) with an
 *          inode mark on DIR/c.txt (FAN_CLOSE_WRITE), an inode mark on
 *          MDIR/quiet.txt that only ignores FAN_CLOSE_WRITE (surviving
 *          modification), and a mount mark on MNT (FAN_CLOSE_WRITE).
 * Prints "ready PID". On SIGUSR1 it checks that both queues are empty, makes
 * changes (creates sub/new, writes a.txt, writes and closes b.txt, moves
 * sub/new to DIR/moved, writes quiet.txt, m.txt and c.txt) and checks that
 * exactly the expected events arrive, on the right wds and for the right
 * files; prints "ok" or "bad WHAT".
 */
export function fsnotifyTarget(): string {
  return buildC("fsnotify", `
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/fanotify.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

static volatile sig_atomic_t check_requested;
static sigset_t wait_old;
static void on_usr1(int s) { (void)s; check_requested = 1; }
static const char *dir, *mnt, *mdir;
static char path_buf[4][PATH_MAX];

static const char *in(const char *d, const char *name, int slot) {
  snprintf(path_buf[slot], PATH_MAX, "%s/%s", d, name);
  return path_buf[slot];
}

static int touch(const char *path) {
  int f = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (f < 0) return -1;
  int ok = write(f, "x", 1) == 1;
  close(f);
  return ok ? 0 : -1;
}

/* One inotify event seen by the check. */
struct seen { int wd; unsigned mask; char name[64]; };

/* Read inotify events (waiting up to 2 s for more) until want events came or none comes. */
static int read_inotify(struct seen *out, int max, int want) {
  int n = 0;
  char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
  while (n < want) {
    struct pollfd p = { ${FSN.INOTIFY_FD}, POLLIN, 0 };
    if (poll(&p, 1, 2000) <= 0) break;
    ssize_t len = read(${FSN.INOTIFY_FD}, buf, sizeof buf);
    if (len <= 0) break;
    for (char *q = buf; q < buf + len;) {
      struct inotify_event *e = (struct inotify_event *)q;
      if (n < max) {
        out[n].wd = e->wd; out[n].mask = e->mask;
        snprintf(out[n].name, sizeof out[n].name, "%s", e->len ? e->name : "");
        n++;
      }
      q += sizeof *e + e->len;
    }
  }
  return n;
}

static int has(struct seen *s, int n, int wd, unsigned mask, const char *name) {
  for (int i = 0; i < n; i++) if (s[i].wd == wd && (s[i].mask & mask) == mask && !strcmp(s[i].name, name)) return 1;
  return 0;
}

/* The path of each fanotify event (close-write only) until both wanted paths came; 0 when they did. */
static const char *read_fanotify(const char *want1, const char *want2, const char *never) {
  int got1 = 0, got2 = 0;
  char buf[4096] __attribute__((aligned(__alignof__(struct fanotify_event_metadata))));
  for (int rounds = 0; rounds < 200 && !(got1 && got2); rounds++) {
    struct pollfd p = { ${FSN.FANOTIFY_FD}, POLLIN, 0 };
    if (poll(&p, 1, 2000) <= 0) return "no fanotify event in 2 s";
    ssize_t len = read(${FSN.FANOTIFY_FD}, buf, sizeof buf);
    if (len <= 0) return "fanotify read";
    struct fanotify_event_metadata *m = (struct fanotify_event_metadata *)buf;
    for (; FAN_EVENT_OK(m, len); m = FAN_EVENT_NEXT(m, len)) {
      if (m->fd < 0) continue;
      char link[64], target[PATH_MAX] = {0};
      snprintf(link, sizeof link, "/proc/self/fd/%d", m->fd);
      if (readlink(link, target, sizeof target - 1) < 0) target[0] = 0;
      close(m->fd);
      if (!(m->mask & FAN_CLOSE_WRITE)) continue;
      if (!strcmp(target, never)) return "fanotify event for the ignored file";
      if (!strcmp(target, want1)) got1 = 1;
      if (!strcmp(target, want2)) got2 = 1;
    }
  }
  return got1 && got2 ? NULL : "fanotify events missing";
}

static const char *check(void) {
  char buf[256];
  /* The queues start empty: nothing left from restoring the watches. */
  if (read(${FSN.INOTIFY_FD}, buf, sizeof buf) != -1 || errno != EAGAIN) return "inotify queue not empty or fd blocking";
  if (read(${FSN.FANOTIFY_FD}, buf, sizeof buf) != -1 || errno != EAGAIN) return "fanotify queue not empty or fd blocking";
  if (fcntl(${FSN.FANOTIFY_FD}, F_GETFD) != FD_CLOEXEC || fcntl(${FSN.INOTIFY_FD}, F_GETFD) != 0) return "close-on-exec flags";

  if (chmod(in(dir, "gone.txt", 0), 0644)) return "chmod gone.txt";
  if (touch(in(dir, "sub/new", 0))) return "create sub/new";
  int f = open(in(dir, "a.txt", 0), O_WRONLY | O_APPEND | O_CLOEXEC);
  if (f < 0 || write(f, "more", 4) != 4) return "write a.txt";
  close(f);
  if (touch(in(dir, "b.txt", 0))) return "write b.txt";
  if (rename(in(dir, "sub/new", 0), in(dir, "moved", 1))) return "rename";

  struct seen s[32];
  int n = read_inotify(s, 32, 5);
  if (!has(s, n, ${FSN.WD_SUB}, IN_CREATE, "new")) return "no IN_CREATE on wd ${FSN.WD_SUB}";
  if (!has(s, n, ${FSN.WD_A}, IN_MODIFY, "")) return "no IN_MODIFY on wd ${FSN.WD_A}";
  if (!has(s, n, ${FSN.WD_B}, IN_CLOSE_WRITE, "")) return "no IN_CLOSE_WRITE on wd ${FSN.WD_B}";
  if (!has(s, n, ${FSN.WD_B}, IN_IGNORED, "")) return "oneshot watch ${FSN.WD_B} not removed";
  if (!has(s, n, ${FSN.WD_DIR}, IN_MOVED_TO, "moved")) return "no IN_MOVED_TO on wd ${FSN.WD_DIR}";
  /* More events would be ones nobody asked for (gone.txt's removed watch, masks too wide). */
  n += read_inotify(s + n, 32 - n, 1);
  if (n != 5) return "unexpected inotify events";

  if (touch(in(mdir, "quiet.txt", 2))) return "write quiet.txt";
  if (touch(in(mdir, "m.txt", 3))) return "write m.txt";
  if (touch(in(dir, "c.txt", 0))) return "write c.txt";
  return read_fanotify(path_buf[0], path_buf[3], path_buf[2]);
}

int main(int argc, char **argv) {
  if (argc < 4) return 2;
  dir = argv[1]; mnt = argv[2]; mdir = argv[3];
  if (mkdir(in(dir, "sub", 0), 0700) && errno != EEXIST) return 3;
  const char *files[] = { "a.txt", "b.txt", "c.txt", "gone.txt" };
  for (int i = 0; i < 4; i++) if (touch(in(dir, files[i], 0))) return 4;
  if (touch(in(mdir, "m.txt", 0)) || touch(in(mdir, "quiet.txt", 0))) return 5;

  int i = inotify_init1(IN_NONBLOCK);
  if (i < 0 || dup2(i, ${FSN.INOTIFY_FD}) < 0) return 6;
  close(i);
  int wd_sub = inotify_add_watch(${FSN.INOTIFY_FD}, in(dir, "sub", 0), IN_CREATE | IN_DELETE);
  int wd_a = inotify_add_watch(${FSN.INOTIFY_FD}, in(dir, "a.txt", 0), IN_MODIFY);
  for (int k = 0; k < 3; k++) {
    int g = inotify_add_watch(${FSN.INOTIFY_FD}, in(dir, "gone.txt", 0), IN_ATTRIB);
    if (g < 0 || inotify_rm_watch(${FSN.INOTIFY_FD}, g)) return 7;
  }
  int wd_b = inotify_add_watch(${FSN.INOTIFY_FD}, in(dir, "b.txt", 0), IN_CLOSE_WRITE | IN_ONESHOT);
  int wd_dir = inotify_add_watch(${FSN.INOTIFY_FD}, dir, IN_MOVED_TO | IN_ONLYDIR);
  if (wd_sub != ${FSN.WD_SUB} || wd_a != ${FSN.WD_A} || wd_b != ${FSN.WD_B} || wd_dir != ${FSN.WD_DIR}) return 8;
  char drain[4096];
  while (read(${FSN.INOTIFY_FD}, drain, sizeof drain) > 0) {}

  int fa = fanotify_init(FAN_CLASS_NOTIF | FAN_NONBLOCK | FAN_CLOEXEC, O_RDONLY | O_LARGEFILE);
  if (fa < 0 || dup3(fa, ${FSN.FANOTIFY_FD}, O_CLOEXEC) < 0) return 9;
  close(fa);
  if (fanotify_mark(${FSN.FANOTIFY_FD}, FAN_MARK_ADD, FAN_CLOSE_WRITE, AT_FDCWD, in(dir, "c.txt", 0))) return 10;
  if (fanotify_mark(${FSN.FANOTIFY_FD}, FAN_MARK_ADD | FAN_MARK_IGNORED_MASK | FAN_MARK_IGNORED_SURV_MODIFY, FAN_CLOSE_WRITE, AT_FDCWD, in(mdir, "quiet.txt", 0))) return 11;
  if (fanotify_mark(${FSN.FANOTIFY_FD}, FAN_MARK_ADD | FAN_MARK_MOUNT, FAN_CLOSE_WRITE, AT_FDCWD, mnt)) return 12;

  signal(SIGUSR1, on_usr1);
  { sigset_t wait_block; sigemptyset(&wait_block); sigaddset(&wait_block, SIGUSR1); sigaddset(&wait_block, SIGUSR2);
    /* Handled signals arrive only inside sigsuspend: a pause() loop loses one that lands between its flag check and the call. */
    sigprocmask(SIG_BLOCK, &wait_block, &wait_old); }
  printf("ready %d\\n", getpid());
  fflush(stdout);
  for (;;) {
    while (!check_requested) sigsuspend(&wait_old);
    check_requested = 0;
    const char *bad = check();
    if (bad) printf("bad %s\\n", bad); else printf("ok\\n");
    fflush(stdout);
  }
}
`);
}
