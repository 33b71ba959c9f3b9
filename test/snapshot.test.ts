/**
 * Snapshot dumps (dump -R): the tree is frozen only for the scan and runs
 * while its memory is copied; the images must still be the memory of the
 * freeze. The workload rewrites its pages as fast as it can throughout, and
 * checks before every write that the page holds the previous generation:
 * a restored copy made from pages of different moments fails at once.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, readFileSync, statSync, truncateSync } from "node:fs";
import { join } from "node:path";
import { isFieldSet } from "@bufbuild/protobuf";
import { DumpStatsEntrySchema, StatsEntrySchema } from "../src/image/gen/stats_pb";
import { runCkpt } from "./helpers/cli";
import { entries, ptraceState, runsFree } from "./helpers/images";
import { rewriteTarget } from "./helpers/restore-workloads";
import { buildC, killablePid, startReady, tempDir, waitFor, type Target } from "./helpers/target";
import { selfCheck } from "./helpers/workloads";
import { ProcFs } from "../src/proc/procfs";
import { Freezer } from "../src/dump/task/freeze";
import { WpUffd } from "../src/dump/memory/wp-uffd";

const cleanup: Target[] = [];
afterAll(() => {
  for (const t of cleanup) t.kill();
});

interface SnapshotJson {
  used: boolean;
  why?: string;
  pagesFrozen: number;
  pagesRunning: number;
  pagesOnFault: number;
  faults: number;
  copyMs: number;
  pagesReprotected: number;
  ahead: { processes: number; pagesProtected: number; faults: number; why?: string };
}

/** The rewriting workload (MIB MiB, 2 writer threads), killed after the file's tests. */
async function startRewriter(mib: number): Promise<{ pid: number; out: string }> {
  const { words, out } = await startReady([rewriteTarget(), String(mib), "2"]);
  const pid = Number(words[0]);
  cleanup.push(killablePid(pid));
  return { pid, out };
}

/** The end of this file's C workloads' main(): say "ready PID EXTRA" and wait for ever. */
const READY_THEN_WAIT = `
  printf("ready %d %s\\n", getpid(), extra);
  fflush(stdout);
  for (;;) pause();
}`;

/** Build and start a C workload (its main ends with READY_THEN_WAIT), killed after the file's tests. */
async function startC(name: string, source: string): Promise<{ pid: number; words: string[]; out: string }> {
  const { words, out } = await startReady([buildC(name, source)]);
  const pid = Number(words[0]);
  cleanup.push(killablePid(pid));
  return { pid, words, out };
}

const tracerOf = (pid: number): number => ptraceState(pid)?.tracer ?? 0;

/** Dump -R with --json; the restore later needs the workload's output file as it was at the dump. */
function dumpJson(pid: number, images: string, out: string, extra: string[] = []): { snapshot: SnapshotJson; frozenMs: number; outSize: number } {
  const r = runCkpt(["dump", "-t", String(pid), "-D", images, "-R", "--json", ...extra]);
  expect(r.stderr).toBe("");
  expect(r.code).toBe(0);
  const j = JSON.parse(r.stdout) as { snapshot: SnapshotJson; figures: { frozenMs: number } };
  return { snapshot: j.snapshot, frozenMs: j.figures.frozenMs, outSize: statSync(out).size };
}

async function restoreAndCheck(pid: number, images: string, out: string, outSize: number): Promise<void> {
  killablePid(pid).kill();
  await waitFor("the original to be gone", () => !existsSync(`/proc/${pid}`), 10000);
  truncateSync(out, outSize);
  const r = runCkpt(["restore", "-D", images, "-d"]);
  expect(r.stderr).toBe("");
  expect(r.code).toBe(0);
  expect(await selfCheck(pid, out)).toMatch(/^ok /);
}

