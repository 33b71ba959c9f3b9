/**
 * The previous round of an iterative dump (--prev-images-dir). Like CRIU, the
 * path is taken relative to the new image directory unless it is absolute,
 * and it is linked there as `parent`: a restore follows that link for every
 * page recorded as in-parent, and a later round finds the round before.
 */
import { isAbsolute, join } from "node:path";
import type { PagemapEntry } from "../../image/gen/pagemap_pb";
import { entryInParent, entryPageCount, entryPresent, splitPagemap } from "../../image/pagemap";
import { InventoryEntrySchema } from "../../image/gen/inventory_pb";
import { ImageSet } from "../../image/image-set";
import { PAGE_SIZE } from "../../sys/nr";
import type { ImageDirWriter } from "../../image/image-dir";
import { readTrackingRecord, type TrackingRecord } from "../tracking/record";

/** Kernel clock ticks per second in /proc/PID/stat (USER_HZ, fixed at 100 in the x86_64 ABI). */
const USER_HZ = 100n;

/** The pages a pagemap image holds (saved or themselves in-parent), as sorted page-number intervals. */
export class PageCoverage {
  private readonly starts: number[] = [];
  private readonly ends: number[] = [];

  constructor(entries: readonly PagemapEntry[]) {
    const spans: [number, number][] = [];
    for (const e of entries) {
      if (!entryPresent(e) && !entryInParent(e)) continue;
      const first = Number(e.vaddr / BigInt(PAGE_SIZE));
      spans.push([first, first + entryPageCount(e)]);
    }
    spans.sort((a, b) => a[0] - b[0]);
    for (const [s, e] of spans) {
      const last = this.ends.length - 1;
      if (last >= 0 && s <= this.ends[last]!) this.ends[last] = Math.max(this.ends[last]!, e);
      else {
        this.starts.push(s);
        this.ends.push(e);
      }
    }
  }

  /** Split [first, end) (pages) into the parts the parent holds and the parts it does not, in order. */
  split(first: number, end: number): { first: number; end: number; covered: boolean }[] {
    const out: { first: number; end: number; covered: boolean }[] = [];
    // First interval that ends after `first`.
    let lo = 0;
    let hi = this.starts.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.ends[mid]! <= first) lo = mid + 1;
      else hi = mid;
    }
    let at = first;
    for (let i = lo; i < this.starts.length && at < end; i++) {
      const s = Math.max(this.starts[i]!, at);
      if (s >= end) break;
      if (s > at) out.push({ first: at, end: s, covered: false });
      const e = Math.min(this.ends[i]!, end);
      out.push({ first: s, end: e, covered: true });
      at = e;
    }
    if (at < end) out.push({ first: at, end, covered: false });
    return out;
  }
}

export class ParentImages {
  private constructor(
    /** The parent set's directory, as ckpt reaches it. */
    readonly path: string,
    private readonly set: ImageSet,
    /** Host uptime (µs) when the parent round froze its tasks. */
    readonly dumpUptime: bigint,
    /** What the parent round armed for this one; null when it armed nothing. */
    readonly tracking: TrackingRecord | null,
  ) {}

  /** Open the previous round's set and link it as `parent` in the new directory. */
  static open(out: ImageDirWriter, prev: string): ParentImages {
    const path = isAbsolute(prev) ? prev : join(out.path, prev);
    let set: ImageSet;
    try {
      set = ImageSet.open(path);
    } catch (e) {
      throw new Error(`--prev-images-dir ${prev} (${path}): ${(e as Error).message}`, { cause: e });
    }
    const inv = set.one("inventory.img", InventoryEntrySchema);
    if (!inv.dumpUptime) throw new Error(`--prev-images-dir ${prev}: its inventory has no dump_uptime, so reused pids could not be told apart`);
    const tracking = readTrackingRecord(path);
    out.symlink("parent", prev);
    return new ParentImages(path, set, inv.dumpUptime, tracking);
  }

  /** A process that started after the parent round froze its tasks is not the one the parent saw: its pid was reused. */
  pidReused(startTimeTicks: bigint): boolean {
    return (startTimeTicks * 1_000_000n) / USER_HZ > this.dumpUptime;
  }

  /** The pages the parent holds for process `pid`; null when it saved no pagemap for it. */
  coverage(pid: number): PageCoverage | null {
    const name = `pagemap-${pid}.img`;
    if (!this.set.has(name)) return null;
    return new PageCoverage(splitPagemap(this.set.raw(name), this.set.path(name)).entries);
  }
}
