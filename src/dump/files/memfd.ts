/**
 * memfd: the file (flags, position, owner) and its inode (name, owner, size,
 * seals, contents). Several open files can share one memfd inode (reopened
 * through /proc), so the inode is saved once, under an inode id.
 *
 * Contents are kept as CRIU keeps shared memory: a pagemap-shmem-ID image
 * whose entries are page runs at file offsets, with the pages in a pages-N
 * image. Pages of zeros are left out: a restored memfd reads zeros there.
 */
import { create } from "@bufbuild/protobuf";
import { FdTypes, FileEntrySchema } from "../../image/gen/fdinfo_pb";
import { MemfdFileEntrySchema, MemfdInodeEntrySchema } from "../../image/gen/memfd_pb";
import { fcntl, fstatfsType } from "../../sys/calls";
import { close } from "../../sys/libc";
import { readObject, type ShmemContents } from "../memory/shmem";
import { F, FS_MAGIC, O, PAGE_SIZE, S_IF, S_IFMT } from "../../sys/nr";
import { readFown, type OpenFd } from "./fd-access";
import { noOwner, UnsupportedFileError, type FileTable } from "./file-table";
import type { FownEntry } from "../../image/gen/fown_pb";
import type { FileEntry } from "../../image/gen/fdinfo_pb";
import type { ProcFs } from "../../proc/procfs";
import type { Statx } from "../../sys/structs";
import type { FdDumpContext, FdKind } from "./kind";

const PREFIX = "/memfd:";
const DELETED = " (deleted)";

function isZeroPage(data: Uint8Array, off: number): boolean {
  const words = new BigUint64Array(data.buffer, data.byteOffset + off, PAGE_SIZE / 8);
  for (let i = 0; i < words.length; i++) if (words[i] !== 0n) return false;
  return true;
}

/** The pages of a memfd of `size` bytes read through `fd`, without its holes and pages of zeros. */
function readMemfd(fd: number, size: number, what: string): ShmemContents {
  const { runs: read, buffer } = readObject(fd, BigInt(size), what);
  const runs: ShmemContents["runs"] = [];
  for (const r of read) {
    let start = -1;
    for (let off = 0; off <= r.data.length; off += PAGE_SIZE) {
      const keep = off < r.data.length && !isZeroPage(r.data, off);
      if (keep && start < 0) start = off;
      if (!keep && start >= 0) {
        runs.push({ offset: r.offset + BigInt(start), data: r.data.subarray(start, off) });
        start = -1;
      }
    }
  }
  return { shmid: 0, runs, buffer };
}

/**
 * The memfd inode behind `fd` (ckpt's own fd of it), saved with its contents
 * the first time it is seen; returns its inode id.
 */
function memfdInode(fd: number, st: Statx, link: string, table: FileTable, what: string): number {
  let inodeId = table.memfdInodes.get(st.ino);
  if (inodeId !== undefined) return inodeId;
  inodeId = table.memfdInodes.size + 1;
  table.memfdInodes.set(st.ino, inodeId);
  table.image("memfd.img", "MEMFD_INODE").add(MemfdInodeEntrySchema, create(MemfdInodeEntrySchema, {
    name: link.slice(PREFIX.length, -DELETED.length),
    uid: st.uid, gid: st.gid, size: st.size, shmid: inodeId,
    seals: fcntl(fd, F.GET_SEALS), inodeId: BigInt(inodeId), mode: st.mode & 0o7777,
  }));
  table.shmem.push({ ...readMemfd(fd, Number(st.size), what), shmid: inodeId });
  return inodeId;
}

function memfdFile(id: number, flags: number, pos: bigint, fown: FownEntry, inodeId: number): FileEntry {
  return create(FileEntrySchema, {
    type: FdTypes.MEMFD, id,
    memfd: create(MemfdFileEntrySchema, { id, flags, pos, fown, inodeId }),
  });
}

/**
 * A memfd that a process maps (its fd may be closed: the mapping holds the
 * file): a file entry of its own, with the area's access mode, that the vma
 * names by id. Returns that id.
 */
export function dumpMappedMemfd(proc: ProcFs, pid: number, range: string, link: string, flags: number, table: FileTable): number {
  const fd = proc.open(pid, `map_files/${range}`);
  try {
    if (fstatfsType(fd) !== FS_MAGIC.TMPFS) throw new UnsupportedFileError(pid, `the mapping at 0x${range}`, `a hugetlb memfd (${link})`);
    const inodeId = memfdInode(fd, proc.fstat(fd), link, table, `process ${pid}'s mapping of ${link} at 0x${range}`);
    const id = table.newId();
    table.add(memfdFile(id, flags, 0n, noOwner(), inodeId));
    return id;
  } finally {
    close(fd);
  }
}

export const memfdKind: FdKind = {
  name: "memfd",
  type: FdTypes.MEMFD,
  matches: (f) => f.link.startsWith(PREFIX) && f.link.endsWith(DELETED) && f.st.nlink === 0 && (f.st.mode & S_IFMT) === S_IF.REG,
  dump(f: OpenFd, id: number, ctx: FdDumpContext) {
    const local = ctx.access.local(f.fd);
    const fsType = fstatfsType(local);
    if (fsType === FS_MAGIC.HUGETLBFS) throw new UnsupportedFileError(f.pid, f.fd, "a hugetlb memfd");
    if (fsType !== FS_MAGIC.TMPFS) throw new UnsupportedFileError(f.pid, f.fd, `an unlinked file named like a memfd (${f.link})`);
    let inodeId = ctx.table.memfdInodes.get(f.st.ino);
    inodeId ??= memfdInode(ctx.access.reopen(f.fd, O.RDONLY), f.st, f.link, ctx.table, `process ${f.pid} fd ${f.fd} (${f.link})`);
    ctx.table.add(memfdFile(id, f.info.flags & ~O.CLOEXEC, f.info.pos, readFown(local), inodeId));
  },
};
