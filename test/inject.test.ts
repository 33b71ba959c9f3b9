import { afterAll, describe, expect, test } from "bun:test";
import { isFieldSet } from "@bufbuild/protobuf";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { InjectionError, RemoteSyscallError, RemoteSyscalls, readTaskMemory, type RemoteSyscallsOptions } from "../src/dump/task/inject";
import { dumpedSignals, readClearTidAddress, readItimers, readRseq, readSigactions, readSigaltstack } from "../src/dump/task/task-state";
import { SaEntrySchema } from "../src/image/gen/sa_pb";
import { ProcFs } from "../src/proc/procfs";
import { readMaps } from "../src/proc/maps";
import { close, openat, writeAll } from "../src/sys/libc";
import { AT, NT, O, SYS } from "../src/sys/nr";
import * as ptrace from "../src/sys/ptrace";
import { decodeUserRegs, USER_REGS_SIZE } from "../src/sys/structs";
import { buildC, startDetached, tempDir, waitFor, type Target } from "./helpers/target";

const proc = new ProcFs();
afterAll(() => proc.close());

// ------------------------------------------------------------------ targets

/**
 * Two threads with known signal state. Main: handlers for SIGUSR1, SIGHUP,
 * SIGTRAP and SIGTERM, SIGUSR2 ignored, ITIMER_REAL and ITIMER_VIRTUAL armed,
 * a 64 KiB sigaltstack, SIGTERM (shared) and SIGRTMIN+2 (its own) pending and
 * blocked. Second thread: its own 32 KiB SS_AUTODISARM sigaltstack, blocked in
 * read() on a pipe. Main blocks in read() on the FIFO argv[1]. Once woken, each
 * thread compares its state with a snapshot taken before the dump, and main
 * prints OK or FAIL.
 */
