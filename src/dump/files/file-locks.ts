/**
 * File locks a process holds (filelocks.img, named so by CRIU), read from the "lock:" lines
 * of its fdinfo: POSIX record locks, flock locks and open file description
 * locks, each with the fd to take it through again at restore. As in CRIU,
 * a dump saves them only when asked (--file-locks) and refuses a tree that
 * holds any otherwise, so that no lock is dropped without a word. Leases
 * are refused.
 */
import { create } from "@bufbuild/protobuf";
import { FileLockEntrySchema, type FileLockEntry } from "../../image/gen/file-lock_pb";
import { FL } from "../../image/file-lock-flags";
import type { FdInfo, FdLockInfo } from "../../proc/fdinfo";
import type { FileTable } from "./file-table";

const KIND_FLAGS: Record<string, number> = { POSIX: FL.POSIX, FLOCK: FL.FLOCK, OFDLCK: FL.OFD };
/** F_RDLCK and F_WRLCK, as the entries keep a lock's type. */
const TYPES: Record<string, number> = { READ: 0, WRITE: 1 };

export class FileLockError extends Error {}

/** Entries seen so far: a lock shown on two fds of one open file is saved once per process. */
export class FileLocks {
  private readonly seen = new Set<string>();

  constructor(
    private readonly table: FileTable,
    private readonly save: boolean,
  ) {}

  /** Note the locks fd `fd` (open file `fileId`, at `path`) of process `pid` shows. */
  note(pid: number, fd: number, fileId: number, path: string, info: FdInfo): void {
    const what = `process ${pid}: fd ${fd} (${path})`;
    const bad = info.unreadLocks[0];
    if (bad !== undefined) throw new FileLockError(`${what}: cannot read the lock line ${JSON.stringify(bad)}`);
    for (const lock of info.locks) {
      const entry = this.entryFor(what, pid, fd, lock);
      if (!this.save) {
        throw new FileLockError(`${what} holds a ${lock.kind} ${lock.type} lock; dump with --file-locks to save file locks (as CRIU asks)`);
      }
      const key = `${pid}:${fileId}:${entry.flag}:${entry.type}:${entry.start}:${entry.len}`;
      if (this.seen.has(key)) continue;
      this.seen.add(key);
      this.table.image("filelocks.img", "FILE_LOCKS").add(FileLockEntrySchema, entry);
    }
  }

  private entryFor(what: string, pid: number, fd: number, lock: FdLockInfo): FileLockEntry {
    const flag = KIND_FLAGS[lock.kind];
    if (flag === undefined) {
      const name = lock.kind === "LEASE" ? "a lease (F_SETLEASE)" : `a lock of kind ${lock.kind}`;
      throw new FileLockError(`${what} holds ${name}, which ckpt cannot save yet`);
    }
    const type = TYPES[lock.type];
    if (lock.mode !== "ADVISORY" || type === undefined) throw new FileLockError(`${what} holds a lock ckpt cannot save: ${lock.line}`);
    const len = lock.end === undefined ? 0n : lock.end - lock.start + 1n;
    return create(FileLockEntrySchema, { flag, type, pid, fd, start: lock.start, len });
  }
}
