/**
 * Killing ckpt at random moments against a workload that checks itself, and
 * judging what each kill left behind. Shared by test/kill.test.ts (a few
 * seconds' worth in `npm test`) and bench/faults.ts (hundreds per command).
 *
 * The promise under test: whatever instant ckpt dies at, the target runs on
 * as before — alive, untraced, not stopped, same fds and mappings, every
 * thread's registers (general and AVX) and memory intact, blocked calls
 * still working — and an image directory is never complete when ckpt did not
 * finish.
 */
import { existsSync, readdirSync, readFileSync, readlinkSync } from "node:fs";
import { join } from "node:path";
import { alive, buildC, startReady, waitFor, type Target } from "./target";
import { PATTERN_C } from "./workloads";

/**
 * sturdytarget MIB: MIB MiB of patterned memory and four threads besides
 * main, each checking itself all the time:
 * - two "spin" threads hold fixed values in r12–r15 and ymm8–ymm10 (xmm on
 *   CPUs without AVX2) and compare them on every turn of a loop that also
 *   sleeps 1 ms in a raw nanosleep now and then, so a stop finds them in user
 *   code or in a system call;
 * - a "sleeper" in a nanosleep loop that may see EINTR but no other error;
 * - a "reader" blocked in read() on a pipe, checking that the sequence numbers
 *   main writes every 3 ms arrive in order, none lost.
 * On SIGUSR1 main checks the memory, every flag, and that each thread made
 * progress since the last check; prints "ok" or "bad <why>".
 * Prints "ready PID" when set up.
 */
