/**
 * The dirty tracker: a tiny process that keeps write tracking alive between
 * separate ckpt runs (pre-dump → pre-dump → dump).
 *
 * With userfaultfd write-protection, the kernel tracks writes only while the
 * userfaultfd exists; it vanishes with the last fd referring to it, and each
 * ckpt run is a process that exits. So a pre-dump hands the userfaultfds
 * (one per process of the tree, made inside the process and taken with
 * pidfd_getfd) to a tracker, which holds them and nothing else. The tracker
 * ends — and with it every registration and write-protect bit in the tree —
 * when the next round takes over (it starts its own tracker), when the final
 * dump is done, when the tree's root exits, or after a timeout: an abandoned
 * pre-dump leaves nothing in the tree for long.
 *
 * The tracker is also the proof that a parent image set is still the last
 * round: each round that re-arms tracking (write-protects again) first ends
 * the previous tracker, so a set whose tracker is gone cannot serve as a
 * parent any more, and the next round saves everything.
 *
 * The program (src/sys/tiny-elf.ts): fork; the child reports its pid, makes
 * its own session, moves to / (to pin no mount), names itself
 * "ckpt-tracker", and first waits for its round to commit: one byte on a
 * pipe from ckpt (sys/commit-pipe.ts) after the round's inventory; the end of
 * the pipe instead (ckpt failed or was killed) ends it at once, so that a
 * round that never completed leaves no tracking behind. Then it waits in
 * ppoll() on fd 3 — a pidfd of the tree's root, readable once the root exits
 * — with the timeout built into the code, and exits. fds 4, 5, ... are the
 * userfaultfds it holds, the pipe comes after them.
 */
import { Errno, SysError } from "../../sys/errno";
import { pidfdGetfd, pidfdOpen } from "../../sys/calls";
import { close } from "../../sys/libc";
import { SYS } from "../../sys/nr";
import { asm, exitZero, forkThenChild, launchTinyElf, ownSessionNamed, reportPid, tinyElf } from "../../sys/tiny-elf";
import type { ProcFs } from "../../proc/procfs";
import { CommitPipe } from "../../sys/commit-pipe";
import { readStat } from "../../proc/stat";
import { listDirectory } from "../../sys/file";
import { LiveHelper, type HelperId } from "../../proc/helper-process";

export const TRACKER_COMM = "ckpt-tracker";
/** fd of the root's pidfd in the tracker; userfaultfds follow it. */
const ROOT_PIDFD = 3;
const FIRST_HELD_FD = 4;
const POLLIN = 1;

/** Who the tracker is, as an image set records it: a pid and its start time tell a reused pid apart. */
export type TrackerId = HelperId;

function trackerCode(timeoutSeconds: number, heldCount: number): number[] {
  const exit = exitZero();
  const child = [
    ...reportPid(),
    ...ownSessionNamed(TRACKER_COMM),
    // read(commit pipe, rsp, 1): the byte comes once the round's images are
    // whole; the end of the pipe without it means ckpt failed or died, and
    // then nothing may keep the tree's tracking.
    ...asm.pushImm8(0), ...asm.movRsiRsp, ...asm.movEdi(heldFdNumber(heldCount)), ...asm.movEdx(1), ...asm.movEax(SYS.read), ...asm.syscall,
    ...asm.decEax, ...asm.jz(exit.length), ...exit,
    // struct timespec { tv_sec = timeout, tv_nsec = 0 } and struct pollfd { fd 3, POLLIN } on the stack.
    ...asm.pushImm8(0), ...asm.movabsRax(BigInt(timeoutSeconds)), ...asm.pushRax, ...asm.movRdxRsp,
    ...asm.movabsRax((BigInt(POLLIN) << 32n) | BigInt(ROOT_PIDFD)), ...asm.pushRax, ...asm.movRdiRsp,
    ...asm.movEsi(1), ...asm.xorR10d, ...asm.movR8d(8), ...asm.movEax(SYS.ppoll), ...asm.syscall,
    ...exit,
  ];
  return forkThenChild(child);
}

