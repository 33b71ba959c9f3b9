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
  /** A snapshot dump (dump -R): how its memory was copied (snapshot.ts). */
  snapshot?: SnapshotCounters;
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
