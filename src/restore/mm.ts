/**
 * Rebuild a process's address space from mm-PID.img inside the process
 * itself, by injected calls made from restore's own code page (the "syscall
 * page", chosen where no area of any restored process lies):
 *
 *  1. unmap everything the seed left except the syscall page and the
 *     kernel's special mappings (vvar, vvar_vclock, vdso);
 *  2. move those special mappings to the image's addresses with mremap (two
 *     steps, through free space, so a move never lands on another one) — the
 *     restored code holds pointers into its vDSO; where this kernel's layout
 *     differs from the image's, they go to free space instead and the
 *     image's vDSO comes back from its pages as a proxy to them (vdso.ts);
 *  3. map every area at its address: anonymous ones anonymous, file ones from
 *     the same file at the same offset (one fd per file, borrowed by all its
 *     areas), shared anonymous memory from its one object (shmem.ts);
 *     private areas writable for now;
 *  4. copy the saved pages in (pages.ts), then give every area its real
 *     protection and its madvise flags;
 *  5. PR_SET_MM_MAP: code/data/brk/stack/args/env bounds, auxv, and the exe
 *     link (which must no longer be mapped from the seed's ELF by then).
 * The dumpable flag comes later (task.ts), after the credentials that reset it.
 */
import type { MmEntry } from "../image/gen/mm_pb";
import type { VmaEntry } from "../image/gen/vma_pb";
import { VMA } from "../image/vma-status";
import { readMaps, type MapArea } from "../proc/maps";
import type { ProcFs } from "../proc/procfs";
import { MAP, O, PROT, SYS } from "../sys/nr";
import { findFree, type Range } from "./layout";
import type { PageChain } from "../image/page-chain";
import { fillPages, type PageFill } from "./pages";
import type { BatchedCall, Puppet } from "./puppet";
import type { TargetFds } from "./target-fds";
import { proxyPatches, vdsoFunctions } from "./vdso";

const SPECIAL = VMA.AREA_VDSO | VMA.AREA_VVAR;
const PR_SET_MM = 35;
const PR_SET_MM_MAP = 14;
/** struct prctl_mm_map: eleven u64 bounds, auxv pointer, auxv_size and exe_fd (u32 each). */
const PRCTL_MM_MAP_SIZE = 104;
/** madvise values whose bits vma.madv keeps (1 << MADV_*). */
const MADV_BITS = [1, 2, 10, 12, 14, 15, 16, 18];

const hex = (v: bigint): string => `0x${v.toString(16)}`;

export interface MmRebuild {
  puppet: Puppet;
  pid: number;
  mm: MmEntry;
  /** The process's saved pages, across the rounds of an iterative dump. */
  pages: PageChain;
  /** The syscall page and its scratch area. */
  syscallPage: Range;
  scratch: bigint;
  fds: TargetFds;
  /** ckpt's fd of a file id (the exe). */
  ckptFd: (id: number) => number;
  /** ckpt's fd of a mapped file (memfds too) open for `access`, the mapping's O_RDONLY or O_RDWR. */
  mappedFd: (id: number, access: number) => number;
  /** ckpt's fd of a shared anonymous memory object, by shmid. */
  sharedFd: (shmid: bigint) => number;
  proc: ProcFs;
}

function isSpecialSeedArea(a: MapArea): boolean {
  return a.path === "[vdso]" || a.path === "[vvar]" || a.path === "[vvar_vclock]";
}

/**
 * One vvar or vdso area as a restore compares them: CRIU (and ckpt since)
 * records the adjacent [vvar] and [vvar_vclock] of Linux 6.13+ as one vvar
 * area, so the seed's are joined the same way. `parts`: the seed's areas in it.
 */
interface SpecialSpan {
  kind: "vvar" | "vdso";
  start: bigint;
  end: bigint;
  parts: { start: bigint; end: bigint }[];
}

