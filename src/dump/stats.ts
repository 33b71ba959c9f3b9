/**
 * Figures of one dump: CRIU's stats-dump image (times in microseconds, page
 * counts), plus syscall counts that the JSON summary and the bench print.
 */
import { create } from "@bufbuild/protobuf";
import { DumpStatsEntrySchema, StatsEntrySchema, type StatsEntry } from "../image/gen/stats_pb";
import type { ProcCounters } from "../proc/procfs";
import type { PageCounters } from "./memory/pages";
import type { TrackingSummary } from "./tracking/round";
import type { SnapshotCounters } from "./memory/snapshot";
import type { PageServerCounters } from "../transfer/page-client";

export interface DumpFigures {
  /** From the first PTRACE_SEIZE until every thread stopped. */
  freezingMs: number;
  /** From every thread stopped until the tree was let go (resumed or killed). */
  frozenMs: number;
  /** Finding and copying pages (while frozen). */
  memdumpMs: number;
  /** Writing pages files. */
  memwriteMs: number;
  /** The whole dump, as the caller saw it. */
  totalMs: number;
  pagesScanned: number;
  pagesWritten: number;
  /** Pages recorded as in the parent image set, not written again. */
  pagesInParent: number;
  /** A lazy dump: pages left for the destination to fetch (PE_LAZY). */
  pagesLazy?: number;
  /** When every thread was stopped, in ms since the Unix epoch (for downtime across processes: migration benches). */
  frozenSinceEpochMs?: number;
  /** Pages of shared memory objects: their extents, and the pages saved. */
  shpagesScanned?: number;
  shpagesWritten?: number;
  /** Finding paths for watched inodes (the irmap), when the dump had any. */
  irmapMs?: number;
  /** ckpt's own garbage collected just before the freeze (collectBeforeFreeze), ms; the tree still runs then. */
  gcMs?: number;
  /** A snapshot dump (dump -R): how its memory was copied (snapshot.ts). */
  snapshot?: SnapshotCounters;
  /** Where the frozen time went, summed over the tree's processes (FrozenPhases). */
  frozenPhases?: FrozenPhases;
}

/**
 * The frozen window split by what the tree waits on, in ms: which part of a
 * slow freeze to look at. What is not listed (freezing the tree is not in
 * the window; the inventory, ids, shared memory and writing) is `frozenMs`
 * less their sum.
 */
export interface FrozenPhases {
  /** What each task is read for besides the rest below: /proc (stat, status, timers), its files (exe, cwd, root, every fd), the thread cores. */
  tasks: number;
  /** smaps (the kernel walks every page table to count it) and the areas made of it. */
  areas: number;
  /** Registers, and every injected system call (signal actions, itimers, alternate stacks ...). */
  injected: number;
  /** Finding the pages to save (pagemap or PAGEMAP_SCAN). */
  pageScan: number;
  /** The pages themselves: copied while frozen, or write-protected for a snapshot. */
  pages: number;
}

/** A FrozenPhases of zeros, to add to. */
export function newFrozenPhases(): FrozenPhases {
  return { tasks: 0, areas: 0, injected: 0, pageScan: 0, pages: 0 };
}

/** Run `fn`, adding the time it takes to `phases[phase]`. */
export function timePhase<T>(phases: FrozenPhases, phase: keyof FrozenPhases, fn: () => T): T {
  const t = performance.now();
  try {
    return fn();
  } finally {
    phases[phase] += performance.now() - t;
  }
}

/** What `dump` and `pre-dump` both report (their JSON summaries). */
export interface RoundResult {
  dir: string;
  pid: number;
  processes: number;
  threads: number;
  figures: DumpFigures;
  /** Syscalls made through the libc layer during the round, by name. */
  syscalls: Record<string, number>;
  proc: ProcCounters;
  pages: PageCounters;
  /** Iterative dumps: what came of the parent round's dirty tracking, and what this round armed. */
  tracking: TrackingSummary;
  bytesWritten: number;
  /** With --page-server: where the pages went, and how much. */
  pageServer?: PageServerCounters & { peer: string };
}

const micros = (ms: number): number => Math.round(ms * 1000);

export function statsEntry(f: DumpFigures): StatsEntry {
  return create(StatsEntrySchema, {
    dump: create(DumpStatsEntrySchema, {
      freezingTime: micros(f.freezingMs),
      frozenTime: micros(f.frozenMs),
      memdumpTime: micros(f.memdumpMs),
      memwriteTime: micros(f.memwriteMs),
      pagesScanned: BigInt(f.pagesScanned),
      pagesSkippedParent: BigInt(f.pagesInParent),
      pagesWritten: BigInt(f.pagesWritten),
      pagesLazy: BigInt(f.pagesLazy ?? 0),
      ...(f.shpagesScanned !== undefined ? { shpagesScanned: BigInt(f.shpagesScanned), shpagesWritten: BigInt(f.shpagesWritten ?? 0) } : {}),
      ...(f.irmapMs !== undefined ? { irmapResolve: micros(f.irmapMs) } : {}),
      ...(f.snapshot && f.snapshot.processes > 0
        ? {
            ckptSnapshotCopyTime: micros(f.snapshot.copyMs),
            ckptSnapshotPagesFrozen: BigInt(f.snapshot.pagesFrozen),
            ckptSnapshotPagesRunning: BigInt(f.snapshot.pagesRunning),
            ckptSnapshotPagesOnFault: BigInt(f.snapshot.pagesOnFault),
          }
        : {}),
    }),
  });
}