export function sturdyTarget(): string {
  return buildC("sturdytarget", String.raw`
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
${PATTERN_C}
#define SEED 0x5eed1234abcdULL
static volatile sig_atomic_t check_requested;
static volatile unsigned long spin_count[2];
static volatile int spin_fail[2];
static volatile unsigned long sleeps, reads;
static volatile int sleep_err, read_err;
static int pipefd[2];
static const struct timespec nap = { 0, 1000000 };

static void on_usr1(int s) { (void)s; check_requested = 1; }

#define CHECK_GPRS \
  "mov $0x1111111111111111, %%rax\n\t cmp %%rax, %%r12\n\t jne 3f\n\t" \
  "mov $0x2222222222222222, %%rax\n\t cmp %%rax, %%r13\n\t jne 3f\n\t" \
  "mov $0x3333333333333333, %%rax\n\t cmp %%rax, %%r14\n\t jne 3f\n\t" \
  "mov $0x4444444444444444, %%rax\n\t cmp %%rax, %%r15\n\t jne 3f\n\t"
#define LOAD_GPRS \
  "mov $0x1111111111111111, %%r12\n\t mov $0x2222222222222222, %%r13\n\t" \
  "mov $0x3333333333333333, %%r14\n\t mov $0x4444444444444444, %%r15\n\t"
/* Every 200000 turns: nanosleep(1 ms) through a raw syscall, which keeps r12-r15 and the vector registers. */
#define NAP \
  "dec %%rbx\n\t jnz 1b\n\t mov $200000, %%rbx\n\t" \
  "mov $35, %%eax\n\t mov %2, %%rdi\n\t xor %%esi, %%esi\n\t syscall\n\t jmp 1b\n\t"

static void *spin(void *p) {
  int i = (int)(long)p;
  volatile unsigned long *count = &spin_count[i];
  volatile int *fail = &spin_fail[i];
  if (__builtin_cpu_supports("avx2")) {
    __asm__ volatile(
      LOAD_GPRS
      "mov $200000, %%rbx\n\t"
      "vpcmpeqd %%ymm8, %%ymm8, %%ymm8\n\t vpxor %%ymm9, %%ymm9, %%ymm9\n\t vpsrlq $1, %%ymm8, %%ymm10\n\t"
      "1:\n\t incq (%0)\n\t" CHECK_GPRS
      "vpcmpeqd %%ymm11, %%ymm11, %%ymm11\n\t"
      "vpcmpeqq %%ymm11, %%ymm8, %%ymm12\n\t vpmovmskb %%ymm12, %%eax\n\t cmp $-1, %%eax\n\t jne 3f\n\t"
      "vptest %%ymm9, %%ymm9\n\t jnz 3f\n\t"
      "vpsrlq $1, %%ymm11, %%ymm12\n\t vpcmpeqq %%ymm12, %%ymm10, %%ymm13\n\t vpmovmskb %%ymm13, %%eax\n\t cmp $-1, %%eax\n\t jne 3f\n\t"
      NAP
      "3:\n\t movl $1, (%1)\n\t"
      : : "r"(count), "r"(fail), "r"(&nap)
      : "rax", "rbx", "rcx", "rdi", "rsi", "r11", "r12", "r13", "r14", "r15",
        "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "memory", "cc");
  } else {
    __asm__ volatile(
      LOAD_GPRS
      "mov $200000, %%rbx\n\t"
      "pcmpeqd %%xmm8, %%xmm8\n\t pxor %%xmm9, %%xmm9\n\t"
      "1:\n\t incq (%0)\n\t" CHECK_GPRS
      "pcmpeqd %%xmm11, %%xmm11\n\t movdqa %%xmm8, %%xmm12\n\t pcmpeqd %%xmm11, %%xmm12\n\t pmovmskb %%xmm12, %%eax\n\t cmp $0xffff, %%eax\n\t jne 3f\n\t"
      "ptest %%xmm9, %%xmm9\n\t jnz 3f\n\t"
      NAP
      "3:\n\t movl $1, (%1)\n\t"
      : : "r"(count), "r"(fail), "r"(&nap)
      : "rax", "rbx", "rcx", "rdi", "rsi", "r11", "r12", "r13", "r14", "r15",
        "xmm8", "xmm9", "xmm11", "xmm12", "memory", "cc");
  }
  return NULL;
}

static void *sleeper(void *p) {
  (void)p;
  for (;;) {
    struct timespec t = { 0, 2000000 };
    if (nanosleep(&t, &t) != 0 && errno != EINTR) sleep_err = errno;
    sleeps++;
  }
}

static void *reader(void *p) {
  (void)p;
  unsigned long want = 0, got;
  for (;;) {
    ssize_t n = read(pipefd[0], &got, sizeof got);
    if (n < 0 && errno == EINTR) continue;
    if (n != (ssize_t)sizeof got) { read_err = n < 0 ? errno : 1000 + (int)n; continue; }
    if (got != want) read_err = 2000;
    want = got + 1;
    reads++;
  }
}

int main(int argc, char **argv) {
  size_t bytes = (size_t)(argc > 1 ? strtoul(argv[1], 0, 10) : 64) << 20;
  unsigned long long *region = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (region == MAP_FAILED || pipe(pipefd)) return 2;
  for (size_t k = 0; k < bytes / 8; k++) region[k] = pattern_word(k, SEED);
  sigset_t usr1; sigemptyset(&usr1); sigaddset(&usr1, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &usr1, NULL);   /* the threads inherit it: only main takes SIGUSR1 */
  pthread_t th;
  pthread_create(&th, NULL, spin, (void *)0L);
  pthread_create(&th, NULL, spin, (void *)1L);
  pthread_create(&th, NULL, sleeper, NULL);
  pthread_create(&th, NULL, reader, NULL);
  struct sigaction sa; memset(&sa, 0, sizeof sa); sa.sa_handler = on_usr1;
  sigaction(SIGUSR1, &sa, NULL);
  pthread_sigmask(SIG_UNBLOCK, &usr1, NULL);
  printf("ready %d\n", getpid());
  fflush(stdout);
  unsigned long seq = 0, last_spin[2] = { 0, 0 }, last_sleeps = 0, last_reads = 0;
  for (;;) {
    struct timespec t = { 0, 3000000 };
    nanosleep(&t, NULL);
    if (write(pipefd[1], &seq, sizeof seq) == (ssize_t)sizeof seq) seq++;
    if (!check_requested) continue;
    check_requested = 0;
    char why[512] = "";
    size_t bad = 0;
    for (size_t k = 0; k < bytes / 8; k++) if (region[k] != pattern_word(k, SEED)) bad++;
    if (bad) snprintf(why + strlen(why), sizeof why - strlen(why), " memory:%zu-words", bad);
    for (int i = 0; i < 2; i++) {
      if (spin_fail[i]) snprintf(why + strlen(why), sizeof why - strlen(why), " spin%d:registers-changed", i);
      else if (spin_count[i] == last_spin[i]) snprintf(why + strlen(why), sizeof why - strlen(why), " spin%d:stalled", i);
      last_spin[i] = spin_count[i];
    }
    if (sleep_err) snprintf(why + strlen(why), sizeof why - strlen(why), " sleeper:errno-%d", sleep_err);
    else if (sleeps == last_sleeps) snprintf(why + strlen(why), sizeof why - strlen(why), " sleeper:stalled");
    if (read_err) snprintf(why + strlen(why), sizeof why - strlen(why), " reader:error-%d", read_err);
    else if (reads == last_reads) snprintf(why + strlen(why), sizeof why - strlen(why), " reader:stalled");
    last_sleeps = sleeps;
    last_reads = reads;
    if (why[0]) printf("bad%s\n", why); else printf("ok\n");
    fflush(stdout);
  }
}
`);
}

