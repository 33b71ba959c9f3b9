/**
 * Shared memory benchmark: a tree of 4 processes (a parent and 3 forked
 * children) mapping one object of shared anonymous memory (1 GiB by default,
 * every page written before the fork), each with 8 MiB of private memory of
 * its own. Dumped by `ckpt dump -R`: the images must hold each shared page
 * once (≈ 1 GiB, not 4), however many processes map it.
 * Prints per run: frozen and total time, shared pages scanned and written,
 * private pages, bytes in the pages files, and that ratio to the object's size;
 * with CRIU_BIN set (a CRIU 4.2 binary), CRIU's dump of the same tree too.
 * Run: bun bench/shared.ts    (SHARED_MIB=1024 REPS=3 to adjust)
 */
import { readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { readImageFile } from "../src/image/image-file";
import { allBlocked } from "../test/helpers/images";
import { buildC, killablePid, startDetached, tempDir, waitFor } from "../test/helpers/target";
import { BenchCleanup } from "./cleanup";

const SHARED_MIB = Number(process.env.SHARED_MIB ?? 1024);
const REPS = Number(process.env.REPS ?? 3);
const CRIU = process.env.CRIU_BIN;
const ROOT = join(import.meta.dir, "..");
const left = new BenchCleanup("bench/shared");

const workload = buildC("shared-tree", String.raw`
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
int main(int argc, char **argv) {
  size_t shared = strtoull(argv[1], 0, 10) << 20, own = 8u << 20;
  char *s = mmap(NULL, shared, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (s == MAP_FAILED) return 1;
  for (size_t i = 0; i < shared; i += 4096) memset(s + i, (int)(i >> 12) | 1, 4096);
  pid_t kids[3];
  for (int k = 0; k < 3; k++) if ((kids[k] = fork()) == 0) break;
  char *p = malloc(own);
  memset(p, getpid() & 0xff, own);
  if (kids[0] && kids[1] && kids[2]) { printf("ready %d %d %d\n", kids[0], kids[1], kids[2]); fflush(stdout); }
  for (;;) pause();
}
`);

async function startTree(): Promise<{ root: number; pids: number[] }> {
  const dir = tempDir("bench-shared-out");
  left.dirs.push(dir);
  const out = join(dir, "out");
  writeFileSync(out, "");
  // Its own session: CRIU dumps a tree whose root leads its session (or wants --shell-job).
  const t = await startDetached(["setsid", workload, String(SHARED_MIB)], out);
  left.targets.push(t);
  await waitFor("the tree to be ready", () => readFileSync(out, "utf8").startsWith("ready"), 120_000);
  const pids = [t.pid, ...readFileSync(out, "utf8").trim().split(" ").slice(1).map(Number)];
  left.targets.push(...pids.slice(1).map(killablePid));
  await waitFor("the tree to block", () => pids.every((p) => allBlocked(p)), 10_000);
  return { root: t.pid, pids };
}

function pagesBytes(dir: string): number {
  return readdirSync(dir).filter((f) => /^pages-\d+\.img$/.test(f)).reduce((n, f) => n + statSync(join(dir, f)).size, 0);
}

/** CRIU's stats-dump: its frozen time (µs) and pages written. */
function criuStats(dir: string): { frozenMs: number; pages: number; shpages: number } {
  const img = readImageFile(join(dir, "stats-dump"));
  const d = (img.entries[0]?.message as unknown as { dump?: { frozenTime: number; pagesWritten: bigint; shpagesWritten?: bigint } }).dump;
  return { frozenMs: (d?.frozenTime ?? NaN) / 1000, pages: Number(d?.pagesWritten ?? NaN), shpages: Number(d?.shpagesWritten ?? NaN) };
}

const gib = (b: number): string => `${(b / 2 ** 30).toFixed(3)} GiB`;
console.log(`bench/shared: 4 processes sharing ${SHARED_MIB} MiB of anonymous memory (+ 8 MiB private each), ${REPS} runs`);
const { root } = await startTree();
const sharedBytes = SHARED_MIB * 2 ** 20;
for (let rep = 0; rep < REPS; rep++) {
  const dir = join(tempDir("bench-shared-img"), "img");
  left.dirs.push(dir.slice(0, -4));
  const r = Bun.spawnSync([process.execPath, join(ROOT, "src/cli/main.ts"), "dump", "-R", "--json", "-t", String(root), "-D", dir], { stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(`ckpt dump failed: ${r.stderr.toString().trim()}`);
  const f = (JSON.parse(r.stdout.toString()) as { figures: { frozenMs: number; totalMs: number; pagesWritten: number; shpagesScanned?: number; shpagesWritten?: number } }).figures;
  const bytes = pagesBytes(dir);
  console.log(
    `ckpt  run ${rep + 1}: frozen ${f.frozenMs.toFixed(1)} ms, total ${f.totalMs.toFixed(1)} ms; shared pages ${f.shpagesWritten} written of ${f.shpagesScanned} scanned, ` +
      `private pages ${f.pagesWritten}; pages files ${gib(bytes)} = ${(bytes / sharedBytes).toFixed(3)} × the shared object`,
  );
}
if (CRIU) {
  for (let rep = 0; rep < REPS; rep++) {
    const dir = tempDir("bench-shared-criu");
    left.dirs.push(dir);
    const r = Bun.spawnSync([CRIU, "dump", "-R", "-t", String(root), "-D", dir, "-o", "dump.log"], { stderr: "pipe" });
    if (r.exitCode !== 0) {
      const log = readFileSync(join(dir, "dump.log"), "utf8").split("\n").filter((l) => l.startsWith("Error") && !l.includes("RLIMIT_NOFILE"));
      console.log(`criu  run ${rep + 1}: failed: ${log[0] ?? r.stderr.toString().trim()}`);
      continue;
    }
    const s = criuStats(dir);
    const bytes = pagesBytes(dir);
    console.log(`criu  run ${rep + 1}: frozen ${s.frozenMs.toFixed(1)} ms; shared pages ${s.shpages}, private pages ${s.pages}; pages files ${gib(bytes)} = ${(bytes / sharedBytes).toFixed(3)} × the shared object`);
  }
} else {
  console.log("(set CRIU_BIN to a CRIU 4.2 binary to compare)");
}
left.killAll();
