/**
 * The memory part of one process's dump: which pages of its private areas to
 * save and their contents (pages.ts does the work; this shapes it for the
 * dump and pre-dump engines).
 *
 * Two steps, because a pre-dump scans while the tree is frozen and copies
 * after letting it go: plan (scan, and with dirty tracking decide per run
 * whether it is new or unchanged since the parent round) and copy.
 *
 * A run is left in the parent only when three things hold: its area is
 * tracked (its pages' written state means "since the previous round"), the
 * scan found it unwritten, and the parent's pagemap really holds those pages.
 * Anything else is saved again — a wrong "in parent" would restore stale
 * memory, an extra copy only costs bytes.
 */
import type { PagemapEntry } from "../../image/gen/pagemap_pb";
import type { PageStore } from "../../image/page-store";
import type { MapArea } from "../../proc/maps";
import type { ProcFs } from "../../proc/procfs";
import { PAGE_SIZE } from "../../sys/nr";
import type { ImageSink } from "../../image/image-dir";
import type { PageCoverage } from "../../image/pagemap";
import type { ProtectedAhead } from "./protect-ahead";
import { ProcessSnapshot, type SnapshotCounters } from "./snapshot";
import { copyPages, pagemapEntries, scanPages, writePages, type DirtyScan, type PageCounters, type PageRun, type PageVma, type ScanMethod } from "./pages";

export type PageScanChoice = "auto" | "ioctl" | "pagemap";

/** Dirty tracking for one process in this round (tracking/round.ts decides it). */
export interface ProcessTracking {
  dirty: DirtyScan;
  /** Start addresses of the areas whose written state is meaningful; the others are saved whole. */
  tracked: ReadonlySet<bigint>;
  /** What the parent holds for this process; null: nothing can be left in the parent. */
  parent: PageCoverage | null;
}

export interface PageCopy {
  entries: PagemapEntry[];
  /** A lazy dump: the runs left for the source to serve (not in the copy). */
  lazy: PageRun[];
  pagesScanned: number;
  pagesWritten: number;
  /** Pages recorded as in the parent and not written (CRIU's pages_skipped_parent). */
  pagesInParent: number;
  /** Time spent finding and copying the pages. */
  ms: number;
  /** Write the contents (pages-N.img); returns the byte count. */
  writeTo(sink: ImageSink): number;
  dispose(): void;
}

export interface PagePlan {
  /** A lazy dump: the runs left for the source to serve. */
  lazy: PageRun[];
  pagesScanned: number;
  pagesToWrite: number;
  pagesInParent: number;
  scanMs: number;
  /** Copy the runs to write; `running`: the task was let go since the scan. */
  copy(running: boolean): PageCopy;
  /**
   * While frozen: start a snapshot copy of the runs to write (snapshot.ts).
   * The PageCopy's contents are whole once finishSnapshots has run.
   */
  beginSnapshot(counters: SnapshotCounters, ahead?: ProtectedAhead | null): { snapshot: ProcessSnapshot; pages: PageCopy };
}

function methodOf(choice: PageScanChoice): "auto" | ScanMethod {
  return choice === "ioctl" ? "pagemap-scan" : choice === "pagemap" ? "pagemap-read" : "auto";
}

function toVma(a: MapArea): PageVma {
  return { start: a.start, end: a.end, readable: a.read, fileBacked: a.inode !== 0n };
}

/** Clean runs the parent does not hold (in part or whole) become dirty parts. */
function checkAgainstParent(runs: readonly PageRun[], parent: PageCoverage | null): PageRun[] {
  const out: PageRun[] = [];
  for (const run of runs) {
    if (run.dirty !== false) {
      out.push(run);
      continue;
    }
    if (!parent) {
      out.push({ ...run, dirty: true });
      continue;
    }
    const first = Number(run.vaddr) / PAGE_SIZE;
    for (const part of parent.split(first, first + run.nrPages)) {
      out.push({ vaddr: BigInt(part.first * PAGE_SIZE), nrPages: part.end - part.first, dirty: !part.covered });
    }
  }
  return out;
}

/** Areas split where one does not end exactly where the next begins (so no other mapping lies between). */
function adjacentStretches(vmas: readonly PageVma[]): PageVma[][] {
  const sorted = [...vmas].sort((a, b) => (a.start < b.start ? -1 : 1));
  const out: PageVma[][] = [];
  for (const v of sorted) {
    const last = out[out.length - 1];
    const prev = last?.[last.length - 1];
    if (last && prev && prev.end === v.start) last.push(v);
    else out.push([v]);
  }
  return out;
}

