/**
 * Dirty tracking across the rounds of an iterative dump: what this round
 * inherits from the parent round, what it arms for the next one, and the
 * rule that keeps "in parent" honest.
 *
 * The rule: pages can be left in the parent only if the tracking that says
 * "unwritten" was armed by exactly that parent round. A round that re-arms
 * tracking (every pre-dump) therefore first ends the parent's tracker — after
 * taking copies of the userfaultfds it held, so the tracking itself lives on
 * in ckpt — and starts its own tracker once its images are written. If that
 * round then fails or ckpt dies, no tracker vouches for any set any more, and
 * the next round saves everything: slower, never wrong. A dump re-arms
 * nothing: it leaves the parent's tracker alone until it has succeeded, and
 * then ends it, which unregisters everything in the tree.
 *
 * A process whose pid the parent recorded with another start time, or which
 * started after the parent round froze (task start time against the parent's
 * dump uptime), is not the process the parent saw: it is saved whole.
 */
import type { MapArea } from "../../proc/maps";
import type { ProcFs } from "../../proc/procfs";
import { Errno, SysError } from "../../sys/errno";
import { close, openat, writeAll } from "../../sys/libc";
import { AT, O } from "../../sys/nr";
import type { ProcessTracking } from "../memory/page-dump";
import type { ParentImages } from "../memory/parent";
import { chooseTracking, type TrackingMethod } from "./method";
import type { TrackedProcess, TrackingRecord } from "./record";
import type { CommitPipe } from "../../sys/commit-pipe";
import { LiveTracker, startTracker, trackersOf, type TrackerId } from "./tracker";
import { makeUffd, registerWp } from "./uffd";

export type RoundKind = "pre-dump" | "dump";

/** What the round did about tracking, for the JSON summary and the tests. */
export interface TrackingSummary {
  method: TrackingMethod | null;
  /** The parent's tracker was found alive, so this round could leave pages in the parent. */
  inherited: boolean;
  /** Processes saved whole although a parent was given, and why. */
  wholeProcesses: { pid: number; reason: string }[];
  /** Areas registered for write-protect tracking in this round, and areas the kernel refused. */
  areasRegistered: number;
  areasRefused: number;
  /** The tracker this round started (pre-dump) or ended (dump). */
  trackerStarted: TrackerId | null;
  trackerEnded: TrackerId | null;
  /** Trackers of older, unfinished chains of this tree that a pre-dump ended. */
  olderTrackersEnded: number[];
  /** Why nothing could be inherited from the parent, when so. */
  note: string | null;
}

export class RoundTracking {
  /** ckpt's copies of the userfaultfds, by pid. */
  private readonly uffds = new Map<number, number>();
  private readonly recorded = new Map<number, TrackedProcess>();
  private live: LiveTracker | null = null;
  private started: TrackerId | null = null;
  /** The started tracker's commit pipe, until finish() commits the round or abort() gives it up. */
  private startedPipe: CommitPipe | null = null;
  readonly summary: TrackingSummary;

  private constructor(
    private readonly proc: ProcFs,
    private readonly kind: RoundKind,
    private readonly parent: ParentImages | null,
    readonly method: TrackingMethod | null,
  ) {
    this.summary = {
      method, inherited: false, wholeProcesses: [], areasRegistered: 0, areasRefused: 0,
      trackerStarted: null, trackerEnded: null, olderTrackersEnded: [], note: null,
    };
  }

  /** Start a round; the tree (rooted at `rootPid`) is frozen. */
  static begin(proc: ProcFs, kind: RoundKind, parent: ParentImages | null, rootPid: number): RoundTracking {
    let method: TrackingMethod | null;
    if (kind === "pre-dump") {
      const choice = chooseTracking();
      if (!choice.method) throw new Error(`pre-dump needs a way to track written pages, and this kernel has none (soft-dirty: ${choice.soft}; userfaultfd write-protect: ${choice.uffd})`);
      method = choice.method;
    } else {
      method = parent?.tracking?.method ?? null;
    }
    const round = new RoundTracking(proc, kind, parent, method);
    round.inherit();
    if (kind === "pre-dump") {
      try {
        round.endOlderChains(rootPid);
      } catch (e) {
        round.abort();
        throw e;
      }
    }
    return round;
  }

