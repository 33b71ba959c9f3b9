/**
 * One process's synchronous write-protect userfaultfd, as the snapshot code
 * drives it: register areas, protect and unprotect ranges, read what the
 * kernel reports and hand it to whoever answers for the process now — the
 * protection ahead of the freeze (protect-ahead.ts) or the snapshot itself
 * (snapshot.ts), which takes the userfaultfd over at the freeze.
 *
 * The kernel refuses (EAGAIN) to change protections while an event that
 * changes the address space (an unmap, a move, a MADV_DONTNEED) waits to be
 * read: the thread doing it waits for us. Protect and unprotect therefore
 * read the pending messages and try again, rather than fail the dump on a
 * process that merely freed some memory.
 */
import type { ProcFs } from "../../proc/procfs";
import { Errno, SysError } from "../../sys/errno";
import { close, ioctl, readInto } from "../../sys/libc";
import { PAGE_SIZE, UFFD_EVENT, UFFD_FEATURE, UFFD_MSG_SIZE, UFFDIO_WRITEPROTECT, UFFDIO_WRITEPROTECT_MODE_WP } from "../../sys/nr";
import { makeUffd, registerWp } from "../tracking/uffd";

const SYNC_WP = {
  // Events that take memory away: its freeze-time contents would go with it.
  features: UFFD_FEATURE.PAGEFAULT_FLAG_WP | UFFD_FEATURE.EVENT_REMOVE | UFFD_FEATURE.EVENT_UNMAP | UFFD_FEATURE.EVENT_REMAP,
  what: "PAGEFAULT_FLAG_WP|EVENT_REMOVE|EVENT_UNMAP|EVENT_REMAP",
  // Faults from the kernel (a read() into a protected buffer) must reach us
  // too: with UFFD_USER_MODE_ONLY they would fail the system call instead.
  userModeOnly: false,
};

/** What the kernel reported: a write to a protected page, or memory taken away ([start, end)). */
export type WpMessage = { kind: "fault"; page: number } | { kind: "gone"; what: string; start: number; end: number };

const wpArg = new BigUint64Array(3);
const wpBytes = new Uint8Array(wpArg.buffer);

export class WpUffd {
  private readonly msg = new Uint8Array(UFFD_MSG_SIZE * 64);
  private readonly msgView = new DataView(this.msg.buffer);
  /** Messages read and not yet handed over (a read made inside a handler only queues). */
  private readonly queue: WpMessage[] = [];
  private dispatching = false;
  private fd: number;

  private constructor(readonly pid: number, fd: number, public handler: (m: WpMessage) => void) {
    this.fd = fd;
  }

  /** A userfaultfd made inside process `pid` (one of its threads stopped by us). */
  static make(proc: ProcFs, pid: number, handler: (m: WpMessage) => void): WpUffd {
    return new WpUffd(pid, makeUffd(proc, pid, SYNC_WP), handler);
  }

  get open(): boolean {
    return this.fd >= 0;
  }

  /** The fd, for poll(). */
  get pollFd(): number {
    return this.fd;
  }

  /** Register [start, end) for write-protection; false when the kernel will not (see registerWp). */
  register(start: bigint, end: bigint): boolean {
    return registerWp(this.fd, start, end);
  }

  /**
   * False when the address space this userfaultfd was made in is gone (its
   * process exited or ran another program): the kernel then refuses to
   * register with ENOMEM (and to protect with ESRCH). Registering
   * [start, end) answers that; it is a no-op for an area registered already.
   */
  sameMemory(start: bigint, end: bigint): boolean {
    try {
      this.register(start, end);
      return true;
    } catch (e) {
      if (e instanceof SysError && (e.errno === Errno.ENOMEM || e.errno === Errno.ESRCH)) return false;
      throw e;
    }
  }

  protect(start: number, length: number): void {
    this.writeProtect(start, length, true);
  }

  /** Lift the protection of a range; a process that has exited since needs none (ESRCH: its memory is gone). */
  unprotect(start: number, length: number): void {
    try {
      this.writeProtect(start, length, false);
    } catch (e) {
      if (!(e instanceof SysError && e.errno === Errno.ESRCH)) throw e;
    }
  }

  private writeProtect(start: number, length: number, protect: boolean): void {
    const what = `UFFDIO_WRITEPROTECT(0x${start.toString(16)}+0x${length.toString(16)}, ${protect ? "WP" : "0"})`;
    for (let tries = 0; ; tries++) {
      wpArg[0] = BigInt(start);
      wpArg[1] = BigInt(length);
      wpArg[2] = protect ? BigInt(UFFDIO_WRITEPROTECT_MODE_WP) : 0n;
      try {
        ioctl(this.fd, UFFDIO_WRITEPROTECT, wpBytes, what);
        return;
      } catch (e) {
        if (!(e instanceof SysError && e.errno === Errno.EAGAIN) || tries > 100_000) throw e;
      }
      // An address-space change waits on us: read it (the thread then goes
      // on and lifts the kernel's hold a moment later), and try again.
      this.readPending();
      if (tries > 100) Bun.sleepSync(0.1);
    }
  }

  /** Messages read (during a retried protect) and not yet handed to the handler. */
  get hasQueued(): boolean {
    return this.queue.length > 0;
  }

  /** Read everything waiting and hand it to the handler, in order. */
  answer(): void {
    this.readPending();
    if (this.dispatching) return;
    this.dispatching = true;
    try {
      for (let m = this.queue.shift(); m; m = this.queue.shift()) this.handler(m);
    } finally {
      this.dispatching = false;
    }
  }

  private readPending(): void {
    if (this.fd < 0) return;
    for (;;) {
      let n: number;
      try {
        n = readInto(this.fd, this.msg);
      } catch (e) {
        if (e instanceof SysError && e.errno === Errno.EAGAIN) return;
        throw e;
      }
      if (n <= 0) return;
      for (let at = 0; at + UFFD_MSG_SIZE <= n; at += UFFD_MSG_SIZE) this.queue.push(this.decode(at));
    }
  }

  private decode(at: number): WpMessage {
    const event = this.msg[at]!;
    const arg = (i: number): number => Number(this.msgView.getBigUint64(at + 8 + 8 * i, true));
    if (event === UFFD_EVENT.PAGEFAULT) return { kind: "fault", page: Math.floor(arg(1) / PAGE_SIZE) * PAGE_SIZE };
    // UNMAP, REMOVE: [start, end); REMAP: from, to, len.
    if (event === UFFD_EVENT.REMAP) return { kind: "gone", what: "moved (mremap)", start: arg(0), end: arg(0) + arg(2) };
    const what = event === UFFD_EVENT.UNMAP ? "unmapped" : event === UFFD_EVENT.REMOVE ? "dropped (MADV_DONTNEED or MADV_REMOVE)" : `changed (userfaultfd event 0x${event.toString(16)})`;
    return { kind: "gone", what, start: arg(0), end: arg(1) };
  }

  /** Closing drops every registration and protection and wakes any waiting thread. */
  close(): void {
    if (this.fd >= 0) close(this.fd);
    this.fd = -1;
  }
}