function joinSpans(areas: readonly { start: bigint; end: bigint; kind: "vvar" | "vdso" }[]): SpecialSpan[] {
  const spans: SpecialSpan[] = [];
  for (const a of [...areas].sort((x, y) => (x.start < y.start ? -1 : 1))) {
    const last = spans[spans.length - 1];
    if (last && a.kind === "vvar" && last.kind === "vvar" && last.end === a.start) {
      last.end = a.end;
      last.parts.push({ start: a.start, end: a.end });
    } else {
      spans.push({ kind: a.kind, start: a.start, end: a.end, parts: [{ start: a.start, end: a.end }] });
    }
  }
  return spans;
}

/** The image's vvar and vdso areas, joined as the seed's are. */
function imageSpecialSpans(vmas: readonly VmaEntry[]): SpecialSpan[] {
  return joinSpans(vmas.filter((v) => (v.status & SPECIAL) !== 0).map((v) => ({ start: v.start, end: v.end, kind: (v.status & VMA.AREA_VDSO) !== 0 ? "vdso" : "vvar" })));
}

/**
 * Where this kernel's vvar/vdso areas went: onto the image's (same layout),
 * or, when the layouts differ, to free space of their own, the image's vDSO
 * then coming back from its pages as a proxy (vdso.ts).
 */
type SpecialPlacement = { proxy: false } | { proxy: true; vdso: Range | undefined };

/** Move the seed's vvar/vdso areas onto the image's when they match in kind, order and sizes; park them as a block otherwise. */
function placeSpecials(r: MmRebuild, seedAreas: readonly MapArea[], want: readonly SpecialSpan[]): SpecialPlacement {
  const seed = joinSpans(seedAreas.filter(isSpecialSeedArea).map((a) => ({ start: a.start, end: a.end, kind: a.path === "[vdso]" ? "vdso" : "vvar" })));
  const taken: Range[] = [...r.mm.vmas, r.syscallPage, ...seed];
  const same = want.length === seed.length && want.every((w, i) => { const s = seed[i]; return s !== undefined && s.kind === w.kind && w.end - w.start === s.end - s.start; });
  if (!same) {
    const layout = (xs: readonly SpecialSpan[]): string => xs.map((x) => `${x.kind} ${hex(x.end - x.start)}`).join(", ") || "none";
    const seedVdso = seed.find((s) => s.kind === "vdso");
    if (want.some((w) => w.kind === "vdso") && !seedVdso) {
      throw new Error(`process ${r.pid}: the image has a vDSO (${layout(want)}) but this kernel gives processes none (${layout(seed)})`);
    }
    if (seed.length === 0) return { proxy: true, vdso: undefined };
    // The kernel's vDSO reads its vvar pages at fixed distances: one block, one move.
    const first = seed[0]!.start;
    const size = seed[seed.length - 1]!.end - first;
    const at = findFree(taken, size);
    for (const part of seed.flatMap((s) => s.parts)) {
      r.puppet.call(SYS.mremap, [part.start, part.end - part.start, part.end - part.start, 3 /* MAYMOVE|FIXED */, at + (part.start - first)]);
    }
    return { proxy: true, vdso: seedVdso && { start: at + (seedVdso.start - first), end: at + (seedVdso.end - first) } };
  }
  // Step one: every special area to a hole clear of the image and of each other.
  const parked = seed.map((s) => {
    const size = s.end - s.start;
    const at = findFree(taken, size);
    taken.push({ start: at, end: at + size });
    for (const part of s.parts) r.puppet.call(SYS.mremap, [part.start, part.end - part.start, part.end - part.start, 3 /* MAYMOVE|FIXED */, at + (part.start - s.start)]);
    return at;
  });
  // Step two: each part to its place in the image's span.
  want.forEach((w, i) => {
    const s = seed[i]!;
    const from = parked[i] ?? 0n;
    for (const part of s.parts) {
      const size = part.end - part.start;
      r.puppet.call(SYS.mremap, [from + (part.start - s.start), size, size, 3, w.start + (part.start - s.start)]);
    }
  });
  return { proxy: false };
}

/**
 * The image's vvar and vdso areas when this kernel's could not take their
 * place: the vDSO as private memory its saved pages fill (patched later),
 * vvar as zero pages, so a thread caught inside the old vDSO's code finds
 * no clock it could trust and takes the system call (clock mode 0).
 */