  private inherit(): void {
    const rec = this.parent?.tracking;
    if (!this.parent) return;
    if (!rec) {
      this.summary.note = `${this.parent.path} armed no dirty tracking (not a pre-dump): everything is saved again`;
      return;
    }
    if (rec.method !== this.method) {
      this.summary.note = `${this.parent.path} tracked with ${rec.method}, this round uses ${this.method}: everything is saved again`;
      return;
    }
    const gone = `the tracker of ${this.parent.path} (pid ${rec.tracker.pid}) is gone — timed out, ended by a later round, or the tree's root exited: everything is saved again`;
    const live = LiveTracker.find(this.proc, rec.tracker);
    if (!live) {
      this.summary.note = gone;
      return;
    }
    try {
      for (const p of rec.processes) {
        this.recorded.set(p.pid, p);
        if (p.held === null) continue;
        const fd = live.takeHeld(p.held);
        if (fd === null) {
          // It exited (timed out) just now: nothing it held can be trusted.
          this.recorded.clear();
          this.closeUffds();
          live.close();
          this.summary.note = gone;
          return;
        }
        this.uffds.set(p.pid, fd);
      }
      this.summary.inherited = true;
      if (this.kind === "pre-dump") {
        // This round re-arms: from now on the parent set is no longer the last round.
        this.summary.trackerEnded = live.id;
        live.end();
      } else {
        this.live = live;
      }
    } catch (e) {
      live.close();
      this.closeUffds();
      throw e;
    }
  }

  /**
   * A pre-dump starts or continues one chain; trackers an older, unfinished
   * chain of this tree left would keep their areas registered (refusing
   * ours) or, with soft-dirty, lose their bits to our clear_refs anyway. End them.
   */
  private endOlderChains(rootPid: number): void {
    const older = trackersOf(this.proc, rootPid);
    for (const id of older) LiveTracker.find(this.proc, id)?.end();
    if (older.length > 0) this.summary.olderTrackersEnded = older.map((t) => t.pid);
  }

  /** How to scan process `pid` (frozen) and its areas to save; null: no tracking at all this round. */
  forProcess(pid: number, startTime: bigint, areas: readonly MapArea[], execed = false): ProcessTracking | null {
    if (!this.method) return null;
    const reason = execed ? "it ran exec since the parent round" : this.inheritProblem(pid, startTime);
    if (reason) {
      if (!execed) this.saveWhole(pid, reason);
      // A userfaultfd taken for a pid that is now another process belongs to another mm.
      const stale = this.uffds.get(pid);
      if (stale !== undefined) close(stale);
      this.uffds.delete(pid);
    }
    const parent = reason ? null : this.parent?.coverage(pid) ?? null;
    if (!reason && this.parent && !parent) this.saveWhole(pid, "the parent holds no pagemap for it");

    if (this.method === "soft-dirty") {
      // New areas are born soft-dirty, so every area is tracked once the process is the parent's.
      return { dirty: { category: "soft-dirty", protect: false }, tracked: new Set(reason ? [] : areas.map((a) => a.start)), parent };
    }
    let uffd = this.uffds.get(pid);
    if (uffd === undefined) {
      // A dump arms nothing: a process the parent did not track is saved whole.
      if (this.kind === "dump") return { dirty: { category: "written", protect: false }, tracked: new Set(), parent: null };
      uffd = makeUffd(this.proc, pid);
      this.uffds.set(pid, uffd);
    }
    // Registering an area again with the same userfaultfd changes nothing, and
    // proves the area is ours: one registered with another userfaultfd (the
    // process's own) is refused with EBUSY, and its protect bits — which are
    // not ours — are never read as ours. An area new since the parent gets
    // registered here, with no page protected yet: every page reads written.
    const tracked = new Set<bigint>();
    for (const a of areas) {
      let ok: boolean;
      try {
        ok = registerWp(uffd, a.start, a.end);
      } catch (e) {
        // ENOMEM: the userfaultfd's address space is gone — the process exec'd since the parent round.
        if (!(e instanceof SysError && e.errno === Errno.ENOMEM) || tracked.size > 0) throw e;
        close(uffd);
        this.uffds.delete(pid);
        this.saveWhole(pid, "it ran exec since the parent round");
        return this.forProcess(pid, startTime, areas, true);
      }
      if (ok) tracked.add(a.start);
      else this.summary.areasRefused++;
    }
    this.summary.areasRegistered += tracked.size;
    return { dirty: { category: "written", protect: this.kind === "pre-dump" }, tracked, parent };
  }

