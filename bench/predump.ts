/**
 * Iterative dump benchmark (issue: pre-dump, seed 002).
 *
 * Memory: a 2 GiB process (dirtytarget, 4 KiB pages) that rewrites 16 MiB
 * between rounds. First a plain dump -R for comparison, then pre-dump →
 * (dirty) pre-dump → (dirty) pre-dump → (dirty) dump, with the engine in
 * this process. Per round: pages written, pages left in the parent, written
 * against dirtied (rounds 2 and later must stay at or under 1.1×), frozen and
 * total time. The final images are restored and the process checks its own
 * memory.
 *
 * irmap: a process watching 1,000 files with inotify; dump -R with no cache
 * (cold), then pre-dump (which writes irmap-cache) and dump -R with it as
 * parent (warm): the dump's irmap time and how each answer was found.
 *
 * Run: bun bench/predump.ts    (MIB=256 for a smaller process, ROUNDS=3)
 */
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { dump } from "../src/dump/dump";
import { preDump } from "../src/dump/predump";
import { restore } from "../src/restore/restore";
import { dirtyTarget, watchTarget } from "../test/helpers/iterative-workloads";
import { startDetached, tempDir, waitFor } from "../test/helpers/target";
import { selfCheck } from "../test/helpers/workloads";
import { BenchCleanup } from "./cleanup";

const MIB = Number(process.env.MIB ?? 2048);
const DIRTY_MIB = 16;
const ROUNDS = Number(process.env.ROUNDS ?? 3);
const WATCHES = 1000;
const left = new BenchCleanup("bench/predump");

function availableBytes(): number {
  const line = readFileSync("/proc/meminfo", "utf8").split("\n").find((l) => l.startsWith("MemAvailable:")) ?? "";
  return Number(line.split(/\s+/)[1]) * 1024;
}

function row(cells: (string | number)[]): string {
  return `| ${cells.join(" | ")} |`;
}

async function memoryRounds(): Promise<void> {
  const dir = tempDir("bench-predump");
  left.dirs.push(dir);
  const out = join(dir, "out");
  writeFileSync(out, "");
  const stride = (MIB / DIRTY_MIB) | 0;
  const target = await startDetached([dirtyTarget(), String(MIB), String(stride)], out);
  left.targets.push(target);
  await waitFor("the workload to be ready", () => readFileSync(out, "utf8").startsWith("ready"), 300_000);
  const pid = target.pid;
  const dirtiedPerRound = Math.ceil((MIB * 256) / stride);
  console.log(`memory: ${MIB} MiB process ${pid}, ${dirtiedPerRound} pages (${DIRTY_MIB} MiB) rewritten between rounds`);
  console.log(row(["round", "kind", "pages written", "in parent", "written / dirtied", "frozen ms", "total ms"]));
  console.log(row(["---", "---", "---:", "---:", "---:", "---:", "---:"]));

  const plain = await dump({ pid, dir: join(dir, "plain"), leaveRunning: true });
  console.log(row(["–", "dump -R, no parent", plain.figures.pagesWritten, plain.figures.pagesInParent, "", plain.figures.frozenMs.toFixed(0), plain.figures.totalMs.toFixed(0)]));
  left.remove(join(dir, "plain"));

  let round = 0;
  let prev: string | undefined;
  let worst = 0;
  for (let i = 1; i <= ROUNDS + 1; i++) {
    const images = join(dir, `r${i}`);
    if (i > 1) {
      round++;
      process.kill(pid, "SIGUSR2");
      await waitFor(`dirty round ${round}`, () => readFileSync(out, "utf8").includes(`round ${round}\n`), 60_000);
    }
    const final = i === ROUNDS + 1;
    const r = final
      ? await dump({ pid, dir: images, leaveRunning: false, ...(prev ? { prevImagesDir: prev } : {}) })
      : await preDump({ pid, dir: images, ...(prev ? { prevImagesDir: prev } : {}) });
    const f = r.figures;
    const ratio = i > 1 ? f.pagesWritten / dirtiedPerRound : NaN;
    if (i > 1) worst = Math.max(worst, ratio);
    console.log(row([i, final ? "dump" : "pre-dump", f.pagesWritten, f.pagesInParent, i > 1 ? ratio.toFixed(3) : "(first)", f.frozenMs.toFixed(0), f.totalMs.toFixed(0)]));
    prev = images;
  }
  console.log(`worst written/dirtied in rounds 2+: ${worst.toFixed(3)} (target ≤ 1.1): ${worst <= 1.1 ? "met" : "NOT MET"}`);
  await waitFor("the dumped process to be gone", () => !existsSync(`/proc/${pid}`), 10_000);
  const t = performance.now();
  const rr = await restore({ dir: prev!, detach: true });
  const verdict = await selfCheck(pid, out);
  console.log(`restore through ${ROUNDS + 1} rounds: ${rr.pagesRestored} pages in ${(performance.now() - t).toFixed(0)} ms; self-check: ${verdict}`);
  if (!verdict.startsWith("ok")) throw new Error(`the restored workload reported "${verdict}"`);
  left.killTargets();
  left.remove(dir);
}

async function irmapRounds(): Promise<void> {
  const dir = tempDir("bench-irmap");
  left.dirs.push(dir);
  const files = join(dir, "watched");
  Bun.spawnSync(["mkdir", files]);
  const out = join(dir, "out");
  writeFileSync(out, "");
  const target = await startDetached([watchTarget(), files, String(WATCHES)], out);
  left.targets.push(target);
  await waitFor("the watcher to be ready", () => readFileSync(out, "utf8").startsWith("ready"), 60_000);
  const pid = target.pid;
  console.log(`\nirmap: process ${pid} watching ${WATCHES} files with inotify`);
  console.log(row(["dump", "irmap ms", "cache hits", "stale", "by handle", "by scan", "frozen ms"]));
  console.log(row(["---", "---:", "---:", "---:", "---:", "---:", "---:"]));
  const cold = await dump({ pid, dir: join(dir, "cold"), leaveRunning: true });
  const pre = await preDump({ pid, dir: join(dir, "pre") });
  const warm = await dump({ pid, dir: join(dir, "warm"), leaveRunning: true, prevImagesDir: "../pre" });
  for (const [name, d] of [["cold (no cache)", cold], ["warm (pre-dump's irmap-cache)", warm]] as const) {
    const c = d.irmap;
    console.log(row([name, c.ms.toFixed(2), c.cacheHits, c.stale, c.byHandle, c.byScan, d.figures.frozenMs.toFixed(0)]));
  }
  console.log(`(the pre-dump resolved ${pre.irmap.inodes} inodes in ${pre.irmap.ms.toFixed(2)} ms while the process ran)`);
  left.killTargets();
  left.remove(dir);
}

if (availableBytes() < MIB * 1024 * 1024 * 2.5) console.log(`memory: skipped, ${MIB} MiB needs ${(MIB * 2.5 / 1024).toFixed(1)} GiB available`);
else await memoryRounds();
await irmapRounds();
left.killAll();
