/**
 * Regular files, directories and the "mem" character devices (/dev/null,
 * /dev/zero, /dev/urandom ...), which CRIU also describes as regular files.
 *
 * A file that is open but unlinked has no path to reopen at restore, so its
 * contents go into a ghost-file image (as CRIU's ghost files do) and a
 * remap-fpath entry points the file entry at it.
 */
import { create } from "@bufbuild/protobuf";
import { FdTypes } from "../../image/gen/fdinfo_pb";
import { GhostChunkEntrySchema, GhostFileEntrySchema } from "../../image/gen/ghost-file_pb";
import { RemapFilePathEntrySchema, RemapType } from "../../image/gen/remap-file-path_pb";
import type { ProcFs } from "../../proc/procfs";
import { close, preadFull } from "../../sys/libc";
import { nextData } from "../../sys/shmem";
import { O, S_IF, S_IFMT } from "../../sys/nr";
import type { Statx } from "../../sys/structs";
import type { FownEntry } from "../../image/gen/fown_pb";
import { readFown, type OpenFd } from "./fd-access";
import { UnsupportedFileError, type FileTable } from "./file-table";
import type { FdDumpContext, FdKind } from "./kind";

/** Character devices of the "mem" driver (null, zero, full, random, urandom ...). */
const MEM_MAJOR = 1;
const DELETED = " (deleted)";

export function isPlainFile(st: Statx): boolean {
  const type = st.mode & S_IFMT;
  if (type === S_IF.REG || type === S_IF.DIR) return true;
  return type === S_IF.CHR && st.rdevMajor === MEM_MAJOR;
}

/** The path of an fd or link, and whether the file behind it is unlinked. */
function pathOf(link: string, st: Statx): { path: string; unlinked: boolean } {
  if (link.endsWith(DELETED) && st.nlink === 0) return { path: link.slice(0, -DELETED.length), unlinked: true };
  return { path: link, unlinked: false };
}

/** Bytes per ghost chunk (and pread) when saving an unlinked file. */
const CHUNK = 1 << 20;

/**
 * Point file `id` at a ghost file holding the contents of the unlinked file
 * `st` (read through `file`, a new open of /proc/PID/fd/N or map_files/...,
 * so a write-only fd does not matter and the target's own file position is
 * not touched). One inode is saved once however many fds and mappings hold it.
 */
function saveGhost(pid: number, what: number | string, st: Statx, id: number, table: FileTable, file: () => number, closeFile = false): void {
  const fifo = (st.mode & S_IFMT) === S_IF.FIFO;
  if ((st.mode & S_IFMT) !== S_IF.REG && !fifo) throw new UnsupportedFileError(pid, what, "an unlinked directory or device");
  if (table.ghostLimit !== undefined && st.size > table.ghostLimit) {
    throw new UnsupportedFileError(pid, what, `an unlinked file of ${st.size} bytes, more than --ghost-limit (${table.ghostLimit}) allows saving`);
  }
  const inode = `${st.dev}:${st.ino}`;
  let ghostId = table.ghosts.get(inode);
  if (ghostId === undefined) {
    ghostId = table.newId();
    table.ghosts.set(inode, ghostId);
    const enc = table.image(`ghost-file-${ghostId.toString(16)}.img`, "GHOST_FILE");
    const mtim = { tvSec: st.mtimeSec, tvUsec: BigInt(Math.floor(st.mtimeNsec / 1000)) };
    if (fifo) {
      // A FIFO's ghost is its inode only: its unread bytes are in fifo-data.img.
      enc.add(GhostFileEntrySchema, create(GhostFileEntrySchema, { uid: st.uid, gid: st.gid, mode: st.mode, dev: st.dev, ino: st.ino, mtim }));
      addRemap(table, id, ghostId);
      return;
    }
    enc.add(GhostFileEntrySchema, create(GhostFileEntrySchema, {
      uid: st.uid, gid: st.gid, mode: st.mode, dev: st.dev, ino: st.ino, mtim,
      chunks: true, size: st.size,
    }));
    const fd = file();
    try {
      for (const chunk of dataChunks(pid, what, st, fd)) {
        enc.add(GhostChunkEntrySchema, create(GhostChunkEntrySchema, { off: chunk.off, len: BigInt(chunk.data.length) }), chunk.data);
      }
    } finally {
      if (closeFile) close(fd);
    }
  }
  addRemap(table, id, ghostId);
}

function addRemap(table: FileTable, id: number, ghostId: number): void {
  table.image("remap-fpath.img", "REMAP_FPATH").add(RemapFilePathEntrySchema, create(RemapFilePathEntrySchema, {
    origId: id, remapId: ghostId, remapType: RemapType.GHOST,
  }));
}

/**
 * The data of a file as chunks, its holes left out (SEEK_DATA/SEEK_HOLE; a
 * file system without them reports one run of data): a sparse file of a
 * gigabyte with a few pages written costs those pages, and comes back sparse.
 */
