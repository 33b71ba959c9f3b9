/**
 * memfd: each inode of memfd.img is made once, with memfd_create under its
 * name, and given its size, contents, owner and mode; each open file of it
 * (files.img's memfd entries) is an open of that inode with its own flags
 * and position — the first read-write one is the created fd itself, others
 * open it again through /proc/self/fd. Seals come last: F_SEAL_WRITE would
 * refuse the contents, and sealed files refuse writable opens.
 *
 * Contents are kept as CRIU keeps shared memory: pagemap-shmem-SHMID.img
 * lists runs of pages at file offsets, whose bytes follow one another in the
 * pages image it names. What no run covers reads as zeros.
 */
import { FdTypes, type FileEntry } from "../../image/gen/fdinfo_pb";
import { MemfdInodeEntrySchema, type MemfdInodeEntry } from "../../image/gen/memfd_pb";
import { fchmod, fchown, fcntl, ftruncate, memfdCreate } from "../../sys/calls";
import { fillShmemContents } from "../shmem";
import { F, MFD, O } from "../../sys/nr";
import { O_ACCMODE, reopenOwn, restoreFileState } from "./file-state";
import { forFile, part, type FileRestoreContext, type FileRestoreKind } from "./kind";

/** A memfd for `inode` with its size, contents, owner and mode, but no seals yet. */
function createInode(inode: MemfdInodeEntry, ctx: FileRestoreContext): number {
  if (inode.hugetlbFlag) throw new Error("a hugetlb memfd, which ckpt cannot restore yet");
  const fd = ctx.own(memfdCreate(inode.name, MFD.CLOEXEC | MFD.ALLOW_SEALING));
  fillShmemContents(fd, inode.shmid, ctx.images);
  // After the contents: the last run is whole pages and may pass the size.
  ftruncate(fd, inode.size);
  fchown(fd, inode.uid, inode.gid);
  if (inode.mode !== 0) fchmod(fd, inode.mode & 0o7777);
  return fd;
}

export const memfdKind: FileRestoreKind = {
  name: "memfd",
  type: FdTypes.MEMFD,
  open(entries, ctx) {
    const inodes = new Map<number, MemfdInodeEntry>();
    for (const i of ctx.images.entries("memfd.img", MemfdInodeEntrySchema)) inodes.set(Number(i.inodeId), i);
    const byInode = new Map<number, FileEntry[]>();
    for (const e of entries) {
      const m = part(e, e.memfd, "memfd");
      byInode.set(m.inodeId, [...(byInode.get(m.inodeId) ?? []), e]);
    }
    for (const [inodeId, files] of byInode) {
      const inode = inodes.get(inodeId);
      if (!inode) throw new Error(`file id ${files[0]!.id} (memfd): memfd.img has no inode ${inodeId}`);
      const what = `memfd "${inode.name}"`;
      const created = forFile(files[0]!.id, what, () => createInode(inode, ctx));
      let given = false;
      for (const e of files) {
        const m = e.memfd!;
        forFile(e.id, what, () => {
          const mine = !given && (m.flags & O_ACCMODE) === O.RDWR;
          given ||= mine;
          const fd = mine ? created : ctx.own(reopenOwn(created, m.flags));
          restoreFileState(fd, { flags: m.flags, fown: m.fown, pos: m.pos }, ctx);
          ctx.keep(e.id, fd);
        });
      }
      forFile(files[0]!.id, what, () => {
        if (inode.seals !== 0) fcntl(created, F.ADD_SEALS, inode.seals);
        if (!given) ctx.closeNow(created);
      });
    }
  },
};