/** A tracker just started, waiting for its round to commit. */
export interface StartedTracker {
  id: TrackerId;
  /** commit() once the round's images are whole; until then a kill of ckpt ends the tracker. */
  pipe: CommitPipe;
}

/**
 * Start a tracker holding `heldFds` (ckpt's fds; they become the tracker's
 * fds 4, 5, ... in this order). It holds them only once its round commits
 * (the pipe after them), and then until `rootPid` exits or `timeoutSeconds` pass.
 */
export async function startTracker(proc: ProcFs, rootPid: number, heldFds: readonly number[], timeoutSeconds: number): Promise<StartedTracker> {
  checkTrackTimeout(timeoutSeconds);
  const rootPidfd = pidfdOpen(rootPid);
  const pipe = CommitPipe.create();
  try {
    const pid = await launchTinyElf(TRACKER_COMM, tinyElf(trackerCode(timeoutSeconds, heldFds.length)), { ownSession: true, fds: [rootPidfd, ...heldFds, pipe.readEnd] });
    try {
      return { id: { pid, startTime: readStat(proc, pid).startTime.toString() }, pipe };
    } catch (e) {
      // Not recorded, so nothing would ever claim it: it must not hold the tracking until its timeout.
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // already gone
      }
      throw e;
    }
  } catch (e) {
    pipe.abandon();
    throw e;
  } finally {
    pipe.closeReadEnd();
    close(rootPidfd);
  }
}

/** The longest a tracker may wait: a year, far inside ppoll's range. */
const MAX_TIMEOUT_SECONDS = 366 * 24 * 3600;

export function checkTrackTimeout(seconds: number): void {
  if (!Number.isInteger(seconds) || seconds < 1 || seconds > MAX_TIMEOUT_SECONDS) {
    throw new RangeError(`the tracking timeout must be a whole number of seconds from 1 to ${MAX_TIMEOUT_SECONDS}, got ${seconds}`);
  }
}

function heldFdNumber(i: number): number {
  return FIRST_HELD_FD + i;
}

/**
 * Trackers (other than `except`) that watch the tree rooted at `rootPid`:
 * what an earlier, unfinished chain of pre-dumps of this tree left. Found by
 * name and by the pid their fd 3 (a pidfd) refers to.
 */
export function trackersOf(proc: ProcFs, rootPid: number, except: readonly TrackerId[] = []): TrackerId[] {
  const out: TrackerId[] = [];
  for (const name of listDirectory("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    const pid = Number(name);
    try {
      if (proc.readText(pid, "comm").trim() !== TRACKER_COMM) continue;
      const watched = /^Pid:\s+(\d+)$/m.exec(proc.readText(pid, `fdinfo/${ROOT_PIDFD}`))?.[1];
      if (Number(watched) !== rootPid) continue;
      const startTime = readStat(proc, pid).startTime.toString();
      if (!except.some((e) => e.pid === pid && e.startTime === startTime)) out.push({ pid, startTime });
    } catch {
      // Exited meanwhile, or not ours to read.
    }
  }
  return out;
}

/** A tracker found alive and verified (proc/helper-process.ts), whose held fds ckpt can take. */
export class LiveTracker extends LiveHelper {
  /** The tracker `id` if it still runs; null when it is gone (ended, timed out, or its pid reused). */
  static override find(proc: ProcFs, id: TrackerId): LiveTracker | null {
    const pidfd = LiveHelper.pin(proc, id, TRACKER_COMM);
    return pidfd < 0 ? null : new LiveTracker(id, TRACKER_COMM, pidfd);
  }

  /** A copy, in ckpt, of the `i`th fd the tracker holds; null when the tracker has exited meanwhile. */
  takeHeld(i: number): number | null {
    try {
      return pidfdGetfd(this.pidfd, heldFdNumber(i));
    } catch (e) {
      if (e instanceof SysError && (e.errno === Errno.ESRCH || e.errno === Errno.EBADF)) return null;
      throw e;
    }
  }
}
