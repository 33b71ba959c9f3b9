/**
 * filelocks.img: each lock is taken again by the process that held it,
 * through the fd it names, once that process's fd table is final — a POSIX
 * lock is dropped by any close() of its file in its process, and restore
 * closes fds of the same files while it places them.
 */
import { FileLockEntrySchema, type FileLockEntry } from "../../image/gen/file-lock_pb";
import { FL } from "../../image/file-lock-flags";
import type { FdinfoEntry } from "../../image/gen/fdinfo_pb";
import type { ImageSet } from "../../image/image-set";
import { Errno, SysError } from "../../sys/errno";
import { SYS } from "../../sys/nr";
import type { Puppet } from "../puppet";

const KIND_NAMES: Record<number, string> = { [FL.POSIX]: "POSIX", [FL.FLOCK]: "flock", [FL.OFD]: "OFD" };
const F_SETLK = 6;
const F_OFD_SETLK = 37;
const LOCK = { SH: 1, EX: 2, NB: 4 } as const;
/** struct flock on x86_64: l_type, l_whence (shorts), l_start, l_len (at 8, 16), l_pid (at 24). */
const FLOCK_SIZE = 32;

/** The locks of filelocks.img by process, checked against the tree: every lock's process and fd exist. */
export function loadFileLocks(images: ImageSet, fdTables: ReadonlyMap<number, readonly FdinfoEntry[]>): Map<number, FileLockEntry[]> {
  const byPid = new Map<number, FileLockEntry[]>();
  images.entries("filelocks.img", FileLockEntrySchema, true).forEach((l, i) => {
    const at = `filelocks.img: entry ${i}`;
    if (!KIND_NAMES[l.flag]) throw new Error(`${at}: a lock of kind ${l.flag} (flag), which ckpt cannot restore (POSIX 1, flock 2, OFD 4)`);
    if (l.type !== 0 && l.type !== 1) throw new Error(`${at}: type ${l.type} is neither a read (0) nor a write (1) lock`);
    if (l.start < 0n || l.len < 0n) throw new Error(`${at}: a lock of ${l.len} bytes at ${l.start}`);
    const table = fdTables.get(l.pid);
    if (!table) throw new Error(`${at}: process ${l.pid} is not in the tree`);
    if (!table.some((f) => f.fd === l.fd)) throw new Error(`${at}: process ${l.pid} has no fd ${l.fd}`);
    byPid.set(l.pid, [...(byPid.get(l.pid) ?? []), l]);
  });
  return byPid;
}

/** Take `locks` again in the process `p` (its fds in place); `scratch`: writable memory of the task. */
export function restoreFileLocks(p: Puppet, scratch: bigint, locks: readonly FileLockEntry[]): void {
  for (const l of locks) {
    const what = `${l.type === 1 ? "write" : "read"} ${KIND_NAMES[l.flag]} lock on fd ${l.fd}${l.flag === FL.FLOCK ? "" : ` (${l.len === 0n ? `from byte ${l.start} to the end` : `${l.len} bytes at ${l.start}`})`}`;
    try {
      if (l.flag === FL.FLOCK) {
        p.call(SYS.flock, [l.fd, (l.type === 1 ? LOCK.EX : LOCK.SH) | LOCK.NB], [String(l.fd), l.type === 1 ? "LOCK_EX|LOCK_NB" : "LOCK_SH|LOCK_NB"]);
        continue;
      }
      const b = new DataView(new ArrayBuffer(FLOCK_SIZE));
      b.setInt16(0, l.type, true);
      b.setInt16(2, 0, true); // SEEK_SET
      b.setBigInt64(8, l.start, true);
      b.setBigInt64(16, l.len, true);
      p.write(scratch, new Uint8Array(b.buffer));
      const cmd = l.flag === FL.OFD ? F_OFD_SETLK : F_SETLK;
      p.call(SYS.fcntl, [l.fd, cmd, scratch], [String(l.fd), l.flag === FL.OFD ? "F_OFD_SETLK" : "F_SETLK", `{${l.type === 1 ? "F_WRLCK" : "F_RDLCK"}, ${l.start}, ${l.len}}`]);
    } catch (e) {
      const held = e instanceof SysError && (e.errno === Errno.EAGAIN || e.errno === Errno.EACCES);
      throw new Error(`filelocks.img: process ${p.tid} cannot take its ${what} again${held ? ": another process holds a conflicting lock now" : `: ${(e as Error).message}`}`);
    }
  }
}
