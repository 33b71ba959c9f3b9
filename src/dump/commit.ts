/**
 * The last steps of a dump or a pre-dump, in the order that keeps a failed
 * round from looking complete: stats-dump, then inventory.img (which makes
 * the directory an image set, and records the size and digest of every
 * other file), then the end of this round's hold on dirty
 * tracking — best effort, since the images are complete by then.
 */
import { ImageEncoder } from "../image/encode";
import { InventoryEntrySchema, type InventoryEntry } from "../image/gen/inventory_pb";
import { StatsEntrySchema } from "../image/gen/stats_pb";
import { kind } from "../image/magic";
import type { ImageDirWriter } from "../image/image-dir";
import { statsEntry, type DumpFigures } from "./stats";
import type { RoundTracking } from "./tracking/round";

/**
 * `tracking`: ended here; null when the caller ends it later (endTracking),
 * as a dump that kills its tree does once the tree is killed.
 */
export function commitRound(out: ImageDirWriter, figures: DumpFigures, inventory: InventoryEntry, tracking: RoundTracking | null): void {
  out.writeImage("stats-dump", new ImageEncoder(kind("STATS")).add(StatsEntrySchema, statsEntry(figures)));
  inventory.ckptDigests = out.digests();
  out.commitInventory(new ImageEncoder(kind("INVENTORY")).add(InventoryEntrySchema, inventory));
  if (tracking) endTracking(tracking);
}

/** The end of a committed round's hold on dirty tracking; a problem is a warning. */
export function endTracking(tracking: RoundTracking): void {
  const warning = tracking.finish();
  if (warning) process.stderr.write(`ckpt: warning: ${warning}\n`);
}
