/**
 * Where each saved page of a process is, across the rounds of an iterative
 * dump. A pagemap entry flagged PE_PRESENT has its contents in the round's
 * own pages file; one flagged PE_PARENT (or the old in_parent) was unchanged
 * since the previous round, and its contents are wherever that round has
 * them — in its pages file, or again in its parent. Rounds are linked by the
 * `parent` symlink each iterative dump leaves in its directory.
 */
import type { PagemapEntry } from "./gen/pagemap_pb";
import { entryInParent, entryLazy, entryLazyable, entryPageCount, entryPresent, splitPagemap } from "./pagemap";
import { isAbsolute, join } from "node:path";
import { close, openat, preadFull, readlinkat } from "../sys/libc";
import { AT, O, PAGE_SIZE } from "../sys/nr";
import { ImageSet } from "./image-set";

/** More rounds than any migration makes; a deeper chain is a symlink loop. */
const MAX_ROUNDS = 256;

/** One round's pagemap of the process, each present entry with its byte offset in the round's pages file. */
export interface Round {
  dir: string;
  pagesPath: string;
  entries: PagemapEntry[];
  /** Byte offset in the pages file of entries[i] when it is present; -1 otherwise. */
  offsets: number[];
  /** Bytes the pagemap says the pages file holds. */
  bytes: number;
}

/** A stretch of memory to fill: `length` bytes at `remote`, found at `offset` in round `round`'s pages file. */
export interface PagePiece {
  remote: bigint;
  round: number;
  offset: number;
  length: number;
}

function loadRound(images: ImageSet, pid: number): Round {
  const name = `pagemap-${pid}.img`;
  const { head, entries } = splitPagemap(images.raw(name), images.path(name));
  const offsets: number[] = [];
  let bytes = 0;
  for (const e of entries) {
    const present = entryPresent(e);
    offsets.push(present ? bytes : -1);
    if (present) bytes += entryPageCount(e) * PAGE_SIZE;
  }
  return { dir: images.dir, pagesPath: images.path(`pages-${head.pagesId}.img`), entries, offsets, bytes };
}

export class PageChain {
  private readonly rounds: Round[];

  private constructor(private readonly pid: number, top: Round) {
    this.rounds = [top];
  }

  /**
   * The process's pages in image set `images` and its parents. Every
   * in-parent run is followed down the chain here, before a restore creates
   * anything: a missing or incomplete parent fails it early.
   */
  static open(images: ImageSet, pid: number, lazyRestore = false): PageChain {
    const chain = new PageChain(pid, loadRound(images, pid));
    chain.pieces = chain.resolveAll(lazyRestore);
    return chain;
  }

  /** Every piece to fill, in the top round's order. */
  pieces: PagePiece[] = [];

  /**
   * Runs not filled here, left to the lazy-pages daemon to place on first
   * touch: a lazy dump's (PE_LAZY alone, kept at the source), and for a lazy
   * restore every run flagged PE_LAZY, whose contents the daemon reads from
   * these images.
   */
  lazy: { start: bigint; end: bigint }[] = [];

  get lazyPages(): number {
    return this.lazy.reduce((s, r) => s + Number((r.end - r.start) / BigInt(PAGE_SIZE)), 0);
  }

  /** Open pages files of the rounds, by depth, for read(). */
  private readonly files: number[] = [];

