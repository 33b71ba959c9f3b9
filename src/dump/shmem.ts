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
import type { MapArea } from "../proc/maps";
import type { ProcFs } from "../proc/procfs";
import { nextData } from "../sys/shmem";
import { close, preadInto } from "../sys/libc";
import { PAGE_SIZE } from "../sys/nr";
import type { ShmemContents } from "./files/memfd";

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
    for (const [ino, o] of this.objects) {
      const what = `shared memory object ${ino} (mapped by process ${o.pid} at 0x${o.start.toString(16)})`;
      const fd = proc.open(o.pid, `map_files/${o.start.toString(16)}-${o.end.toString(16)}`);
      try {
        const runs: ShmemContents["runs"] = [];
        for (let at = 0n; at < o.extent;) {
          const run = nextData(fd, at);
          if (!run || run.start >= o.extent) break;
          const end = run.end < o.extent ? run.end : o.extent;
          runs.push({ offset: run.start, data: readRange(fd, run.start, Number(end - run.start), what) });
          counters.pagesWritten += Number(end - run.start) / PAGE_SIZE;
          at = end;
        }
        counters.pagesScanned += Number(o.extent) / PAGE_SIZE;
        contents.push({ shmid: Number(ino), runs });
      } finally {
        close(fd);
      }
    }
    return { contents, counters };
  }
}

function readRange(fd: number, offset: bigint, length: number, what: string): Uint8Array {
  const data = new Uint8Array(length);
  for (let done = 0; done < length;) {
    const n = preadInto(fd, data.subarray(done), offset + BigInt(done));
    if (n === 0) throw new Error(`${what}: ended at offset ${offset + BigInt(done)} while the tree was frozen`);
    done += n;
  }
  return data;
}
