/**
 * Freezing a process tree with ptrace, and letting it go again.
 *
 * Every thread is PTRACE_SEIZE'd and then PTRACE_INTERRUPT'ed. Seizing does not
 * stop anything by itself, and the kernel detaches seized tasks when their
 * tracer dies, so a ckpt that is SIGKILLed mid-dump leaves the tree running
 * (no cgroup freezer that would need a thaw). The tree is re-read until a full
 * pass finds nothing new: a thread that was still running during the previous
 * pass may have created threads or children, a frozen one cannot. Processes
 * that exit meanwhile are walked again as what they became: a zombie (kept:
 * its frozen parent cannot reap it now) or nothing.
 */
import { SysError, Errno } from "../../sys/errno";
import { getpid, kill, waitpid } from "../../sys/libc";
import { SIG, W } from "../../sys/nr";
import * as ptrace from "../../sys/ptrace";
import type { ProcFs } from "../../proc/procfs";
import { hasExited, readStat } from "../../proc/stat";
import { readAllChildren, readThreads } from "../../proc/task";
import type { TreeTask } from "../pstree";
import { answerWaitingWrites, answeringWrites } from "./protected-memory";

/** Signals whose group-stop a seized task reports as a PTRACE_EVENT_STOP. */
const STOP_SIGNALS = new Set([SIG.STOP, 20 /* SIGTSTP */, 21 /* SIGTTIN */, 22 /* SIGTTOU */]);

/** A process of the frozen tree. */
export interface FrozenProcess extends TreeTask {
  /** It was in a job-control stop (SIGSTOP and friends) when frozen: restore keeps it stopped. */
  jobStopped: boolean;
  /** The signal of that stop (SIGSTOP, SIGTSTP, SIGTTIN or SIGTTOU), 0 when not stopped. */
  stopSigno: number;
  /**
   * It had exited and its parent had not yet reaped it: nothing of it is
   * left but its pid, ids and exit status. Zombies are not seized (ptrace
   * refuses them) and have no children (those went to a reaper).
   */
  zombie: boolean;
}

/** Something about the tree or our rights makes a dump impossible. */
export class FreezeError extends Error {
  constructor(message: string, readonly pid: number) {
    super(message);
    this.name = "FreezeError";
  }
}

function isErrno(e: unknown, errno: number): boolean {
  return e instanceof SysError && e.errno === errno;
}

/**
 * Collect ckpt's own garbage now, just before a freeze: a collection that
 * falls inside the frozen window stops ckpt, and so the tree, for 1-10 ms,
 * and the window allocates enough (protobuf messages, buffers, BigInts) to
 * set one off. Made while the tree still runs, the heap then small, it
 * leaves the window free of them: a 4-thread 256 MiB process measured
 * 20-32 ms frozen (median 21.9) with it, 27-38 (31.5) without. Returns
 * its time, ms.
 */
export function collectBeforeFreeze(): number {
  const t = performance.now();
  Bun.gc(true);
  return performance.now() - t;
}

export class Freezer {
  /** Seized threads, by tid, with the pid of their process. */
  private readonly seized = new Map<number, number>();
  /** Threads found in a group-stop, with the signal that stopped them. */
  private readonly jobStopped = new Map<number, number>();
  private readonly exited = new Set<number>();
  /** Milliseconds from the first seize to the whole tree stopped. */
  freezingMs = 0;

  constructor(private readonly proc: ProcFs) {}

  /** Threads that are seized now. */
  get tids(): number[] {
    return [...this.seized.keys()];
  }

  /**
   * Freeze the tree under `root`; returns its processes, parents before
   * children, every thread stopped. On an error the caller must release().
   */
  freeze(root: number): FrozenProcess[] {
    const start = performance.now();
    const self = getpid();
    if (root === self) throw new FreezeError(`refusing to dump ckpt itself (pid ${root})`, root);
    let tree: FrozenProcess[] = [];
    for (let pass = 0; ; pass++) {
      const { processes, changed } = this.pass(root, self);
      tree = processes;
      if (!changed) break;
      if (pass > 1000) throw new FreezeError(`the tree under ${root} did not settle while freezing (threads or children keep appearing)`, root);
    }
    this.freezingMs = performance.now() - start;
    return tree;
  }

