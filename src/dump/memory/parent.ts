/**
 * The previous round of an iterative dump (--prev-images-dir). Like CRIU, the
 * path is taken relative to the new image directory unless it is absolute,
 * and it is linked there as `parent`: a restore follows that link for every
 * page recorded as in-parent, and a later round finds the round before.
 */
import { isAbsolute, join } from "node:path";
import { PageCoverage, splitPagemap } from "../../image/pagemap";
import { InventoryEntrySchema } from "../../image/gen/inventory_pb";
import { ImageSet } from "../../image/image-set";
import type { ImageDirWriter } from "../../image/image-dir";
import { sentPagemapName } from "../../transfer/page-client";
import { readTrackingRecord, type TrackingRecord } from "../tracking/record";

/** Kernel clock ticks per second in /proc/PID/stat (USER_HZ, fixed at 100 in the x86_64 ABI). */
const USER_HZ = 100n;

/**
 * Where this round expects the pages it leaves in the parent: in the
 * parent's own set ("local"), at the page server the parent was sent to
 * ("remote", as the parent's record of what it sent says), or either (a
 * lazy dump, restored at the destination).
 */
export type ParentPages = "local" | "remote" | "either";

export class ParentImages {
  private constructor(
    /** The parent set's directory, as ckpt reaches it. */
    readonly path: string,
    private readonly set: ImageSet,
    /** Host uptime (µs) when the parent round froze its tasks. */
    readonly dumpUptime: bigint,
    /** What the parent round armed for this one; null when it armed nothing. */
    readonly tracking: TrackingRecord | null,
    /** Where the parent's pages are that this round may leave in it (see coverage). */
    private readonly pagesAt: ParentPages,
  ) {}

  /** Open the previous round's set and link it as `parent` in the new directory. */
  static open(out: ImageDirWriter, prev: string, pagesAt: ParentPages = "local"): ParentImages {
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
    return new ParentImages(path, set, inv.dumpUptime, tracking, pagesAt);
  }

  /** A process that started after the parent round froze its tasks is not the one the parent saw: its pid was reused. */
  pidReused(startTimeTicks: bigint): boolean {
    return (startTimeTicks * 1_000_000n) / USER_HZ > this.dumpUptime;
  }

  /**
   * The pages the parent holds for process `pid`; null when it saved no
   * pagemap for it. Rounds sent to a page server keep the record of what
   * they sent instead; a local round never leaves pages in a parent whose
   * pages are on another host, nor a remote round in a local parent. A lazy
   * round takes either: it is restored where its parents' pages are, the
   * page server's rounds or a copy of the local ones.
   */
  coverage(pid: number): PageCoverage | null {
    const names = { local: [`pagemap-${pid}.img`], remote: [sentPagemapName(pid)], either: [`pagemap-${pid}.img`, sentPagemapName(pid)] }[this.pagesAt];
    const name = names.find((n) => this.set.has(n));
    if (name === undefined) return null;
    return new PageCoverage(splitPagemap(this.set.raw(name), this.set.path(name)).entries);
  }
}
