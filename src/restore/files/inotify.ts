/**
 * inotify: a new instance with every watch added again by the path the dump
 * found for its inode, under the same watch descriptor.
 *
 * The process knows its watches by wd, so each must come back under its own
 * number. The kernel hands out wds in a cycle, each one past the last given
 * (removing a watch does not make its number the next), so ckpt adds the
 * watches in ascending wd order, and where the image skips numbers it adds
 * and removes the watch until the number before the wanted one has gone by.
 * Each removal queues an IN_IGNORED event; the queue is read empty at the
 * end, so the restored fd holds no event the process never caused. (Events
 * the dumped instance had queued were not saved, as CRIU does not.)
 *
 * IN_DONT_FOLLOW is added to every mask: the path names the watched inode
 * itself, which may be a symbolic link.
 */
import { FdTypes } from "../../image/gen/fdinfo_pb";
import type { InotifyFileEntry, InotifyWdEntry } from "../../image/gen/fsnotify_pb";
import { inotifyAddWatch, inotifyInit1, inotifyRmWatch } from "../../sys/calls";
import { Errno, SysError } from "../../sys/errno";
import { statOrNull } from "../../sys/file";
import { readInto } from "../../sys/libc";
import { AT, IN } from "../../sys/nr";
import type { FileRestoreContext } from "./kind";
import { standaloneKind } from "./standalone";

/** Removals between two readings of the queue, well below the default queue limit (16384 events). */
const DRAIN_EVERY = 4096;

const eventBuf = new Uint8Array(64 * 1024);

/** Read every queued event (the fd is non-blocking) and drop it. */
function drain(fd: number): void {
  for (;;) {
    try {
      if (readInto(fd, eventBuf) === 0) return;
    } catch (e) {
      if (e instanceof SysError && e.errno === Errno.EAGAIN) return;
      throw e;
    }
  }
}

/** The path a watch is added by; an error names the watch and the path. */
export function watchPath(what: string, path: string | undefined): string {
  if (!path) throw new Error(`${what} has no path in the image`);
  if (!path.startsWith("/")) throw new Error(`${what}: the dumped path "${path}" is not absolute`);
  if (!statOrNull(path, AT.SYMLINK_NOFOLLOW)) throw new Error(`${what}: ${path} is gone`);
  return path;
}

/** Add `w` to instance `fd` so that it gets its dumped wd. */
function addWatchAs(fd: number, w: InotifyWdEntry): void {
  const what = `watch ${w.wd}`;
  const path = watchPath(what, w.fHandle?.path);
  const mask = (w.mask | IN.DONT_FOLLOW) >>> 0;
  let wd = inotifyAddWatch(fd, path, mask);
  for (let removed = 1; wd < w.wd; removed++) {
    inotifyRmWatch(fd, wd);
    if (removed % DRAIN_EVERY === 0) drain(fd);
    wd = inotifyAddWatch(fd, path, mask);
  }
  if (wd !== w.wd) throw new Error(`${what}: adding ${path} again gave wd ${wd} (the instance already watches that inode, or wds went past ${w.wd})`);
}

function makeInotify(ify: InotifyFileEntry, ctx: FileRestoreContext): number {
  // Non-blocking for the draining; the recorded status flags are set afterwards.
  const fd = ctx.own(inotifyInit1(IN.NONBLOCK | IN.CLOEXEC));
  for (const w of [...ify.wd].sort((a, b) => a.wd - b.wd)) addWatchAs(fd, w);
  drain(fd);
  return fd;
}

export const inotifyKind = standaloneKind({
  name: "inotify",
  type: FdTypes.INOTIFY,
  part: (e) => e.ify,
  field: "ify",
  describe: (ify) => `inotify with ${ify.wd.length} watch(es)`,
  make: makeInotify,
});
