/**
 * The built-in demo (`npm run demo`, after `npm run build`), run with the
 * compiled dist/ckpt as a user would:
 *   1. `ckpt check` on this kernel;
 *   2. start a workload: a process with a 64 MiB memory pattern and two threads,
 *      plus a child process (built from C with gcc);
 *   3. ask it for its tick counter, then `ckpt dump` it into a fresh image
 *      directory (which kills it);
 *   4. summarise the images with `ckpt show` (and crit, when installed);
 *   5. `ckpt restore -d` it: same pids, memory, threads and files;
 *   6. ask the restored workload to verify its own memory and threads: its
 *      tick counter carries on from where the dump left it.
 */
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const CKPT = join(import.meta.dir, "..", "dist", "ckpt");
const WORK = mkdtempSync(join(tmpdir(), "ckpt-demo-"));

const WORKLOAD_C = `
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>
static unsigned long long *mem;
static size_t words;
static volatile sig_atomic_t check;
static volatile unsigned long ticks;
static void on_usr1(int s) { (void)s; check = 1; }
static void *ticker(void *p) {
  (void)p;
  sigset_t all; sigfillset(&all); pthread_sigmask(SIG_BLOCK, &all, NULL);
  for (;;) { usleep(10000); ticks++; }
  return NULL;
}
int main(void) {
  words = (64u << 20) / 8;
  mem = mmap(NULL, words * 8, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  for (size_t k = 0; k < words; k++) mem[k] = k * 0x9e3779b97f4a7c15ULL;
  pthread_t t[2];
  for (int i = 0; i < 2; i++) pthread_create(&t[i], NULL, ticker, NULL);
  if (fork() == 0) for (;;) pause();
  signal(SIGUSR1, on_usr1);
  printf("ready\\n"); fflush(stdout);
  for (;;) {
    pause();
    if (!check) continue;
    check = 0;
    size_t bad = 0;
    for (size_t k = 0; k < words; k++) if (mem[k] != k * 0x9e3779b97f4a7c15ULL) bad++;
    if (bad) printf("workload %d: %zu words of memory differ\\n", getpid(), bad);
    else printf("workload %d: all 64 MiB of memory verified; %lu ticks counted by its threads so far\\n", getpid(), ticks);
    fflush(stdout);
  }
}
`;

function step(title: string): void {
  console.log(`\n=== ${title}`);
}

function ckpt(...args: string[]): { code: number; stdout: string } {
  console.log(`$ dist/ckpt ${args.join(" ")}`);
  const r = Bun.spawnSync([CKPT, ...args], { stdout: "pipe", stderr: "inherit" });
  return { code: r.exitCode ?? 1, stdout: r.stdout.toString() };
}

async function waitForLine(file: string, pred: (line: string) => boolean, what: string): Promise<string> {
  for (let i = 0; i < 1000; i++) {
    const line = readFileSync(file, "utf8").split("\n").find(pred);
    if (line) return line;
    await Bun.sleep(10);
  }
  throw new Error(`timed out waiting for ${what}`);
}

step("1. Which kernel features can ckpt use here?");
const check = ckpt("check");
process.stdout.write(check.stdout);

step("2. Start a workload: 64 MiB memory pattern, 2 threads, 1 child process");
const src = join(WORK, "workload.c");
const exe = join(WORK, "workload");
writeFileSync(src, WORKLOAD_C);
const cc = Bun.spawnSync(["gcc", "-O1", "-pthread", "-o", exe, src], { stderr: "inherit" });
if (cc.exitCode !== 0) throw new Error("gcc failed: the demo needs gcc");
const out = join(WORK, "workload.out");
writeFileSync(out, "");
// Started detached (through sh), so that ckpt's ptrace stops are not this
// process's children's business; stdio on /dev/null and a regular file.
const sh = Bun.spawnSync(["sh", "-c", `"${exe}" </dev/null >"${out}" 2>&1 & echo $!`], { stdout: "pipe" });
const pid = Number(sh.stdout.toString().trim());
try {
  await waitForLine(out, (l) => l === "ready", "the workload to start");
  await Bun.sleep(100);
  console.log(`workload pid ${pid}`);

  const verdicts = (): string[] => readFileSync(out, "utf8").split("\n").filter((l) => l.startsWith("workload"));
  const verdict = async (): Promise<string> => {
    const seen = verdicts().length;
    process.kill(pid, "SIGUSR1");
    for (let i = 0; i < 1000 && verdicts().length === seen; i++) await Bun.sleep(10);
    return verdicts()[seen] ?? "(the workload did not answer)";
  };
  console.log(await verdict());

  step("3. Checkpoint it into an image directory (this stops the workload for good)");
  const dir = join(WORK, "images");
  const dump = ckpt("dump", "-t", String(pid), "-D", dir, "--json");
  if (dump.code !== 0) throw new Error("ckpt dump failed");
  const summary = JSON.parse(dump.stdout) as {
    processes: number; threads: number; bytesWritten: number;
    figures: { freezingMs: number; frozenMs: number; totalMs: number; pagesWritten: number };
    syscalls: Record<string, number>;
  };
  const f = summary.figures;
  console.log(
    `${summary.processes} processes, ${summary.threads} threads; ${f.pagesWritten} pages (${(summary.bytesWritten / 2 ** 20).toFixed(1)} MiB written)\n` +
      `freezing ${f.freezingMs.toFixed(1)} ms, frozen ${f.frozenMs.toFixed(1)} ms, whole dump ${f.totalMs.toFixed(1)} ms; ` +
      `${summary.syscalls.ptrace ?? 0} ptrace calls, ${summary.syscalls.process_vm_readv ?? 0} process_vm_readv calls`,
  );
  for (let i = 0; i < 500 && existsSync(`/proc/${pid}`); i++) await Bun.sleep(10);
  console.log(`process ${pid} is ${existsSync(`/proc/${pid}`) ? "still there?!" : "gone"}`);

  step("4. The image set (ckpt show; crit decodes the same files)");
  const show = ckpt("show", dir, "--json");
  const images = JSON.parse(show.stdout) as Record<string, { magic: string; entries?: unknown[]; pages?: number }>;
  for (const [name, img] of Object.entries(images)) {
    console.log(`  ${name.padEnd(20)} ${img.magic.padEnd(10)} ${img.entries ? `${img.entries.length} entries` : `${img.pages ?? 0} pages`}`);
  }
  if (Bun.which("crit")) {
    console.log(`$ crit show ${join(dir, "pstree.img")}`);
    Bun.spawnSync(["crit", "show", join(dir, "pstree.img")], { stdout: "inherit", stderr: "inherit" });
  }

  step("5. Restore it (-d: leave it running on its own)");
  const restored = ckpt("restore", "-D", dir, "-d");
  process.stdout.write(restored.stdout);
  if (restored.code !== 0) throw new Error("ckpt restore failed");

  step("6. The restored workload carries on: same pid, memory verified, its counter goes on from where it was");
  await Bun.sleep(200);
  const final = await verdict();
  console.log(final);
  process.exitCode = final.startsWith(`workload ${pid}: all`) ? check.code : 1;
} finally {
  // The child first, then the parent.
  Bun.spawnSync(["pkill", "-KILL", "-P", String(pid)]);
  try {
    process.kill(pid, "SIGKILL");
  } catch {
    // gone already
  }
}
