/**
 * Snapshot dumps (dump -R): the tree is frozen only for the scan; its
 * private memory is copied while it runs again, and still comes out exactly
 * as it was at the freeze.
 *
 * While frozen, each process gets a userfaultfd (made inside it, as the
 * pre-dump tracker's are, but synchronous: a write to a protected page stops
 * the writing thread until ckpt answers) with every area holding pages to
 * save registered for write-protection, and those areas write-protected.
 * Areas the kernel will not protect this way (file-backed private mappings,
 * the vDSO, areas the process registered itself, MAP_DROPPABLE) are copied
 * then, as a plain dump does. Then the tree runs, and ckpt copies the rest a
 * slice at a time; between slices it answers the faults: a page not yet
 * copied is copied first (copy-before-write), then its protection is lifted,
 * which lets the write through. Each copied slice is unprotected as a whole.
 *
 * A process that unmaps, moves or drops (MADV_DONTNEED) memory ckpt has not
 * copied yet takes that memory's freeze-time contents with it: the kernel
 * reports it (UNMAP, REMAP, REMOVE events) only as it happens, so such a
 * dump fails, naming the process and the range, and the tree runs on.
 *
 * If ckpt dies, its userfaultfds close with it: the kernel drops every
 * registration and protection and wakes any waiting thread, whose write then
 * goes through — the tree runs on with its memory writable.
 */
import type { ProcFs } from "../../proc/procfs";
import { Errno, SysError } from "../../sys/errno";
import { close, ioctl, readInto } from "../../sys/libc";
import { PAGE_SIZE, UFFD_EVENT, UFFD_FEATURE, UFFD_MSG_SIZE, UFFDIO_WRITEPROTECT, UFFDIO_WRITEPROTECT_MODE_WP } from "../../sys/nr";
import { makeUffd, registerWp } from "../tracking/uffd";
import { PieceCopy, type PageData, type PageRun, type PageVma, type Piece } from "./pages";

/** Bytes copied between two looks at the faults: a writer waits at most about this long (~0.7 ms at 3 GB/s). */
const SLICE_BYTES = 2 * 1024 * 1024;
/**
 * A process with no more than this to save is copied while frozen (about
 * 2 ms): the short-lived children of shells and servers are small, and a
 * process that exits or execs before its copy ends takes its memory along.
 */
export const FROZEN_COPY_BYTES = 8 * 1024 * 1024;
/** An area with less than this to save is copied while frozen rather than protected. */
const PROTECT_MIN_BYTES = 256 * 1024;

const SYNC_WP = {
  // Events that take memory away: its freeze-time contents would go with it.
  features: UFFD_FEATURE.PAGEFAULT_FLAG_WP | UFFD_FEATURE.EVENT_REMOVE | UFFD_FEATURE.EVENT_UNMAP | UFFD_FEATURE.EVENT_REMAP,
  what: "PAGEFAULT_FLAG_WP|EVENT_REMOVE|EVENT_UNMAP|EVENT_REMAP",
  // Faults from the kernel (a read() into a protected buffer) must reach us
  // too: with UFFD_USER_MODE_ONLY they would fail the system call instead.
  userModeOnly: false,
};

/** What a snapshot dump did, for --json and stats-dump. */
export interface SnapshotCounters {
  /** Processes copied as snapshots (the others: nothing to protect). */
  processes: number;
  /** Pages copied while the tree was frozen (areas the kernel would not protect). */
  pagesFrozen: number;
  /** Pages copied while the tree ran. */
  pagesRunning: number;
  /** Of those, pages a thread was about to write, copied first by the fault handler. */
  pagesOnFault: number;
  /** Write faults answered, including ones on pages that needed no copy. */
  faults: number;
  /** Areas copied while frozen because the kernel would not protect them, by reason. */
  areasNotCovered: number;
  /** Time spent copying after the tree was let go, ms. */
  copyMs: number;
}

export function newSnapshotCounters(): SnapshotCounters {
  return { processes: 0, pagesFrozen: 0, pagesRunning: 0, pagesOnFault: 0, faults: 0, areasNotCovered: 0, copyMs: 0 };
}

const wpArg = new BigUint64Array(3);
const wpBytes = new Uint8Array(wpArg.buffer);

function writeProtect(uffd: number, start: number, length: number, protect: boolean): void {
  wpArg[0] = BigInt(start);
  wpArg[1] = BigInt(length);
  wpArg[2] = protect ? BigInt(UFFDIO_WRITEPROTECT_MODE_WP) : 0n;
  ioctl(uffd, UFFDIO_WRITEPROTECT, wpBytes, `UFFDIO_WRITEPROTECT(0x${start.toString(16)}+0x${length.toString(16)}, ${protect ? "WP" : "0"})`);
}

/**
 * The pieces of `pieces` (in address order, not overlapping, as planned)
 * that lie in [start, end), cut to it. A binary search finds the first: it
 * runs per area while frozen and per fault while a writer waits.
 */
