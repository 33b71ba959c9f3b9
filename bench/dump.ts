/**
 * Whole-dump benchmark: the engine (src/dump/dump.ts) run in-process against
 * live workloads, with both ways of finding pages (PAGEMAP_SCAN ioctl and
 * /proc/PID/pagemap reads):
 *   (a) one process with 256 MiB of written anonymous memory,
 *   (b) one with 2 GiB (skipped with a note when the temp dir has < 5 GiB free),
 *   (c) one with 4096 small areas (one page each, alternating protections).
 * For every dump: wall, freezing, frozen, memdump and memwrite times, pages
 * written, copy GB/s, frozen time against an ideal size / 5 GB/s, and the
 * calls made per dump (proc opens, stats, pagemap scans or preads, ptrace,
 * waitpid, process_vm_readv, injected calls). Every figure is measured here.
 * Then the snapshot table: dump -R as a snapshot (the default) against
 * --no-snapshot and, with CRIU_BIN set, CRIU 4.2's `criu dump -R` on the same
 * workload in the same run: the idle 256 MiB and 2 GiB processes, and one
 * rewriting its memory at 16 MiB/s: frozen time, copy time after the freeze,
 * pages copied before a write (by the fault handler).
 * Run: bun bench/dump.ts    (REPS=3 REPS_BIG=2 SKIP_BIG=1 to adjust; SNAPSHOT_ONLY=1 for the snapshot table alone)
 */
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import type { StatsEntry } from "../src/image/gen/stats_pb";
import { readImageFile } from "../src/image/image-file";
import { rewriteTarget } from "../test/helpers/restore-workloads";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { dump, type DumpResult } from "../src/dump/dump";
import { RemoteSyscalls } from "../src/dump/task/inject";
import { allBlocked } from "../test/helpers/images";
import { startDetached, tempDir, waitFor, type Target } from "../test/helpers/target";
import { BenchCleanup } from "./cleanup";
import { memTarget, vmaTarget } from "../test/helpers/workloads";

const REPS = Number(process.env.REPS ?? 3);
const REPS_BIG = Number(process.env.REPS_BIG ?? 2);
const SKIP_BIG = process.env.SKIP_BIG === "1";
const SNAPSHOT_ONLY = process.env.SNAPSHOT_ONLY === "1";
const PAGE = 4096;
const MIB = 1024 * 1024;
const IDEAL_GBPS = 5;
const METHODS = ["ioctl", "pagemap"] as const;
type Method = (typeof METHODS)[number];

// The frozen part of a dump is synchronous: a signal is handled at the engine's
// next checkpoint (up to a few seconds for 2 GiB), then the workloads go.
const left = new BenchCleanup("bench/dump");

// Bench-only instrumentation: count the calls injected into the tasks (each
// one costs several ptrace requests and waits), by wrapping the method on the
// prototype of this process's copy of the class. Nothing under src/ changes.
let injectedCalls = 0;
{
  const proto = RemoteSyscalls.prototype as unknown as { syscall: (...a: unknown[]) => bigint };
  const orig = proto.syscall;
  proto.syscall = function (this: unknown, ...a: unknown[]): bigint {
    injectedCalls++;
    return orig.apply(this, a);
  };
}

/** Start a workload detached and wait (long enough for 2 GiB) for its "ready" line, then (if `blocks`) for every thread to block. */
async function startWorkload(argv: string[], blocks = true): Promise<Target> {
  const outDir = tempDir("bench-dump-out");
  left.dirs.push(outDir);
  const out = join(outDir, "out");
  writeFileSync(out, "");
  const target = await startDetached(argv, out);
  left.targets.push(target);
  await waitFor(`${argv.join(" ")} to print "ready"`, () => readFileSync(out, "utf8").startsWith("ready"), 120_000);
  if (blocks) await waitFor(`${argv.join(" ")} to block`, () => allBlocked(target.pid), 10_000);
  return target;
}

/** Free bytes of the filesystem holding `dir`, from df. */
function freeBytes(dir: string): number {
  const r = Bun.spawnSync(["df", "-Pk", dir], { stdout: "pipe", stderr: "pipe" });
  const line = r.stdout.toString().trim().split("\n")[1] ?? "";
  const avail = Number(line.split(/\s+/)[3]);
  return Number.isFinite(avail) ? avail * 1024 : 0;
}