const STATE_C = String.raw`
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/rseq.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <unistd.h>
#ifndef SS_AUTODISARM
#define SS_AUTODISARM (1U << 31)
#endif

struct ksa { unsigned long handler, flags, restorer, mask; };
struct snap { struct ksa sa[65]; unsigned long mask; stack_t ss; struct itimerval it[3]; unsigned long tidaddr; };

static void on_usr1(int s, siginfo_t *i, void *c) { (void)s; (void)i; (void)c; }
static void on_hup(int s) { (void)s; }
static void on_trap(int s) { (void)s; }
static void on_term(int s) { (void)s; }

static int to_thread[2];
static char *alt_main, *alt_thr;
static volatile int thr_ready;
static pid_t thr_tid;
static unsigned long thr_tidaddr;
static char thr_result[256] = "thread did not finish";

static void take(struct snap *s) {
  memset(s, 0, sizeof *s);
  for (int i = 1; i <= 64; i++) if (i != SIGKILL && i != SIGSTOP) syscall(SYS_rt_sigaction, i, NULL, &s->sa[i], 8);
  syscall(SYS_rt_sigprocmask, SIG_SETMASK, NULL, &s->mask, 8);
  sigaltstack(NULL, &s->ss);
  for (int w = 0; w < 3; w++) getitimer(w, &s->it[w]);
  prctl(PR_GET_TID_ADDRESS, &s->tidaddr);
}

/* Timer values run down while we wait; intervals and everything else must match. */
static const char *compare(const struct snap *a, const struct snap *b) {
  static char why[200];
  for (int i = 1; i <= 64; i++) if (memcmp(&a->sa[i], &b->sa[i], sizeof a->sa[i])) { snprintf(why, sizeof why, "sigaction %d changed", i); return why; }
  if (a->mask != b->mask) { snprintf(why, sizeof why, "mask %lx -> %lx", a->mask, b->mask); return why; }
  if (memcmp(&a->ss, &b->ss, sizeof a->ss)) return "sigaltstack changed";
  for (int w = 0; w < 3; w++) if (memcmp(&a->it[w].it_interval, &b->it[w].it_interval, sizeof a->it[w].it_interval)) return "itimer interval changed";
  if (a->tidaddr != b->tidaddr) return "clear_child_tid changed";
  return NULL;
}

static void *thread_main(void *arg) {
  (void)arg;
  stack_t ss = { .ss_sp = alt_thr, .ss_size = 32768, .ss_flags = SS_AUTODISARM };
  if (sigaltstack(&ss, NULL)) { perror("sigaltstack thread"); exit(2); }
  struct snap before, after;
  take(&before);
  thr_tid = gettid();
  thr_tidaddr = before.tidaddr;
  thr_ready = 1;
  char c;
  ssize_t n = read(to_thread[0], &c, 1);
  int err = errno;
  if (n != 1) { snprintf(thr_result, sizeof thr_result, "thread read returned %zd (errno %d)", n, err); return NULL; }
  take(&after);
  const char *d = compare(&before, &after);
  snprintf(thr_result, sizeof thr_result, "%s", d ? d : "ok");
  return NULL;
}

int main(int argc, char **argv) {
  if (argc < 2) return 2;
  alt_main = malloc(65536);
  alt_thr = malloc(32768);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_usr1;
  sa.sa_flags = SA_SIGINFO | SA_RESTART | SA_ONSTACK;
  sigaddset(&sa.sa_mask, SIGUSR2);
  sigaddset(&sa.sa_mask, SIGTERM);
  sigaction(SIGUSR1, &sa, NULL);
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_hup;
  sa.sa_flags = SA_NODEFER | SA_RESETHAND;
  sigaddset(&sa.sa_mask, SIGINT);
  sigaction(SIGHUP, &sa, NULL);
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_trap;
  sigaction(SIGTRAP, &sa, NULL);
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_term;
  sa.sa_flags = SA_RESTART;
  sigaction(SIGTERM, &sa, NULL);
  signal(SIGUSR2, SIG_IGN);
  signal(SIGQUIT, SIG_DFL);  /* a shell's background job starts with SIGINT and SIGQUIT ignored */

  struct itimerval real = { { 7, 250000 }, { 100, 0 } };
  struct itimerval virt = { { 3, 500 }, { 50, 0 } };
  setitimer(ITIMER_REAL, &real, NULL);
  setitimer(ITIMER_VIRTUAL, &virt, NULL);

  stack_t ss = { .ss_sp = alt_main, .ss_size = 65536, .ss_flags = 0 };
  if (sigaltstack(&ss, NULL)) { perror("sigaltstack"); return 2; }

  sigset_t block;
  sigemptyset(&block);
  sigaddset(&block, SIGTERM);
  sigaddset(&block, SIGRTMIN + 2);
  pthread_sigmask(SIG_BLOCK, &block, NULL);

  if (pipe(to_thread)) return 2;
  pthread_t thr;
  pthread_create(&thr, NULL, thread_main, NULL);
  while (!thr_ready) usleep(1000);

  kill(getpid(), SIGTERM);   /* shared queue, blocked in both threads */
  raise(SIGRTMIN + 2);       /* main thread's own queue */

  struct snap before, after;
  take(&before);
  int fd = open(argv[1], O_RDWR);
  if (fd < 0) { perror("open fifo"); return 2; }
  unsigned long rseq_area = (unsigned long)((char *)__builtin_thread_pointer() + __rseq_offset);
  printf("ready %d %d %lx %lx %lx %lx %lx %lx %lx %lx %lx %u %x %d\n", getpid(), thr_tid,
         (unsigned long)on_usr1, before.sa[SIGUSR1].restorer, (unsigned long)on_hup, (unsigned long)on_trap,
         (unsigned long)alt_main, (unsigned long)alt_thr, before.tidaddr, thr_tidaddr, rseq_area, __rseq_size,
         (unsigned)RSEQ_SIG, SIGRTMIN + 2);
  fflush(stdout);

  char c;
  ssize_t n = read(fd, &c, 1);
  int err = errno;
  if (n != 1) { printf("FAIL main read returned %zd (errno %d)\n", n, err); return 1; }
  take(&after);
  const char *d = compare(&before, &after);
  if (d) { printf("FAIL main: %s\n", d); return 1; }
  sigset_t pend;
  sigpending(&pend);
  if (!sigismember(&pend, SIGTERM) || !sigismember(&pend, SIGRTMIN + 2)) { printf("FAIL pending signals lost\n"); return 1; }
  if (write(to_thread[1], "x", 1) != 1) return 2;
  pthread_join(thr, NULL);   /* needs the thread's clear_child_tid intact */
  if (strcmp(thr_result, "ok")) { printf("FAIL thread: %s\n", thr_result); return 1; }
  printf("OK\n");
  return 0;
}
`;

/** Sleeps argv[1] milliseconds in one nanosleep, then reports how it went. */
const SLEEP_C = String.raw`
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
int main(int argc, char **argv) {
  long ms = argc > 1 ? atol(argv[1]) : 1500;
  struct timespec req = { ms / 1000, (ms % 1000) * 1000000L }, rem = { 0, 0 }, t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  printf("ready\n");
  fflush(stdout);
  int r = nanosleep(&req, &rem);
  int err = errno;
  clock_gettime(CLOCK_MONOTONIC, &t1);
  long elapsed = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
  printf("%s %d %d %ld\n", r == 0 ? "slept" : "interrupted", r, r ? err : 0, elapsed);
  return 0;
}`;

/**
 * Blocks SIGUSR1 (which has a handler), then waits in ppoll with an empty
 * temporary mask for argv[1] ms; reports how it went and whether SIGUSR1 is
 * blocked again afterwards.
 */