  /** One walk over the tree, seizing whatever is not seized yet. */
  private pass(root: number, self: number): { processes: FrozenProcess[]; changed: boolean } {
    const processes: FrozenProcess[] = [];
    let changed = false;
    const queue: { pid: number; ppid: number }[] = [{ pid: root, ppid: 0 }];
    for (let item = queue.shift(); item; item = queue.shift()) {
      const { pid, ppid } = item;
      if (pid === self) throw new FreezeError(`refusing to dump a tree that contains ckpt itself (pid ${pid})`, pid);
      let threads: number[];
      let stat;
      try {
        stat = readStat(this.proc, pid);
        threads = readThreads(this.proc, pid);
      } catch (e) {
        if (!isErrno(e, Errno.ENOENT) && !isErrno(e, Errno.ESRCH)) throw e;
        if (pid === root) throw new FreezeError(this.seized.size ? `process ${pid} exited while the tree was being frozen` : `process ${pid} does not exist`, pid);
        // Reaped between its parent's child list and now (its parent ran
        // still, or ignores SIGCHLD): walk again, without it.
        changed = true;
        continue;
      }
      if (stat.state === "Z" || stat.state === "X") {
        if (pid === root) throw new FreezeError(`process ${pid} is a zombie (state ${stat.state}): it has exited, there is nothing to dump`, pid);
        if (threads.length > 1) {
          throw new FreezeError(`process ${pid} is a zombie leader with ${threads.length - 1} live thread(s) (its main thread exited, the others run on), which ckpt cannot dump`, pid);
        }
        // A seized thread of it that exited was collected as it went.
        for (const [tid, owner] of this.seized) if (owner === pid) this.seized.delete(tid);
        processes.push({ pid, ppid, pgid: stat.pgrp, sid: stat.session, threads: [pid], jobStopped: false, stopSigno: 0, zombie: true });
        continue;
      }
      for (const tid of threads) {
        if (this.seized.has(tid) || this.exited.has(tid)) continue;
        this.seizeThread(pid, tid);
        changed = true;
      }
      // Drop threads that exited before they could be stopped.
      for (const [tid, owner] of this.seized) {
        if (owner === pid && !threads.includes(tid)) {
          this.seized.delete(tid);
          changed = true;
        }
      }
      const live = threads.filter((t) => this.seized.has(t));
      if (live.length === 0) {
        if (pid === root) throw new FreezeError(`process ${pid} exited while the tree was being frozen`, pid);
        // It exited while being seized: the next walk finds it a zombie, or gone.
        changed = true;
        continue;
      }
      processes.push({
        pid, ppid, pgid: stat.pgrp, sid: stat.session, threads: live,
        jobStopped: live.some((t) => this.jobStopped.has(t)), stopSigno: live.map((t) => this.jobStopped.get(t) ?? 0).find((s) => s !== 0) ?? 0, zombie: false,
      });
      for (const child of readAllChildren(this.proc, pid, live)) queue.push({ pid: child, ppid: pid });
    }
    return { processes, changed };
  }

  /**
   * Stop one thread of a process that is not being frozen, to let it go
   * again with release(): its way back from the stop passes through user
   * mode once. False when the thread is gone or may not be traced.
   */
  stopThread(pid: number, tid: number): boolean {
    try {
      this.seizeThread(pid, tid);
    } catch (e) {
      if (e instanceof FreezeError) return false;
      throw e;
    }
    return this.seized.has(tid);
  }

  /**
   * Stop every thread of process `pid` (not its children), reading its
   * thread list again until no new thread appears. False when it is gone
   * or may not be traced.
   */
  stopProcess(pid: number): boolean {
    try {
      for (let pass = 0; ; pass++) {
        const threads = readThreads(this.proc, pid);
        const fresh = threads.filter((t) => !this.seized.has(t) && !this.exited.has(t));
        if (fresh.length === 0) break;
        if (pass > 1000) throw new FreezeError(`process ${pid} kept making threads while being stopped`, pid);
        for (const tid of fresh) this.seizeThread(pid, tid);
      }
    } catch (e) {
      if (e instanceof FreezeError || isErrno(e, Errno.ENOENT) || isErrno(e, Errno.ESRCH)) return false;
      throw e;
    }
    return this.seized.size > 0;
  }