interface Run {
  method: Method;
  /** The first dump of this workload (pays for memory and page cache handed out for the first time). */
  first: boolean;
  wallMs: number;
  injected: number;
  r: DumpResult;
}

async function oneDump(pid: number, method: Method, first = false, snapshot = true, idle = true): Promise<Run> {
  if (idle) await waitFor(`${pid} to block again`, () => allBlocked(pid), 10_000);
  const dir = join(tempDir("bench-dump"), "img");
  const parent = join(dir, "..");
  left.dirs.push(parent);
  const inj0 = injectedCalls;
  try {
    const t0 = performance.now();
    const r = await dump({ pid, dir, leaveRunning: true, pageScan: method, snapshot });
    const wallMs = performance.now() - t0;
    return { method, first, wallMs, injected: injectedCalls - inj0, r };
  } finally {
    left.remove(parent);
  }
}

const f1 = (n: number): string => n.toFixed(1);
const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};
const sc = (r: DumpResult, name: string): number => r.syscalls[name] ?? 0;

const COLUMNS: [string, number][] = [
  ["method", 7], ["rep", 4], ["wall ms", 8], ["freezing", 9], ["frozen", 8], ["memdump", 8], ["frz-mem", 8], ["memwrite", 9],
  ["pages wr", 9], ["copy GB/s", 10], ["ideal ms", 9], ["frz/ideal", 10],
  ["proc opn", 9], ["stats p/sx", 11], ["scan io/pr", 11], ["ptrace", 7], ["waitpid", 8], ["pvm_readv", 10], ["injected", 9],
];

function row(cells: string[]): string {
  return cells.map((c, i) => (i < 2 ? c.padEnd(COLUMNS[i]![1]) : c.padStart(COLUMNS[i]![1]))).join(" ");
}

function cells(run: Run, rep: string): string[] {
  const { r } = run;
  const f = r.figures;
  const bytes = f.pagesWritten * PAGE;
  const idealMs = (bytes / (IDEAL_GBPS * 1e9)) * 1000;
  return [
    run.method, rep, f1(run.wallMs), f1(f.freezingMs), f1(f.frozenMs), f1(f.memdumpMs), f1(f.frozenMs - f.memdumpMs), f1(f.memwriteMs),
    String(f.pagesWritten), (bytes / (f.memdumpMs / 1000) / 1e9).toFixed(2), f1(idealMs), (f.frozenMs / idealMs).toFixed(1),
    String(r.proc.fileOpens + r.proc.dirOpens), `${r.proc.stats}/${sc(r, "statx")}`,
    `${r.pages.pagemapScanIoctls}/${r.pages.pagemapPreads}`, String(sc(r, "ptrace")), String(sc(r, "waitpid")),
    String(sc(r, "process_vm_readv")), String(run.injected),
  ];
}

function medianCells(runs: Run[]): string[] {
  const m = (g: (x: Run) => number): number => median(runs.map(g));
  const pages = m((x) => x.r.figures.pagesWritten);
  const memdump = m((x) => x.r.figures.memdumpMs);
  const frozen = m((x) => x.r.figures.frozenMs);
  const idealMs = ((pages * PAGE) / (IDEAL_GBPS * 1e9)) * 1000;
  return [
    runs[0]!.method, "med", f1(m((x) => x.wallMs)), f1(m((x) => x.r.figures.freezingMs)), f1(frozen), f1(memdump),
    f1(m((x) => x.r.figures.frozenMs - x.r.figures.memdumpMs)),
    f1(m((x) => x.r.figures.memwriteMs)), String(pages), ((pages * PAGE) / (memdump / 1000) / 1e9).toFixed(2), f1(idealMs),
    (frozen / idealMs).toFixed(1), "", "", "", "", "", "", "",
  ];
}

