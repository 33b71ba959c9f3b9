/**
 * Rebuild a process's address space from mm-PID.img inside the process
 * itself, by injected calls made from restore's own code page (the "syscall
 * page", chosen where no area of any restored process lies):
 *
 *  1. unmap everything the seed left except the syscall page and the
 *     kernel's special mappings (vvar, vvar_vclock, vdso);
 *  2. move those special mappings to the image's addresses with mremap (two
 *     steps, through free space, so a move never lands on another one) — the
 *     restored code holds pointers into its vDSO;
 *  3. map every area at its address: anonymous ones anonymous, file ones from
 *     the same file at the same offset (one fd per file, borrowed by all its
 *     areas); private areas writable for now;
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
import { MAP, PROT, SYS } from "../sys/nr";
import { findFree, type Range } from "./layout";
import type { PageChain } from "./page-chain";
import { fillPages, type PageFill } from "./pages";
import type { Puppet } from "./puppet";
import type { TargetFds } from "./target-fds";

const SPECIAL = VMA.AREA_VDSO | VMA.AREA_VVAR;
const PR_SET_MM = 35;
const PR_SET_MM_MAP = 14;
/** struct prctl_mm_map: eleven u64 bounds, auxv pointer, auxv_size and exe_fd (u32 each). */
const PRCTL_MM_MAP_SIZE = 104;
/** madvise values whose bits vma.madv keeps (1 << MADV_*). */
const MADV_BITS = [10, 12, 14, 15, 16, 18];

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
  /** ckpt's fd of a file id (mapped files, the exe). */
  ckptFd: (id: number) => number;
  proc: ProcFs;
}

function isSpecialSeedArea(a: MapArea): boolean {
  return a.path === "[vdso]" || a.path === "[vvar]" || a.path === "[vvar_vclock]";
}

/** Move the seed's vvar/vdso areas onto the image's, which must match in number and sizes. */
function placeSpecials(r: MmRebuild, seedAreas: readonly MapArea[], targets: readonly VmaEntry[]): void {
  const seed = seedAreas.filter(isSpecialSeedArea);
  const want = targets.filter((v) => (v.status & SPECIAL) !== 0);
  const sizes = (xs: readonly { start: bigint; end: bigint }[]): string => xs.map((x) => hex(x.end - x.start)).join(",");
  if (want.length !== seed.length || want.some((w, i) => { const s = seed[i]; return !s || w.end - w.start !== s.end - s.start; })) {
    throw new Error(`process ${r.pid}: this kernel's vvar/vdso areas (${sizes(seed)}) differ from the image's (${sizes(want)}); images from another kernel are not supported yet`);
  }
  // Step one: every special area to a hole clear of the image and of each other.
  const taken: Range[] = [...r.mm.vmas, r.syscallPage, ...seed];
  const parked = seed.map((s) => {
    const size = s.end - s.start;
    const at = findFree(taken, size);
    taken.push({ start: at, end: at + size });
    r.puppet.call(SYS.mremap, [s.start, size, size, 3 /* MAYMOVE|FIXED */, at]);
    return at;
  });
  want.forEach((w, i) => {
    const from = parked[i] ?? 0n;
    const size = w.end - w.start;
    r.puppet.call(SYS.mremap, [from, size, size, 3, w.start]);
  });
}

/** Protection an area is first mapped with: private ones writable so their pages can be copied in. */
function initialProt(v: VmaEntry): number {
  return (v.flags & MAP.PRIVATE) !== 0 ? v.prot | PROT.READ | PROT.WRITE : v.prot;
}

function mapAreas(r: MmRebuild): Map<number, number> {
  const fileFds = new Map<number, number>();
  for (const v of r.mm.vmas) {
    if ((v.status & (SPECIAL | VMA.AREA_VSYSCALL)) !== 0) continue;
    const len = v.end - v.start;
    const range = `${hex(v.start)}-${hex(v.end)}`;
    let fd = -1;
    if ((v.status & (VMA.FILE_PRIVATE | VMA.FILE_SHARED)) !== 0) {
      const id = Number(v.shmid);
      fd = fileFds.get(id) ?? r.fds.pull(r.ckptFd(id));
      fileFds.set(id, fd);
    } else if ((v.status & VMA.ANON_PRIVATE) === 0) {
      throw new Error(`process ${r.pid}: the area at ${range} has status 0x${v.status.toString(16)}, which restore does not know`);
    }
    const flags = v.flags | MAP.FIXED;
    const got = r.puppet.call(SYS.mmap, [v.start, len, initialProt(v), flags, fd, fd >= 0 ? v.pgoff : 0n],
      [hex(v.start), hex(len), `prot 0x${initialProt(v).toString(16)}`, `flags 0x${flags.toString(16)}`, String(fd), hex(v.pgoff)]);
    if (got !== v.start) throw new Error(`process ${r.pid}: mmap of ${range} landed at ${hex(got)}`);
  }
  return fileFds;
}

function finishAreas(r: MmRebuild): void {
  for (const v of r.mm.vmas) {
    if ((v.status & (SPECIAL | VMA.AREA_VSYSCALL)) !== 0) continue;
    const len = v.end - v.start;
    if (initialProt(v) !== v.prot) r.puppet.call(SYS.mprotect, [v.start, len, v.prot]);
    const madv = v.madv ?? 0n;
    for (const bit of MADV_BITS) if ((madv & (1n << BigInt(bit))) !== 0n) r.puppet.call(SYS.madvise, [v.start, len, bit]);
  }
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
  const seedAreas = readMaps(r.proc, r.pid);
  for (const a of seedAreas) {
    if (isSpecialSeedArea(a) || a.path === "[vsyscall]") continue;
    if (a.start >= r.syscallPage.start && a.end <= r.syscallPage.end) continue;
    r.puppet.call(SYS.munmap, [a.start, a.end - a.start]);
  }
  placeSpecials(r, seedAreas, r.mm.vmas);
  const fileFds = mapAreas(r);
  const fill = fillPages(r.pid, r.pages);
  finishAreas(r);
  for (const fd of fileFds.values()) r.fds.close(fd);
  setMmMap(r);
  return fill;
}