  /** Seize and stop one thread; a thread that is gone already is noted, not an error. */
  private seizeThread(pid: number, tid: number): void {
    try {
      ptrace.seize(tid);
    } catch (e) {
      if (isErrno(e, Errno.ESRCH)) {
        this.exited.add(tid);
        return;
      }
      if (isErrno(e, Errno.EPERM)) {
        // The kernel refuses to attach to a task that has begun to exit (its
        // exit state is set): it is a zombie now, or gone, and the next walk
        // takes it as such.
        if (hasExited(this.proc, pid, tid)) {
          this.exited.add(tid);
          return;
        }
        throw new FreezeError(`may not trace ${tid === pid ? `process ${pid}` : `thread ${tid} of process ${pid}`} (ptrace: EPERM — already traced, or not permitted)`, pid);
      }
      throw e;
    }
    this.seized.set(tid, pid);
    try {
      ptrace.interrupt(tid);
    } catch (e) {
      if (!isErrno(e, Errno.ESRCH)) throw e;
    }
    this.waitStopped(tid);
  }

  /**
   * Wait until the thread sits in the interrupt stop. A signal that was being
   * delivered is delivered (its handler runs before the freeze, as if it had
   * arrived a moment earlier); the interrupt stays pending and follows.
   */
  private waitStopped(tid: number): void {
    for (;;) {
      const status = this.nextStatus(tid);
      if (ptrace.isExited(status) || ptrace.isSignaled(status)) {
        this.seized.delete(tid);
        this.exited.add(tid);
        return;
      }
      if (!ptrace.isStopped(status)) continue;
      const sig = ptrace.stopSig(status);
      if (ptrace.ptraceEvent(status) !== 0) {
        // PTRACE_EVENT_STOP: the interrupt (SIGTRAP) or a group-stop (SIGSTOP...).
        if (STOP_SIGNALS.has(sig as 19)) this.jobStopped.set(tid, sig);
        return;
      }
      ptrace.cont(tid, sig);
    }
  }

  /**
   * The thread's next wait status. With memory protected ahead of the
   * freeze (protected-memory.ts), a thread whose write waits on ckpt's
   * userfaultfd may need an answer before it can stop at all — in a system
   * call the kernel retries the fault rather than break off for the
   * interrupt — so the wait polls and answers meanwhile.
   */
  private nextStatus(tid: number): number {
    if (!answeringWrites()) return ptrace.waitTracee(tid);
    const start = performance.now();
    for (;;) {
      const status = ptrace.pollTracee(tid);
      if (status !== null) return status;
      answerWaitingWrites();
      // Most threads stop within microseconds: spin briefly, then sleep.
      if (performance.now() - start > 2) Bun.sleepSync(1);
    }
  }

  /**
   * Let the tree go: "resume" detaches every thread so it runs on exactly as
   * before; "kill" SIGKILLs every process and reaps the tracee notifications,
   * unless `awaitDeath` is false: a process about to exit leaves them to the
   * kernel, which detaches the dying tracees when their tracer exits (a
   * killed process's death waits for its memory to be freed, ~130 ms for
   * 2 GiB here). Never throws: a thread that vanished meanwhile is simply
   * skipped. Returns the problems it met, for the caller to report.
   */
  release(mode: "resume" | "kill", processes: readonly number[] = [...new Set(this.seized.values())], awaitDeath = true): string[] {
    const problems: string[] = [];
    if (mode === "kill") {
      for (const pid of processes) {
        try {
          kill(pid, SIG.KILL);
        } catch (e) {
          if (!isErrno(e, Errno.ESRCH)) problems.push(String(e instanceof Error ? e.message : e));
        }
      }
      // A killed tracee reports its death to us, its tracer, before its parent
      // can reap it: collect those reports, leaders last (the kernel holds a
      // leader's report back until its other threads are gone).
      if (!awaitDeath) {
        this.seized.clear();
        return problems;
      }
      const order = [...this.seized].sort(([a, pa], [b, pb]) => Number(a === pa) - Number(b === pb));
      for (const [tid] of order) this.reapDead(tid, problems);
      this.seized.clear();
      return problems;
    }
    for (const tid of this.seized.keys()) {
      try {
        ptrace.detach(tid, 0);
      } catch (e) {
        if (!isErrno(e, Errno.ESRCH)) problems.push(String(e instanceof Error ? e.message : e));
      }
    }
    this.seized.clear();
    return problems;
  }

  private reapDead(tid: number, problems: string[]): void {
    for (;;) {
      let status: number;
      try {
        status = waitpid(tid, W.ALL).status;
      } catch (e) {
        if (!isErrno(e, Errno.ECHILD)) problems.push(String(e instanceof Error ? e.message : e));
        return;
      }
      if (ptrace.isExited(status) || ptrace.isSignaled(status)) return;
    }
  }
}