async function benchWorkload(label: string, target: Target, reps: number): Promise<void> {
  console.log(`\n== ${label} (pid ${target.pid})`);
  const byMethod = new Map<Method, Run[]>();
  // Interleave the methods so neither always runs first (page cache, memory handed out before).
  for (let rep = 0; rep < reps; rep++) {
    for (const [k] of METHODS.entries()) {
      const method = METHODS[(k + rep) % METHODS.length]!;
      const run = await oneDump(target.pid, method, rep === 0 && k === 0);
      byMethod.set(method, [...(byMethod.get(method) ?? []), run]);
    }
  }
  console.log(row(COLUMNS.map(([h]) => h)));
  for (const method of METHODS) {
    const runs = byMethod.get(method) ?? [];
    runs.forEach((run, i) => console.log(row(cells(run, `${i + 1}${run.first ? "*" : ""}`))));
    if (runs.length > 1) console.log(row(medianCells(runs)));
  }
  const last = byMethod.get("ioctl")!.at(-1)!;
  const r = last.r;
  const opensStats = r.proc.fileOpens + r.proc.dirOpens + r.proc.stats;
  console.log(
    `processes ${r.processes}, threads ${r.threads}; pages scanned ${r.figures.pagesScanned}, written ${r.figures.pagesWritten} ` +
      `(${((r.figures.pagesWritten * PAGE) / MIB).toFixed(1)} MiB); bytes written ${r.bytesWritten}`,
  );
  console.log(`mapFiles: ${r.mapFiles.distinctFiles} distinct files for ${r.mapFiles.fileAreas} file-backed areas (one stat per file, not per area: ${r.mapFiles.fileAreas - r.mapFiles.distinctFiles} saved)`);
  console.log(
    `proc opens+stats per task: ${(opensStats / r.processes).toFixed(1)} ` +
      `(opens ${r.proc.fileOpens + r.proc.dirOpens} = files ${r.proc.fileOpens} + dirs ${r.proc.dirOpens}, stats ${r.proc.stats}, readlinks ${r.proc.readlinks}, reads ${r.proc.reads})` +
      ` vs distinct mapped files ${r.mapFiles.distinctFiles} + constant ${opensStats / r.processes - r.mapFiles.distinctFiles}`,
  );
  console.log(
    `per injected call (${last.injected} calls): ptrace ${(sc(r, "ptrace") / last.injected).toFixed(2)}, waitpid ${(sc(r, "waitpid") / last.injected).toFixed(2)}, ` +
      `process_vm_readv ${(sc(r, "process_vm_readv") / last.injected).toFixed(2)} (dump totals, freeze and page copy included)`,
  );
  for (const method of METHODS) {
    const x = byMethod.get(method)!.at(-1)!.r;
    const all = Object.entries(x.syscalls).sort(([a], [b]) => a.localeCompare(b)).map(([k, v]) => `${k} ${v}`).join(", ");
    console.log(`syscalls (${method}, last rep): ${all}`);
    console.log(`  pages (${method}): scan ioctls ${x.pages.pagemapScanIoctls}, pagemap preads ${x.pages.pagemapPreads}, process_vm_readv ${x.pages.processVmReadvCalls}, mem preads ${x.pages.memPreads}`);
  }
}

/** CRIU 4.2's `criu dump -R` of `pid`: its frozen time (stats-dump), ms; null without CRIU_BIN. */
function criuFrozenMs(pid: number): number | null {
  const criu = process.env.CRIU_BIN;
  if (!criu) return null;
  const dir = join(tempDir("bench-criu"), "img");
  left.dirs.push(join(dir, ".."));
  mkdirSync(dir);
  try {
    // --shell-job: the workloads share this process's session (they are not session leaders).
    const r = Bun.spawnSync([criu, "dump", "-t", String(pid), "-D", dir, "-R", "--shell-job", "-v1", "-o", "dump.log"], { stdout: "pipe", stderr: "pipe" });
    if (r.exitCode !== 0) {
      const log = readFileSync(join(dir, "dump.log"), "utf8").split("\n").filter((l) => l.includes("Error")).slice(-3).join(" / ");
      console.log(`criu dump of ${pid} failed (exit ${r.exitCode}): ${log}`);
      return NaN;
    }
    const stats = readImageFile(join(dir, "stats-dump")).entries[0]?.message as StatsEntry | undefined;
    return (stats?.dump?.frozenTime ?? NaN) / 1000;
  } finally {
    left.remove(join(dir, ".."));
  }
}

