/**
 * `ckpt pre-dump`: save a tree's memory with the shortest freeze, as the
 * first rounds of an iterative migration, and leave it running.
 *
 * While frozen, only what must be exact at one instant: per process, the
 * areas, (re-)arming dirty tracking and the page scan — which under
 * userfaultfd tracking write-protects every page it reports, in the same
 * walk. Then the tree runs again, and the pages are copied out of the
 * running processes: a page written after the scan may be copied half old,
 * half new, but the write is tracked, so the next round saves it again.
 *
 * With the tree running, the pre-dump also resolves the path of every inode
 * the tree watches with inotify/fanotify and writes them as `irmap-cache`
 * (seed 002): the dump that follows then only revalidates them, which costs
 * next to nothing, instead of searching the filesystem while the tree is
 * frozen.
 *
 * Last, the tracker that keeps the tracking alive until the next round is
 * started and recorded (dirty-tracking.json), then stats-dump and the
 * inventory (marked as a pre-dump, which restore refuses: the set holds
 * memory only).
 */
import { ImageEncoder } from "../image/encode";
import { PstreeEntrySchema } from "../image/gen/pstree_pb";
import { kind } from "../image/magic";
import { readSmaps } from "../proc/maps";
import { ProcFs } from "../proc/procfs";
import { readStat } from "../proc/stat";
import { callCountsSince, snapshotCallCounts } from "../sys/libc";
import { explainProcessError, release } from "./dump";
import { collectBeforeFreeze, Freezer, type FrozenProcess } from "./task/freeze";
import { learnBorrowedCode } from "./task/inject";
import { ImageDirWriter } from "../image/image-dir";
import { InterruptGuard } from "./interrupt";
import { inventoryEntry, uptimeMicros } from "./inventory";
import { Irmap, resolveTreeWatches, type IrmapCounters } from "./files/irmap";
import { savesPages } from "./memory/mm";
import { planProcessPages, saveProcessPages, type PagePlan, type PageScanChoice } from "./memory/page-dump";
import { openPageStore } from "../transfer/page-client";
import type { Endpoint } from "../transfer/connection";
import { newPageCounters } from "./memory/pages";
import { ParentImages } from "./memory/parent";
import { pstreeEntries } from "./pstree";
import { commitRound } from "./commit";
import type { DumpFigures, RoundResult } from "./stats";
import { chooseTracking } from "./tracking/method";
import { encodeTrackingRecord, TRACKING_FILE } from "./tracking/record";
import { checkTrackTimeout } from "./tracking/tracker";
import { RoundTracking } from "./tracking/round";

/** CRIU's inventory pre_dump_mode for a pre-dump that reads memory while the tasks run (PRE_DUMP_READ). */
export const PRE_DUMP_MODE_READ = 2;
/** How long an unclaimed tracker keeps tracking alive by default. */
export const DEFAULT_TRACK_TIMEOUT_SECONDS = 600;

export interface PreDumpOptions {
  pid: number;
  dir: string;
  /** The previous pre-dump, relative to `dir` unless absolute. */
  prevImagesDir?: string;
  pageScan?: PageScanChoice;
  irmapScanPaths?: string[];
  /** Seconds the tracker keeps tracking alive when no later round claims it. */
  trackTimeoutSeconds?: number;
  /** Send the pages to this page server (--page-server) instead of writing them here. */
  pageServer?: Endpoint;
  /** As DumpOptions.beforeFreeze: work run before the freeze, once the page server is connected. */
  beforeFreeze?: () => Promise<unknown>;
}

export interface PreDumpResult extends RoundResult {
  /** The watched inodes resolved while the tree ran (inodes; failures are left for the dump to report), and how. */
  irmap: IrmapCounters & { inodes: number; ms: number };
}

interface Planned {
  process: FrozenProcess;
  startTime: bigint;
  plan: PagePlan;
}

