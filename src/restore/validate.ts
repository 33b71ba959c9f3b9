/**
 * The image set checked as a whole before a restore creates any task: the
 * tree's pids and links, each process's areas, registers, fds and pages,
 * and every id they name. What fails here fails in one line naming the
 * image and what is wrong in it, with nothing made and nothing to undo —
 * the steps after this may still fail (a pid taken, a file changed), but
 * not because the images contradict themselves.
 */
import type { PstreeEntry } from "../image/gen/pstree_pb";
import type { VmaEntry } from "../image/gen/vma_pb";
import { VMA } from "../image/vma-status";
import { readWholeFile, statOrNull } from "../sys/file";
import { MAP, PAGE_SIZE } from "../sys/nr";
import type { CoreEntry } from "../image/gen/core_pb";
import type { FdinfoEntry, FileEntry } from "../image/gen/fdinfo_pb";
import type { FsEntry } from "../image/gen/fs_pb";
import type { MmEntry } from "../image/gen/mm_pb";
import type { PageChain } from "../image/page-chain";

/** The kernel's largest pid (PID_MAX_LIMIT on 64-bit). */
const PID_MAX_LIMIT = 4 * 1024 * 1024;
/** The kernel's ceiling on fd numbers (fs.nr_open can go no higher). */
const NR_OPEN_MAX = 1 << 30;
const PAGE = BigInt(PAGE_SIZE);
/** Status bits of which an area must have one for restore to know how to make it. */
const KNOWN_KINDS = VMA.FILE_PRIVATE | VMA.FILE_SHARED | VMA.ANON_SHARED | VMA.ANON_PRIVATE | VMA.AREA_VDSO | VMA.AREA_VVAR | VMA.AREA_VSYSCALL;

/** What validation needs of one process of the plan. */
export interface ProcessToCheck {
  entry: PstreeEntry;
  cores: ReadonlyMap<number, CoreEntry>;
  mm: MmEntry;
  fs: FsEntry;
  fdinfo: readonly FdinfoEntry[];
  pages: PageChain;
}

let userTopKnown: bigint | undefined;

/** The end of the user address space: 47 bits, or 56 with five-level paging. */
function userTop(): bigint {
  if (userTopKnown === undefined) {
    let la57 = false;
    try {
      la57 = /^flags\s*:.*\bla57\b/m.test(new TextDecoder().decode(readWholeFile("/proc/cpuinfo")));
    } catch {
      // No cpuinfo: assume four-level paging, the narrower space.
    }
    userTopKnown = (1n << (la57 ? 56n : 47n)) - PAGE;
  }
  return userTopKnown;
}

const hex = (v: bigint): string => `0x${v.toString(16)}`;

/** pstree.img: pids in range and unique, every parent in the tree, every process reachable from the root. */
export function validateTree(pstree: readonly PstreeEntry[]): void {
  const root = pstree[0];
  if (!root) throw new Error("pstree.img lists no process");
  const seen = new Set<number>();
  const byPid = new Map<number, PstreeEntry>();
  for (const e of pstree) {
    for (const id of [e.pid, ...e.threads]) {
      if (!Number.isInteger(id) || id < 1 || id >= PID_MAX_LIMIT) throw new Error(`pstree.img: pid ${id} (process ${e.pid}) is not a pid (1 to ${PID_MAX_LIMIT - 1})`);
    }
    if (byPid.has(e.pid)) throw new Error(`pstree.img: process ${e.pid} is listed twice`);
    byPid.set(e.pid, e);
    for (const tid of new Set([e.pid, ...e.threads])) {
      if (seen.has(tid)) throw new Error(`pstree.img: pid ${tid} is used twice`);
      seen.add(tid);
    }
    // 0: a group or session led from outside the dumper's pid namespace
    // (/proc shows 0 for it, as in a container whose init is not its leader).
    for (const [what, id] of [["pgid", e.pgid], ["sid", e.sid]] as const) {
      if (!Number.isInteger(id) || id < 0 || id >= PID_MAX_LIMIT) throw new Error(`pstree.img: process ${e.pid} has ${what} ${id}, not a pid`);
    }
  }
  if (byPid.has(root.ppid) && root.ppid !== root.pid) throw new Error(`pstree.img: the root process ${root.pid} has its parent ${root.ppid} inside the tree`);
  for (const e of pstree.slice(1)) {
    // Up the parent links to the root, each process at most once.
    const path = new Set<number>();
    for (let at = e; at.pid !== root.pid; ) {
      if (path.has(at.pid)) throw new Error(`pstree.img: the parents of process ${e.pid} go round in a loop`);
      path.add(at.pid);
      const parent = byPid.get(at.ppid);
      if (!parent) throw new Error(`pstree.img: process ${at.pid} has parent ${at.ppid}, which is not in the tree`);
      at = parent;
    }
  }
}

