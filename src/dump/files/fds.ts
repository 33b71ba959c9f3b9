/**
 * Every fd of a process: fdinfo entries for its fd table, files.img entries
 * (through the kind table) for each open file seen for the first time.
 *
 * Per fd, ckpt pays one statx and one fdinfo read — what the genid needs —
 * and the fdinfo entry's type comes from the kind of the file's id. Reading
 * the link, pidfd_getfd and kind-specific calls happen once per open file,
 * not once per fd.
 */
import { create } from "@bufbuild/protobuf";
import { FdinfoEntrySchema, type FdinfoEntry, type FdTypes } from "../../image/gen/fdinfo_pb";
import { readFdInfo } from "../../proc/fdinfo";
import { O } from "../../sys/nr";
import { FdAccess, type OpenFd } from "./fd-access";
import type { FileLocks } from "./file-locks";
import { genid, type FileIds } from "./file-ids";
import { UnsupportedFileError } from "./file-table";
import type { FdDumpContext, FdKind } from "./kind";
import { describeKind, findKind } from "./kinds";

/** FD_CLOEXEC as fdinfo entries store it. */
const FD_CLOEXEC = 1;

/** State of the files part of one dump, across processes. */
export interface FilesDump {
  ids: FileIds;
  /** The kind of every file id handed out for an fd. */
  kinds: Map<number, FdKind>;
  /** The file locks the tree holds (refused unless --file-locks). */
  locks: FileLocks;
  ctx: Omit<FdDumpContext, "access">;
}

/** fdinfo entries of one process's fd table; new open files go into the table. */
export function dumpFds(files: FilesDump, pid: number): FdinfoEntry[] {
  const { proc, table } = files.ctx;
  const access = new FdAccess(proc, pid);
  const ctx: FdDumpContext = { ...files.ctx, access };
  try {
    const fds = proc.list(pid, "fd").map(Number).sort((a, b) => a - b);
    const out: FdinfoEntry[] = [];
    for (const fd of fds) {
      const st = proc.stat(pid, `fd/${fd}`);
      const info = readFdInfo(proc, pid, fd);
      const { id, fresh } = files.ids.identify(pid, fd, genid(st.dev, st.ino, info.pos), () => table.newId());
      let kind = files.kinds.get(id);
      if (fresh || !kind) {
        const f: OpenFd = { pid, fd, link: proc.readlink(pid, `fd/${fd}`), st, info };
        kind = findKind(f, ctx);
        if (!kind) throw new UnsupportedFileError(pid, fd, describeKind(f));
        try {
          kind.dump(f, id, ctx);
        } finally {
          access.release();
        }
        files.kinds.set(id, kind);
      }
      if (info.locks.length > 0 || info.unreadLocks.length > 0) files.locks.note(pid, fd, id, proc.readlink(pid, `fd/${fd}`), info);
      out.push(create(FdinfoEntrySchema, { id, flags: info.flags & O.CLOEXEC ? FD_CLOEXEC : 0, type: kind.type as FdTypes, fd }));
    }
    return out;
  } finally {
    access.close();
  }
}

/** Checks that need every process dumped (socket peers inside the tree ...). */
export function finishFds(files: FilesDump): void {
  for (const kind of new Set(files.kinds.values())) kind.finish?.(files.ctx);
}