const PPOLL_C = String.raw`
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static void on_usr1(int s) { (void)s; }
int main(int argc, char **argv) {
  long ms = argc > 1 ? atol(argv[1]) : 1500;
  signal(SIGUSR1, on_usr1);
  sigset_t usr1, none, now;
  sigemptyset(&usr1);
  sigaddset(&usr1, SIGUSR1);
  sigemptyset(&none);
  sigprocmask(SIG_BLOCK, &usr1, NULL);
  struct timespec timeout = { ms / 1000, (ms % 1000) * 1000000L }, t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  printf("ready\n");
  fflush(stdout);
  int r = ppoll(NULL, 0, &timeout, &none);
  int err = errno;
  clock_gettime(CLOCK_MONOTONIC, &t1);
  sigprocmask(SIG_SETMASK, NULL, &now);
  long elapsed = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
  printf("%s %d %d %ld %d\n", r == 0 ? "slept" : "interrupted", r, r ? err : 0, elapsed, sigismember(&now, SIGUSR1));
  return 0;
}`;

/**
 * Runs on a "stack" 1 KiB above a PROT_NONE page, in pause() forever: no room
 * below its rsp for stack scratch memory.
 */
const LOW_STACK_C = String.raw`
#define _GNU_SOURCE
#include <stdio.h>
#include <sys/mman.h>
int main(void) {
  char *m = mmap(NULL, 3 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED || mprotect(m, 4096, PROT_NONE)) return 2;
  char *sp = m + 4096 + 1024;
  printf("ready %lx\n", (unsigned long)m);
  fflush(stdout);
  __asm__ volatile("mov %0, %%rsp\n1: mov $34, %%eax\nsyscall\njmp 1b" : : "r"(sp) : "rax", "rcx", "r11", "memory");
  return 0;
}`;

/** Blocks SIGTRAP, raises it (so it stays pending) and idles. */
const TRAP_PENDING_C = String.raw`
#include <signal.h>
#include <stdio.h>
#include <unistd.h>
int main(void) {
  sigset_t s;
  sigemptyset(&s);
  sigaddset(&s, SIGTRAP);
  sigprocmask(SIG_BLOCK, &s, NULL);
  raise(SIGTRAP);
  printf("ready\n");
  fflush(stdout);
  for (;;) pause();
}`;

// ------------------------------------------------------------------ helpers

interface Started {
  target: Target;
  out: string;
  words: string[];
}

async function start(name: string, source: string, args: string[] = []): Promise<Started> {
  const out = join(tempDir("inject"), "out");
  writeFileSync(out, "");
  const target = await startDetached([buildC(name, source), ...args], out);
  const readyLine = (): string | undefined => readFileSync(out, "utf8").split("\n").find((l) => l.startsWith("ready"));
  await waitFor(`${name} to print "ready"`, () => readyLine() !== undefined);
  return { target, out, words: readyLine()!.split(" ").slice(1) };
}

/** Wait until thread `tid` sleeps in system call `nr` (first field of /proc/PID/task/TID/syscall). */
async function waitInSyscall(pid: number, tid: number, nr: number): Promise<void> {
  await waitFor(`thread ${tid} to block in syscall ${nr}`, () => {
    try {
      const fields = readFileSync(`/proc/${pid}/task/${tid}/syscall`, "utf8").split(" ");
      const state = /^State:\s+(\S)/m.exec(readFileSync(`/proc/${pid}/task/${tid}/status`, "utf8"))?.[1];
      return Number(fields[0]) === nr && state === "S";
    } catch {
      return false;
    }
  });
}

/** Seize and interrupt every tid; returns those seized (to detach in finally). */
function freeze(tids: readonly number[]): number[] {
  const seized: number[] = [];
  for (const tid of tids) {
    ptrace.seize(tid);
    seized.push(tid);
  }
  for (const tid of tids) ptrace.interrupt(tid);
  for (const tid of tids) expect(ptrace.isInterruptStop(ptrace.waitTracee(tid))).toBe(true);
  return seized;
}

function release(seized: readonly number[]): void {
  for (const tid of seized) {
    try {
      ptrace.detach(tid, 0);
    } catch {
      // gone already
    }
  }
}

function regsOf(tid: number): Uint8Array {
  const buf = new Uint8Array(USER_REGS_SIZE);
  ptrace.getRegset(tid, NT.PRSTATUS, buf);
  return buf;
}

function statusField(tid: number, name: string): string {
  return new RegExp(`^${name}:\\s*(\\S+)`, "m").exec(readFileSync(`/proc/${tid}/status`, "utf8"))?.[1] ?? "";
}

/** Everything about a stopped thread that injection must leave as it was. */
function snapshot(tid: number, below = 128n + 8192n) {
  const regs = regsOf(tid);
  const sp = decodeUserRegs(regs).sp;
  return {
    regs,
    sigmask: ptrace.getSigmask(tid),
    stackLow: sp - below,
    stack: readTaskMemory(tid, sp - below, Number(below)),
    ownQueue: ptrace.peekSiginfo(tid, false),
    sharedQueue: ptrace.peekSiginfo(tid, true),
    sigPnd: statusField(tid, "SigPnd"),
    shdPnd: statusField(tid, "ShdPnd"),
  };
}

