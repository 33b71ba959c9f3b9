/**
 * Write-protection made before the freeze, for snapshot dumps.
 *
 * Protecting a process's memory rewrites every page-table entry of it: about
 * 30 ms for 2 GiB here, which a snapshot would otherwise spend with the whole
 * tree frozen. So, before the freeze, each process with enough memory to be
 * worth it gets its synchronous userfaultfd (made inside it while its
 * threads are stopped, ~1 ms, the rest of the tree running), and its
 * anonymous areas are registered and protected while it runs, 32 MiB at a
 * time; then one injected call settles the page-table rewrite (see
 * settleAfterSnapshot). Until the freeze a write to a protected page is
 * answered by lifting that page's protection, nothing more: what counts is
 * the memory at the freeze. At the freeze the page scan asks which saved
 * pages have no protection (the PAGEMAP_SCAN "written" category: written
 * since, or new) and only those are protected again; the snapshot
 * (snapshot.ts) takes the userfaultfd over.
 *
 * Two things wait on our answers from the moment the first area is
 * protected, so they are answered until the tree is frozen and its
 * injected calls are done: writes (a thread in a system call that writes to
 * a protected buffer, or the kernel updating its rseq area on the way back
 * to user mode, keeps retrying its fault until answered, even when
 * interrupted, so the freezer and the injector answer while they wait) and
 * address-space changes (an unmap waits until its event is read). While
 * frozen, ckpt itself writes to a thread's stack to drive injected calls;
 * those pages are unprotected first (unprotectStack), else the write would
 * wait for ckpt.
 *
 * Never a reason for a dump to fail: a process that cannot be prepared (it
 * exits, execs, shares its memory with another, the kernel refuses) is left
 * to the snapshot's own protection while frozen, and the first reason is
 * kept for --json. A ckpt that dies meanwhile takes the userfaultfds along:
 * the kernel drops their protection.
 */
import type { ProcFs } from "../../proc/procfs";
import { readSmaps } from "../../proc/maps";
import { readAllChildren } from "../../proc/task";
import { kcmp, poll } from "../../sys/calls";
import { Errno, SysError } from "../../sys/errno";
import { KCMP, PAGE_SIZE, SYS } from "../../sys/nr";
import { Freezer } from "../task/freeze";
import { RemoteSyscalls } from "../task/inject";
import type { PageRun } from "./pages";
import { FROZEN_COPY_BYTES, PROTECT_MIN_BYTES } from "./snapshot";
import { WpUffd, type WpMessage } from "./wp-uffd";

/** Protected per call while the tree runs; a writer waits at most about this long (~0.5 ms). */
const CHUNK_BYTES = 32 * 1024 * 1024;
const POLLIN = 1;

/** What protecting ahead of the freeze did, for --json. */
export interface AheadCounters {
  /** Processes whose memory was protected before the freeze. */
  processes: number;
  /** Pages of theirs protected then. */
  pagesProtected: number;
  /** Writes answered before the freeze. */
  faults: number;
  /** Time from the first stop to the last area protected, ms (the tree running). */
  ms: number;
  /** The longest stop of a process (to make its userfaultfd, or to settle it), ms. */
  longestStopMs: number;
  /** Why some process was left to the protection while frozen. */
  why?: string;
}

export function newAheadCounters(): AheadCounters {
  return { processes: 0, pagesProtected: 0, faults: 0, ms: 0, longestStopMs: 0 };
}

/** One process's protection made ahead, until the snapshot takes its userfaultfd over. */
export class ProtectedAhead {
  /** Areas protected whole before the freeze, [start, end), in address order. */
  private readonly ranges: [number, number][] = [];
  /** Saved pages without protection at the freeze, [start, start + length). */
  private written: { start: number; length: number }[] = [];

  constructor(readonly wp: WpUffd) {}

  addRange(start: number, end: number): void {
    this.ranges.push([start, end]);
  }

  /** Whether [start, end) lies in one area protected ahead. */
  covers(start: number, end: number): boolean {
    return this.ranges.some(([s, e]) => s <= start && end <= e);
  }

  /** The page scan's runs of saved pages not protected at the freeze. */
  noteWritten(runs: readonly PageRun[]): void {
    this.written = runs.map((r) => ({ start: Number(r.vaddr), length: r.nrPages * PAGE_SIZE }));
  }

  /**
   * The written runs within [start, end), cut to it. The runs are in
   * address order (the scan's): a binary search finds the first, as this
   * runs per area while the tree is frozen.
   */
  writtenWithin(start: number, end: number): { start: number; length: number }[] {
    let lo = 0;
    let hi = this.written.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const w = this.written[mid]!;
      if (w.start + w.length <= start) lo = mid + 1;
      else hi = mid;
    }
    const out: { start: number; length: number }[] = [];
    for (let i = lo; i < this.written.length && this.written[i]!.start < end; i++) {
      const w = this.written[i]!;
      const from = Math.max(w.start, start);
      const to = Math.min(w.start + w.length, end);
      if (from < to) out.push({ start: from, length: to - from });
    }
    return out;
  }
}