/** What must be the same after a kill as before it. */
export interface Baseline {
  fds: string[];
  maps: string;
  threads: number[];
}

function fdList(pid: number): string[] {
  const dir = `/proc/${pid}/fd`;
  return readdirSync(dir).map((fd) => {
    try {
      return `${fd} ${readlinkSync(join(dir, fd))}`;
    } catch {
      return `${fd} ?`;
    }
  }).sort();
}

/** fds as "N kind" without inode numbers: what a restore must bring back (its pipes are new ones). */
export function fdKinds(fds: readonly string[]): string[] {
  return fds.map((f) => f.replace(/:\[\d+\]$/, ""));
}

function threadsOf(pid: number): number[] {
  return readdirSync(`/proc/${pid}/task`).map(Number).sort((a, b) => a - b);
}

export function baseline(pid: number): Baseline {
  return { fds: fdList(pid), maps: readFileSync(`/proc/${pid}/maps`, "utf8"), threads: threadsOf(pid) };
}

/** A field of a thread's status; "gone" for a thread that no longer exists. */
function field(pid: number, tid: number, name: string): string {
  try {
    return new RegExp(`^${name}:\\s*(\\S+)`, "m").exec(readFileSync(`/proc/${pid}/task/${tid}/status`, "utf8"))?.[1] ?? "?";
  } catch {
    return "gone";
  }
}

/** Ask the workload for its verdict; "" when none came within `ms`, "gone" when it no longer exists. */
export async function verdict(pid: number, out: string, ms = 5000): Promise<string> {
  const lines = (): string[] => readFileSync(out, "utf8").split("\n");
  const from = lines().length - 1;
  try {
    process.kill(pid, "SIGUSR1");
  } catch (e) {
    if ((e as { code?: string }).code === "ESRCH") return "gone";
    throw e;
  }
  let found = "";
  try {
    await waitFor("the workload's verdict", () => {
      found = lines().slice(from).find((l) => /^(ok|bad)/.test(l)) ?? "";
      return found !== "";
    }, ms);
  } catch {
    return "";
  }
  return found;
}

/**
 * The promises a kill broke, as short words ("" entries never appear); empty
 * when the target is as it was. Waits a little for threads a dead tracer
 * left to get going again.
 */
export async function brokenPromises(pid: number, out: string, before: Baseline): Promise<string[]> {
  const broken: string[] = [];
  try {
    await waitFor("every thread untraced and running", () => before.threads.every((tid) => ["0", "gone"].includes(field(pid, tid, "TracerPid")) && !/^[tT]$/.test(field(pid, tid, "State"))), 2000);
  } catch {
    if (!existsSync(`/proc/${pid}/status`) || /^[ZX]/.test(field(pid, pid, "State"))) return ["target died"];
    for (const tid of before.threads) {
      if (field(pid, tid, "State") === "gone") continue; // reported below
      if (!["0", "gone"].includes(field(pid, tid, "TracerPid"))) broken.push(`thread ${tid} traced`);
      if (/^[tT]$/.test(field(pid, tid, "State"))) broken.push(`thread ${tid} stopped`);
    }
  }
  // Gone for good (a whole dump without -R ends by killing it): "gone" satisfied the wait above.
  // A zombie whose reaper is slow (init, for a detached target) answers no self-check: say so at once.
  if (!existsSync(`/proc/${pid}/task`) || /^[ZX]/.test(field(pid, pid, "State"))) return ["target died"];
  if (threadsOf(pid).join(",") !== before.threads.join(",")) broken.push("threads changed");
  const fds = fdList(pid);
  if (fds.join("\n") !== before.fds.join("\n")) broken.push(`fds changed: ${fds.filter((f) => !before.fds.includes(f)).join(", ") || "some closed"}`);
  if (readFileSync(`/proc/${pid}/maps`, "utf8") !== before.maps) broken.push("mappings changed");
  await Bun.sleep(30); // time for every thread to make progress since the last check
  const v = await verdict(pid, out);
  // A dump's kill of the tree (sent just before ckpt was killed) may land only now.
  if (v === "gone") return ["target died"];
  if (v !== "ok") broken.push(v === "" ? "no self-check answer" : v);
  return broken;
}