function within(pieces: readonly Piece[], start: number, end: number): Piece[] {
  let lo = 0;
  let hi = pieces.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    const p = pieces[mid]!;
    if (p.remote + p.length <= start) lo = mid + 1;
    else hi = mid;
  }
  const out: Piece[] = [];
  for (let i = lo; i < pieces.length && pieces[i]!.remote < end; i++) {
    const p = pieces[i]!;
    const from = Math.max(p.remote, start);
    const to = Math.min(p.remote + p.length, end);
    if (from < to) out.push({ remote: from, offset: p.offset + (from - p.remote), length: to - from, readable: p.readable });
  }
  return out;
}

/**
 * One process's memory, being copied as a snapshot. Made while the tree is
 * frozen (begin), finished after it runs again (the SnapshotSet drives it).
 */
export class ProcessSnapshot {
  /** Copied pages, by index into the buffer (offset / PAGE_SIZE). */
  private readonly copied: Uint8Array;
  /** Pieces still to copy, in order, and where the copy is in the current one. */
  private next = 0;
  private readonly queue: Piece[];
  private readonly msg = new Uint8Array(UFFD_MSG_SIZE * 64);
  private readonly msgView = new DataView(this.msg.buffer);
  private uffd: number;

  private constructor(
    readonly pid: number,
    private readonly copy: PieceCopy,
    uffd: number,
    queue: Piece[],
    private readonly counters: SnapshotCounters,
  ) {
    this.uffd = uffd;
    this.queue = queue;
    this.copied = new Uint8Array(copy.data.byteLength / PAGE_SIZE);
  }

  /**
   * While frozen: protect what can be protected, copy the rest now. `vmas`
   * are the areas the runs lie in, `runs` the pages to save (address order).
   */
  static begin(proc: ProcFs, pid: number, vmas: readonly PageVma[], runs: readonly PageRun[], counters: SnapshotCounters): ProcessSnapshot {
    // Strict: a range that cannot be read is an error, never zeros (pre-dump's
    // "unmapped since the scan"): its freeze-time contents would be lost.
    const copy = new PieceCopy(pid, vmas, runs, proc, { running: false, boundToMm: true });
    let uffd = -1;
    try {
      if (copy.data.byteLength <= FROZEN_COPY_BYTES) {
        const snap = new ProcessSnapshot(pid, copy, -1, [], counters);
        snap.copyNow(copy.pieces, "frozen");
        return snap;
      }
      // Areas with little to save are copied now: two ioctls to protect an
      // area cost more than copying a few pages (a process of 4096 one-page
      // areas took 88 ms to protect against 4 ms to copy).
      const frozen: Piece[] = [];
      const candidates: { v: PageVma; mine: Piece[] }[] = [];
      for (const v of vmas) {
        const mine = within(copy.pieces, Number(v.start), Number(v.end));
        if (mine.length === 0) continue;
        if (mine.reduce((n, p) => n + p.length, 0) < PROTECT_MIN_BYTES) frozen.push(...mine);
        else candidates.push({ v, mine });
      }
      const later: Piece[] = [];
      if (candidates.length > 0) uffd = makeUffd(proc, pid, SYNC_WP);
      for (const { v, mine } of candidates) {
        if (registerWp(uffd, v.start, v.end)) {
          // The whole area in one call: a page not saved that is written
          // later costs one answered fault, far fewer calls than a piece each.
          writeProtect(uffd, Number(v.start), Number(v.end - v.start), true);
          later.push(...mine);
        } else {
          counters.areasNotCovered++;
          frozen.push(...mine);
        }
      }
      const snap = new ProcessSnapshot(pid, copy, uffd, later.sort((a, b) => a.remote - b.remote), counters);
      if (frozen.length > 0) snap.copyNow(frozen, "frozen");
      if (uffd >= 0) counters.processes++;
      return snap;
    } catch (e) {
      if (uffd >= 0) close(uffd);
      copy.close();
      copy.data.dispose();
      throw e;
    }
  }

  get done(): boolean {
    return this.next >= this.queue.length;
  }

  /** Copy `pieces` (skipping pages already copied) and mark them copied. */
  private copyNow(pieces: readonly Piece[], when: "frozen" | "running" | "fault"): void {
    const todo: Piece[] = [];
    for (const p of pieces) {
      // Split around pages already copied: they may have been written since.
      let run: Piece | null = null;
      for (let at = 0; at < p.length; at += PAGE_SIZE) {
        const page = (p.offset + at) / PAGE_SIZE;
        if (this.copied[page]) {
          run = null;
          continue;
        }
        this.copied[page] = 1;
        if (run) run.length += PAGE_SIZE;
        else todo.push((run = { remote: p.remote + at, offset: p.offset + at, length: PAGE_SIZE, readable: p.readable }));
      }
    }
    if (todo.length === 0) return;
    try {
      this.copy.copy(todo);
    } catch (e) {
      if (when === "frozen") throw e;
      throw new Error(
        `process ${this.pid} exited or ran another program before the snapshot copied its memory (${(e as Error).message}): ` +
          "dump again, or with --no-snapshot to copy everything while the tree is frozen",
        { cause: e },
      );
    }
    const pages = todo.reduce((s, p) => s + p.length, 0) / PAGE_SIZE;
    if (when === "frozen") this.counters.pagesFrozen += pages;
    else {
      this.counters.pagesRunning += pages;
      if (when === "fault") this.counters.pagesOnFault += pages;
    }
  }