/** Anonymous memory by its maps name: none, the heap, the stack, or one named with PR_SET_VMA_ANON_NAME. */
function isAnonymousPath(path: string): boolean {
  return path === "" || path === "[heap]" || path === "[stack]" || path.startsWith("[anon:");
}

function isErrnoIn(e: unknown, errnos: readonly number[]): boolean {
  return e instanceof SysError && errnos.includes(e.errno);
}

/** The processes under `root` as they are now (the tree runs: ones that go meanwhile are skipped). */
function currentTree(proc: ProcFs, root: number): number[] {
  const out: number[] = [];
  const queue = [root];
  for (let pid = queue.shift(); pid !== undefined; pid = queue.shift()) {
    out.push(pid);
    try {
      queue.push(...readAllChildren(proc, pid));
    } catch (e) {
      if (!isErrnoIn(e, [Errno.ENOENT, Errno.ESRCH])) throw e;
    }
  }
  return out;
}

export class ProtectAhead {
  private readonly byPid = new Map<number, ProtectedAhead>();
  /** Handed over to their snapshots: answered by them from then on. */
  private readonly taken = new Set<ProtectedAhead>();

  constructor(private readonly counters: AheadCounters) {}

  /**
   * Protect the memory of the tree under `root`, which runs. The caller has
   * set the protected-memory hooks to unprotectStack and answer first: the
   * stops below wait on threads that may write to memory protected already,
   * and the one that settles a process drives an injected call.
   */
  arm(proc: ProcFs, root: number): void {
    const t = performance.now();
    try {
      for (const pid of currentTree(proc, root)) {
        try {
          this.armProcess(proc, pid);
        } catch (e) {
          this.counters.why ??= `process ${pid}: ${e instanceof Error ? e.message : String(e)}`;
          this.byPid.get(pid)?.wp.close();
          this.byPid.delete(pid);
        }
      }
    } catch (e) {
      this.close();
      throw e;
    }
    this.counters.processes = this.byPid.size;
    this.counters.ms = performance.now() - t;
  }

  /**
   * Stop the leader thread of `pid`, or all its threads (the rest of the
   * tree runs), and let them go again; `during` runs while they are
   * stopped. Null when the process could not be stopped.
   */
  private whileStopped<T>(proc: ProcFs, pid: number, which: "leader" | "all threads", during: () => T): T | null {
    // A thread may be in a write that waits on a userfaultfd made already:
    // the stopper answers while it waits (protected-memory.ts).
    const stopper = new Freezer(proc);
    const stopped = performance.now();
    try {
      return (which === "all threads" ? stopper.stopProcess(pid) : stopper.stopThread(pid, pid)) ? during() : null;
    } finally {
      stopper.release("resume");
      this.counters.longestStopMs = Math.max(this.counters.longestStopMs, performance.now() - stopped);
    }
  }

