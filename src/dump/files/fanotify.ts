/**
 * fanotify: the group's fanotify_init flags and event flags, and its marks
 * from fdinfo. An inode mark keeps its inode, file handle and a path from the
 * irmap; a mount mark keeps the mount's id and mount point. Restore re-adds
 * both by path.
 *
 * Filesystem and mount-namespace marks are refused: CRIU's image format has
 * no form for them. Queued events are not saved (nor does CRIU save them);
 * events waiting for a permission answer would block their processes anyway.
 */
import { create } from "@bufbuild/protobuf";
import { FdTypes, FileEntrySchema } from "../../image/gen/fdinfo_pb";
import {
  FanotifyFileEntrySchema, FanotifyInodeMarkEntrySchema, FanotifyMarkEntrySchema, FanotifyMountMarkEntrySchema,
  MarkType, type FanotifyMarkEntry,
} from "../../image/gen/fsnotify_pb";
import type { FanotifyMarkInfo } from "../../proc/fdinfo";
import { readMountInfo, type MountInfo } from "../../proc/mountinfo";
import { O } from "../../sys/nr";
import { encodeKernelDev } from "../../sys/structs";
import { devName } from "./irmap";
import { readFown, type OpenFd } from "./fd-access";
import { UnsupportedFileError } from "./file-table";
import { fileHandleEntry, watchedPath } from "./inotify";
import type { FdDumpContext, FdKind } from "./kind";

function markEntry(f: OpenFd, id: number, m: FanotifyMarkInfo, ctx: FdDumpContext, mounts: () => MountInfo[]): FanotifyMarkEntry {
  const common = { id, mflags: m.mflags, mask: m.mask, ignoredMask: m.ignoredMask };
  switch (m.type) {
    case "inode":
      return create(FanotifyMarkEntrySchema, {
        ...common, type: MarkType.INODE, sDev: m.sdev,
        ie: create(FanotifyInodeMarkEntrySchema, { iIno: m.ino, fHandle: fileHandleEntry(m, watchedPath(ctx, f, `fanotify mark on inode ${m.ino}`, m)) }),
      });
    case "mount": {
      const mount = mounts().find((x) => x.mntId === m.mntId);
      if (!mount) throw new Error(`process ${f.pid}: fd ${f.fd}: fanotify mount mark on mount ${m.mntId}, which /proc/${f.pid}/mountinfo does not list`);
      return create(FanotifyMarkEntrySchema, {
        ...common, type: MarkType.MOUNT, sDev: encodeKernelDev(mount.major, mount.minor),
        me: create(FanotifyMountMarkEntrySchema, { mntId: m.mntId, path: mount.mountPoint }),
      });
    }
    case "filesystem":
      throw new UnsupportedFileError(f.pid, f.fd, `a fanotify fd with a filesystem mark (FAN_MARK_FILESYSTEM) on device ${devName(m.sdev)} (CRIU's image format has no form for such marks)`);
    case "mntns":
      throw new UnsupportedFileError(f.pid, f.fd, `a fanotify fd with a mount namespace mark (FAN_MARK_MNTNS, namespace ${m.ns}; CRIU's image format has no form for such marks)`);
    case "unknown":
      throw new UnsupportedFileError(f.pid, f.fd, `a fanotify fd with a kind of mark ckpt does not know ("${m.line}")`);
  }
}

export const fanotifyKind: FdKind = {
  name: "fanotify",
  type: FdTypes.FANOTIFY,
  matches: (f) => f.link === "anon_inode:[fanotify]",
  dump(f, id, ctx) {
    const group = f.info.fanotify;
    if (!group) throw new Error(`process ${f.pid} fd ${f.fd}: fanotify fdinfo has no "fanotify flags" line`);
    let mounts: MountInfo[] | undefined;
    const mountTable = (): MountInfo[] => (mounts ??= readMountInfo(ctx.proc, f.pid));
    const mark = group.marks.map((m) => markEntry(f, id, m, ctx, mountTable));
    ctx.table.add(create(FileEntrySchema, {
      type: FdTypes.FANOTIFY, id,
      ffy: create(FanotifyFileEntrySchema, {
        id, flags: f.info.flags & ~O.CLOEXEC, fown: readFown(ctx.access.local(f.fd)),
        faflags: group.flags, evflags: group.eventFlags, mark,
      }),
    }));
  },
};
