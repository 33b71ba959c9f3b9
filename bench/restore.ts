/**
 * Restore benchmark: one process with 256 MiB, then one with 2 GiB (skipped
 * with a note when memory or the temp dir is short), each dumped once and then
 * restored REPS times from the same images with the engine in this process
 * (src/restore/restore.ts, detached). Every restored copy checks its own memory
 * before it is killed for the next round.
 * Per restore: wall time, fork (seed and tree), mm (address space and pages),
 * pages alone with GB/s, files, injected calls and ptrace stops.
 * Run: bun bench/restore.ts    (REPS=3 SKIP_BIG=1 to adjust)
 */
import { existsSync, readFileSync, statSync, truncateSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { dump } from "../src/dump/dump";
import { restore, type RestoreResult } from "../src/restore/restore";
import { allBlocked } from "../test/helpers/images";
import { startDetached, tempDir, waitFor } from "../test/helpers/target";
import { memTarget, selfCheck } from "../test/helpers/workloads";
import { BenchCleanup } from "./cleanup";
import { waitpid } from "../src/sys/libc";
import { W } from "../src/sys/nr";

const REPS = Number(process.env.REPS ?? 3);
const SKIP_BIG = process.env.SKIP_BIG === "1";
const MIB = 1024 * 1024;
const left = new BenchCleanup("bench/restore");

/** Gone for good: even a zombie keeps its pid, and restore needs the pid. */
function gone(pid: number): boolean {
  return !existsSync(`/proc/${pid}`);
}

function availableBytes(): number {
  const line = readFileSync("/proc/meminfo", "utf8").split("\n").find((l) => l.startsWith("MemAvailable:")) ?? "";
  return Number(line.split(/\s+/)[1]) * 1024;
}

async function benchOne(mib: number): Promise<void> {
  const dir = tempDir("bench-restore");
  left.dirs.push(dir);
  const out = join(dir, "out");
  writeFileSync(out, "");
  const target = await startDetached([memTarget(), String(mib), "2"], out);
  left.targets.push(target);
  await waitFor("the workload to be ready", () => readFileSync(out, "utf8").startsWith("ready"), 180_000);
  await waitFor("the workload to block", () => allBlocked(target.pid), 10_000);
  const images = join(dir, "img");
  const t0 = performance.now();
  const d = await dump({ pid: target.pid, dir: images, leaveRunning: false });
  process.stdout.write(`${mib} MiB: dumped ${d.figures.pagesWritten} pages in ${(performance.now() - t0).toFixed(0)} ms\n`);
  await waitFor("the dumped workload to be gone", () => gone(target.pid), 10_000);
  // The restored copy writes "ok" to `out`; the image recorded its size without it.
  const dumpedSize = statSync(out).size;

  for (let rep = 1; rep <= REPS; rep++) {
    truncateSync(out, dumpedSize);
    const t = performance.now();
    const r: RestoreResult = await restore({ dir: images, detach: true });
    const wall = performance.now() - t;
    const f = r.figures;
    const gbps = (r.pagesRestored * 4096) / (f.pagesMs / 1000) / 1e9;
    const verdict = await selfCheck(target.pid, out);
    process.stdout.write(
      `  restore ${rep}: wall ${wall.toFixed(0)} ms (fork ${f.forkMs.toFixed(0)}, mm ${f.mmMs.toFixed(0)} of which pages ${f.pagesMs.toFixed(0)} ms = ${gbps.toFixed(2)} GB/s, files ${f.filesMs.toFixed(0)}); ` +
        `${r.pagesRestored} pages, ${r.injectedCalls} injected calls, ${r.ptraceStops} ptrace stops; self-check: ${verdict}\n`,
    );
    if (verdict !== "ok") throw new Error(`the restored workload reported "${verdict}"`);
    // restore() made this process a subreaper and the restored root its
    // child: killed directly (a Target spares the runner's own children) and reaped.
    process.kill(target.pid, "SIGKILL");
    waitpid(target.pid, W.ALL);
    await waitFor("the restored workload to exit", () => gone(target.pid), 10_000);
  }
  left.remove(dir);
}

await benchOne(256);
if (SKIP_BIG) process.stdout.write("2 GiB: skipped (SKIP_BIG=1)\n");
else if (availableBytes() < 5 * 1024 * MIB) process.stdout.write(`2 GiB: skipped, only ${(availableBytes() / 1024 / MIB).toFixed(1)} GiB of memory available (needs 5)\n`);
else await benchOne(2048);
left.killAll();