  private armProcess(proc: ProcFs, pid: number): void {
    let areas;
    try {
      areas = readSmaps(proc, pid);
    } catch (e) {
      if (isErrnoIn(e, [Errno.ENOENT, Errno.ESRCH])) return;
      throw e;
    }
    const anon = (a: (typeof areas)[number]): number => (a.kb?.Anonymous ?? 0) * 1024;
    // The snapshot's own choice at the freeze (snapshot.ts): small processes
    // are copied while frozen, areas with little to save too.
    if (areas.reduce((s, a) => s + anon(a), 0) <= FROZEN_COPY_BYTES) return;
    // Anonymous memory only: protecting a private mapping of a file (a
    // memfd's, tmpfs) marks its empty entries too, and the scan at the
    // freeze would take the marks for pages to save. Such areas are
    // protected at the freeze, after the scan, as before.
    const chosen = areas.filter((a) => !a.shared && a.inode === 0n && isAnonymousPath(a.path) && anon(a) >= PROTECT_MIN_BYTES);
    if (chosen.length === 0) return;
    // One userfaultfd per address space: a process sharing its memory with
    // one already prepared is refused by the dump anyway, and its stack may
    // be protected by the other's (an injected call would wait on us).
    for (const other of this.byPid.keys()) {
      try {
        if (kcmp(pid, other, KCMP.VM) === "equal") return;
      } catch (e) {
        if (!isErrnoIn(e, [Errno.ESRCH])) throw e;
      }
    }

    // Every thread stopped while the userfaultfd is an fd of the process: a
    // thread that forked meanwhile would hand it to a child, which would
    // keep the protection alive after ckpt has closed its copy.
    const wp = this.whileStopped(proc, pid, "all threads", () => WpUffd.make(proc, pid, () => {}));
    if (!wp) return;
    const p = new ProtectedAhead(wp);
    wp.handler = (m) => this.beforeFreeze(p, m);
    this.byPid.set(pid, p);
    for (const a of chosen) {
      if (!wp.register(a.start, a.end)) continue;
      const start = Number(a.start);
      const end = Number(a.end);
      let whole = true;
      for (let at = start; at < end; at += CHUNK_BYTES) {
        try {
          wp.protect(at, Math.min(CHUNK_BYTES, end - at));
        } catch (e) {
          // ENOENT: the area changed since smaps was read; the freeze protects it.
          if (!isErrnoIn(e, [Errno.ENOENT])) throw e;
          whole = false;
          break;
        }
        this.answer();
      }
      if (whole) {
        p.addRange(start, end);
        this.counters.pagesProtected += (end - start) / PAGE_SIZE;
      }
    }
    // Rewriting page-table entries costs the process at its next return to
    // user mode (see settleAfterSnapshot): ~20 ms for 2 GiB here, which an
    // idle process would pay at the first call injected during the freeze.
    // One call injected now makes it pay here, alone, and waits until it has.
    this.whileStopped(proc, pid, "leader", () => {
      const remote = RemoteSyscalls.open(pid, { proc });
      try {
        remote.syscall(SYS.getpid);
      } finally {
        remote.close();
      }
    });
  }

  /** Before the freeze a write only needs its page unprotected; an event needs only to have been read. */
  private beforeFreeze(p: ProtectedAhead, m: WpMessage): void {
    if (m.kind !== "fault") return;
    this.counters.faults++;
    try {
      p.wp.unprotect(m.page, PAGE_SIZE);
    } catch (e) {
      // The area went away meanwhile: nothing to lift.
      if (!isErrnoIn(e, [Errno.ENOENT])) throw e;
    }
  }

  /**
   * Answer whatever waits on any of the userfaultfds not yet taken over,
   * including messages a retried protect read and queued. A process whose
   * answering fails has its protection dropped (its writers go on) rather
   * than fail the freeze or an injected call waiting here.
   */
  answer(): void {
    const open = [...this.byPid.entries()].filter(([, p]) => p.wp.open && !this.taken.has(p));
    if (open.length === 0) return;
    const revents = poll(open.map(([, p]) => ({ fd: p.wp.pollFd, events: POLLIN })), 0);
    open.forEach(([pid, p], i) => {
      if (!revents[i] && !p.wp.hasQueued) return;
      try {
        p.wp.answer();
      } catch (e) {
        this.counters.why ??= `process ${pid}: ${e instanceof Error ? e.message : String(e)}`;
        p.wp.close();
      }
    });
  }

  /** The protection of `pid`, for its snapshot to take over (null: none made). */
  take(pid: number): ProtectedAhead | null {
    const p = this.byPid.get(pid);
    if (!p || !p.wp.open) return null;
    // What was read before the freeze is answered as before it (an unmap
    // then is no loss), before the scan that follows sees the pages.
    p.wp.answer();
    this.taken.add(p);
    return p;
  }

  /**
   * Before ckpt writes [low, high) of a thread's stack in process `tgid`
   * (frozen): lift the protection there, or the write would wait on our own
   * answer. The page scan that follows finds those pages unprotected and the
   * snapshot protects them again.
   */
  unprotectStack(tgid: number, low: bigint, high: bigint): void {
    const p = this.byPid.get(tgid);
    if (!p?.wp.open || this.taken.has(p)) return;
    const start = Math.floor(Number(low) / PAGE_SIZE) * PAGE_SIZE;
    const end = Math.ceil(Number(high) / PAGE_SIZE) * PAGE_SIZE;
    try {
      p.wp.unprotect(start, end - start);
    } catch (e) {
      // ENOENT: the stack is not an area of ours.
      if (!isErrnoIn(e, [Errno.ENOENT])) throw e;
    }
  }

  /** Drop the protection of processes other than `pids` (not in the frozen tree). */
  keepOnly(pids: readonly number[]): void {
    const keep = new Set(pids);
    for (const [pid, p] of this.byPid) if (!keep.has(pid)) p.wp.close();
  }

  /**
   * Drop every protection made ahead, taken over or not: at the end of the
   * dump the snapshots have closed theirs already, and on a failure none may
   * outlive it (a thread would wait for an answer that never comes).
   */
  close(): void {
    for (const p of this.byPid.values()) p.wp.close();
  }
}