/**
 * Areas saved page for page whether their pages are present or not: the
 * vDSO. CRIU's restorer reads the dumped vDSO as an ELF image to find its
 * entry points (and builds a proxy when the running kernel's differs), so
 * its pages must be in the image even when the process never touched them.
 */
function savedWhole(a: MapArea): boolean {
  return a.inode === 0n && a.path === "[vdso]";
}

const byAddress = (x: PageRun, y: PageRun): number => (x.vaddr < y.vaddr ? -1 : x.vaddr > y.vaddr ? 1 : 0);

/**
 * Mark the parts of the runs that lie in `lazyAreas` (sorted, not
 * overlapping) as lazy, `where` their contents are; a run spanning
 * neighbouring areas is split at their bounds. An in-parent run's contents
 * are always here, in the parent round.
 */
function markLazy(runs: readonly PageRun[], lazyAreas: readonly LazyRange[], where: "here" | "source"): PageRun[] {
  if (lazyAreas.length === 0) return [...runs];
  const out: PageRun[] = [];
  const page = BigInt(PAGE_SIZE);
  // Runs come in address order: areas wholly below the current run are never looked at again.
  let first = 0;
  for (const run of runs) {
    const lazy = run.dirty === false ? "here" : where;
    let at = run.vaddr;
    const end = run.vaddr + BigInt(run.nrPages) * page;
    const piece = (from: bigint, to: bigint, inside: boolean): void => {
      if (to > from) out.push({ ...run, vaddr: from, nrPages: Number((to - from) / page), ...(inside ? { lazy } : {}) });
    };
    while (first < lazyAreas.length && lazyAreas[first]!.end <= at) first++;
    for (let i = first; i < lazyAreas.length; i++) {
      const a = lazyAreas[i]!;
      if (a.end <= at) continue;
      if (a.start >= end) break;
      piece(at, a.start > at ? a.start : at, false);
      const stop = a.end < end ? a.end : end;
      piece(a.start > at ? a.start : at, stop, true);
      at = stop;
    }
    piece(at, end, false);
  }
  return out;
}

/** Part of an area whose pages a lazy restore may leave to its daemon, [start, end). */
export interface LazyRange {
  start: bigint;
  end: bigint;
}

/**
 * Memory a lazy restore may fill on first touch: anonymous private areas (as
 * CRIU's vma_entry_can_be_lazy), not the vDSO's and not locked ones (mlock'd
 * memory must be there before the tree runs), less the pages in `eager`
 * (what the tree touches before it can wait for a fault: its stacks' top
 * pages, as CRIU keeps them, and the rseq areas the kernel writes).
 */
export function lazyRanges(areas: readonly MapArea[], eager: readonly LazyRange[]): LazyRange[] {
  let out: LazyRange[] = areas.filter(isLazyArea).map((a) => ({ start: a.start, end: a.end }));
  for (const h of eager) {
    out = out.flatMap((a) => {
      if (h.end <= a.start || h.start >= a.end) return [a];
      return [...(a.start < h.start ? [{ start: a.start, end: h.start }] : []), ...(h.end < a.end ? [{ start: h.end, end: a.end }] : [])];
    });
  }
  return out;
}

function isLazyArea(a: MapArea): boolean {
  return a.inode === 0n && !a.shared && !a.path.startsWith("[v") && !(a.vmFlags ?? []).includes("lo");
}

/** The lazy ranges of a process's areas to mark, and where their contents are kept (see PageRun.lazy). */
export interface LazyMarking {
  ranges: readonly LazyRange[];
  where: "here" | "source";
}

/**
 * Find the pages of a frozen process to save. `lazy`: the runs to mark
 * PE_LAZY, and whether a lazy dump leaves them at the source (not saved).
 * `findWritten` (memory protected ahead of the freeze, no dirty tracking):
 * the scan also tells which saved pages have no write-protection, for the
 * snapshot to protect again (protect-ahead.ts).
 */