  /**
   * Read the saved contents at address `from` into `into`: as much as
   * fits, up to the end of the piece holding `from` (pieces are in address
   * order). Returns the bytes read, 0 when no saved page is at `from`.
   */
  read(from: bigint, into: Uint8Array): number {
    const pieces = this.pieces;
    let lo = 0;
    let hi = pieces.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const p = pieces[mid]!;
      if (p.remote + BigInt(p.length) <= from) lo = mid + 1;
      else hi = mid;
    }
    const piece = pieces[lo];
    if (!piece || piece.remote > from) return 0;
    const skip = Number(from - piece.remote);
    const want = Math.min(into.length, piece.length - skip);
    const round = this.rounds[piece.round]!;
    const fd = (this.files[piece.round] ??= openat(AT.FDCWD, round.pagesPath, O.RDONLY | O.CLOEXEC));
    const got = preadFull(fd, into.subarray(0, want), BigInt(piece.offset + skip));
    if (got !== want) throw new Error(`${round.pagesPath} ended at ${piece.offset + skip + got} bytes while its pagemap needs ${round.bytes}`);
    return want;
  }

  /** Close the files read() opened. */
  close(): void {
    for (const fd of this.files.splice(0)) if (fd !== undefined) close(fd);
  }

  /** Rounds loaded so far, the image set's own first. */
  get loaded(): readonly Round[] {
    return this.rounds;
  }

  private round(i: number): Round {
    const have = this.rounds[i];
    if (have) return have;
    if (i >= MAX_ROUNDS) throw new Error(`${this.rounds[0]!.dir}: more than ${MAX_ROUNDS} parent links (a loop of parent symlinks?)`);
    const below = this.round(i - 1);
    // Follow one link at a time: a path of many parent/parent/... would hit the kernel's 40-link limit.
    let dir = `${below.dir}/parent`;
    try {
      const target = readlinkat(AT.FDCWD, dir);
      dir = isAbsolute(target) ? target : join(below.dir, target);
    } catch {
      // Not a link (or missing): ImageSet.open below says what is there.
    }
    let images: ImageSet;
    try {
      images = ImageSet.openPages(dir);
      images.verifyDigests();
    } catch (e) {
      throw new Error(`${below.dir} has pages in its parent image set, which cannot be read: ${(e as Error).message}`, { cause: e });
    }
    if (!images.has(`pagemap-${this.pid}.img`)) throw new Error(`${below.dir} has pages of process ${this.pid} in its parent ${dir}, which has no pagemap for it`);
    const r = loadRound(images, this.pid);
    this.rounds[i] = r;
    return r;
  }

  private resolveAll(lazyRestore: boolean): PagePiece[] {
    const out: PagePiece[] = [];
    const top = this.rounds[0]!;
    top.entries.forEach((e, i) => {
      const length = entryPageCount(e) * PAGE_SIZE;
      if (length === 0) return;
      const offset = top.offsets[i]!;
      if (lazyRestore && entryLazyable(e)) {
        // Not filled, but followed down the chain all the same: a missing parent fails the restore now, not the daemon once the tree runs.
        if (entryInParent(e)) this.resolve(1, e.vaddr, e.vaddr + BigInt(length), []);
        this.lazy.push({ start: e.vaddr, end: e.vaddr + BigInt(length) });
      } else if (offset >= 0) out.push({ remote: e.vaddr, round: 0, offset, length });
      else if (entryInParent(e)) this.resolve(1, e.vaddr, e.vaddr + BigInt(length), out);
      else if (entryLazy(e)) this.lazy.push({ start: e.vaddr, end: e.vaddr + BigInt(length) });
      else throw new Error(`${top.dir}: pagemap of process ${this.pid} has pages at 0x${e.vaddr.toString(16)} that are neither present, nor in the parent, nor lazy (flags ${e.flags})`);
    });
    return out;
  }

  /** Pieces for [from, to) from round `i` down. */
  private resolve(i: number, from: bigint, to: bigint, out: PagePiece[]): void {
    const r = this.round(i);
    // The entries are in address order; find the first that ends after `from`.
    let lo = 0;
    let hi = r.entries.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const e = r.entries[mid]!;
      if (e.vaddr + BigInt(entryPageCount(e) * PAGE_SIZE) <= from) lo = mid + 1;
      else hi = mid;
    }
    let at = from;
    for (let k = lo; k < r.entries.length && at < to; k++) {
      const e = r.entries[k]!;
      const end = e.vaddr + BigInt(entryPageCount(e) * PAGE_SIZE);
      if (e.vaddr > at) break;
      const stop = end < to ? end : to;
      const offset = r.offsets[k]!;
      if (offset >= 0) out.push({ remote: at, round: i, offset: offset + Number(at - e.vaddr), length: Number(stop - at) });
      else if (entryInParent(e)) this.resolve(i + 1, at, stop, out);
      else break;
      at = stop;
    }
    if (at < to) throw new Error(`process ${this.pid}: pages 0x${at.toString(16)}-0x${to.toString(16)} are recorded as in the parent, but ${r.dir} does not hold them`);
  }
}
