/**
 * Handing ckpt's open files to a restored task: the task itself calls
 * pidfd_getfd on a pidfd of ckpt (inherited from the seed), which gives it the very same open file
 * (not a reopen), so files shared at dump time are shared again and a file
 * position moved by one holder moves for all.
 */
import type { Puppet } from "./puppet";
import { F, SYS } from "../sys/nr";
import { SEED_CKPT_PIDFD } from "./seed";

/** close_range's "to the end" (~0U). */
const ALL_FDS = 0xffffffff;

export class TargetFds {
  private pidfd = -1;

  constructor(private readonly puppet: Puppet) {}

  /**
   * Close every fd the task inherited from the seed but its pidfd of ckpt,
   * which moves to `parkAt` or above: above every fd the task will get
   * back, so pulls land on free low numbers.
   */
  reset(parkAt: number): void {
    const fd = SEED_CKPT_PIDFD;
    this.pidfd = Number(this.puppet.call(SYS.fcntl, [fd, F.DUPFD_CLOEXEC, parkAt], [String(fd), "F_DUPFD_CLOEXEC", String(parkAt)]));
    if (this.pidfd > 0) this.puppet.call(SYS.close_range, [0, this.pidfd - 1, 0], ["0", String(this.pidfd - 1), "0"]);
    this.puppet.call(SYS.close_range, [this.pidfd + 1, ALL_FDS, 0], [String(this.pidfd + 1), "~0", "0"]);
  }

  /** A copy of ckpt's fd in the task (close-on-exec, lowest free number). */
  pull(ckptFd: number): number {
    if (this.pidfd < 0) throw new Error(`task ${this.puppet.tid}: fds pulled before reset`);
    return Number(this.puppet.call(SYS.pidfd_getfd, [this.pidfd, ckptFd, 0], ["pidfd", `ckpt fd ${ckptFd}`, "0"]));
  }

  /** Put ckpt's fd at exactly `fd` in the task, with or without close-on-exec. */
  place(ckptFd: number, fd: number, cloexec: boolean): void {
    const got = this.pull(ckptFd);
    if (got === fd) {
      if (!cloexec) this.puppet.call(SYS.fcntl, [fd, F.SETFD, 0], [String(fd), "F_SETFD", "0"]);
      return;
    }
    this.puppet.call(SYS.dup3, [got, fd, cloexec ? 0o2000000 : 0], [String(got), String(fd), cloexec ? "O_CLOEXEC" : "0"]);
    this.puppet.call(SYS.close, [got]);
  }

  close(fd: number): void {
    this.puppet.call(SYS.close, [fd]);
  }

  /** Close several fds of the task, in one batch of calls. */
  closeAll(fds: Iterable<number>): void {
    this.puppet.callBatch([...fds].map((fd) => ({ nr: SYS.close, args: [fd] })));
  }

  /** Close the pidfd; the task keeps only the fds it was given. */
  done(): void {
    if (this.pidfd >= 0) this.puppet.call(SYS.close, [this.pidfd]);
    this.pidfd = -1;
  }
}
