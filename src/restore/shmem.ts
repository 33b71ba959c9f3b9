/**
 * Shared memory objects for restore: the contents of pagemap-shmem-SHMID.img
 * (runs of pages at offsets into the object, their bytes one after another in
 * the pages image the head names), and the shared anonymous objects of the
 * tree, each made once and mapped into every process that shared it.
 *
 * ckpt makes an object by mapping shared anonymous memory of the object's
 * size in itself and opening it through /proc/self/map_files: the fd is the
 * object itself (a "/dev/zero (deleted)" tmpfs inode, as the dumped one
 * was), which every restored process then maps at its areas' offsets, so a
 * write by one is seen by all again. The size is what CRIU takes too: the
 * furthest any area reaches into the object.
 */
import type { ImageSet } from "../image/image-set";
import type { MmEntry } from "../image/gen/mm_pb";
import { entryPageCount, splitPagemap } from "../image/pagemap";
import { VMA } from "../image/vma-status";
import { close, mmap, munmap, openat, preadInto, pwriteAll } from "../sys/libc";
import { AT, MAP, O, PAGE_SIZE, PROT } from "../sys/nr";

/** Bytes copied per pread/pwrite from a pages image into an object. */
const CHUNK = 1 << 20;

/** Copy the page runs of pagemap-shmem-SHMID.img from their pages image into `fd`; returns the pages copied. */
export function fillShmemContents(fd: number, shmid: number | bigint, images: ImageSet): number {
  const name = `pagemap-shmem-${shmid}.img`;
  // CRIU writes none for an object without pages (an empty memfd).
  const raw = images.raw(name, true);
  if (raw.length === 0) return 0;
  const { head, entries: runs } = splitPagemap(raw, name);
  if (runs.length === 0) return 0;
  const pagesName = `pages-${head.pagesId}.img`;
  const pages = openat(AT.FDCWD, images.path(pagesName), O.RDONLY | O.CLOEXEC);
  let copied = 0;
  try {
    const buf = new Uint8Array(CHUNK);
    let from = 0;
    for (const run of runs) {
      const len = entryPageCount(run) * PAGE_SIZE;
      for (let done = 0; done < len;) {
        const want = Math.min(CHUNK, len - done);
        const got = preadInto(pages, buf.subarray(0, want), from);
        if (got === 0) throw new Error(`${pagesName} ended at byte ${from}, short of what ${name} lists`);
        pwriteAll(fd, buf.subarray(0, got), Number(run.vaddr) + done);
        done += got;
        from += got;
      }
      copied += len / PAGE_SIZE;
    }
  } finally {
    close(pages);
  }
  return copied;
}

export class SharedAnonObjects {
  /** Bytes each object must hold, by shmid. */
  private readonly sizes = new Map<bigint, bigint>();
  /** ckpt's fd of each object made so far. */
  private readonly fds = new Map<bigint, number>();
  pages = 0;

  constructor(private readonly images: ImageSet, mms: readonly MmEntry[]) {
    for (const mm of mms) {
      for (const v of mm.vmas) {
        if ((v.status & VMA.ANON_SHARED) === 0) continue;
        if ((v.status & VMA.AREA_SYSVIPC) !== 0) throw new Error(`the area at 0x${v.start.toString(16)} is a SysV shared memory segment (shmid ${v.shmid}), which ckpt cannot restore`);
        const extent = v.pgoff + (v.end - v.start);
        if (extent > (this.sizes.get(v.shmid) ?? 0n)) this.sizes.set(v.shmid, extent);
      }
    }
  }

  /** ckpt's fd of object `shmid`, made with its contents on first use. */
  fd(shmid: bigint): number {
    const known = this.fds.get(shmid);
    if (known !== undefined) return known;
    const size = this.sizes.get(shmid);
    if (size === undefined) throw new Error(`no area of the image set maps shared memory object ${shmid}`);
    const at = mmap(0, Number(size), PROT.READ | PROT.WRITE, MAP.SHARED | MAP.ANONYMOUS);
    let fd: number;
    try {
      fd = openat(AT.FDCWD, `/proc/self/map_files/${at.toString(16)}-${(at + Number(size)).toString(16)}`, O.RDWR | O.CLOEXEC);
    } finally {
      munmap(at, Number(size));
    }
    this.fds.set(shmid, fd);
    this.pages += fillShmemContents(fd, shmid, this.images);
    return fd;
  }

  /** Close ckpt's fds (the restored processes' mappings keep the objects). */
  close(): void {
    for (const fd of this.fds.values()) close(fd);
    this.fds.clear();
  }
}