type Snapshot = ReturnType<typeof snapshot>;

function expectUnchanged(tid: number, before: Snapshot): void {
  const after = snapshot(tid, BigInt(before.stack.length));
  expect(after.regs).toEqual(before.regs);
  expect(after.sigmask).toBe(before.sigmask);
  expect(after.stack).toEqual(before.stack);
  expect(after.ownQueue).toEqual(before.ownQueue);
  expect(after.sharedQueue).toEqual(before.sharedQueue);
  expect(after.sigPnd).toBe(before.sigPnd);
  expect(after.shdPnd).toBe(before.shdPnd);
}

/**
 * Open a RemoteSyscalls on a frozen thread, run `body` with it, close it, and
 * check that the thread is exactly as `before` (the shape of most tests here).
 */
function injectInto(tid: number, before: Snapshot, body: (remote: RemoteSyscalls) => void, options: RemoteSyscallsOptions = {}): void {
  const remote = RemoteSyscalls.open(tid, { proc, ...options });
  try {
    body(remote);
  } finally {
    remote.close();
  }
  expectUnchanged(tid, before);
}

const sigbit = (sig: number): bigint => 1n << BigInt(sig - 1);

async function outputLine(out: string, pred: (line: string) => boolean, what: string): Promise<string> {
  const find = (): string | undefined => readFileSync(out, "utf8").split("\n").find(pred);
  await waitFor(what, () => find() !== undefined, 10_000);
  return find()!;
}

// ------------------------------------------------------------------ tests