function mapOldSpecials(r: MmRebuild): void {
  for (const v of r.mm.vmas) {
    if ((v.status & SPECIAL) === 0) continue;
    const vdso = (v.status & VMA.AREA_VDSO) !== 0;
    const prot = vdso ? PROT.READ | PROT.WRITE : PROT.READ;
    const got = r.puppet.call(SYS.mmap, [v.start, v.end - v.start, prot, MAP.PRIVATE | MAP.ANONYMOUS | MAP.FIXED, -1, 0]);
    if (got !== v.start) throw new Error(`process ${r.pid}: mmap of the image's ${vdso ? "vdso" : "vvar"} at ${hex(v.start)} landed at ${hex(got)}`);
  }
}

/** Patch the old vDSO (now holding its saved pages) into a proxy of this kernel's, and give it its protection back. */
function proxyOldVdso(r: MmRebuild, current: Range | undefined): void {
  const old = r.mm.vmas.find((v) => (v.status & VMA.AREA_VDSO) !== 0);
  if (!old) return;
  if (!current) throw new Error(`process ${r.pid}: this kernel's vDSO was not found to proxy the image's to`);
  const oldWhat = `the image's vDSO at ${hex(old.start)} (mm-${r.pid}.img)`;
  const oldFns = vdsoFunctions(r.puppet.read(old.start, Number(old.end - old.start)), oldWhat);
  const currentFns = vdsoFunctions(r.puppet.read(current.start, Number(current.end - current.start)), "this kernel's vDSO");
  for (const patch of proxyPatches(oldFns, currentFns, current.start)) {
    if (patch.offset < 0n || patch.offset + BigInt(patch.bytes.length) > old.end - old.start) {
      throw new Error(`process ${r.pid}: ${oldWhat}: ${patch.name} lies outside the area`);
    }
    r.puppet.write(old.start + patch.offset, patch.bytes);
  }
  r.puppet.call(SYS.mprotect, [old.start, old.end - old.start, old.prot]);
}

/** Protection an area is first mapped with: private ones writable so their pages can be copied in. */
function initialProt(v: VmaEntry): number {
  return (v.flags & MAP.PRIVATE) !== 0 ? v.prot | PROT.READ | PROT.WRITE : v.prot;
}

/**
 * Map every area. File areas (memfds among them) map the file of their id;
 * shared anonymous ones map their object, made once for the whole tree
 * (shmem.ts), at their offset into it. One target fd per file or object
 * serves all its areas; the map is by "f<id>:<access>" or "s<shmid>".
 */
function mapAreas(r: MmRebuild): Map<string, number> {
  const targetFds = new Map<string, number>();
  const pull = (key: string, ckptFd: () => number): number => {
    let fd = targetFds.get(key);
    if (fd === undefined) {
      fd = r.fds.pull(ckptFd());
      targetFds.set(key, fd);
    }
    return fd;
  };
  const maps: { v: VmaEntry; call: BatchedCall }[] = [];
  for (const v of r.mm.vmas) {
    if ((v.status & (SPECIAL | VMA.AREA_VSYSCALL)) !== 0) continue;
    const len = v.end - v.start;
    const range = `${hex(v.start)}-${hex(v.end)}`;
    let fd = -1;
    if ((v.status & (VMA.FILE_PRIVATE | VMA.FILE_SHARED)) !== 0) {
      const access = (v.fdflags ?? O.RDONLY) & O.ACCMODE;
      fd = pull(`f${v.shmid}:${access}`, () => r.mappedFd(Number(v.shmid), access));
    } else if ((v.status & VMA.ANON_SHARED) !== 0) {
      fd = pull(`s${v.shmid}`, () => r.sharedFd(v.shmid));
    } else if ((v.status & VMA.ANON_PRIVATE) === 0) {
      throw new Error(`process ${r.pid}: the area at ${range} has status 0x${v.status.toString(16)}, which restore does not know`);
    }
    // With an fd the area maps it: MAP_ANONYMOUS (which the image keeps
    // for shared anonymous memory) would make the kernel ignore the fd.
    const flags = (fd >= 0 ? v.flags & ~MAP.ANONYMOUS : v.flags) | MAP.FIXED;
    maps.push({
      v,
      call: {
        nr: SYS.mmap, args: [v.start, len, initialProt(v), flags, fd, fd >= 0 ? v.pgoff : 0n],
        shown: [hex(v.start), hex(len), `prot 0x${initialProt(v).toString(16)}`, `flags 0x${flags.toString(16)}`, String(fd), hex(v.pgoff)],
      },
    });
  }
  // The fds first (each pull's number is the lowest free one, known only once made), then every mmap in one batch.
  const got = r.puppet.callBatch(maps.map((m) => m.call));
  maps.forEach(({ v }, i) => {
    if (got[i] !== v.start) throw new Error(`process ${r.pid}: mmap of ${hex(v.start)}-${hex(v.end)} landed at ${hex(got[i] ?? 0n)}`);
  });
  return targetFds;
}