export function planProcessPages(
  pid: number, areas: readonly MapArea[], choice: PageScanChoice, proc: ProcFs, counters: PageCounters, tracking: ProcessTracking | null,
  lazy: LazyMarking | null = null, findWritten = false,
): PagePlan {
  const t = performance.now();
  const method = methodOf(choice);
  const allVmas = areas.map(toVma);
  const vmas = areas.filter((a) => !savedWhole(a)).map(toVma);
  const wholeRuns: PageRun[] = areas.filter(savedWhole).map((a) => ({
    vaddr: a.start, nrPages: Number((a.end - a.start) / BigInt(PAGE_SIZE)), ...(tracking ? { dirty: true } : {}),
  }));
  let runs: PageRun[];
  let pagesScanned: number;
  let written: PageRun[] = [];
  if (!tracking) {
    const scan = scanPages(pid, vmas, { method, proc, counters, ...(findWritten ? { dirty: { category: "written", protect: false } } : {}) });
    runs = scan.runs;
    if (findWritten) {
      // "Written" here only steers the protection: every run is saved.
      written = runs.filter((r) => r.dirty);
      runs = runs.map(({ dirty: _, ...r }) => r);
    }
    pagesScanned = scan.pagesScanned;
  } else {
    const tracked = vmas.filter((v) => tracking.tracked.has(v.start));
    const whole = vmas.filter((v) => !tracking.tracked.has(v.start));
    // Protecting acts on every write-protect-async area in the scanned span,
    // whoever registered it (the process itself, an older chain's tracker):
    // so a protecting scan covers only stretches of our areas with nothing
    // between them. A plain scan may span anything.
    const groups = tracking.dirty.protect ? adjacentStretches(tracked) : [tracked];
    const scans = groups.map((g) => scanPages(pid, g, { method, proc, counters, dirty: tracking.dirty }));
    const b = scanPages(pid, whole, { method, proc, counters });
    runs = checkAgainstParent([...scans.flatMap((a) => a.runs), ...b.runs.map((r) => ({ ...r, dirty: true }))], tracking.parent);
    runs.sort(byAddress);
    pagesScanned = scans.reduce((s, a) => s + a.pagesScanned, 0) + b.pagesScanned;
  }
  if (wholeRuns.length > 0) {
    runs = [...runs, ...wholeRuns].sort(byAddress);
    pagesScanned += wholeRuns.reduce((s, r) => s + r.nrPages, 0);
  }
  if (lazy) runs = markLazy(runs, [...lazy.ranges].sort((a, b) => (a.start < b.start ? -1 : 1)), lazy.where);
  const toWrite = runs.filter((r) => r.dirty !== false && r.lazy !== "source");
  const atSource = runs.filter((r) => r.lazy === "source");
  const pagesToWrite = toWrite.reduce((s, r) => s + r.nrPages, 0);
  const pagesInParent = runs.filter((r) => r.dirty === false).reduce((s, r) => s + r.nrPages, 0);
  const scanMs = performance.now() - t;
  return {
    lazy: atSource, pagesScanned, pagesToWrite, pagesInParent, scanMs,
    beginSnapshot(snapCounters, ahead = null) {
      const c = performance.now();
      ahead?.noteWritten(written);
      const snapshot = ProcessSnapshot.begin(proc, pid, allVmas, toWrite, snapCounters, ahead);
      return {
        snapshot,
        pages: {
          entries: pagemapEntries(runs), lazy: atSource,
          pagesScanned, pagesWritten: pagesToWrite, pagesInParent,
          ms: scanMs + performance.now() - c,
          writeTo(sink) {
            writePages(sink, snapshot.data);
            return snapshot.data.byteLength;
          },
          dispose() {
            snapshot.dispose();
          },
        },
      };
    },
    copy(running) {
      const c = performance.now();
      const data = copyPages(pid, allVmas, toWrite, { proc, counters, running });
      return {
        entries: pagemapEntries(runs), lazy: atSource,
        pagesScanned, pagesWritten: pagesToWrite, pagesInParent,
        ms: scanMs + performance.now() - c,
        writeTo(sink) {
          writePages(sink, data);
          return data.byteLength;
        },
        dispose() {
          data.dispose();
        },
      };
    },
  };
}

/** Scan and copy while the tree is frozen (the dump). */
export function copyProcessPages(pid: number, areas: readonly MapArea[], choice: PageScanChoice, proc: ProcFs, counters: PageCounters, tracking: ProcessTracking | null = null): PageCopy {
  return planProcessPages(pid, areas, choice, proc, counters, tracking).copy(false);
}

/** One process's pagemap and pages, wherever the store keeps them. */
export function saveProcessPages(store: PageStore, pid: number, pages: PageCopy): void {
  store.save({ kind: "task", id: pid }, pages.entries, (sink) => pages.writeTo(sink));
}
