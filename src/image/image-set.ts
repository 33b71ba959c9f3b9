/**
 * Read side of an image directory (restore, and a dump reading its parent): typed entries by file name,
 * each image decoded once. An image set is complete only when inventory.img
 * is there (dump writes it last), so opening checks that first.
 */
import type { DescMessage, MessageShape } from "@bufbuild/protobuf";
import { readImageFile } from "./image-file";
import type { ImageEntry } from "./decode";
import { DirectoryWatch } from "../sys/dir-watch";
import { statOrNull } from "../sys/file";
import { digestOfFile } from "./digest";
import { InventoryEntrySchema } from "./gen/inventory_pb";
import { S_IF, S_IFMT } from "../sys/nr";

/** Image sets whose digests were checked in this run, by their inventory's device and inode. */
const verifiedSets = new Set<string>();
/** How long whenComplete waits for a file to land before the event loop gets a turn. */
const WATCH_SLICE_MS = 100;

/** An image the set should hold is missing, or holds the wrong kind or count of entries. */
export class ImageSetError extends Error {
  override readonly name = "ImageSetError";
}

export class ImageSet {
  private readonly cache = new Map<string, ImageEntry[]>();

  private constructor(readonly dir: string) {}

  /** Open a complete image set (one with inventory.img). */
  static open(dir: string): ImageSet {
    const set = ImageSet.openPages(dir);
    if (!set.has("inventory.img")) {
      throw new ImageSetError(`${dir} holds no inventory.img: not a complete image set (a dump that failed or is still running?)`);
    }
    return set;
  }

  /**
   * Wait up to `ms` (counted from `since`) for `dir` to hold a complete
   * image set whose files all match the inventory's digests — a set still
   * being copied in, say, with inventory.img not last — and open it. Until
   * then the directory may be missing, partial or mid-write; at the deadline
   * the error names the last thing that was wrong. The set is looked at
   * again each time a file lands in the directory (inotify: the moment the
   * set is whole is downtime, and a set being copied is not hashed over and
   * over meanwhile); every 2 ms while the directory does not exist.
   */
  static async whenComplete(dir: string, ms: number, since = performance.now()): Promise<ImageSet> {
    const deadline = since + ms;
    let problem = `${dir} holds no inventory.img yet`;
    // Before the first look, so that nothing that lands after it goes unseen.
    let watch = DirectoryWatch.open(dir);
    try {
      for (;;) {
        if (statOrNull(`${dir}/inventory.img`)) {
          try {
            const set = ImageSet.open(dir);
            set.verifyDigests();
            return set;
          } catch (e) {
            problem = e instanceof Error ? e.message : String(e);
          }
        }
        const left = deadline - performance.now();
        if (left <= 0) throw new ImageSetError(`no complete image set appeared in ${dir} within ${(ms / 1000).toFixed(ms % 1000 ? 1 : 0)} s (last: ${problem})`);
        if (watch) {
          // In slices, so that the event loop (a signal's handler) gets a turn now and then.
          watch.wait(Math.min(left, WATCH_SLICE_MS));
          await Bun.sleep(0);
        } else {
          await Bun.sleep(2);
          watch = DirectoryWatch.open(dir);
        }
      }
    } finally {
      watch?.close();
    }
  }

  /**
   * Open a directory for the pages of an earlier round only: a page server's
   * directory holds pagemaps and pages and no inventory (CRIU's restore
   * reads parents the same way). Its files appear only once its stream ended
   * cleanly (transfer/page-server.ts).
   */
  static openPages(dir: string): ImageSet {
    const st = statOrNull(dir);
    if (!st) throw new ImageSetError(`image directory ${dir} does not exist`);
    if ((st.mode & S_IFMT) !== S_IF.DIR) throw new ImageSetError(`${dir} is not a directory`);
    return new ImageSet(dir);
  }

  path(name: string): string {
    return `${this.dir}/${name}`;
  }

  has(name: string): boolean {
    return statOrNull(this.path(name)) !== null;
  }

  /** Raw entries (message + payload) of an image; [] when `optional` and the file is absent. */
  raw(name: string, optional = false): ImageEntry[] {
    let entries = this.cache.get(name);
    if (!entries) {
      if (!this.has(name)) {
        if (optional) return [];
        throw new ImageSetError(`${this.dir}: ${name} is missing from the image set`);
      }
      entries = readImageFile(this.path(name)).entries;
      this.cache.set(name, entries);
    }
    return entries;
  }

  /** Every entry of an image, checked to be of `schema`. */
  entries<D extends DescMessage>(name: string, schema: D, optional = false): MessageShape<D>[] {
    return this.raw(name, optional).map((e, i) => {
      if (e.message.$typeName !== schema.typeName) {
        throw new ImageSetError(`${this.path(name)}: entry ${i} is a ${e.message.$typeName}, expected ${schema.typeName}`);
      }
      return e.message as MessageShape<D>;
    });
  }

  /**
   * Check every file the inventory's digests list (ckpt's sets; CRIU's have
   * none) against its recorded size and digest; once per set and run.
   */
  verifyDigests(): void {
    const inv = statOrNull(this.path("inventory.img"));
    if (!inv) return;
    const key = `${inv?.dev}:${inv?.ino}`;
    if (verifiedSets.has(key)) return;
    for (const d of this.one("inventory.img", InventoryEntrySchema).ckptDigests) {
      if (d.name === "" || d.name.includes("/") || d.name === "inventory.img") throw new ImageSetError(`${this.path("inventory.img")}: a digest names ${JSON.stringify(d.name)}, not a file of the set`);
      if (!this.has(d.name)) throw new ImageSetError(`${this.path(d.name)} is missing: the dump wrote it (${d.size} bytes)`);
      const got = digestOfFile(this.path(d.name));
      if (BigInt(got.size) !== d.size || got.digest !== d.xxh64) {
        throw new ImageSetError(
          `${this.path(d.name)} is not the file the dump wrote (${got.size} bytes, digest ${got.digest.toString(16)}; the inventory records ${d.size} bytes, digest ${d.xxh64.toString(16)}): the image set is corrupt`,
        );
      }
    }
    verifiedSets.add(key);
  }

  /** The single entry of an image such as core-TID.img or mm-PID.img. */
  one<D extends DescMessage>(name: string, schema: D): MessageShape<D> {
    const all = this.entries(name, schema);
    const first = all[0];
    if (all.length !== 1 || !first) throw new ImageSetError(`${this.path(name)}: expected one entry, found ${all.length}`);
    return first;
  }
}