function* dataChunks(pid: number, what: number | string, st: Statx, fd: number): Generator<{ off: bigint; data: Uint8Array }> {
  for (let at = 0n; at < st.size;) {
    const run = nextData(fd, at);
    if (!run || run.start >= st.size) return;
    const end = run.end < st.size ? run.end : st.size;
    for (let off = run.start; off < end;) {
      const len = Number(end - off < BigInt(CHUNK) ? end - off : BigInt(CHUNK));
      yield { off, data: readExactly(pid, what, fd, off, len) };
      off += BigInt(len);
    }
    at = end;
  }
}

function readExactly(pid: number, what: number | string, fd: number, offset: bigint, length: number): Uint8Array {
  const data = new Uint8Array(length);
  const done = preadFull(fd, data, offset);
  if (done < length) throw new Error(`process ${pid}: ${typeof what === "number" ? `fd ${what}` : what}: unlinked file ended at ${offset + BigInt(done)} bytes while frozen`);
  return data;
}

export const regularKind: FdKind = {
  name: "regular file",
  type: FdTypes.REG,
  matches: (f) => isPlainFile(f.st),
  dump(f: OpenFd, id: number, ctx: FdDumpContext): void {
    if (!f.link.startsWith("/")) throw new UnsupportedFileError(f.pid, f.fd, `a file without a path (${f.link})`);
    const { path, unlinked } = pathOf(f.link, f.st);
    ctx.table.addRegular({
      path, flags: f.info.flags & ~O.CLOEXEC, pos: f.info.pos, st: f.st,
      open: { fd: () => ctx.access.reopen(f.fd, O.RDONLY), close: false },
      // An O_PATH fd has no owner (fcntl F_GETOWN_EX fails on it with EBADF).
      ...(f.info.flags & O.PATH ? {} : { fown: readFown(ctx.access.local(f.fd)) }),
    }, id);
    if (unlinked) saveGhost(f.pid, f.fd, f.st, id, ctx.table, () => ctx.access.reopen(f.fd, O.RDONLY));
  },
};

/**
 * A directory or file named by a /proc link (cwd, root, exe) as a
 * regular-file entry; an unlinked exe keeps its contents as a ghost file.
 */
export function dumpLinkedFile(proc: ProcFs, pid: number, name: "cwd" | "root" | "exe", table: FileTable): number {
  const link = proc.readlink(pid, name);
  const st = proc.stat(pid, name);
  if (!link.startsWith("/")) throw new UnsupportedFileError(pid, name, `not a file with a path (${link})`);
  const { path, unlinked } = pathOf(link, st);
  if (unlinked && name !== "exe") throw new UnsupportedFileError(pid, name, `a removed directory (${link})`);
  const flags = name === "exe" ? O.RDONLY : O.RDONLY | O.DIRECTORY;
  const id = table.addRegular({ path, flags, pos: 0n, st, open: { fd: () => proc.open(pid, name, O.RDONLY | O.CLOEXEC), close: true } });
  if (unlinked) saveGhost(pid, name, st, id, table, () => proc.open(pid, name, O.RDONLY), true);
  return id;
}

/**
 * The file entry of a mapped file (`link` as /proc/PID/map_files/RANGE
 * shows it, `st` its stat): an unlinked one keeps its contents as a ghost
 * file, shared with the ghost of an fd on the same inode.
 */
export function addMappedFile(proc: ProcFs, pid: number, range: string, link: string, flags: number, st: Statx, table: FileTable): number {
  const { path, unlinked } = pathOf(link, st);
  if (!path.startsWith("/") || (!unlinked && path.endsWith(DELETED))) {
    throw new UnsupportedFileError(pid, `the mapping at 0x${range}`, `a mapping of ${link || "an unnamed file"}`);
  }
  const id = table.addRegular({ path, flags, pos: 0n, st, open: { fd: () => proc.open(pid, `map_files/${range}`, O.RDONLY | O.CLOEXEC), close: true } });
  if (unlinked) saveGhost(pid, `the mapping at 0x${range}`, st, id, table, () => proc.open(pid, `map_files/${range}`, O.RDONLY), true);
  return id;
}

/**
 * The path entry of a FIFO fd (a FIFO entry names it by regf_id); one that
 * was unlinked gets a ghost holding its inode, re-made with mknod at restore.
 */
export function addFifoPath(f: OpenFd, fown: FownEntry, table: FileTable, fdOf: () => number): number {
  const { path, unlinked } = pathOf(f.link, f.st);
  const id = table.addRegular({ path, flags: f.info.flags & ~O.CLOEXEC, pos: 0n, st: f.st, fown });
  if (unlinked) saveGhost(f.pid, f.fd, f.st, id, table, fdOf);
  return id;
}
