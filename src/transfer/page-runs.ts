/**
 * Runs of pages sorted by address, each page with a one-byte mark: what a
 * lazy migration has done with it (served by the source; still to fetch at
 * the destination). Both ends look pages up by address, per fault.
 */
import { PAGE_SIZE } from "../sys/nr";

const PAGE = BigInt(PAGE_SIZE);

export class PageRuns {
  private constructor(
    readonly starts: bigint[],
    readonly ends: bigint[],
    readonly marks: Uint8Array[],
    /** Pages whose mark is 1. */
    public marked: number,
  ) {}

  /** `runs` ([start, end) byte ranges, not overlapping), every page marked `mark`. */
  static of(runs: readonly { start: bigint; end: bigint }[], mark: 0 | 1): PageRuns {
    const sorted = [...runs].sort((a, b) => (a.start < b.start ? -1 : 1));
    const marks = sorted.map((r) => new Uint8Array(Number((r.end - r.start) / PAGE)).fill(mark));
    return new PageRuns(sorted.map((r) => r.start), sorted.map((r) => r.end), marks, mark ? marks.reduce((s, m) => s + m.length, 0) : 0);
  }

  clone(): PageRuns {
    return new PageRuns(this.starts, this.ends, this.marks.map((m) => m.slice()), this.marked);
  }

  get pages(): number {
    return this.marks.reduce((s, m) => s + m.length, 0);
  }

  /** The run holding `addr`, or -1. */
  find(addr: bigint): number {
    let lo = 0;
    let hi = this.starts.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.ends[mid]! <= addr) lo = mid + 1;
      else hi = mid;
    }
    return lo < this.starts.length && this.starts[lo]! <= addr ? lo : -1;
  }

  /** The mark of the page at `addr`; -1 outside every run. */
  markAt(addr: bigint): number {
    const run = this.find(addr);
    return run < 0 ? -1 : this.marks[run]![Number((addr - this.starts[run]!) / PAGE)]!;
  }

  /** Consecutive pages from `addr` on, in its run and up to `max`, marked `mark`. */
  span(addr: bigint, max: number, mark: 0 | 1): number {
    const run = this.find(addr);
    if (run < 0) return 0;
    const m = this.marks[run]!;
    let i = Number((addr - this.starts[run]!) / PAGE);
    let n = 0;
    while (i < m.length && m[i] === mark && n < max) {
      i++;
      n++;
    }
    return n;
  }

  /** Mark every page of [addr, addr + pages) that lies in a run `mark`. */
  mark(addr: bigint, pages: number, mark: 0 | 1): void {
    const end = addr + BigInt(pages) * PAGE;
    for (let run = Math.max(0, this.find(addr)); run < this.starts.length && this.starts[run]! < end; run++) {
      const m = this.marks[run]!;
      const from = addr > this.starts[run]! ? Number((addr - this.starts[run]!) / PAGE) : 0;
      const to = Math.min(m.length, Number((end - this.starts[run]!) / PAGE));
      for (let i = from; i < to; i++) {
        if (m[i] !== mark) {
          m[i] = mark;
          this.marked += mark ? 1 : -1;
        }
      }
    }
  }

  /** The first page marked 1 at or after the cursor (which it moves there); null when none. */
  nextMarked(cursor: { run: number; page: number }): bigint | null {
    while (cursor.run < this.starts.length) {
      const m = this.marks[cursor.run]!;
      while (cursor.page < m.length) {
        if (m[cursor.page] === 1) return this.starts[cursor.run]! + BigInt(cursor.page) * PAGE;
        cursor.page++;
      }
      cursor.run++;
      cursor.page = 0;
    }
    return null;
  }
}