export async function preDump(opts: PreDumpOptions): Promise<PreDumpResult> {
  let started = performance.now();
  let calls0 = snapshotCallCounts();
  const timeout = opts.trackTimeoutSeconds ?? DEFAULT_TRACK_TIMEOUT_SECONDS;
  checkTrackTimeout(timeout);
  // Checked before anything is frozen or any tracker ended: write-protecting needs the ioctl.
  if (chooseTracking().method === "uffd-wp" && opts.pageScan === "pagemap") {
    throw new Error("--page-scan pagemap cannot arm userfaultfd write-protect tracking (that needs the PAGEMAP_SCAN ioctl); use auto or ioctl");
  }
  const out = ImageDirWriter.open(opts.dir);
  let pages: ReturnType<typeof openPageStore>;
  try {
    pages = openPageStore(out, opts.pageServer);
  } catch (e) {
    out.discard();
    out.close();
    throw e;
  }
  const { store, client: server } = pages;
  if (opts.beforeFreeze) {
    try {
      await opts.beforeFreeze();
    } catch (e) {
      store.close();
      out.discard();
      out.close();
      throw e;
    }
    // Its time and calls are not this pre-dump's.
    started = performance.now();
    calls0 = snapshotCallCounts();
  }
  const proc = new ProcFs();
  const freezer = new Freezer(proc);
  const guard = new InterruptGuard();
  const counters = newPageCounters();
  let tracking: RoundTracking | null = null;
  let released = false;
  try {
    const parent = opts.prevImagesDir === undefined ? null : ParentImages.open(out, opts.prevImagesDir, opts.pageServer !== undefined ? "remote" : "local");
    learnBorrowedCode(proc, opts.pid);
    const gcMs = collectBeforeFreeze();
    const tree = freezer.freeze(opts.pid);
    const frozenAt = performance.now();
    const frozenUptime = uptimeMicros(proc);
    tracking = RoundTracking.begin(proc, "pre-dump", parent, opts.pid);
    const planned: Planned[] = [];
    for (const p of tree) {
      // A zombie has no memory left to save.
      if (p.zombie) continue;
      try {
        const startTime = readStat(proc, p.pid).startTime;
        const areas = readSmaps(proc, p.pid, false).filter(savesPages);
        const plan = planProcessPages(p.pid, areas, opts.pageScan ?? "auto", proc, counters, tracking.forProcess(p.pid, startTime, areas));
        tracking.afterScan(p.pid);
        planned.push({ process: p, startTime, plan });
      } catch (e) {
        throw explainProcessError(p.pid, e);
      }
      await guard.checkpoint();
    }
    release(freezer, "resume");
    released = true;
    const frozenMs = performance.now() - frozenAt;

    // The tree runs again from here on.
    let memdumpMs = planned.reduce((s, x) => s + x.plan.scanMs, 0);
    let memwriteMs = 0;
    for (const x of planned) {
      const copy = x.plan.copy(true);
      try {
        memdumpMs += copy.ms - x.plan.scanMs;
        const t = performance.now();
        saveProcessPages(store, x.process.pid, copy);
        memwriteMs += performance.now() - t;
      } finally {
        copy.dispose();
      }
      await guard.checkpoint();
    }

    const irmap = new Irmap({ scanPaths: opts.irmapScanPaths, cacheDirs: [opts.dir, `${opts.dir}/parent`], proc });
    const inodes = resolveTreeWatches(proc, tree.filter((p) => !p.zombie).map((p) => p.pid), irmap);
    out.writeImage("irmap-cache", irmap.cacheImage());

    const pstree = new ImageEncoder(kind("PSTREE"));
    for (const e of pstreeEntries(tree)) pstree.add(PstreeEntrySchema, e);
    out.writeImage("pstree.img", pstree);

    store.finish();
    const record = await tracking.arm(opts.pid, planned.map((x) => ({ pid: x.process.pid, startTime: x.startTime })), timeout);
    out.write(TRACKING_FILE, encodeTrackingRecord(record));

    const figures: DumpFigures = {
      freezingMs: freezer.freezingMs, frozenMs, memdumpMs, memwriteMs,
      totalMs: performance.now() - started,
      pagesScanned: planned.reduce((s, x) => s + x.plan.pagesScanned, 0),
      pagesWritten: planned.reduce((s, x) => s + x.plan.pagesToWrite, 0),
      pagesInParent: planned.reduce((s, x) => s + x.plan.pagesInParent, 0),
      irmapMs: irmap.ms,
      gcMs,
    };
    const inv = inventoryEntry(crypto.randomUUID(), frozenUptime);
    inv.preDumpMode = PRE_DUMP_MODE_READ;
    // The tracker holds the userfaultfds now; ckpt's copies go.
    commitRound(out, figures, inv, tracking);
    figures.totalMs = performance.now() - started;
    return {
      dir: opts.dir, pid: opts.pid, processes: tree.length,
      threads: tree.reduce((s, p) => s + p.threads.length, 0),
      figures, syscalls: callCountsSince(calls0), proc: { ...proc.counters }, pages: counters,
      tracking: tracking.summary,
      irmap: { ...irmap.counters, inodes, ms: irmap.ms },
      bytesWritten: out.bytes,
      ...(server ? { pageServer: { peer: server.peer, ...server.counters } } : {}),
    };
  } catch (e) {
    tracking?.abort();
    if (!released) release(freezer, "resume");
    out.discard();
    throw e;
  } finally {
    guard.dispose();
    store.close();
    out.close();
    proc.close();
  }
}
