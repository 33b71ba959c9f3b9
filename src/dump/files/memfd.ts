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
import { preadInto } from "../../sys/libc";
import { F, FS_MAGIC, O, PAGE_SIZE, S_IF, S_IFMT } from "../../sys/nr";
import { readFown, type OpenFd } from "./fd-access";
import { UnsupportedFileError } from "./file-table";
import type { FdDumpContext, FdKind } from "./kind";

const PREFIX = "/memfd:";
const DELETED = " (deleted)";

/** Page runs of a memfd's contents, waiting for the writer to give them a pages image. */
export interface ShmemContents {
  shmid: number;
  runs: { offset: bigint; data: Uint8Array }[];
}

function isZeroPage(data: Uint8Array, off: number): boolean {
  const words = new BigUint64Array(data.buffer, data.byteOffset + off, PAGE_SIZE / 8);
  for (let i = 0; i < words.length; i++) if (words[i] !== 0n) return false;
  return true;
}

/** The non-zero page runs of a file of `size` bytes read through `fd`. */
function readRuns(fd: number, size: number, what: string): ShmemContents["runs"] {
  const padded = Math.ceil(size / PAGE_SIZE) * PAGE_SIZE;
  const data = new Uint8Array(padded);
  for (let off = 0; off < size;) {
    const n = preadInto(fd, data.subarray(off, size), off);
    if (n === 0) throw new Error(`${what}: memfd ended at ${off} of ${size} bytes while frozen`);
    off += n;
  }
  const runs: ShmemContents["runs"] = [];
  let start = -1;
  for (let off = 0; off <= padded; off += PAGE_SIZE) {
    const keep = off < padded && !isZeroPage(data, off);
    if (keep && start < 0) start = off;
    if (!keep && start >= 0) {
      runs.push({ offset: BigInt(start), data: data.subarray(start, off) });
      start = -1;
    }
  }
  return runs;
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
    const inodes = (ctx.shared.get("memfd") as Map<bigint, number> | undefined) ?? new Map<bigint, number>();
    ctx.shared.set("memfd", inodes);
    let inodeId = inodes.get(f.st.ino);
    if (inodeId === undefined) {
      inodeId = inodes.size + 1;
      inodes.set(f.st.ino, inodeId);
      const what = `process ${f.pid} fd ${f.fd} (${f.link})`;
      ctx.table.image("memfd.img", "MEMFD_INODE").add(MemfdInodeEntrySchema, create(MemfdInodeEntrySchema, {
        name: f.link.slice(PREFIX.length, -DELETED.length),
        uid: f.st.uid, gid: f.st.gid, size: f.st.size, shmid: inodeId,
        seals: fcntl(local, F.GET_SEALS), inodeId: BigInt(inodeId), mode: f.st.mode & 0o7777,
      }));
      ctx.table.shmem.push({ shmid: inodeId, runs: readRuns(ctx.access.reopen(f.fd, O.RDONLY), Number(f.st.size), what) });
    }
    ctx.table.add(create(FileEntrySchema, {
      type: FdTypes.MEMFD, id,
      memfd: create(MemfdFileEntrySchema, { id, flags: f.info.flags & ~O.CLOEXEC, pos: f.info.pos, fown: readFown(local), inodeId }),
    }));
  },
};
