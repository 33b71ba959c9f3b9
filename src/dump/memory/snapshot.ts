/**
 * Snapshot dumps (dump -R): the tree is frozen only for the scan; its
 * private memory is copied while it runs again, and still comes out exactly
 * as it was at the freeze.
 *
 * Each process has a userfaultfd (made inside it, as the pre-dump tracker's
 * are, but synchronous: a write to a protected page stops the writing thread
 * until ckpt answers) with every area holding pages to save registered for
 * write-protection, and those areas write-protected — mostly before the
 * freeze already (protect-ahead.ts: only the pages written since are
 * protected while frozen), else all while frozen. Areas the kernel will not
 * protect this way (file-backed private mappings, the vDSO, areas the
 * process registered itself, MAP_DROPPABLE) are copied while frozen, as a
 * plain dump does. Then the tree runs, and ckpt copies the rest a
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
import { PAGE_SIZE } from "../../sys/nr";
import { readStat } from "../../proc/stat";
import { Freezer } from "../task/freeze";
import { PieceCopy, type PageData, type PageRun, type PageVma, type Piece } from "./pages";
import type { ProtectedAhead } from "./protect-ahead";
import { WpUffd, type WpMessage } from "./wp-uffd";

/** Bytes copied between two looks at the faults: a writer waits at most about this long (~0.7 ms at 3 GB/s). */
const SLICE_BYTES = 2 * 1024 * 1024;
/**
 * A process with no more than this to save is copied while frozen (about
 * 2 ms): the short-lived children of shells and servers are small, and a
 * process that exits or execs before its copy ends takes its memory along.
 */
export const FROZEN_COPY_BYTES = 8 * 1024 * 1024;
/** An area with less than this to save is copied while frozen rather than protected. */
export const PROTECT_MIN_BYTES = 256 * 1024;

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
  /** Pages written between their protection ahead of the freeze and the freeze, protected again while frozen. */
  pagesReprotected: number;
  /** Time spent taking the protected processes through one stop once their protection was gone (settleAfterSnapshot), ms. */
  settleMs: number;
}