export interface KillOutcome {
  /** ckpt finished before the kill landed (exit code), or null when the kill ended it. */
  finished: number | null;
  /**
   * ckpt was killed, yet the directory holds an inventory (the mark of a whole
   * image set, written last) over images that do not all decode.
   */
  falselyComplete: boolean;
  /** The directory is a whole image set: an inventory, and every image decodes. */
  complete: boolean;
  broken: string[];
}

/** When to kill: `afterMs` after the start, or `afterTracedMs` after ckpt first traces the target. */
export type KillMoment = { afterMs: number } | { afterTracedMs: number };

function tracedBy(pid: number): number {
  try {
    return Number(/^TracerPid:\s*(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1] ?? 0);
  } catch {
    return 0;
  }
}

/** Run once without a kill: the whole run's time, and the time from ckpt's first trace of the target to its exit. */
export async function timeWholeRun(argv: string[], pid: number): Promise<{ totalMs: number; tracedMs: number }> {
  const start = performance.now();
  const child = Bun.spawn(argv, { stdout: "ignore", stderr: "pipe" });
  let traced = 0;
  while (child.exitCode === null) {
    if (traced === 0 && tracedBy(pid) !== 0) traced = performance.now();
    await Bun.sleep(0);
  }
  const code = await child.exited;
  if (code !== 0) throw new Error(`${argv.join(" ")}: exit ${code}: ${await new Response(child.stderr).text()}`);
  const end = performance.now();
  return { totalMs: end - start, tracedMs: traced ? end - traced : end - start };
}

/** Busy-wait: timers have a millisecond's grain, the windows we aim at are narrower. */
function spinFor(ms: number): void {
  const until = performance.now() + ms;
  while (performance.now() < until) {
    // spin
  }
}

/**
 * Run `argv` (a ckpt command writing into `dir`), SIGKILL it at `moment`,
 * and judge the target.
 */
export async function killDuring(argv: string[], dir: string, moment: KillMoment, target: { pid: number; out: string; before: Baseline }): Promise<KillOutcome> {
  const child = Bun.spawn(argv, { stdout: "ignore", stderr: "ignore" });
  if ("afterMs" in moment) {
    await Bun.sleep(moment.afterMs);
  } else {
    const giveUp = performance.now() + 10_000;
    while (tracedBy(target.pid) !== child.pid && alive(child.pid) && performance.now() < giveUp) spinFor(0.05);
    spinFor(moment.afterTracedMs);
  }
  child.kill("SIGKILL");
  const code = await child.exited;
  const killed = child.signalCode === "SIGKILL";
  const marked = existsSync(join(dir, "inventory.img"));
  const complete = marked && decodesWhole(argv, dir);
  const broken = await brokenPromises(target.pid, target.out, target.before);
  return { finished: killed ? null : code, falselyComplete: killed && marked && !complete, complete, broken };
}

/** `ckpt show` (the same executable as `argv` runs) decodes every image of `dir`. */
function decodesWhole(argv: readonly string[], dir: string): boolean {
  const exe = argv[1]?.endsWith(".ts") ? argv.slice(0, 2) : argv.slice(0, 1);
  return Bun.spawnSync([...exe, "show", "--json", dir], { stdout: "ignore", stderr: "ignore" }).exitCode === 0;
}

/** A started sturdytarget with its baseline. */
export async function startSturdy(mib: number): Promise<{ target: Target; pid: number; out: string; before: Baseline }> {
  const { target, out } = await startReady([sturdyTarget(), String(mib)]);
  await Bun.sleep(100); // every thread has had time to make progress
  const first = await verdict(target.pid, out);
  if (first !== "ok") {
    target.kill();
    throw new Error(`sturdytarget's first self-check said "${first}"`);
  }
  return { target, pid: target.pid, out, before: baseline(target.pid) };
}
