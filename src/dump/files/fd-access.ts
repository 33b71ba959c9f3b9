/**
 * Reaching the open files of a frozen process from ckpt: pidfd_getfd gives
 * ckpt a second fd on the very same open file description (so fcntl, ioctl
 * and socket calls see the target's file: its owner, its pipe, its socket
 * queue), and /proc/PID/fd/N can be opened anew for a fresh description of
 * the same inode (a readable end of a pipe whose fd is a write end, the
 * contents of an unlinked file opened write-only).
 */
import { create } from "@bufbuild/protobuf";
import { FownEntrySchema, type FownEntry } from "../../image/gen/fown_pb";
import type { FdInfo } from "../../proc/fdinfo";
import type { ProcFs } from "../../proc/procfs";
import { fcntl, fcntlInto, pidfdGetfd, pidfdOpen } from "../../sys/calls";
import { close } from "../../sys/libc";
import { F, O } from "../../sys/nr";
import type { Statx } from "../../sys/structs";

/** One fd of a frozen process, with what every fd costs to look at. */
export interface OpenFd {
  pid: number;
  fd: number;
  /** The fd's /proc link text: a path, "pipe:[INO]", "socket:[INO]", "anon_inode:[eventfd]" ... */
  link: string;
  /** statx through the link: the file itself. */
  st: Statx;
  info: FdInfo;
}

/** A line of the fd's fdinfo that its kind always has; its absence is an error naming the fd. */
export function fdinfoField(f: OpenFd, kind: string, key: string): string {
  const v = f.info.fields.get(key);
  if (v === undefined) throw new Error(`process ${f.pid} fd ${f.fd}: ${kind} fdinfo has no "${key}"`);
  return v;
}

/** Access to the fds of one process; `close` releases everything it opened. */
export class FdAccess {
  private pidfd = -1;
  private readonly copies = new Map<number, number>();
  private readonly opened: number[] = [];

  constructor(private readonly proc: ProcFs, readonly pid: number) {}

  /** ckpt's own fd on the open file behind `fd` (pidfd_getfd), kept until `release`. */
  local(fd: number): number {
    const have = this.copies.get(fd);
    if (have !== undefined) return have;
    if (this.pidfd < 0) this.pidfd = pidfdOpen(this.pid);
    const copy = pidfdGetfd(this.pidfd, fd);
    this.copies.set(fd, copy);
    return copy;
  }

  /** A new open file description of the inode behind `fd`, through /proc/PID/fd/N. */
  reopen(fd: number, flags: number): number {
    const f = this.proc.open(this.pid, `fd/${fd}`, flags | O.CLOEXEC);
    this.opened.push(f);
    return f;
  }

  /**
   * Close what was opened for the fd just dumped. Called after every fd, so
   * ckpt holds a handful of fds however many the tree has (10,000 would pass
   * ckpt's own RLIMIT_NOFILE).
   */
  release(): void {
    for (const f of [...this.copies.values(), ...this.opened]) close(f);
    this.copies.clear();
    this.opened.length = 0;
  }

  close(): void {
    this.release();
    if (this.pidfd >= 0) close(this.pidfd);
    this.pidfd = -1;
  }
}

const ownerBuf = new Int32Array(2);
const uidsBuf = new Uint32Array(2);

/**
 * The F_SETOWN_EX / F_SETSIG state of an open file, read through ckpt's own
 * fd on it (the owner belongs to the open file, not to the fd).
 */
export function readFown(localFd: number): FownEntry {
  fcntlInto(localFd, F.GETOWN_EX, ownerBuf);
  const signum = fcntl(localFd, F.GETSIG);
  const [pidType, pid] = [ownerBuf[0] ?? 0, ownerBuf[1] ?? 0];
  if (pid === 0 && signum === 0) return create(FownEntrySchema, { uid: 0, euid: 0, signum: 0, pidType: 0, pid: 0 });
  fcntlInto(localFd, F.GETOWNER_UIDS, uidsBuf);
  return create(FownEntrySchema, { uid: uidsBuf[0] ?? 0, euid: uidsBuf[1] ?? 0, signum, pidType, pid });
}