describe("snapshot dumps", () => {
  test("a workload rewriting its memory throughout the copy is saved as it was at the freeze, and runs on untouched", async () => {
    const { pid, out } = await startRewriter(64);
    expect(await selfCheck(pid, out)).toMatch(/^ok /);
    const images = join(tempDir("snap-img"), "img");
    const { snapshot, outSize } = dumpJson(pid, images, out);
    expect(snapshot.used).toBe(true);
    // Protected before the freeze while the writers ran: what they wrote until
    // the freeze was found unprotected by the scan and protected again.
    expect(snapshot.ahead).toMatchObject({ processes: 1, pagesProtected: 64 * 256 });
    expect(snapshot.ahead.faults).toBeGreaterThan(0);
    expect(snapshot.pagesReprotected).toBeGreaterThan(0);
    // The writers hit pages not yet copied: the fault handler copied them first.
    expect(snapshot.pagesOnFault).toBeGreaterThan(0);
    expect(snapshot.pagesRunning).toBeGreaterThanOrEqual((64 * 256) - 64);
    const [stats] = entries(images, "stats-dump", StatsEntrySchema);
    expect(Number(stats?.dump?.ckptSnapshotPagesOnFault)).toBe(snapshot.pagesOnFault);
    expect(Number(stats?.dump?.ckptSnapshotPagesRunning)).toBe(snapshot.pagesRunning);
    expect(stats?.dump?.ckptSnapshotCopyTime).toBeGreaterThan(0);
    // The original was never handed a page from another moment either.
    expect(runsFree(pid)).toBe(true);
    expect(await selfCheck(pid, out)).toMatch(/^ok /);
    await restoreAndCheck(pid, images, out, outSize);
  });

  test("--no-snapshot copies everything while frozen, as before", async () => {
    const { pid, out } = await startRewriter(16);
    const images = join(tempDir("nosnap-img"), "img");
    const { snapshot, outSize } = dumpJson(pid, images, out, ["--no-snapshot"]);
    expect(snapshot).toMatchObject({ used: false, why: "--no-snapshot", pagesRunning: 0, pagesOnFault: 0 });
    const dumpStats = entries(images, "stats-dump", StatsEntrySchema)[0]?.dump;
    expect(dumpStats && isFieldSet(dumpStats, DumpStatsEntrySchema.field.ckptSnapshotPagesRunning)).toBe(false);
    await restoreAndCheck(pid, images, out, outSize);
  });

  test("ckpt SIGKILLed while it copies: the tree runs on with its memory writable, and no image set looks complete", async () => {
    const { pid, out } = await startRewriter(512);
    const images = join(tempDir("snap-kill"), "img");
    const ckpt = Bun.spawn([process.execPath, `${import.meta.dir}/../src/cli/main.ts`, "dump", "-t", String(pid), "-D", images, "-R"], { stdout: "pipe", stderr: "pipe" });
    // Frozen (traced), then let go (not traced): the copy has begun.
    await waitFor("the freeze", () => tracerOf(pid) !== 0, 20000);
    await waitFor("the tree to be let go", () => tracerOf(pid) === 0, 20000);
    ckpt.kill("SIGKILL");
    await ckpt.exited;
    expect(existsSync(join(images, "inventory.img"))).toBe(false);
    expect(runsFree(pid)).toBe(true);
    // Every writer goes on (none is left waiting on a fault ckpt will never answer), and no page went back in time.
    expect(await selfCheck(pid, out)).toMatch(/^ok /);
  });

  test("threads writing protected memory from the kernel (read() into it) at the freeze: the dump completes, no call fails", async () => {
    // Every read() below makes the kernel write into memory ckpt protects
    // ahead of the freeze: such a write waits for ckpt's answer and, in a
    // system call, is retried rather than broken off by the freeze's
    // interrupt. Unanswered, the dump would hang; answered wrongly, read()
    // would fail (EFAULT), which the workload reports by exiting.
    const { pid, out } = await startC("kernelwriter", `
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#define MIB (1024 * 1024)
static char *buf;
static void *reader(void *arg) {
  int fd = open("/dev/zero", O_RDONLY);
  size_t half = (size_t)(long)arg * 16 * MIB;
  for (unsigned long n = 0;; n++) {
    size_t off = half + (n % 64) * 256 * 1024;
    /* A stop (the freeze's interrupt) may cut a read short: read the rest. */
    for (size_t done = 0; done < 256 * 1024;) {
      ssize_t got = read(fd, buf + off + done, 256 * 1024 - done);
      if (got <= 0) { printf("read %zd at %zu: %m\\n", got, off + done); fflush(stdout); exit(1); }
      done += got;
    }
  }
  return NULL;
}
int main(void) {
  buf = malloc(32 * MIB);
  memset(buf, 1, 32 * MIB);
  pthread_t t[2];
  for (long i = 0; i < 2; i++) pthread_create(&t[i], NULL, reader, (void *)i);
  const char *extra = "";${READY_THEN_WAIT}
`);
    for (let i = 0; i < 3; i++) {
      const { snapshot } = dumpJson(pid, join(tempDir("snap-kernel"), "img"), out);
      expect(snapshot.ahead.processes).toBe(1);
      expect(snapshot.ahead.faults).toBeGreaterThan(0);
    }
    await Bun.sleep(300);
    expect(runsFree(pid)).toBe(true);
    expect(readFileSync(out, "utf8")).not.toContain("read ");
  });

  test("a private mapping of a memfd is saved as the pages written, with or without the snapshot", async () => {
    // Protecting such a mapping marks its empty entries; protected ahead of
    // the freeze, the scan would take the marks for pages to save.
    const { pid, out } = await startC("memfdprivate", `
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
int main(void) {
  size_t len = 32 << 20;
  int fd = memfd_create("snap", 0);
  ftruncate(fd, len);
  char *p = mmap(0, len, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  for (int i = 0; i < 256; i++) p[i * 4096 * 8] = 1; /* 1 MiB of private copies, spread out */
  char *anon = mmap(0, 16 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  memset(anon, 2, 16 << 20);
  const char *extra = "";${READY_THEN_WAIT}
`);
    const written = (extra: string[]): number => {
      const r = runCkpt(["dump", "-t", String(pid), "-D", join(tempDir("snap-memfd"), "img"), "-R", "--json", ...extra]);
      expect(r.stderr).toBe("");
      return (JSON.parse(r.stdout) as { figures: { pagesWritten: number } }).figures.pagesWritten;
    };
    const plain = written(["--no-snapshot"]);
    expect(plain).toBeLessThan(16 * 256 + 256 + 200);
    expect(written([])).toBe(plain);
    expect(readFileSync(out, "utf8")).toBe(`ready ${pid} \n`);
  });

  test("protection made ahead for a process that then runs another program is known as gone (sameMemory), not an error", async () => {
    const { pid, words } = await startC("execlater", `
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
static void later(int sig) { (void)sig; execl("/bin/sleep", "sleep", "30", (char *)0); }
int main(void) {
  signal(SIGUSR1, later);
  char *anon = mmap(0, 16 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  memset(anon, 2, 16 << 20);
  char extra[32];
  snprintf(extra, sizeof extra, "%p", (void *)anon);${READY_THEN_WAIT}
`);
    const start = BigInt(words[1]!);
    const proc = new ProcFs();
    const stopper = new Freezer(proc);
    let wp: WpUffd;
    try {
      expect(stopper.stopProcess(pid)).toBe(true);
      wp = WpUffd.make(proc, pid, () => {});
    } finally {
      stopper.release("resume");
      proc.close();
    }
    try {
      expect(wp.sameMemory(start, start + (16n << 20n))).toBe(true);
      process.kill(pid, "SIGUSR1");
      await waitFor("the exec", () => readFileSync(`/proc/${pid}/comm`, "utf8").trim() === "sleep", 5000);
      expect(wp.sameMemory(start, start + (16n << 20n))).toBe(false);
    } finally {
      wp.close();
    }
  });
});
