/**
 * Shared anonymous memory (MAP_SHARED|MAP_ANONYMOUS, or a shared mapping of
 * /dev/zero): one tmpfs object on the kernel's internal shm mount, named
 * "/dev/zero (deleted)" in smaps, however many areas and processes map it
 * (fork copies the mapping, not the memory). CRIU's format names the object
 * by its inode number (vma.shmid, status VMA_ANON_SHARED) and keeps its
 * contents once, in pagemap-shmem-SHMID.img, at offsets into the object.
 *
 * The contents are read from the object itself, through a map_files link
 * of one of its areas: SEEK_DATA/SEEK_HOLE give the pages it holds (in
 * memory or in swap), so pages nobody touched cost nothing and a page
 * mapped by four processes is read once.
 */
import type { MapArea } from "../../proc/maps";
import type { ProcFs } from "../../proc/procfs";
import { nextData } from "../../sys/shmem";
import { close, preadFull } from "../../sys/libc";
import { PAGE_SIZE } from "../../sys/nr";
import { mapPageBuffer, type PageData } from "./pages";

/** Page runs of a shared memory object (or memfd), waiting for the writer to give them a pages image. */
export interface ShmemContents {
  shmid: number;
  runs: { offset: bigint; data: Uint8Array }[];
  /** The buffer the runs' data lives in; released after the write (or a failed dump). */
  buffer: PageData;
}

/**
 * The pages an object on the shm mount holds below `extent`, read through
 * `fd`: SEEK_DATA/SEEK_HOLE find them, and they are read into one mapped
 * buffer (huge pages: first-touch faults of a fresh buffer cost more than
 * the copy here).
 */
export function readObject(fd: number, extent: bigint, what: string): { runs: ShmemContents["runs"]; buffer: PageData } {
  const found: { offset: bigint; length: number }[] = [];
  let total = 0;
  for (let at = 0n; at < extent;) {
    const run = nextData(fd, at);
    if (!run || run.start >= extent) break;
    const end = run.end < extent ? run.end : extent;
    const length = Number(end - run.start);
    found.push({ offset: run.start, length: Math.ceil(length / PAGE_SIZE) * PAGE_SIZE });
    total += found[found.length - 1]!.length;
    at = end;
  }
  const buffer = mapPageBuffer(total);
  try {
    let at = 0;
    const runs = found.map((r) => {
      const data = buffer.view(at, r.length);
      at += r.length;
      readRange(fd, r.offset, data, extent, what);
      return { offset: r.offset, data };
    });
    return { runs, buffer };
  } catch (e) {
    buffer.dispose();
    throw e;
  }
}

/** One object, as the areas seen so far describe it. */
interface SharedObject {
  /** A process and area through which the object can be opened. */
  pid: number;
  start: bigint;
  end: bigint;
  /** Bytes from the object's start that some area reaches (pgoff + length). */
  extent: bigint;
}

export interface SharedMemoryCounters {
  objects: number;
  /** Pages of the objects' extents, and pages they hold (saved). */
  pagesScanned: number;
  pagesWritten: number;
}

export class SharedAnonMemory {
  private readonly objects = new Map<bigint, SharedObject>();

  /** Note an area of the object `area.inode`, mapped by `pid` at `area.offset` into it. */
  note(pid: number, area: MapArea): void {
    const extent = area.offset + (area.end - area.start);
    const known = this.objects.get(area.inode);
    if (!known) this.objects.set(area.inode, { pid, start: area.start, end: area.end, extent });
    else if (extent > known.extent) known.extent = extent;
  }

  get size(): number {
    return this.objects.size;
  }

  /**
   * Copy what every object holds (the tree must be frozen): one contents
   * record per object, under its inode number.
   */
  copy(proc: ProcFs): { contents: ShmemContents[]; counters: SharedMemoryCounters } {
    const counters: SharedMemoryCounters = { objects: this.objects.size, pagesScanned: 0, pagesWritten: 0 };
    const contents: ShmemContents[] = [];
    try {
      this.copyInto(proc, contents, counters);
    } catch (e) {
      for (const c of contents) c.buffer.dispose();
      throw e;
    }
    return { contents, counters };
  }

  private copyInto(proc: ProcFs, contents: ShmemContents[], counters: SharedMemoryCounters): void {
    for (const [ino, o] of this.objects) {
      const what = `shared memory object ${ino} (mapped by process ${o.pid} at 0x${o.start.toString(16)})`;
      const fd = proc.open(o.pid, `map_files/${o.start.toString(16)}-${o.end.toString(16)}`);
      try {
        const { runs, buffer } = readObject(fd, o.extent, what);
        counters.pagesWritten += buffer.byteLength / PAGE_SIZE;
        counters.pagesScanned += Number(o.extent) / PAGE_SIZE;
        contents.push({ shmid: Number(ino), runs, buffer });
      } finally {
        close(fd);
      }
    }
  }
}

/** Fill `data` from `offset`; the last page of an object that ends mid-page reads short and stays zero-filled. */
function readRange(fd: number, offset: bigint, data: Uint8Array, extent: bigint, what: string): void {
  const done = preadFull(fd, data, offset);
  if (done === data.length || offset + BigInt(done) >= extent || done % PAGE_SIZE !== 0) return;
  throw new Error(`${what}: ended at offset ${offset + BigInt(done)} while the tree was frozen`);
}