export function newSnapshotCounters(): SnapshotCounters {
  return { processes: 0, pagesFrozen: 0, pagesRunning: 0, pagesOnFault: 0, faults: 0, areasNotCovered: 0, copyMs: 0, pagesReprotected: 0, settleMs: 0 };
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
  private wp: WpUffd | null;
  /** Some of its memory was write-protected (see settleAfterSnapshot). */
  readonly protectedMemory: boolean;

  private constructor(
    readonly pid: number,
    private readonly copy: PieceCopy,
    wp: WpUffd | null,
    queue: Piece[],
    private readonly counters: SnapshotCounters,
  ) {
    this.wp = wp;
    this.protectedMemory = wp !== null;
    this.queue = queue;
    this.copied = new Uint8Array(copy.data.byteLength / PAGE_SIZE);
    if (wp) wp.handler = (m) => this.handle(m);
  }

  /**
   * While frozen: protect what can be protected, copy the rest now. `vmas`
   * are the areas the runs lie in, `runs` the pages to save (address order).
   * `ahead`: the process's memory was protected before the freeze; its
   * userfaultfd is taken over, and in the areas it covered only the pages
   * written since (`ahead.written`) need protecting again.
   */
  static begin(proc: ProcFs, pid: number, vmas: readonly PageVma[], runs: readonly PageRun[], counters: SnapshotCounters, ahead: ProtectedAhead | null = null): ProcessSnapshot {
    // Strict: a range that cannot be read is an error, never zeros (pre-dump's
    // "unmapped since the scan"): its freeze-time contents would be lost.
    const copy = new PieceCopy(pid, vmas, runs, proc, { running: false, boundToMm: true });
    let wp: WpUffd | null = ahead?.wp ?? null;
    try {
      if (copy.data.byteLength <= FROZEN_COPY_BYTES) {
        // Protection made ahead is not needed after all: dropped now, while frozen.
        const snap = new ProcessSnapshot(pid, copy, null, [], counters);
        snap.copyNow(copy.pieces, "frozen");
        wp?.close();
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
      if (ahead && candidates.length > 0 && !ahead.wp.sameMemory(candidates[0]!.v.start, candidates[0]!.v.end)) {
        // It ran another program (or exited and its pid was taken) since: that protection is of memory gone.
        ahead.wp.close();
        ahead = null;
        wp = null;
      }
      if (candidates.length > 0 && !wp) wp = WpUffd.make(proc, pid, () => {});
      for (const { v, mine } of candidates) {
        // Registering an area already registered ahead is a no-op; one the
        // process registered itself meanwhile is refused (EBUSY).
        if (wp!.register(v.start, v.end)) {
          if (ahead?.covers(Number(v.start), Number(v.end))) {
            // Every page not written since keeps its protection.
            for (const r of ahead.writtenWithin(Number(v.start), Number(v.end))) {
              wp!.protect(r.start, r.length);
              counters.pagesReprotected += r.length / PAGE_SIZE;
            }
          } else {
            // The whole area in one call: a page not saved that is written
            // later costs one answered fault, far fewer calls than a piece each.
            wp!.protect(Number(v.start), Number(v.end - v.start));
          }
          later.push(...mine);
        } else {
          counters.areasNotCovered++;
          frozen.push(...mine);
        }
      }
      const snap = new ProcessSnapshot(pid, copy, wp, later.sort((a, b) => a.remote - b.remote), counters);
      if (frozen.length > 0) snap.copyNow(frozen, "frozen");
      if (wp) counters.processes++;
      return snap;
    } catch (e) {
      wp?.close();
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
    for (const p of slice) this.wp?.unprotect(p.remote, p.length);
  }

  /** Answer every fault and event waiting on the userfaultfd. */
  answer(): void {
    this.wp?.answer();
  }

  private handle(m: WpMessage): void {
    if (m.kind === "fault") {
      this.counters.faults++;
      const saved = within(this.copy.pieces, m.page, m.page + PAGE_SIZE);
      if (saved.length > 0) this.copyNow(saved, "fault");
      this.wp?.unprotect(m.page, PAGE_SIZE);
      return;
    }
    for (const p of within(this.copy.pieces, m.start, m.end)) {
      for (let off = 0; off < p.length; off += PAGE_SIZE) {
        if (!this.copied[(p.offset + off) / PAGE_SIZE]) {
          throw new Error(
            `process ${this.pid} ${m.what} memory at 0x${m.start.toString(16)}-0x${m.end.toString(16)} before the snapshot copied it: ` +
              "its contents at the freeze are gone; dump again, or with --no-snapshot to copy everything while the tree is frozen",
          );
        }
      }
    }
  }

  /** Stop protecting (closing the userfaultfd drops every registration and wakes any waiter). */
  release(): void {
    this.wp?.close();
    this.wp = null;
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

/**
 * Lifting write-protection costs a process later, not when it happens: on
 * this kind of machine (a guest whose page tables the hypervisor shadows)
 * the first return to user mode after many page-table entries became
 * writable again is slow — a getpid() injected into an idle 2 GiB process
 * right after its protection was lifted took 118 ms, the next one 0.2 ms;
 * with one ptrace stop and release in between, the first took 1.4 ms.
 * (Protecting has no such cost.) An idle process would pay at its next
 * wake-up: in the latency of its next request, or inside the next dump's
 * freeze, where it stalls the whole tree. So each process whose memory was
 * protected is taken through one stop as soon as its userfaultfd is closed:
 * its way back to the code it was in (a sleep restarts as if nothing had
 * happened, as after the freeze) passes through user mode, and it pays
 * there, on its own, while nothing waits for it. Never fails the dump: a
 * process that has gone or cannot be stopped is left as it is.
 */
export function settleAfterSnapshot(proc: ProcFs, snaps: readonly ProcessSnapshot[], counters: SnapshotCounters): void {
  const t = performance.now();
  const freezer = new Freezer(proc);
  try {
    for (const s of snaps) {
      if (!s.protectedMemory) continue;
      // A thread in an uninterruptible wait (a vfork, the disk) would keep
      // ckpt waiting for its stop: it pays on its own when it runs.
      let state: string;
      try {
        state = readStat(proc, s.pid).state;
      } catch {
        continue;
      }
      if (state === "D") continue;
      freezer.stopThread(s.pid, s.pid);
    }
  } catch {
    // An unexpected ptrace error: the threads stopped so far are let go below.
  } finally {
    freezer.release("resume");
    counters.settleMs += performance.now() - t;
  }
}
