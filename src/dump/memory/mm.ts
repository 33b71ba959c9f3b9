/**
 * The address space of a process as mm-PID.img describes it: the mm fields,
 * auxv, the exe file, and one vma entry per area of /proc/PID/smaps.
 *
 * Mapped files (the seed-001 idea): a process maps the same library or data
 * file many times (text, rodata, data, relro ...), and a naive dump opens and
 * stats /proc/PID/map_files/<range> for every one of those areas. Here the
 * first area of a file (by dev:ino from smaps) pays one statx through its
 * map_files link — which reaches the mapped file itself even if its path was
 * renamed — and every later area of that file, adjacent or not, borrows that
 * result and the file id: one stat per distinct file, no opens at all.
 */
import { create } from "@bufbuild/protobuf";
import { MmEntrySchema, type MmEntry } from "../../image/gen/mm_pb";
import { VmaEntrySchema, type VmaEntry } from "../../image/gen/vma_pb";
import type { MapArea } from "../../proc/maps";
import type { ProcFs } from "../../proc/procfs";
import type { ProcStat } from "../../proc/stat";
import { MAP, O, PROT } from "../../sys/nr";
import { VMA } from "../../image/vma-status";
import { type FileTable, UnsupportedFileError } from "../files/file-table";
import { dumpMappedMemfd } from "../files/memfd";
import { addMappedFile } from "../files/regular";
import type { SharedAnonMemory } from "./shmem";
import { shmemDevice } from "../../sys/shmem";


/** smaps VmFlags mnemonics that CRIU keeps as madvise bits (1 << MADV_*). */
const MADV_BY_VMFLAG: Record<string, number> = {
  rr: 1, // MADV_RANDOM
  sr: 2, // MADV_SEQUENTIAL
  dc: 10, // MADV_DONTFORK
  mg: 12, // MADV_MERGEABLE
  hg: 14, // MADV_HUGEPAGE
  nh: 15, // MADV_NOHUGEPAGE
  dd: 16, // MADV_DONTDUMP
  wf: 18, // MADV_WIPEONFORK
};

/** One area with what the page dumper needs to know about it. */
export interface DumpedVma {
  area: MapArea;
  entry: VmaEntry;
  /** Private memory whose pages the image must hold. */
  savePages: boolean;
}

/** Counters for the seed-001 claim: stats per distinct file, not per area. */
export interface MapFilesCounters {
  fileAreas: number;
  distinctFiles: number;
}

const SPECIAL_NAMES: Record<string, number> = {
  "[vdso]": VMA.AREA_VDSO,
  "[vvar]": VMA.AREA_VVAR,
  "[vvar_vclock]": VMA.AREA_VVAR,
  "[heap]": VMA.AREA_HEAP,
};

function hasFlag(a: MapArea, f: string): boolean {
  return a.vmFlags?.includes(f) ?? false;
}

function isMaySharedArea(a: MapArea): boolean {
  // A read-only MAP_SHARED file mapping shows "ms" but not "sh" in VmFlags.
  return a.shared || hasFlag(a, "sh") || hasFlag(a, "ms");
}

/**
 * Whether an area's pages go into the image: private memory only (shared
 * file pages live in the file), and not vvar (kernel data pages of this
 * boot) nor the vsyscall page.
 */
export function savesPages(a: MapArea): boolean {
  // MAP_DROPPABLE pages may be dropped by the kernel at any time: none is owed.
  if (a.path === "[vsyscall]" || isMaySharedArea(a) || hasFlag(a, "dp")) return false;
  return a.inode !== 0n || SPECIAL_NAMES[a.path] !== VMA.AREA_VVAR;
}

/**
 * Build the vma entries of one process; file areas get ids in `table`, and
 * shared anonymous memory is noted in `objects` (its contents are read once
 * for the whole tree).
 */
