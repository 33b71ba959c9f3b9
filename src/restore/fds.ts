/**
 * Every fd of a process back at its number: the process pulls ckpt's open
 * file of the fd's id (target-fds.ts), so fds that shared an open file at dump
 * time share one again, across processes too. Then the epoll watch lists,
 * which the kernel keys by the fd numbers of the process that added them, and
 * the cwd, root and umask.
 */
import type { FdinfoEntry } from "../image/gen/fdinfo_pb";
import type { FsEntry } from "../image/gen/fs_pb";
import { SYS } from "../sys/nr";
import type { Puppet } from "./puppet";
import type { TargetFds } from "./target-fds";

/** The part of the opened files that fd placement needs. */
export interface FileSource {
  fd(id: number): number;
  epollWatches(id: number): readonly { tfd: number; events: number; data: bigint }[];
}

/** fdinfo flags hold the fd flags (F_GETFD), as CRIU writes them. */
const FD_CLOEXEC = 1;
const EPOLL_CTL_ADD = 1;

/** The lowest fd number above every fd of the table (where restore parks its pidfd). */
export function aboveAll(fdinfo: readonly FdinfoEntry[]): number {
  return fdinfo.reduce((m, e) => Math.max(m, e.fd + 1), 3);
}

export function placeFds(fds: TargetFds, fdinfo: readonly FdinfoEntry[], files: FileSource): void {
  const sorted = [...fdinfo].sort((a, b) => a.fd - b.fd);
  for (const e of sorted) fds.place(files.fd(e.id), e.fd, (e.flags & FD_CLOEXEC) !== 0);
}

/**
 * Add the watches of every epoll fd in this table whose watch list has not
 * been added yet (an epoll file shared by several processes gets its
 * watches once, from the first of them, as the dump read them there).
 */
export function addEpollWatches(p: Puppet, scratch: bigint, fdinfo: readonly FdinfoEntry[], files: FileSource, done: Set<number>): void {
  const ev = new Uint8Array(12);
  const v = new DataView(ev.buffer);
  for (const e of fdinfo) {
    if (done.has(e.id)) continue;
    const watches = files.epollWatches(e.id);
    if (watches.length === 0) continue;
    done.add(e.id);
    for (const w of watches) {
      // struct epoll_event is packed on x86_64: u32 events, u64 data.
      v.setUint32(0, w.events, true);
      v.setBigUint64(4, w.data, true);
      p.write(scratch, ev);
      p.call(SYS.epoll_ctl, [e.fd, EPOLL_CTL_ADD, w.tfd, scratch], [String(e.fd), "EPOLL_CTL_ADD", String(w.tfd), `{events 0x${w.events.toString(16)}}`]);
    }
  }
}

/** Root (chroot first: it does not move the cwd) and cwd through fds pulled from ckpt, then the umask. */
export function restoreFs(p: Puppet, fds: TargetFds, fs: FsEntry, files: FileSource, scratch: bigint): void {
  const root = fds.pull(files.fd(fs.rootId));
  // chroot takes a path: the task's own /proc/self/fd link leads to the directory.
  p.write(scratch, new TextEncoder().encode(`/proc/self/fd/${root}\0`));
  p.call(SYS.chroot, [scratch], [`/proc/self/fd/${root}`]);
  fds.close(root);
  const cwd = fds.pull(files.fd(fs.cwdId));
  p.call(SYS.fchdir, [cwd]);
  fds.close(cwd);
  if (fs.umask !== undefined) p.call(SYS.umask, [fs.umask]);
}
