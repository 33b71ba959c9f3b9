/**
 * fanotify: a new group made with the dumped fanotify_init flags and event
 * flags, and every mark added again by path: an inode mark by the path the
 * dump found for its inode (not following a final symlink, since the path
 * names the marked inode itself), a mount mark by its mount point.
 *
 * A mark's event mask and its ignore mask are added by two calls, the second
 * with the flag that makes it the ignore mask: FAN_MARK_IGNORE where the mark
 * had it (its newer meaning, which also covers directories' children),
 * FAN_MARK_IGNORED_MASK otherwise. FAN_MARK_IGNORED_SURV_MODIFY goes with the
 * ignore mask, and FAN_MARK_EVICTABLE with both (a mark cannot become
 * evictable once it is not).
 */
import { FdTypes } from "../../image/gen/fdinfo_pb";
import { MarkType, type FanotifyFileEntry, type FanotifyMarkEntry } from "../../image/gen/fsnotify_pb";
import { fanotifyInit, fanotifyMark } from "../../sys/calls";
import { FAN, FAN_MARK } from "../../sys/nr";
import type { FileRestoreContext } from "./kind";
import { watchPath } from "./inotify";
import { standaloneKind } from "./standalone";

/** The path a mark is added by, and the flags that say what kind of mark it is. */
function target(m: FanotifyMarkEntry, index: number): { path: string; flags: number; what: string } {
  switch (m.type) {
    case MarkType.INODE: {
      const what = `mark ${index} (inode ${m.ie?.iIno ?? "?"})`;
      return { path: watchPath(what, m.ie?.fHandle?.path), flags: FAN_MARK.DONT_FOLLOW | (m.mflags & FAN_MARK.EVICTABLE), what };
    }
    case MarkType.MOUNT: {
      const what = `mark ${index} (mount ${m.me?.mntId ?? "?"})`;
      return { path: watchPath(what, m.me?.path), flags: FAN_MARK.MOUNT, what };
    }
    default:
      throw new Error(`mark ${index} is of unknown type ${m.type}`);
  }
}

function addMark(fd: number, m: FanotifyMarkEntry, index: number): void {
  const t = target(m, index);
  const add = FAN_MARK.ADD | t.flags;
  try {
    if (m.mask !== 0) fanotifyMark(fd, add, BigInt(m.mask >>> 0), t.path);
    if (m.ignoredMask !== 0) {
      const ignore = m.mflags & FAN_MARK.IGNORE ? FAN_MARK.IGNORE : FAN_MARK.IGNORED_MASK;
      fanotifyMark(fd, add | ignore | (m.mflags & FAN_MARK.IGNORED_SURV_MODIFY), BigInt(m.ignoredMask >>> 0), t.path);
    }
  } catch (e) {
    throw new Error(`${t.what} on ${t.path}: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
  }
}

function makeFanotify(ffy: FanotifyFileEntry, ctx: FileRestoreContext): number {
  const fd = ctx.own(fanotifyInit(ffy.faflags | FAN.CLOEXEC, ffy.evflags));
  ffy.mark.forEach((m, i) => addMark(fd, m, i));
  return fd;
}

export const fanotifyKind = standaloneKind({
  name: "fanotify",
  type: FdTypes.FANOTIFY,
  part: (e) => e.ffy,
  field: "ffy",
  describe: (ffy) => `fanotify with ${ffy.mark.length} mark(s)`,
  make: makeFanotify,
});