export function dumpVmas(proc: ProcFs, pid: number, areas: readonly MapArea[], table: FileTable, counters: MapFilesCounters, objects: SharedAnonMemory): DumpedVma[] {
  const fileIds = new Map<string, number>();
  const out: DumpedVma[] = [];
  for (const a of areas) {
    const prot = (a.read ? PROT.READ : 0) | (a.write ? PROT.WRITE : 0) | (a.exec ? PROT.EXEC : 0);
    const shared = isMaySharedArea(a);
    // A droppable area is private memory of its own map type (not MAP_PRIVATE).
    let flags = shared ? MAP.SHARED : hasFlag(a, "dp") ? MAP.DROPPABLE : MAP.PRIVATE;
    if (hasFlag(a, "gd")) flags |= MAP.GROWSDOWN;
    if (hasFlag(a, "nr")) flags |= MAP.NORESERVE;
    if (hasFlag(a, "lo")) flags |= MAP.LOCKED;
    let madv = 0n;
    for (const f of a.vmFlags ?? []) {
      const bit = MADV_BY_VMFLAG[f];
      if (bit !== undefined) madv |= 1n << BigInt(bit);
    }
    const range = `${a.start.toString(16)}-${a.end.toString(16)}`;
    const base = { start: a.start, end: a.end, pgoff: 0n, shmid: 0n, prot, fd: -1n, ...(madv ? { madv } : {}) };

    if (a.path === "[vsyscall]") {
      out.push({ area: a, savePages: savesPages(a), entry: create(VmaEntrySchema, { ...base, flags: MAP.PRIVATE | MAP.ANONYMOUS, status: VMA.AREA_VSYSCALL | VMA.ANON_PRIVATE }) });
      continue;
    }
    if (a.inode === 0n) {
      if (shared) throw new UnsupportedFileError(pid, `shared anonymous memory at 0x${range}`, "shared anonymous memory");
      const special = SPECIAL_NAMES[a.path] ?? 0;
      if (a.path.startsWith("[") && !special && a.path !== "[stack]" && !a.path.startsWith("[anon:") && !a.path.startsWith("[stack:")) {
        throw new UnsupportedFileError(pid, `the area at 0x${range}`, `a special mapping ${a.path}`);
      }
      const prev = out[out.length - 1];
      if (special === VMA.AREA_VVAR && prev && (prev.entry.status & VMA.AREA_VVAR) !== 0 && prev.entry.end === a.start) {
        // [vvar] and [vvar_vclock] (Linux 6.13+) become one vvar area, as
        // CRIU records them: its restore compares the image's vvar with the
        // running kernel's as one area.
        prev.entry.end = a.end;
        continue;
      }
      out.push({
        area: a,
        savePages: savesPages(a),
        entry: create(VmaEntrySchema, { ...base, flags: flags | MAP.ANONYMOUS, status: VMA.AREA_REGULAR | VMA.ANON_PRIVATE | special }),
      });
      continue;
    }
    const shm = shmemDevice();
    if (a.devMajor === shm.major && a.devMinor === shm.minor) {
      out.push({ area: a, savePages: savesPages(a), entry: shmemEntry(pid, a, range, base, flags, shared, table, objects, proc) });
      continue;
    }
    // A file mapping.
    const key = `${a.devMajor}:${a.devMinor}:${a.inode}`;
    counters.fileAreas++;
    let id = fileIds.get(key);
    if (id === undefined) {
      const st = proc.stat(pid, `map_files/${range}`);
      if (st.ino !== a.inode || st.devMajor !== a.devMajor || st.devMinor !== a.devMinor) {
        throw new Error(`process ${pid}: map_files/${range} leads to ${st.devMajor}:${st.devMinor}:${st.ino}, smaps says ${key}`);
      }
      counters.distinctFiles++;
      const openFlags = shared && (a.write || hasFlag(a, "mw")) ? O.RDWR : O.RDONLY;
      id = addMappedFile(proc, pid, range, a.path, openFlags, st, table);
      fileIds.set(key, id);
    }
    out.push({
      area: a,
      savePages: savesPages(a),
      entry: create(VmaEntrySchema, {
        ...base,
        pgoff: a.offset,
        shmid: BigInt(id),
        flags,
        status: VMA.AREA_REGULAR | (shared ? VMA.FILE_SHARED : VMA.FILE_PRIVATE),
        fdflags: shared && (a.write || hasFlag(a, "mw")) ? O.RDWR : O.RDONLY,
      }),
    });
  }
  return out;
}

/**
 * An area of an object on the internal shm mount: shared anonymous memory,
 * a memfd, or a SysV segment (refused: its key and id live in the IPC
 * namespace, which ckpt does not dump).
 */
function shmemEntry(pid: number, a: MapArea, range: string, base: Omit<Partial<VmaEntry>, "$typeName">, flags: number, shared: boolean, table: FileTable, objects: SharedAnonMemory, proc: ProcFs): VmaEntry {
  if (a.path.startsWith("/SYSV")) {
    const key = a.path.slice(5, 13);
    throw new UnsupportedFileError(pid, `the SysV shared memory segment with key 0x${key} (shmid ${a.inode}) attached at 0x${range}`,
      "SysV IPC, saved only with an IPC namespace of the tree's own");
  }
  if (a.path.startsWith("/memfd:")) {
    const writable = shared && (a.write || hasFlag(a, "mw"));
    const id = dumpMappedMemfd(proc, pid, range, a.path, writable ? O.RDWR : O.RDONLY, table);
    return create(VmaEntrySchema, {
      ...base, pgoff: a.offset, shmid: BigInt(id), flags,
      status: VMA.AREA_REGULAR | VMA.AREA_MEMFD | (shared ? VMA.FILE_SHARED : VMA.FILE_PRIVATE),
      fdflags: writable ? O.RDWR : O.RDONLY,
    });
  }
  if (!shared) throw new UnsupportedFileError(pid, `the area at 0x${range}`, `a private mapping of a shared memory object (${a.path})`);
  objects.note(pid, a);
  return create(VmaEntrySchema, {
    ...base, pgoff: a.offset, shmid: a.inode, flags: flags | MAP.ANONYMOUS,
    status: VMA.AREA_REGULAR | VMA.ANON_SHARED,
  });
}

/** auxv as CRIU saves it: (type, value) pairs up to, not including, AT_NULL. */
export function parseAuxv(bytes: Uint8Array): bigint[] {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out: bigint[] = [];
  for (let off = 0; off + 16 <= bytes.length; off += 16) {
    const type = v.getBigUint64(off, true);
    if (type === 0n) break;
    out.push(type, v.getBigUint64(off + 8, true));
  }
  return out;
}

/** Values only the task can report (read by injection). */
export interface MmTaskValues {
  brk: bigint;
  dumpable: number;
  thpDisabled: boolean;
}

export function mmEntry(stat: ProcStat, auxv: bigint[], exeFileId: number, vmas: readonly DumpedVma[], task: MmTaskValues): MmEntry {
  return create(MmEntrySchema, {
    mmStartCode: stat.startCode, mmEndCode: stat.endCode,
    mmStartData: stat.startData, mmEndData: stat.endData,
    mmStartStack: stat.startStack, mmStartBrk: stat.startBrk, mmBrk: task.brk,
    mmArgStart: stat.argStart, mmArgEnd: stat.argEnd, mmEnvStart: stat.envStart, mmEnvEnd: stat.envEnd,
    exeFileId, mmSavedAuxv: auxv, vmas: vmas.map((v) => v.entry),
    dumpable: task.dumpable, thpDisabled: task.thpDisabled,
  });
}