function finishAreas(r: MmRebuild): void {
  const calls: BatchedCall[] = [];
  for (const v of r.mm.vmas) {
    if ((v.status & (SPECIAL | VMA.AREA_VSYSCALL)) !== 0) continue;
    const len = v.end - v.start;
    if (initialProt(v) !== v.prot) calls.push({ nr: SYS.mprotect, args: [v.start, len, v.prot] });
    const madv = v.madv ?? 0n;
    for (const bit of MADV_BITS) if ((madv & (1n << BigInt(bit))) !== 0n) calls.push({ nr: SYS.madvise, args: [v.start, len, bit] });
  }
  r.puppet.callBatch(calls);
}

/** PR_SET_MM_MAP with every bound, the auxv and the exe file. */
function setMmMap(r: MmRebuild): void {
  const m = r.mm;
  const auxv = [...m.mmSavedAuxv, 0n, 0n];
  const buf = new Uint8Array(PRCTL_MM_MAP_SIZE + auxv.length * 8);
  const v = new DataView(buf.buffer);
  const bounds = [m.mmStartCode, m.mmEndCode, m.mmStartData, m.mmEndData, m.mmStartBrk, m.mmBrk, m.mmStartStack, m.mmArgStart, m.mmArgEnd, m.mmEnvStart, m.mmEnvEnd];
  bounds.forEach((b, i) => v.setBigUint64(i * 8, b, true));
  const exeFd = r.fds.pull(r.ckptFd(m.exeFileId));
  v.setBigUint64(88, r.scratch + BigInt(PRCTL_MM_MAP_SIZE), true);
  v.setUint32(96, auxv.length * 8, true);
  v.setUint32(100, exeFd, true);
  auxv.forEach((a, i) => v.setBigUint64(PRCTL_MM_MAP_SIZE + i * 8, a, true));
  r.puppet.write(r.scratch, buf);
  r.puppet.call(SYS.prctl, [PR_SET_MM, PR_SET_MM_MAP, r.scratch, PRCTL_MM_MAP_SIZE], ["PR_SET_MM", "PR_SET_MM_MAP", hex(r.scratch), String(PRCTL_MM_MAP_SIZE)]);
  r.fds.close(exeFd);
}

export function rebuildMm(r: MmRebuild): PageFill {
  const seedAreas = readMaps(r.proc, r.puppet.tid);
  r.puppet.callBatch(seedAreas
    .filter((a) => !isSpecialSeedArea(a) && a.path !== "[vsyscall]" && !(a.start >= r.syscallPage.start && a.end <= r.syscallPage.end))
    .map((a) => ({ nr: SYS.munmap, args: [a.start, a.end - a.start] })));
  const specials = imageSpecialSpans(r.mm.vmas);
  const placement = placeSpecials(r, seedAreas, specials);
  if (placement.proxy) mapOldSpecials(r);
  const fileFds = mapAreas(r);
  // Same layout: the kernel's own vDSO now lies where the image's was, and
  // the image's copy of it is not written over it. Another layout: the copy
  // comes back, to be patched into a proxy.
  const fill = fillPages(r.puppet.tid, r.pages, placement.proxy ? [] : specials);
  if (placement.proxy) proxyOldVdso(r, placement.vdso);
  finishAreas(r);
  r.fds.closeAll(fileFds.values());
  setMmMap(r);
  return fill;
}