/** Snapshot against --no-snapshot (and CRIU) on one workload; `idle`: wait for it to block before each dump. */
async function benchSnapshot(label: string, pid: number, reps: number, idle: boolean): Promise<void> {
  const head = ["mode", "rep", "wall ms", "frozen", "copy after", "pages", "on fault", "frozen pg", "  frozen: tasks / areas / injected / scan / pages"];
  const widths = [12, 4, 9, 8, 11, 9, 9, 10, 0];
  const line = (c: string[]): string => c.map((x, i) => (i < 2 ? x.padEnd(widths[i]!) : x.padStart(widths[i]!))).join(" ");
  console.log(`
== snapshot: ${label} (pid ${pid})`);
  console.log(line(head));
  const frozen: Record<string, number[]> = { snapshot: [], "no-snapshot": [], "criu 4.2": [] };
  for (let rep = 1; rep <= reps; rep++) {
    for (const snapshot of rep % 2 ? [true, false] : [false, true]) {
      const run = await oneDump(pid, "ioctl", false, snapshot, idle);
      const f = run.r.figures;
      const sn = run.r.snapshot;
      const mode = snapshot ? "snapshot" : "no-snapshot";
      frozen[mode]!.push(f.frozenMs);
      const ph = f.frozenPhases;
      const phases = ph ? `  ${[ph.tasks, ph.areas, ph.injected, ph.pageScan, ph.pages].map(f1).join(" / ")}` : "";
      console.log(line([mode, String(rep), f1(run.wallMs), f1(f.frozenMs), sn.used ? f1(sn.copyMs) : "-", String(f.pagesWritten), sn.used ? String(sn.pagesOnFault) : "-", sn.used ? String(sn.pagesFrozen) : "-", phases]));
    }
    const criu = criuFrozenMs(pid);
    if (criu !== null && !Number.isNaN(criu)) {
      frozen["criu 4.2"]!.push(criu);
      console.log(line(["criu 4.2", String(rep), "", f1(criu), "", "", "", "", ""]));
    }
  }
  console.log(`median frozen ms: ${Object.entries(frozen).filter(([, v]) => v.length > 0).map(([k, v]) => `${k} ${f1(median(v))}`).join(", ")}${process.env.CRIU_BIN ? "" : " (CRIU_BIN not set: no CRIU column)"}`);
}

try {
  const t0 = performance.now();
  const mem = memTarget();
  const vma = vmaTarget();
  const tmp = tmpdir();
  const free = freeBytes(tmp);
  const bigOk = !SKIP_BIG && free >= 5 * 1024 * MIB;
  // Started together: filling the memory is page-fault bound.
  const [small, big, areas] = await Promise.all([
    startWorkload([mem, "256", "0"]),
    bigOk ? startWorkload([mem, "2048", "0"]) : Promise.resolve(undefined),
    startWorkload([vma, "4096"]),
  ]);
  console.log(`workloads ready in ${((performance.now() - t0) / 1000).toFixed(1)} s; ${tmp} has ${(free / 1024 / MIB).toFixed(1)} GiB free`);
  console.log(`columns: times in ms; copy GB/s = pages written * 4096 / memdump; ideal ms = bytes / ${IDEAL_GBPS} GB/s; frz/ideal = frozen / ideal;`);
  console.log(`  proc opn = proc file + dir opens; stats p/sx = proc.stats / syscalls.statx; scan io/pr = PAGEMAP_SCAN ioctls / pagemap preads;`);
  console.log(`  frz-mem = frozen - memdump (frozen time not spent on pages); rep 1* = the workload's first dump (methods alternate which goes first);`);
  console.log(`  ptrace, waitpid, pvm_readv = libc-layer syscall counts per dump; injected = calls run inside the task via RemoteSyscalls`);

  // One untimed dump first: the first one pays for memory this process never had before.
  await oneDump(small.pid, "ioctl");

  if (!SNAPSHOT_ONLY) {
    await benchWorkload("(a) 256 MiB written anonymous memory, 1 thread", small, REPS);
    if (big) await benchWorkload("(b) 2 GiB written anonymous memory, 1 thread", big, REPS_BIG);
    else console.log(`\n== (b) 2 GiB: skipped (${SKIP_BIG ? "SKIP_BIG=1" : `only ${(free / 1024 / MIB).toFixed(1)} GiB free in ${tmp}, need 5`})`);
    await benchWorkload("(c) 4096 one-page areas", areas, REPS);
  }

  await benchSnapshot("(a) idle 256 MiB", small.pid, REPS, true);
  if (big) await benchSnapshot("(b) idle 2 GiB", big.pid, REPS_BIG, true);
  const writer = await startWorkload([rewriteTarget(), big ? "2048" : "256", "1", "16"], false);
  await benchSnapshot(`(d) ${big ? "2 GiB" : "256 MiB"} rewritten at 16 MiB/s`, writer.pid, REPS, false);
  console.log(`\ntotal ${((performance.now() - t0) / 1000).toFixed(1)} s`);
} finally {
  left.killAll();
}