  /** Copy the next slice, then lift its protection. */
  step(): void {
    let budget = SLICE_BYTES;
    const slice: Piece[] = [];
    while (budget > 0 && this.next < this.queue.length) {
      const p = this.queue[this.next]!;
      if (p.length <= budget) {
        slice.push(p);
        budget -= p.length;
        this.next++;
      } else {
        slice.push({ ...p, length: budget });
        this.queue[this.next] = { remote: p.remote + budget, offset: p.offset + budget, length: p.length - budget, readable: p.readable };
        budget = 0;
      }
    }
    this.copyNow(slice, "running");
    for (const p of slice) this.unprotect(p.remote, p.length);
  }

  /** Lift the protection of a copied range; a process that has exited since needs none (ESRCH: its memory is gone). */
  private unprotect(start: number, length: number): void {
    try {
      writeProtect(this.uffd, start, length, false);
    } catch (e) {
      if (!(e instanceof SysError && e.errno === Errno.ESRCH)) throw e;
    }
  }

  /** Answer every fault and event waiting on the userfaultfd. */
  answer(): void {
    if (this.uffd < 0) return;
    for (;;) {
      let n: number;
      try {
        n = readInto(this.uffd, this.msg);
      } catch (e) {
        if (e instanceof SysError && e.errno === Errno.EAGAIN) return;
        throw e;
      }
      if (n <= 0) return;
      for (let at = 0; at + UFFD_MSG_SIZE <= n; at += UFFD_MSG_SIZE) this.handle(at);
    }
  }

  private handle(at: number): void {
    const event = this.msg[at]!;
    const arg = (i: number): number => Number(this.msgView.getBigUint64(at + 8 + 8 * i, true));
    if (event === UFFD_EVENT.PAGEFAULT) {
      const page = Math.floor(arg(1) / PAGE_SIZE) * PAGE_SIZE;
      this.counters.faults++;
      const saved = within(this.copy.pieces, page, page + PAGE_SIZE);
      if (saved.length > 0) this.copyNow(saved, "fault");
      this.unprotect(page, PAGE_SIZE);
      return;
    }
    // Memory taken away (UNMAP, REMOVE: [start, end); REMAP: from, to, len) before ckpt copied it.
    const [start, end] = event === UFFD_EVENT.REMAP ? [arg(0), arg(0) + arg(2)] : [arg(0), arg(1)];
    const what = event === UFFD_EVENT.REMAP ? "moved (mremap)" : event === UFFD_EVENT.UNMAP ? "unmapped" : event === UFFD_EVENT.REMOVE ? "dropped (MADV_DONTNEED or MADV_REMOVE)" : `changed (userfaultfd event 0x${event.toString(16)})`;
    for (const p of within(this.copy.pieces, start, end)) {
      for (let off = 0; off < p.length; off += PAGE_SIZE) {
        if (!this.copied[(p.offset + off) / PAGE_SIZE]) {
          throw new Error(
            `process ${this.pid} ${what} memory at 0x${start.toString(16)}-0x${end.toString(16)} before the snapshot copied it: ` +
              "its contents at the freeze are gone; dump again, or with --no-snapshot to copy everything while the tree is frozen",
          );
        }
      }
    }
  }

  /** Stop protecting (closing the userfaultfd drops every registration and wakes any waiter). */
  release(): void {
    if (this.uffd >= 0) close(this.uffd);
    this.uffd = -1;
    this.copy.close();
  }

  /** The copied pages, in run order (the caller owns them once the copy is done). */
  get data(): PageData {
    return this.copy.data;
  }

  dispose(): void {
    this.release();
    this.copy.data.dispose();
  }
}

/**
 * Finish the snapshots of a tree that runs again: copy a slice of each
 * process in turn and answer every process's faults between slices.
 */
export function finishSnapshots(snaps: readonly ProcessSnapshot[], counters: SnapshotCounters): void {
  const t = performance.now();
  try {
    for (const s of snaps) s.answer();
    while (snaps.some((s) => !s.done)) {
      for (const s of snaps) {
        if (s.done) continue;
        s.step();
        for (const o of snaps) o.answer();
      }
    }
    for (const s of snaps) s.answer();
  } finally {
    for (const s of snaps) s.release();
    counters.copyMs += performance.now() - t;
  }
}
