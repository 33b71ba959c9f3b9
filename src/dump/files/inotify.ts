/**
 * inotify: every watch with its wd, mask, inode and file handle from fdinfo,
 * and a path for the inode from the irmap — restore re-adds watches by path.
 *
 * Events queued on the fd and not yet read are not saved (CRIU does not save
 * them either): the restored instance starts with an empty queue.
 */
import { create } from "@bufbuild/protobuf";
import { FdTypes, FileEntrySchema } from "../../image/gen/fdinfo_pb";
import { FhEntrySchema, type FhEntry } from "../../image/gen/fh_pb";
import { InotifyFileEntrySchema, InotifyWdEntrySchema } from "../../image/gen/fsnotify_pb";
import { O } from "../../sys/nr";
import { MAX_HANDLE_SZ } from "../../sys/structs";
import { watchHandle } from "./irmap";
import { readFown, type OpenFd } from "./fd-access";
import type { FdDumpContext, FdKind } from "./kind";

/** A watched inode as fdinfo describes it (an inotify watch or a fanotify inode mark). */
export interface WatchedInode {
  ino: bigint;
  sdev: number;
  fhandleBytes: number;
  fhandleType: number;
  fhandle: Uint8Array;
}

/**
 * The image's form of a file handle: its bytes in little-endian 64-bit words,
 * zero-padded to the largest handle (MAX_HANDLE_SZ), the size CRIU writes, so
 * a reader that copies a full-size handle out of the words finds them all.
 */
export function fileHandleEntry(w: WatchedInode, path: string): FhEntry {
  const padded = new Uint8Array(Math.max(MAX_HANDLE_SZ, Math.ceil(w.fhandle.length / 8) * 8));
  padded.set(w.fhandle);
  const words = new BigUint64Array(padded.buffer);
  return create(FhEntrySchema, { bytes: w.fhandleBytes, type: w.fhandleType, handle: [...words], path });
}

/** The path of a watched inode; an error names the process, fd and watch. */
export function watchedPath(ctx: FdDumpContext, f: OpenFd, what: string, w: WatchedInode): string {
  try {
    return ctx.irmap.resolve(w.sdev, w.ino, watchHandle(w));
  } catch (e) {
    throw new Error(`process ${f.pid}: fd ${f.fd}: ${what}: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
  }
}

export const inotifyKind: FdKind = {
  name: "inotify",
  type: FdTypes.INOTIFY,
  matches: (f) => f.link === "anon_inode:inotify",
  dump(f, id, ctx) {
    // fdinfo lists the newest watch first; restore needs them by ascending wd.
    const watches = [...f.info.inotify].sort((a, b) => a.wd - b.wd);
    const wd = watches.map((w) => create(InotifyWdEntrySchema, {
      id, iIno: w.ino, mask: w.mask, ignoredMask: w.ignoredMask, sDev: w.sdev, wd: w.wd,
      fHandle: fileHandleEntry(w, watchedPath(ctx, f, `inotify watch ${w.wd}`, w)),
    }));
    ctx.table.add(create(FileEntrySchema, {
      type: FdTypes.INOTIFY, id,
      ify: create(InotifyFileEntrySchema, { id, flags: f.info.flags & ~O.CLOEXEC, fown: readFown(ctx.access.local(f.fd)), wd }),
    }));
  },
};
