/**
 * Figures of one dump: CRIU's stats-dump image (times in microseconds, page
 * counts), plus syscall counts that the JSON summary and the bench print.
 */
import { create } from "@bufbuild/protobuf";
import { DumpStatsEntrySchema, StatsEntrySchema, type StatsEntry } from "../image/gen/stats_pb";

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
      pagesSkippedParent: 0n,
      pagesWritten: BigInt(f.pagesWritten),
      pagesLazy: 0n,
    }),
  });
}