describe("remote system calls", () => {
  test("reads sigactions, itimers, sigaltstacks, clear_child_tid and rseq; restores everything exactly", async () => {
    const dir = tempDir("inject-fifo");
    const fifo = join(dir, "fifo");
    expect(Bun.spawnSync(["mkfifo", fifo]).exitCode).toBe(0);
    const { target, out, words } = await start("inject-state", STATE_C, [fifo]);
    const hexWord = (i: number): bigint => BigInt(`0x${words[i]}`);
    const pid = Number(words[0]);
    const thr = Number(words[1]);
    const handlerUsr1 = hexWord(2);
    const restorer = hexWord(3);
    const handlerHup = hexWord(4);
    const handlerTrap = hexWord(5);
    const altMain = hexWord(6);
    const altThr = hexWord(7);
    const tidAddrMain = hexWord(8);
    const tidAddrThr = hexWord(9);
    const rseqArea = hexWord(10);
    const rseqSize = Number(words[11]);
    const rseqSig = Number(`0x${words[12]}`);
    const sigrtmin2 = Number(words[13]);
    expect(pid).toBe(target.pid);

    let seized: number[] = [];
    try {
      await waitInSyscall(pid, pid, SYS.read);
      await waitInSyscall(pid, thr, SYS.read);
      seized = freeze([pid, thr]);

      // The interrupted reads hold -ERESTARTSYS with orig_rax = read.
      for (const tid of [pid, thr]) {
        const r = decodeUserRegs(regsOf(tid));
        expect(r.orig_ax).toBe(BigInt(SYS.read));
        expect(BigInt.asIntN(64, r.ax)).toBe(-512n);
      }

      // ---- main thread: process-wide state plus its own
      const before = snapshot(pid);
      expect(BigInt(`0x${before.shdPnd}`) & sigbit(15)).not.toBe(0n);
      expect(BigInt(`0x${before.sigPnd}`) & sigbit(sigrtmin2)).not.toBe(0n);
      const remote = RemoteSyscalls.open(pid, { proc });
      let sas, itimers, sasMain, tidMain;
      try {
        // The way home is libc's rt_sigreturn trampoline, __restore_rt (also every handler's restorer).
        const libc = readMaps(proc, pid).find((a) => a.start <= remote.trampoline.address && remote.trampoline.address < a.end);
        expect(libc?.path).toMatch(/\/libc[.-]/);
        expect(remote.trampoline.address).toBe(restorer);
        expect(remote.scratch.kind).toBe("stack");
        expect(remote.scratch.address).toBeGreaterThanOrEqual(before.stackLow);
        expect(remote.scratch.address + BigInt(remote.scratch.size)).toBeLessThanOrEqual(decodeUserRegs(before.regs).sp - 128n);
        sas = readSigactions(remote);
        itimers = readItimers(remote);
        sasMain = readSigaltstack(remote);
        tidMain = readClearTidAddress(remote);
      } finally {
        remote.close();
      }
      remote.close(); // idempotent
      expectUnchanged(pid, before);

      expect(sas.map((_, i) => dumpedSignals()[i])).toEqual([...Array.from({ length: 8 }, (_, i) => i + 1), ...Array.from({ length: 9 }, (_, i) => i + 10), ...Array.from({ length: 45 }, (_, i) => i + 20)]);
      expect(sas.length).toBe(62);
      const bySig = new Map(dumpedSignals().map((sig, i) => [sig, sas[i]!]));
      const SA_SIGINFO = 4n, SA_ONSTACK = 0x08000000n, SA_RESTART = 0x10000000n, SA_NODEFER = 0x40000000n, SA_RESETHAND = 0x80000000n, SA_RESTORER = 0x04000000n;
      const usr1 = bySig.get(10)!;
      expect(usr1.sigaction).toBe(handlerUsr1);
      expect(usr1.flags).toBe(SA_SIGINFO | SA_RESTART | SA_ONSTACK | SA_RESTORER);
      expect(usr1.restorer).toBe(restorer);
      expect(usr1.mask).toBe(sigbit(12) | sigbit(15));
      const hup = bySig.get(1)!;
      expect(hup.sigaction).toBe(handlerHup);
      expect(hup.flags).toBe(SA_NODEFER | SA_RESETHAND | SA_RESTORER);
      expect(hup.mask).toBe(sigbit(2));
      // The handler of SIGTRAP is there (an injector that single-steps would have to leave SIGTRAP unblocked).
      expect(bySig.get(5)!.sigaction).toBe(handlerTrap);
      expect(bySig.get(12)!.sigaction).toBe(1n); // SIG_IGN
      expect(bySig.get(15)!.flags).toBe(SA_RESTART | SA_RESTORER);
      for (const sig of [3, 11, 28, 64]) expect(bySig.get(sig)!.sigaction).toBe(0n); // SIG_DFL
      expect(bySig.get(3)!.flags).toBe(SA_RESTART | SA_RESTORER); // set by glibc's signal()
      for (const sig of [11, 28, 64]) expect(bySig.get(sig)!.flags).toBe(0n);
      expect(isFieldSet(usr1, SaEntrySchema.field.compatSigaction)).toBe(true);
      expect(usr1.compatSigaction).toBe(false);

      expect(itimers.real.isec).toBe(7n);
      expect(itimers.real.iusec).toBe(250000n);
      expect(itimers.real.vsec).toBeGreaterThanOrEqual(90n);
      expect(itimers.real.vsec).toBeLessThanOrEqual(100n);
      expect(itimers.virt.isec).toBe(3n);
      expect(itimers.virt.iusec).toBe(500n);
      expect(itimers.virt.vsec).toBeGreaterThanOrEqual(49n);
      expect(itimers.virt.vsec).toBeLessThanOrEqual(50n);
      expect([itimers.prof.isec, itimers.prof.iusec, itimers.prof.vsec, itimers.prof.vusec]).toEqual([0n, 0n, 0n, 0n]);

      expect(sasMain.ssSp).toBe(altMain);
      expect(sasMain.ssSize).toBe(65536n);
      expect(sasMain.ssFlags).toBe(0);
      expect(tidMain).toBe(tidAddrMain);

      const rseqMain = readRseq(pid);
      expect(rseqMain.entry.rseqAbiPointer).toBe(rseqArea);
      // The registered length: at least the original 32-byte struct rseq, and at
      // least glibc's __rseq_size (the size of the features it uses, 20 here).
      expect(rseqMain.entry.rseqAbiSize).toBeGreaterThanOrEqual(Math.max(32, rseqSize));
      expect(rseqMain.entry.signature).toBe(rseqSig);
      expect(rseqMain.flags).toBe(0);

      // ---- second thread: its own sigaltstack and clear_child_tid
      const beforeThr = snapshot(thr);
      const remoteThr = RemoteSyscalls.open(thr, { proc });
      let sasThr, tidThr;
      try {
        sasThr = readSigaltstack(remoteThr);
        tidThr = readClearTidAddress(remoteThr);
        // Handlers are shared by the threads of a process.
        expect(readSigactions(remoteThr)).toEqual(sas);
      } finally {
        remoteThr.close();
      }
      expectUnchanged(thr, beforeThr);
      expect(sasThr.ssSp).toBe(altThr);
      expect(sasThr.ssSize).toBe(32768n);
      expect(sasThr.ssFlags).toBe(0x80000000); // SS_AUTODISARM
      expect(tidThr).toBe(tidAddrThr);
      expect(tidThr).not.toBe(tidMain);
      const rseqThr = readRseq(thr);
      expect(rseqThr.entry.rseqAbiPointer).not.toBe(rseqArea);
      expect(rseqThr.entry.signature).toBe(rseqSig);
    } finally {
      release(seized);
    }
    try {
      expect(/^TracerPid:\s+0$/m.test(readFileSync(`/proc/${pid}/status`, "utf8"))).toBe(true);
      // Wake main; its read must have been restarted, not failed with EINTR.
      // Non-blocking: a target that died already must fail the test, not hang it (ENXIO).
      const fd = openat(AT.FDCWD, fifo, O.WRONLY | O.NONBLOCK);
      try {
        writeAll(fd, new TextEncoder().encode("x"));
      } finally {
        close(fd);
      }
      const verdict = await outputLine(out, (l) => l === "OK" || l.startsWith("FAIL"), "the target's verdict");
      expect(verdict).toBe("OK");
    } finally {
      target.kill();
    }
  });

  test("calls side by side in two threads (syscallEach): each gets its own result, a failure is its own, both come back exactly", async () => {
    const dir = tempDir("inject-each-fifo");
    const fifo = join(dir, "fifo");
    expect(Bun.spawnSync(["mkfifo", fifo]).exitCode).toBe(0);
    const { target, out, words } = await start("inject-state", STATE_C, [fifo]);
    const pid = Number(words[0]);
    const thr = Number(words[1]);
    const altMain = BigInt(`0x${words[6]}`);
    const altThr = BigInt(`0x${words[7]}`);
    let seized: number[] = [];
    try {
      await waitInSyscall(pid, pid, SYS.read);
      await waitInSyscall(pid, thr, SYS.read);
      seized = freeze([pid, thr]);
      const before = [snapshot(pid), snapshot(thr)];
      const remotes = [RemoteSyscalls.open(pid, { proc }), RemoteSyscalls.open(thr, { proc })];
      try {
        expect(RemoteSyscalls.syscallEach(remotes.map((remote) => ({ remote, nr: SYS.gettid })))).toEqual([BigInt(pid), BigInt(thr)]);
        // Each thread's own alternate stack, into its own scratch.
        const at = remotes.map((r) => r.scratchAt(0, 24));
        expect(RemoteSyscalls.syscallEach(remotes.map((remote, i) => ({ remote, nr: SYS.sigaltstack, args: [0, at[i]!] })))).toEqual([0n, 0n]);
        const sp = remotes.map((r) => new DataView(r.readScratch(0, 8).buffer).getBigUint64(0, true));
        expect(sp).toEqual([altMain, altThr]);
        // A bad sigsetsize in the second thread only: its -EINVAL, the first's success.
        const old = remotes.map((r) => r.scratchAt(0, 32));
        expect(RemoteSyscalls.syscallEach([
          { remote: remotes[0]!, nr: SYS.rt_sigaction, args: [1, 0, old[0]!, 8] },
          { remote: remotes[1]!, nr: SYS.rt_sigaction, args: [1, 0, old[1]!, 7] },
        ])).toEqual([0n, -22n]);
        // And one call each after it, as before.
        expect(remotes.map((r) => r.syscall(SYS.gettid))).toEqual([BigInt(pid), BigInt(thr)]);
      } finally {
        for (const r of remotes) r.close();
      }
      expectUnchanged(pid, before[0]!);
      expectUnchanged(thr, before[1]!);
    } finally {
      release(seized);
    }
    try {
      const fd = openat(AT.FDCWD, fifo, O.WRONLY | O.NONBLOCK);
      try {
        writeAll(fd, new TextEncoder().encode("x"));
      } finally {
        close(fd);
      }
      expect(await outputLine(out, (l) => l === "OK" || l.startsWith("FAIL"), "the target's verdict")).toBe("OK");
    } finally {
      target.kill();
    }
  });

  test("a thread stopped in nanosleep sleeps its full time after injection (ERESTART_RESTARTBLOCK survives)", async () => {
    for (const options of [{}, { scratch: "mmap" }] as const) {
      const { target, out } = await start("inject-sleep", SLEEP_C, ["1500"]);
      let seized: number[] = [];
      try {
        // glibc's nanosleep is clock_nanosleep (230).
        await waitInSyscall(target.pid, target.pid, 230);
        seized = freeze([target.pid]);
        const before = snapshot(target.pid);
        const regs = decodeUserRegs(before.regs);
        expect(regs.orig_ax).toBe(230n);
        expect(BigInt.asIntN(64, regs.ax)).toBe(-516n); // -ERESTART_RESTARTBLOCK
        const mapsBefore = readMaps(proc, target.pid);
        injectInto(target.pid, before, (remote) => {
          if ("scratch" in options) {
            expect(remote.scratch.kind).toBe("mmap");
            // A fresh page (the kernel may merge it with a neighbouring anonymous area).
            const at = remote.scratch.address;
            expect(mapsBefore.some((a) => a.start <= at && at < a.end)).toBe(false);
            expect(readMaps(proc, target.pid).some((a) => a.start <= at && at < a.end && a.write)).toBe(true);
          }
          expect(remote.syscall(SYS.getpid)).toBe(BigInt(target.pid));
          expect(remote.syscall(SYS.gettid)).toBe(BigInt(target.pid));
          readSigaltstack(remote);
        }, options);
        expect(readMaps(proc, target.pid)).toEqual(mapsBefore);
      } finally {
        release(seized);
      }
      try {
        const line = await outputLine(out, (l) => /^(slept|interrupted) /.test(l), "the sleeper's report");
        const [verdict, ret, errno, elapsed] = line.split(" ");
        expect([verdict, ret, errno]).toEqual(["slept", "0", "0"]);
        expect(Number(elapsed)).toBeGreaterThanOrEqual(1500);
      } finally {
        target.kill();
      }
    }
  });

  test("a thread in ppoll: its real mask is saved and restored, the temporary one comes back with the restart", async () => {
    const { target, out } = await start("inject-ppoll", PPOLL_C, ["1500"]);
    let seized: number[] = [];
    try {
      await waitInSyscall(target.pid, target.pid, 271); // ppoll
      seized = freeze([target.pid]);
      // While in ppoll the task runs with the temporary (empty) mask;
      // PTRACE_GETSIGMASK reports the real one, kept aside for after the call.
      expect(statusField(target.pid, "SigBlk")).toBe("0000000000000000");
      const before = snapshot(target.pid);
      expect(before.sigmask).toBe(sigbit(10));
      expect(BigInt.asIntN(64, decodeUserRegs(before.regs).ax)).toBe(-514n); // -ERESTARTNOHAND
      injectInto(target.pid, before, (remote) => {
        expect(remote.savedSigmask).toBe(sigbit(10));
        readSigaltstack(remote);
      });
      // PTRACE_SETSIGMASK dropped the "restore the saved mask" state: the real mask is now the current one.
      expect(statusField(target.pid, "SigBlk")).toBe("0000000000000200");
    } finally {
      release(seized);
    }
    try {
      const line = await outputLine(out, (l) => /^(slept|interrupted) /.test(l), "the ppoll report");
      const [verdict, ret, errno, elapsed, usr1Blocked] = line.split(" ");
      expect([verdict, ret, errno, usr1Blocked]).toEqual(["slept", "0", "0", "1"]);
      expect(Number(elapsed)).toBeGreaterThanOrEqual(1500);
    } finally {
      target.kill();
    }
  });

  test("a stack with no room below rsp for the frame: refused before anything changes, naming the thread and the mapping", async () => {
    const { target, words } = await start("inject-low-stack", LOW_STACK_C);
    const base = BigInt(`0x${words[0]}`);
    let seized: number[] = [];
    try {
      await waitInSyscall(target.pid, target.pid, 34); // pause
      seized = freeze([target.pid]);
      const before = snapshot(target.pid, 1024n);
      expect(decodeUserRegs(before.regs).sp).toBe(base + 4096n + 1024n);
      const mapsBefore = readMaps(proc, target.pid);
      expect(() => RemoteSyscalls.open(target.pid, { proc, scratch: "stack" })).toThrow(/no room for 4096 scratch bytes below rsp/);
      expectUnchanged(target.pid, before);
      for (const scratch of ["auto", "mmap"] as const) {
        expect(() => RemoteSyscalls.open(target.pid, { proc, scratch })).toThrow(new RegExp(`^thread ${target.pid}: no room below rsp 0x[0-9a-f]+ for the \\d+-byte signal frames .* lies in no single mapping\\)$`));
        expectUnchanged(target.pid, before);
      }
      expect(readMaps(proc, target.pid)).toEqual(mapsBefore);
    } finally {
      release(seized);
      target.kill();
    }
  });

  test("a SIGSTOP sent while injecting is passed on: the process is stopped after detach and finishes after SIGCONT", async () => {
    const { target, out } = await start("inject-sleep", SLEEP_C, ["800"]);
    let seized: number[] = [];
    try {
      await waitInSyscall(target.pid, target.pid, 230);
      seized = freeze([target.pid]);
      const before = snapshot(target.pid);
      injectInto(target.pid, before, (remote) => {
        process.kill(target.pid, "SIGSTOP");
        expect(remote.syscall(SYS.getpid)).toBe(BigInt(target.pid));
        expect(remote.intercepted).toEqual([{ signo: 19, code: 0, handling: "passed" }]);
      });
    } finally {
      release(seized);
    }
    try {
      await waitFor("the target to sit in the group stop", () => /^State:\s+T/m.test(readFileSync(`/proc/${target.pid}/status`, "utf8")));
      await Bun.sleep(1000);
      expect(readFileSync(out, "utf8")).not.toMatch(/slept|interrupted/);
      process.kill(target.pid, "SIGCONT");
      const line = await outputLine(out, (l) => /^(slept|interrupted) /.test(l), "the sleeper's report");
      expect(line.split(" ").slice(0, 3)).toEqual(["slept", "0", "0"]);
    } finally {
      target.kill();
    }
  });

  test("a failing remote call: raw -errno, or a RemoteSyscallError naming the call", async () => {
    const { target, out } = await start("inject-sleep", SLEEP_C, ["300"]);
    let seized: number[] = [];
    try {
      await waitInSyscall(target.pid, target.pid, 230);
      seized = freeze([target.pid]);
      const before = snapshot(target.pid);
      const remote = RemoteSyscalls.open(target.pid, { proc });
      try {
        // A sigsetsize other than 8 is EINVAL.
        const old = remote.scratchAt(0, 32);
        expect(remote.syscall(SYS.rt_sigaction, [1, 0, old, 7])).toBe(-22n);
        let caught: unknown;
        try {
          remote.check("rt_sigaction", SYS.rt_sigaction, [1, 0, old, 7], ["SIGHUP", "NULL", "old", "7"]);
        } catch (e) {
          caught = e;
        }
        expect(caught).toBeInstanceOf(RemoteSyscallError);
        const err = caught as RemoteSyscallError;
        expect(err.code).toBe("EINVAL");
        expect(err.tid).toBe(target.pid);
        expect(err.message).toBe(`remote rt_sigaction(SIGHUP, NULL, old, 7) in thread ${target.pid}: EINVAL (Invalid argument)`);
        expect(() => remote.scratchAt(remote.scratch.size - 4, 8)).toThrow(RangeError);
      } finally {
        remote.close();
      }
      expectUnchanged(target.pid, before);
      // A call that blocks in the task is interrupted after the timeout.
      const blocking = RemoteSyscalls.open(target.pid, { proc, timeoutMs: 200 });
      try {
        const started = performance.now();
        expect(() => blocking.syscall(SYS.pause)).toThrow(new RegExp(`^thread ${target.pid}: injected pause\\(\\) did not return within 200 ms; interrupted, it returned -514 \\(ERESTARTNOHAND\\)$`));
        expect(performance.now() - started).toBeLessThan(2000);
        expect(blocking.syscall(SYS.getpid)).toBe(BigInt(target.pid)); // still usable
      } finally {
        blocking.close();
      }
      expectUnchanged(target.pid, before);
      expect(() => remote.syscall(SYS.getpid)).toThrow(/session of thread \d+ is closed/);
    } finally {
      release(seized);
    }
    try {
      const line = await outputLine(out, (l) => /^(slept|interrupted) /.test(l), "the sleeper's report");
      expect(line.split(" ").slice(0, 3)).toEqual(["slept", "0", "0"]);
    } finally {
      target.kill();
    }
  });

  test("a task that exits in an injected call: InjectionError with taskGone; close() is a no-op", async () => {
    const { target } = await start("inject-sleep", SLEEP_C, ["30000"]);
    let seized: number[] = [];
    try {
      await waitInSyscall(target.pid, target.pid, 230);
      seized = freeze([target.pid]);
      const remote = RemoteSyscalls.open(target.pid, { proc });
      try {
        let caught: unknown;
        try {
          remote.syscall(SYS.exit_group, [7]);
        } catch (e) {
          caught = e;
        }
        expect(caught).toBeInstanceOf(InjectionError);
        expect((caught as InjectionError).taskGone).toBe(true);
        expect((caught as InjectionError).message).toBe(`thread ${target.pid} exited with code 7 during injected exit_group(7)`);
        expect(remote.taskGone).toBe(true);
      } finally {
        remote.close();
      }
      seized = [];
      await waitFor("the target to be gone", () => {
        try {
          return /^State:\s+[ZX]/m.test(readFileSync(`/proc/${target.pid}/status`, "utf8"));
        } catch {
          return true;
        }
      });
    } finally {
      release(seized);
      target.kill();
    }
  });

  test("refuses a thread that is not stopped by us; a pending SIGTRAP stays pending through injection", async () => {
    const { target } = await start("inject-trap-pending", TRAP_PENDING_C);
    let seized: number[] = [];
    try {
      expect(() => RemoteSyscalls.open(target.pid, { proc })).toThrow(/is not a stopped tracee of ours/);
      seized = freeze([target.pid]);
      const before = snapshot(target.pid);
      expect(BigInt(`0x${before.sigPnd}`) & sigbit(5)).not.toBe(0n);
      injectInto(target.pid, before, (remote) => {
        expect(remote.syscall(SYS.getpid)).toBe(BigInt(target.pid));
      });
    } finally {
      release(seized);
    }
    try {
      // Still pending and blocked, and the process alive: nobody delivered it.
      await Bun.sleep(50);
      expect(BigInt(`0x${statusField(target.pid, "SigPnd")}`) & sigbit(5)).not.toBe(0n);
      expect(statusField(target.pid, "State")).toBe("S");
    } finally {
      target.kill();
    }
  });
});
