/**
 * A helper process of ckpt's that outlives the run that started it (the
 * dirty tracker of pre-dumps, the network lock's holder), found again by a
 * later run from what an image set recorded: its pid and start time (a pid
 * reused by someone else has another start time) and its name.
 */
import { pidfdOpen } from "../sys/calls";
import { Errno, SysError } from "../sys/errno";
import { addressOf, close, syscall } from "../sys/libc";
import { SIG, SYS } from "../sys/nr";
import type { ProcFs } from "./procfs";
import { readStat } from "./stat";

/** Who a helper is, as an image set records it. */
export interface HelperId {
  pid: number;
  /** /proc/PID/stat start time, clock ticks after boot. */
  startTime: string;
}

const POLLIN = 1;

/**
 * A helper found alive and verified (same pid, same start time, its name),
 * pinned by a pidfd: once it exits, signals fail instead of reaching a newcomer.
 */
export class LiveHelper {
  protected constructor(readonly id: HelperId, readonly comm: string, protected pidfd: number) {}

  /** The helper `id` named `comm` if it still runs; null when it is gone (ended, timed out, or its pid reused). */
  static find(proc: ProcFs, id: HelperId, comm: string): LiveHelper | null {
    const pidfd = LiveHelper.pin(proc, id, comm);
    return pidfd < 0 ? null : new LiveHelper(id, comm, pidfd);
  }

  /** A pidfd of the helper if it is alive and is who `id` says; -1 otherwise. */
  protected static pin(proc: ProcFs, id: HelperId, comm: string): number {
    let pidfd: number;
    try {
      pidfd = pidfdOpen(id.pid);
    } catch (e) {
      if (e instanceof SysError && e.errno === Errno.ESRCH) return -1;
      throw e;
    }
    try {
      const st = readStat(proc, id.pid);
      if (st.startTime.toString() === id.startTime && st.comm === comm && st.state !== "Z") return pidfd;
    } catch {
      // Exited between the two reads: gone.
    }
    close(pidfd);
    return -1;
  }

  /** SIGKILL the helper and wait (up to 5 s) until it has exited, i.e. until its fds are closed. */
  end(): void {
    if (this.pidfd < 0) return;
    try {
      syscall("pidfd_send_signal", SYS.pidfd_send_signal, [this.pidfd, SIG.KILL, 0, 0], [String(this.pidfd), "SIGKILL", "NULL", "0"]);
    } catch (e) {
      if (!(e instanceof SysError && e.errno === Errno.ESRCH)) throw e;
    }
    // A pidfd turns readable when its process has exited (its files closed).
    const pollfd = new Int32Array([this.pidfd, POLLIN]);
    try {
      const ready = syscall("poll", SYS.poll, [addressOf(pollfd), 1, 5000], [`{${this.pidfd}, POLLIN}`, "1", "5000"]);
      if (ready === 0n) throw new Error(`${this.comm} ${this.id.pid} did not exit within 5 s of SIGKILL`);
    } finally {
      this.close();
    }
  }

  close(): void {
    if (this.pidfd >= 0) close(this.pidfd);
    this.pidfd = -1;
  }
}