/** The file ids of files.img. */
export function fileIds(files: readonly FileEntry[]): Set<number> {
  return new Set(files.map((f) => f.id));
}

/** One process's images against each other and against files.img. */
export function validateProcess(p: ProcessToCheck, files: ReadonlySet<number>): void {
  const pid = p.entry.pid;
  const mmImage = `mm-${pid}.img`;
  const needFile = (image: string, what: string, id: number): void => {
    if (!files.has(id)) throw new Error(`${image}: ${what} names file id ${id}, which files.img does not hold`);
  };
  needFile(mmImage, "exe_file_id", p.mm.exeFileId);
  needFile(`fs-${pid}.img`, "cwd_id", p.fs.cwdId);
  needFile(`fs-${pid}.img`, "root_id", p.fs.rootId);

  const top = userTop();
  let prevEnd = 0n;
  p.mm.vmas.forEach((v, i) => {
    const at = `${mmImage}: area ${i} (${hex(v.start)}-${hex(v.end)})`;
    if (v.start >= v.end || v.start % PAGE !== 0n || v.end % PAGE !== 0n) throw new Error(`${at}: not a page-aligned range`);
    if ((v.status & VMA.AREA_VSYSCALL) === 0 && v.end > top) throw new Error(`${at}: beyond the user address space (${hex(top)})`);
    if (v.start < prevEnd) throw new Error(`${at}: overlaps the area before it, or is out of order`);
    prevEnd = v.end;
    if (v.pgoff % PAGE !== 0n) throw new Error(`${at}: file offset ${hex(v.pgoff)} is not page-aligned`);
    if ((v.status & KNOWN_KINDS) === 0) throw new Error(`${at}: status 0x${v.status.toString(16)} names no kind of area restore knows (private or shared, anonymous or file, vDSO, vvar, vsyscall)`);
    if ((v.status & (VMA.FILE_PRIVATE | VMA.FILE_SHARED)) !== 0) needFile(mmImage, `area ${i}`, Number(v.shmid));
  });

  for (const [tid, core] of p.cores) {
    const ip = core.threadInfo?.gpregs?.ip;
    if (ip === undefined) continue;
    if (!p.mm.vmas.some((v) => ip >= v.start && ip < v.end)) throw new Error(`core-${tid}.img: the instruction pointer ${hex(ip)} is in no area of ${mmImage}`);
  }

  const fds = new Set<number>();
  for (const f of p.fdinfo) {
    if (f.fd < 0 || f.fd >= NR_OPEN_MAX) throw new Error(`fdinfo image of process ${pid}: fd ${f.fd} is not an fd number`);
    if (fds.has(f.fd)) throw new Error(`fdinfo image of process ${pid}: fd ${f.fd} is listed twice`);
    fds.add(f.fd);
    if (!files.has(f.id)) throw new Error(`fdinfo image of process ${pid}: fd ${f.fd} names file id ${f.id}, which files.img does not hold`);
  }

  validatePages(pid, p.mm.vmas, p.pages);
}

/** Every page lands inside a private area, and every pages file is as long as its pagemap says. */
function validatePages(pid: number, vmas: readonly VmaEntry[], pages: PageChain): void {
  for (const r of pages.loaded) {
    if (r.bytes === 0) continue;
    const have = statOrNull(r.pagesPath)?.size ?? -1n;
    if (have < 0n) throw new Error(`${r.pagesPath} is missing, and its pagemap lists ${r.bytes} bytes of pages for process ${pid}`);
    if (have < BigInt(r.bytes)) throw new Error(`${r.pagesPath} holds ${have} bytes; its pagemap for process ${pid} needs ${r.bytes}`);
  }
  const sorted = [...vmas].sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
  /** The area holding `at` (areas do not overlap: checked before). */
  const areaAt = (at: bigint): VmaEntry | undefined => {
    let lo = 0;
    let hi = sorted.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (sorted[mid]!.end <= at) lo = mid + 1;
      else hi = mid;
    }
    const v = sorted[lo];
    return v && at >= v.start ? v : undefined;
  };
  for (const piece of pages.pieces) {
    const start = piece.remote;
    const end = start + BigInt(piece.length);
    const where = `pagemap-${pid}.img: pages at ${hex(start)}-${hex(end)}`;
    if (start % PAGE !== 0n) throw new Error(`${where}: not page-aligned`);
    // Pages go into private memory only: never through a shared mapping into its file.
    for (let at = start; at < end; ) {
      const v = areaAt(at);
      if (!v) throw new Error(`${where}: ${hex(at)} is in no area of mm-${pid}.img`);
      const special = (v.status & (VMA.AREA_VDSO | VMA.AREA_VVAR)) !== 0;
      if (!special && (v.flags & MAP.SHARED) !== 0) throw new Error(`${where}: ${hex(at)} is in a shared area (${hex(v.start)}-${hex(v.end)}), whose contents are its file's or object's`);
      at = v.end;
    }
  }
}
