/**
 * Finding and copying the pages a dump saves (src/dump/memory/pages.ts), on live
 * processes:
 *   - 256 MiB and 2 GiB of written anonymous memory (4 KiB pages, as malloc'd
 *     memory usually is),
 *   - 4096 small areas (one written page each, alternating protections).
 * For each: scan time and kernel calls with PAGEMAP_SCAN and with pagemap
 * reads (several window sizes), copy time and GB/s with each way of preparing
 * the destination buffer, and call counts. Every figure is measured here.
 * Run: bun bench/pages.ts   (SIZES_MIB=256,2048 to change the sizes)
 */
import { copyPages, newPageCounters, scanPages, type PageBufferMode, type PageCounters, type PageScan, type PageVma, type ScanOptions } from "../src/dump/memory/pages";
import { readMaps } from "../src/proc/maps";
import { ProcFs } from "../src/proc/procfs";
import { PAGE_SIZE } from "../src/sys/nr";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { buildC, startDetached, tempDir, waitFor, type Target } from "../test/helpers/target";

const SIZES_MIB = (process.env.SIZES_MIB ?? "256,2048").split(",").map(Number);
const SMALL_AREAS = 4096;
const MIB = 1024 * 1024;
const targets: Target[] = [];

/** Maps SIZE MiB (argv[1]) and writes every page, or with argv[2] = n makes n one-page areas. */
const WORKLOAD = buildC("bench-pages", `
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#define PG 4096UL
int main(int argc, char **argv) {
  unsigned long mib = strtoul(argv[1], NULL, 0), small = argc > 2 ? strtoul(argv[2], NULL, 0) : 0;
  size_t len = small ? small * PG : mib << 20;
  unsigned char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) { perror("mmap"); return 1; }
  madvise(p, len, MADV_NOHUGEPAGE);
  for (size_t o = 0; o < len; o += PG) memset(p + o, (int)(o / PG) | 1, PG);
  for (unsigned long i = 0; i < small; i += 2) mprotect(p + i * PG, PG, PROT_READ);
  printf("ready %lx\\n", (unsigned long)p);
  fflush(stdout);
  for (;;) pause();
}`);

/** Start the workload and wait (longer than the tests' helper does) until it has filled its memory. */
async function startFilled(argv: string[]): Promise<Target> {
  const out = join(tempDir("bench-out"), "out");
  writeFileSync(out, "");
  const target = await startDetached(argv, out);
  targets.push(target);
  await waitFor(`${argv.join(" ")} to print "ready"`, () => readFileSync(out, "utf8").startsWith("ready"), 120_000);
  return target;
}

function wantedVmas(pid: number): PageVma[] {
  const proc = new ProcFs();
  try {
    return readMaps(proc, pid)
      .filter((a) => !a.shared && !["[vdso]", "[vvar]", "[vvar_vclock]", "[vsyscall]"].includes(a.path))
      .map((a) => ({ start: a.start, end: a.end, readable: a.read, fileBacked: a.inode !== 0n }));
  } finally {
    proc.close();
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] ?? 0;
}

function timeScan(pid: number, vmas: PageVma[], options: ScanOptions, reps: number): { ms: number; scan: PageScan } {
  let scan = scanPages(pid, vmas, options); // warm-up, also the result reported
  const times: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    scan = scanPages(pid, vmas, options);
    times.push(performance.now() - t0);
  }
  return { ms: median(times), scan };
}

function calls(c: PageCounters): string {
  return `scan ioctls ${c.pagemapScanIoctls}, pagemap preads ${c.pagemapPreads}, process_vm_readv ${c.processVmReadvCalls}, mem preads ${c.memPreads}`;
}

function gbps(bytes: number, ms: number): string {
  return `${(bytes / (ms / 1000) / 1e9).toFixed(2)} GB/s`;
}

function benchOne(label: string, pid: number, copyModes: PageBufferMode[], copyReps: number): void {
  const vmas = wantedVmas(pid);
  console.log(`\n== ${label}: ${vmas.length} wanted areas`);
  const reps = 5;
  const viaScan = timeScan(pid, vmas, { method: "pagemap-scan" }, reps);
  const s = viaScan.scan;
  console.log(`pages scanned ${s.pagesScanned}, to save ${s.pagesToSave} (${((s.pagesToSave * PAGE_SIZE) / MIB).toFixed(1)} MiB) in ${s.runs.length} runs`);
  console.log(`  scan  PAGEMAP_SCAN              ${viaScan.ms.toFixed(2).padStart(8)} ms   ${calls(s.counters)}`);
  for (const windowMib of [2, 8, 16, 64]) {
    const r = timeScan(pid, vmas, { method: "pagemap-read", pagemapWindowBytes: windowMib * MIB }, reps);
    const same = JSON.stringify(r.scan.runs.map((x) => [String(x.vaddr), x.nrPages])) === JSON.stringify(s.runs.map((x) => [String(x.vaddr), x.nrPages]));
    console.log(`  scan  pagemap reads, ${String(windowMib).padStart(2)} MiB win ${r.ms.toFixed(2).padStart(8)} ms   ${calls(r.scan.counters)}${same ? "" : "   RESULT DIFFERS"}`);
  }
  const bytes = s.pagesToSave * PAGE_SIZE;
  // The first copy also pays for memory this machine has never handed out
  // before (slow first touch below the guest); reported on its own.
  const firstCounters = newPageCounters();
  const f0 = performance.now();
  copyPages(pid, vmas, s.runs, { counters: firstCounters }).dispose();
  const firstMs = performance.now() - f0;
  console.log(`  copy  first, default buffer     ${firstMs.toFixed(1).padStart(8)} ms  ${gbps(bytes, firstMs).padStart(11)}   ${calls(firstCounters)}`);
  const times = new Map<PageBufferMode, number[]>(copyModes.map((m) => [m, []]));
  let counters = newPageCounters();
  for (let rep = 0; rep < copyReps; rep++) {
    // Rotate the order so that no mode always runs right after a particular other one.
    for (let k = 0; k < copyModes.length; k++) {
      const mode = copyModes[(k + rep) % copyModes.length]!;
      counters = newPageCounters();
      const t0 = performance.now();
      const data = copyPages(pid, vmas, s.runs, { counters, buffer: mode });
      times.get(mode)!.push(performance.now() - t0);
      data.dispose();
    }
  }
  for (const mode of copyModes) {
    const ms = median(times.get(mode)!);
    const best = Math.min(...times.get(mode)!);
    console.log(`  copy  buffer ${mode.padEnd(18)}  ${ms.toFixed(1).padStart(8)} ms  ${gbps(bytes, ms).padStart(11)}   (median of ${copyReps}; best ${best.toFixed(1)} ms, ${gbps(bytes, best)})   ${calls(counters)}`);
  }
}

const ALL_MODES: PageBufferMode[] = ["hugepage", "hugepage-populate", "plain", "populate"];
try {
  const t0 = performance.now();
  // Started together: filling the memory is page-fault bound and takes a while.
  const started = await Promise.all([
    ...SIZES_MIB.map((mib) => startFilled([WORKLOAD, String(mib)])),
    startFilled([WORKLOAD, "0", String(SMALL_AREAS)]),
  ]);
  console.log(`targets ready in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  SIZES_MIB.forEach((mib, i) => {
    benchOne(`${mib} MiB written anonymous memory`, started[i]!.pid, ALL_MODES, 3);
  });
  benchOne(`${SMALL_AREAS} one-page areas`, started[SIZES_MIB.length]!.pid, ALL_MODES, 5);
} finally {
  for (const t of targets) t.kill();
}
