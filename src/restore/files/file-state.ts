/**
 * State every open file carries, whatever its kind: the status flags F_SETFL
 * may change, the owner and signal of F_SETOWN_EX / F_SETSIG, and the file
 * position. All of it belongs to the open file, not to an fd, so setting it
 * on ckpt's fd sets it for every restored fd of the same id.
 */
import type { FownEntry } from "../../image/gen/fown_pb";
import { fcntl, fcntlInto, getresuid, lseek, setresuidThread } from "../../sys/calls";
import { openat } from "../../sys/libc";
import { AT, F, O, SEEK } from "../../sys/nr";

const O_ASYNC = 0o20000;
const O_DIRECT = 0o40000;
const O_NOATIME = 0o1000000;
/** The part of O_TMPFILE that is not O_DIRECTORY. */
const O_TMPFILE_ONLY = 0o20000000;
export const O_ACCMODE = 3;

/** Flags F_SETFL can change (the kernel's SETFL_MASK). */
const SETFL_MASK = O.APPEND | O_ASYNC | O_DIRECT | O_NOATIME | O.NONBLOCK;

/**
 * Flags to reopen a file with: the recorded ones without those that only act
 * at creation (O_CREAT, O_EXCL, O_TRUNC, O_TMPFILE — whose O_DIRECTORY bit
 * would fail on the regular file it made), never becoming ckpt's controlling
 * terminal, and close-on-exec on ckpt's own fd (the engine sets each restored
 * fd's own flag).
 */
export function reopenFlags(recorded: number): number {
  let flags = recorded & ~(O.CREAT | O.EXCL | O.TRUNC | O.CLOEXEC);
  if (flags & O_TMPFILE_ONLY) flags &= ~(O_TMPFILE_ONLY | O.DIRECTORY);
  return flags | O.NOCTTY | O.CLOEXEC;
}

/** Set the status flags F_SETFL knows (O_APPEND, O_NONBLOCK, O_ASYNC ...) where they differ from `fd`'s now. */
export function restoreStatusFlags(fd: number, recorded: number): void {
  const now = fcntl(fd, F.GETFL);
  const want = (now & ~SETFL_MASK) | (recorded & SETFL_MASK);
  if (want !== now) fcntl(fd, F.SETFL, want & ~O_ACCMODE);
}

/**
 * F_SETSIG, then F_SETOWN_EX as the uids the dump recorded (the kernel keeps
 * the setter's uid and euid to decide later whether the owner may be
 * signalled), switching ckpt's thread to them for that one call when ckpt is
 * root, as CRIU does. The owner must exist: the engine restores processes
 * first.
 */
export function restoreFown(fd: number, fown: FownEntry | undefined): void {
  if (!fown) return;
  if (fown.signum !== 0) fcntl(fd, F.SETSIG, fown.signum);
  if (fown.pid === 0) return;
  const owner = new Int32Array([fown.pidType, fown.pid]);
  const [ruid, euid] = getresuid();
  const switchIds = euid === 0 && (fown.uid !== ruid || fown.euid !== euid);
  if (switchIds) setresuidThread(fown.uid, fown.euid, -1);
  try {
    fcntlInto(fd, F.SETOWN_EX, owner);
  } finally {
    if (switchIds) setresuidThread(ruid, euid, -1);
  }
}

/** Seek a freshly opened file to `pos` (0 needs nothing). */
export function restorePosition(fd: number, pos: bigint): void {
  if (pos !== 0n) lseek(fd, pos, SEEK.SET);
}

/** Where an owner (F_SETOWN) waits until its process exists. */
export interface OwnerSink {
  setOwner(fd: number, fown: FownEntry | undefined): void;
}

/** Status flags and position of a newly made open file; its owner goes to `owners`, set once the tree exists. */
export function restoreFileState(fd: number, state: { flags: number; fown?: FownEntry; pos?: bigint }, owners: OwnerSink): void {
  if (state.pos !== undefined) restorePosition(fd, state.pos);
  owners.setOwner(fd, state.fown);
  restoreStatusFlags(fd, state.flags);
}

/**
 * A new open file of the object behind ckpt's `fd`, with other flags: the
 * way to a second read end of a pipe, or a memfd opened read-only.
 * O_NONBLOCK is added so a FIFO-like open never waits for a peer; the
 * recorded status flags are set afterwards.
 */
export function reopenOwn(fd: number, recorded: number): number {
  return openat(AT.FDCWD, `/proc/self/fd/${fd}`, reopenFlags(recorded) | O.NONBLOCK);
}