  /** Note a process saved whole, once (a dump may scan a process again, smaps having changed its areas). */
  private saveWhole(pid: number, reason: string): void {
    if (!this.summary.wholeProcesses.some((w) => w.pid === pid)) this.summary.wholeProcesses.push({ pid, reason });
  }

  /** Why `pid` cannot use what the parent recorded; null when it can (or there is no parent). */
  private inheritProblem(pid: number, startTime: bigint): string | null {
    if (!this.parent || !this.summary.inherited) return this.parent ? "the parent's tracking is not usable (see note)" : null;
    const rec = this.recorded.get(pid);
    if (!rec) return "the parent round did not track it (a new process)";
    if (this.parent.pidReused(startTime) || rec.startTime !== startTime.toString()) return "it started after the parent round: the pid was reused";
    return null;
  }

  /** After the scan of a process in a pre-dump (still frozen): re-arm soft-dirty. */
  afterScan(pid: number): void {
    if (this.kind !== "pre-dump" || this.method !== "soft-dirty") return;
    const fd = openat(AT.FDCWD, `/proc/${pid}/clear_refs`, O.WRONLY | O.CLOEXEC);
    try {
      writeAll(fd, new TextEncoder().encode("4"));
    } finally {
      close(fd);
    }
  }

  /**
   * Pre-dump, after the images are written: start the tracker that keeps
   * this round's tracking for the next round; returns the record to save.
   */
  async arm(rootPid: number, processes: readonly { pid: number; startTime: bigint }[], timeoutSeconds: number): Promise<TrackingRecord> {
    if (this.kind !== "pre-dump" || !this.method) throw new Error("only a pre-dump arms tracking");
    const held: number[] = [];
    const tracked: TrackedProcess[] = processes.map((p) => {
      const fd = this.uffds.get(p.pid);
      if (fd !== undefined) held.push(fd);
      return { pid: p.pid, startTime: p.startTime.toString(), held: fd === undefined ? null : held.length - 1 };
    });
    const tracker = await startTracker(this.proc, rootPid, held, timeoutSeconds);
    this.started = tracker.id;
    this.startedPipe = tracker.pipe;
    this.summary.trackerStarted = tracker.id;
    return { method: this.method, tracker: tracker.id, timeoutSeconds, processes: tracked };
  }

  /**
   * The round succeeded: a dump ends the parent's tracker (tracking is over);
   * ckpt's copies close either way. Best effort — the images are complete by
   * now — so a problem is returned as a warning, never thrown.
   */
  finish(): string | null {
    let warning: string | null = null;
    if (this.startedPipe) {
      try {
        this.startedPipe.commit();
      } catch (e) {
        warning = `could not tell the tracker ${this.started?.pid} that the round is whole: ${(e as Error).message}; the next round saves everything`;
      }
      this.startedPipe = null;
    }
    if (this.live) {
      try {
        this.summary.trackerEnded = this.live.id;
        this.live.end();
      } catch (e) {
        warning = `could not end the tracker ${this.live.id.pid}: ${(e as Error).message}; it ends by its timeout`;
      }
      this.live = null;
    }
    this.closeUffds();
    return warning;
  }

  /** The round failed: end what it started; a dump leaves the parent's tracker running (the parent set stays valid). */
  abort(): void {
    this.startedPipe?.abandon();
    this.startedPipe = null;
    if (this.started) {
      const t = LiveTracker.find(this.proc, this.started);
      t?.end();
      this.started = null;
    }
    this.live?.close();
    this.live = null;
    this.closeUffds();
  }

  private closeUffds(): void {
    for (const fd of this.uffds.values()) close(fd);
    this.uffds.clear();
  }
}
