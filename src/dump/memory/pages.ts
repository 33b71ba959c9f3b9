/**
 * The pages of a frozen process that a dump saves, and copying them out.
 *
 * Which pages (as CRIU's should_dump_page decides): a page of a wanted area is
 * saved when it is present or swapped out, is not the shared zero page (nor
 * the huge zero page), and is not a file page. The last rule is what keeps the
 * unmodified pages of a private file mapping out: only the pages a write has
 * turned into anonymous copies are saved; the rest come back from the file on
 * restore. Private anonymous areas hold only anonymous pages, so the rule
 * changes nothing there.
 *
 * Finding them: one PAGEMAP_SCAN ioctl per task over the whole span from the
 * first wanted area to the last, with the kernel doing the filtering, then an
 * intersection with the wanted areas (the span also holds areas the caller did
 * not ask for). Without the ioctl, /proc/PID/pagemap is read in windows that
 * serve many neighbouring areas per pread (./pagemap-cache.ts). Both give the
 * same runs.
 *
 * Copying: process_vm_readv with up to IOV_MAX remote ranges per call into one
 * buffer mapped once for all the task's pages; ranges of unreadable areas
 * (PROT_NONE with written pages) through pread of /proc/PID/mem, which reads
 * them with FOLL_FORCE.
 */
import { create } from "@bufbuild/protobuf";
import { PagemapEntrySchema, type PagemapEntry } from "../../image/gen/pagemap_pb";
import { PE_LAZY, PE_PARENT, PE_PRESENT } from "../../image/pagemap";
import { ProcFs } from "../../proc/procfs";
import { Errno, SysError } from "../../sys/errno";
import { addressOf, close, ioctl, madvise, memoryView, mmap, munmap, preadInto, processVmReadv } from "../../sys/libc";
import { MAP, O, PAGE_IS, PAGE_SIZE, PAGEMAP_SCAN, PM_SCAN, PROT } from "../../sys/nr";
import { decodePageRegions, encodePmScanArg, PAGE_REGION_SIZE, PM_SCAN_ARG_SIZE, pmScanWalkEnd, setIovec } from "../../sys/structs";
import { entryPfn, MIN_WINDOW_BYTES, PagemapCache, PME_HI, zeroPagePfns, type PageSpan, type ZeroPfns } from "./pagemap-cache";

// ---------------------------------------------------------------- types

/** One memory area of the task whose private pages are to be saved. */
export interface PageVma {
  /** First byte; page-aligned. */
  start: bigint;
  /** Byte just past the area; page-aligned. */
  end: bigint;
  /** PROT_READ is set: process_vm_readv can read it. Unreadable areas are read through /proc/PID/mem. */
  readable: boolean;
  /** A private file mapping: only its written (anonymous copy) pages are saved. */
  fileBacked: boolean;
}

/** Contiguous pages to save, all inside one wanted area. */
export interface PageRun {
  vaddr: bigint;
  nrPages: number;
  /**
   * With dirty tracking only: whether the pages were written since the
   * tracking was armed (false: unchanged since the previous round).
   */
  dirty?: boolean;
  /**
   * The run lies in memory a lazy restore may fill on first touch (PE_LAZY,
   * as CRIU marks it): "here" when its contents are saved all the same (in
   * this round or a parent's), "source" in a lazy dump, whose source keeps
   * them and serves them on demand.
   */
  lazy?: "here" | "source";
}

/**
 * Dirty tracking for a scan: which category says "written since the last
 * round", and whether to re-arm it (write-protect every page found) as the
 * scan goes, so that this round becomes the baseline of the next.
 */
export interface DirtyScan {
  /** "written": userfaultfd write-protect (PAGE_IS_WRITTEN); "soft-dirty": the soft-dirty bit. */
  category: "written" | "soft-dirty";
  /**
   * PM_SCAN_WP_MATCHING: only for "written", only with the ioctl. It protects
   * pages of every write-protect-async area between the first and the last
   * area given, registered by us or not: give it adjacent areas only.
   */
  protect: boolean;
}

/** Kernel calls made while scanning and copying, for the stats image and for tests. */
export interface PageCounters {
  /** PAGEMAP_SCAN ioctls (attempts, including one refused by an old kernel). */
  pagemapScanIoctls: number;
  /** preads of /proc/PID/pagemap (the fallback). */
  pagemapPreads: number;
  /** process_vm_readv calls, including short or failed ones. */
  processVmReadvCalls: number;
  /** preads of /proc/PID/mem (unreadable areas, and ranges process_vm_readv refused). */
  memPreads: number;
  /** Pages a running task unmapped between the scan and the copy (saved as zeros; see CopyOptions.running). */
  vanishedPages: number;
}

export function newPageCounters(): PageCounters {
  return { pagemapScanIoctls: 0, pagemapPreads: 0, processVmReadvCalls: 0, memPreads: 0, vanishedPages: 0 };
}

/** How the pages were found: the PAGEMAP_SCAN ioctl or preads of /proc/PID/pagemap. */
export type ScanMethod = "pagemap-scan" | "pagemap-read";

export interface ScanOptions {
  /** "auto" (the default) uses PAGEMAP_SCAN and falls back to pagemap reads when the kernel lacks it. */
  method?: "auto" | ScanMethod;
  /** Opens /proc/PID/pagemap through this (and counts the open); a private one otherwise. */
  proc?: ProcFs;
  /** Counters to add to, e.g. one object for the whole dump; fresh ones otherwise. */
  counters?: PageCounters;
  /** Regions the PAGEMAP_SCAN output vector holds; the scan resumes only when it fills. */
  scanVectorRegions?: number;
  /** Address space one pagemap pread covers at most in the fallback (at least 2 MiB). */
  pagemapWindowBytes?: number;
  /** Report which pages were written since the previous round (runs get `dirty`). */
  dirty?: DirtyScan;
}

export interface PageScan {
  /**
   * Runs to save, in address order. Adjacent pages are merged into one run,
   * but never across the boundary of two wanted areas, even adjacent ones:
   * each run then lies in one area, so its protection (which decides how it is
   * copied) and a restore's per-area mapping hold for the whole run.
   */
  runs: PageRun[];
  /** Pages in the wanted areas, saved or not (CRIU's pages_scanned). */
  pagesScanned: number;
  /** Pages in `runs`. */
  pagesToSave: number;
  method: ScanMethod;
  counters: PageCounters;
}

// ---------------------------------------------------------------- areas

/** A wanted area in page numbers, sorted by address. */
interface Area extends PageSpan {
  readable: boolean;
}

function hex(n: number | bigint): string {
  return `0x${n.toString(16)}`;
}

/** The wanted areas sorted by address, checked for alignment and overlap. */
function toAreas(vmas: readonly PageVma[]): Area[] {
  const page = BigInt(PAGE_SIZE);
  const areas = vmas.map((v): Area => {
    if (v.start % page !== 0n || v.end % page !== 0n || v.end <= v.start) {
      throw new Error(`page scan: area ${hex(v.start)}-${hex(v.end)} is empty or not page-aligned`);
    }
    // User addresses stay below 2^47, so page numbers are exact doubles.
    return { firstPage: Number(v.start / page), endPage: Number(v.end / page), readable: v.readable };
  });
  areas.sort((a, b) => a.firstPage - b.firstPage);
  for (let i = 1; i < areas.length; i++) {
    const prev = areas[i - 1]!;
    const cur = areas[i]!;
    if (cur.firstPage < prev.endPage) {
      throw new Error(`page scan: areas ${hex(prev.firstPage * PAGE_SIZE)}-${hex(prev.endPage * PAGE_SIZE)} and ${hex(cur.firstPage * PAGE_SIZE)}-${hex(cur.endPage * PAGE_SIZE)} overlap`);
    }
  }
  return areas;
}

/** Index of the area holding page `page`, or -1. */
function areaIndexOf(areas: readonly Area[], page: number): number {
  let lo = 0;
  let hi = areas.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    const a = areas[mid]!;
    if (page < a.firstPage) hi = mid - 1;
    else if (page >= a.endPage) lo = mid + 1;
    else return mid;
  }
  return -1;
}

/**
 * Builds runs from page ranges given in address order, merging within an
 * area (and, with dirty tracking, only ranges that are alike in dirtiness).
 */
class RunCollector {
  readonly runs: PageRun[] = [];
  pages = 0;
  private area = -1;
  private firstPage = 0;
  private endPage = 0;
  private dirty: boolean | undefined = undefined;

  add(area: number, firstPage: number, endPage: number, dirty?: boolean): void {
    if (area === this.area && firstPage === this.endPage && dirty === this.dirty) {
      this.endPage = endPage;
      return;
    }
    this.flush();
    this.area = area;
    this.firstPage = firstPage;
    this.endPage = endPage;
    this.dirty = dirty;
  }

  finish(): PageRun[] {
    this.flush();
    return this.runs;
  }

  private flush(): void {
    if (this.area < 0) return;
    const nrPages = this.endPage - this.firstPage;
    this.runs.push(this.dirty === undefined ? { vaddr: BigInt(this.firstPage * PAGE_SIZE), nrPages } : { vaddr: BigInt(this.firstPage * PAGE_SIZE), nrPages, dirty: this.dirty });
    this.pages += nrPages;
    this.area = -1;
  }
}

function withProc<T>(proc: ProcFs | undefined, fn: (proc: ProcFs) => T): T {
  if (proc) return fn(proc);
  const own = new ProcFs();
  try {
    return fn(own);
  } finally {
    own.close();
  }
}

// ---------------------------------------------------------------- scanning

/**
 * The kernel filter: at least one of PRESENT and SWAPPED, and neither PFNZERO
 * nor FILE (those two bits are inverted, then required).
 */
const SCAN_EXCLUDED = BigInt(PAGE_IS.PFNZERO | PAGE_IS.FILE);
const SCAN_ANY_OF = BigInt(PAGE_IS.PRESENT | PAGE_IS.SWAPPED);
/**
 * Vector size: enough that one call covers a task. The span between the first
 * and last wanted area also holds areas the caller did not ask for (shared
 * mappings, the vdso), whose regions take slots too, hence the margin.
 */
const MIN_SCAN_REGIONS = 16384;
const SCAN_REGIONS_PER_AREA = 4;
/**
 * Default pagemap window of the fallback. bench/pages.ts: the scan time hardly
 * depends on it (2 GiB: 12 ms with 2 MiB windows and 1029 preads, 12 ms with
 * 16 MiB and 132), so it is sized for few calls and a 32 KiB buffer.
 */
const DEFAULT_WINDOW_BYTES = 16 * 1024 * 1024;

/** One output vector and argument block, reused by every scan (only the main thread scans). */
let scanVector = new Uint8Array(0);
const scanArg = new Uint8Array(PM_SCAN_ARG_SIZE);

/** Find the pages to save in `vmas` of task `pid`. */
export function scanPages(pid: number, vmas: readonly PageVma[], options: ScanOptions = {}): PageScan {
  const counters = options.counters ?? newPageCounters();
  const method = options.method ?? "auto";
  const areas = toAreas(vmas);
  const pagesScanned = areas.reduce((sum, a) => sum + a.endPage - a.firstPage, 0);
  const done = (out: RunCollector, used: ScanMethod): PageScan => ({
    runs: out.finish(), pagesScanned, pagesToSave: out.pages, method: used, counters,
  });
  if (areas.length === 0) return done(new RunCollector(), method === "pagemap-read" ? "pagemap-read" : "pagemap-scan");

  return withProc(options.proc, (proc) => {
    const fd = proc.open(pid, "pagemap", O.RDONLY);
    try {
      if (method !== "pagemap-read") {
        const out = new RunCollector();
        const vectorRegions = options.scanVectorRegions ?? Math.max(MIN_SCAN_REGIONS, SCAN_REGIONS_PER_AREA * areas.length);
        try {
          scanWithIoctl(fd, areas, vectorRegions, counters, out, options.dirty);
          return done(out, "pagemap-scan");
        } catch (e) {
          if (method === "pagemap-scan" || !isMissingIoctl(e)) throw e;
          // Kernel before 6.7: fall through to reading pagemap.
        }
      }
      if (options.dirty?.protect) throw new Error("page scan: write-protecting needs the PAGEMAP_SCAN ioctl (Linux 6.7+)");
      const out = new RunCollector();
      scanWithPagemapReads(fd, areas, options.pagemapWindowBytes ?? DEFAULT_WINDOW_BYTES, counters, out, options.dirty);
      return done(out, "pagemap-read");
    } finally {
      close(fd);
    }
  });
}

/** ENOTTY: pagemap has no ioctl at all; EINVAL: an ioctl it does not know. */
function isMissingIoctl(e: unknown): boolean {
  return e instanceof SysError && e.call === "ioctl" && (e.errno === Errno.ENOTTY || e.errno === Errno.EINVAL);
}

/** The category bit that marks a page dirty. */
function dirtyCategory(d: DirtyScan): number {
  return d.category === "written" ? PAGE_IS.WRITTEN : PAGE_IS.SOFT_DIRTY;
}

function scanWithIoctl(fd: number, areas: readonly Area[], vectorRegions: number, counters: PageCounters, out: RunCollector, dirty?: DirtyScan): void {
  if (!(vectorRegions >= 1)) throw new Error(`page scan: vector of ${vectorRegions} regions`);
  if (scanVector.length < vectorRegions * PAGE_REGION_SIZE) scanVector = new Uint8Array(vectorRegions * PAGE_REGION_SIZE);
  const spanEnd = BigInt(areas[areas.length - 1]!.endPage * PAGE_SIZE);
  let start = BigInt(areas[0]!.firstPage * PAGE_SIZE);
  let cursor = 0;
  // End (in pages) of everything reported so far.
  let seenEnd = 0;
  const dirtyBit = dirty ? dirtyCategory(dirty) : 0;
  for (;;) {
    encodePmScanArg({
      // Protecting applies to the pages that match the filter, i.e. exactly the
      // pages saved, in every write-protect-async area of the span (see DirtyScan).
      flags: dirty?.protect ? BigInt(PM_SCAN.WP_MATCHING) : 0n, start, end: spanEnd, vec: BigInt(addressOf(scanVector)), vec_len: BigInt(vectorRegions), max_pages: 0n,
      category_inverted: SCAN_EXCLUDED, category_mask: SCAN_EXCLUDED, category_anyof_mask: SCAN_ANY_OF,
      // Without dirty tracking only the ranges are wanted: with no categories
      // returned, the kernel merges neighbouring pages into one region
      // whatever else differs. With it, regions split where dirtiness does.
      return_mask: BigInt(dirtyBit),
    }, scanArg);
    counters.pagemapScanIoctls++;
    const found = ioctl(fd, PAGEMAP_SCAN, scanArg, `PAGEMAP_SCAN ${hex(start)}-${hex(spanEnd)}`);
    for (const region of decodePageRegions(scanVector, found)) {
      // Regions come in address order; a resumed call never repeats one, but
      // clipping to what was seen keeps a repeat from becoming a second run.
      const first = Math.max(Number(region.start) / PAGE_SIZE, seenEnd);
      const end = Number(region.end) / PAGE_SIZE;
      if (first >= end) continue;
      cursor = intersect(areas, cursor, first, end, out, dirty ? (Number(region.categories) & dirtyBit) !== 0 : undefined);
      seenEnd = end;
    }
    // A vector with room left means the walk reached the end. walk_end is
    // then no guide: the kernel leaves it where an internal 512-region bounce
    // buffer last filled (6.18 does this for any walk with more regions than
    // that), and resuming there would report the rest again.
    if (found < vectorRegions) return;
    // Full: resume where the kernel stopped, which is never before the last region's end.
    const resume = BigInt(Math.max(Math.floor(Number(pmScanWalkEnd(scanArg)) / PAGE_SIZE), seenEnd) * PAGE_SIZE);
    if (resume >= spanEnd) return;
    if (resume <= start) throw new Error(`PAGEMAP_SCAN ${hex(start)}-${hex(spanEnd)} made no progress (walk_end ${hex(pmScanWalkEnd(scanArg))})`);
    start = resume;
  }
}

/**
 * Add the parts of region [first, end) (pages) that lie in wanted areas.
 * Regions come in address order, so the area cursor only moves forward;
 * returns the cursor for the next region.
 */
function intersect(areas: readonly Area[], cursor: number, first: number, end: number, out: RunCollector, dirty: boolean | undefined): number {
  while (cursor < areas.length && areas[cursor]!.endPage <= first) cursor++;
  for (let i = cursor; i < areas.length; i++) {
    const area = areas[i]!;
    if (area.firstPage >= end) break;
    out.add(i, Math.max(first, area.firstPage), Math.min(end, area.endPage), dirty);
  }
  return cursor;
}

function isZeroPfn(pfn: number, zero: ZeroPfns): boolean {
  return pfn === zero.small || (zero.hugeFirst >= 0 && pfn >= zero.hugeFirst && pfn < zero.hugeFirst + 512);
}

/**
 * The pagemap entry bit (in the high word) that marks a page dirty, and
 * whether a set bit means dirty: bit 55 is soft-dirty; bit 57 says the page
 * is still write-protected by a userfaultfd, i.e. not written.
 */
function dirtyPagemapBit(d: DirtyScan): { bit: number; setMeansDirty: boolean } {
  return d.category === "soft-dirty" ? { bit: PME_HI.SOFT_DIRTY, setMeansDirty: true } : { bit: PME_HI.UFFD_WP, setMeansDirty: false };
}

function scanWithPagemapReads(fd: number, areas: readonly Area[], windowBytes: number, counters: PageCounters, out: RunCollector, dirty?: DirtyScan): void {
  const dirtyBit = dirty ? dirtyPagemapBit(dirty) : null;
  const zero = zeroPagePfns();
  const cache = new PagemapCache(fd, areas, Math.max(windowBytes, MIN_WINDOW_BYTES), () => counters.pagemapPreads++);
  const presentOrSwapped = PME_HI.PRESENT | PME_HI.SWAPPED;
  for (let i = 0; i < areas.length; i++) {
    const area = areas[i]!;
    let page = area.firstPage;
    while (page < area.endPage) {
      if (!cache.covers(page)) cache.fill(i, page);
      const stop = Math.min(area.endPage, cache.endPage);
      const words = cache.words;
      // Collect stretches of alike pages to save, one add() per stretch rather than per page.
      let stretch = -1;
      let stretchDirty: boolean | undefined = undefined;
      for (let k = (page - cache.firstPage) * 2; page < stop; page++, k += 2) {
        const hi = words[k + 1]!;
        const save = (hi & presentOrSwapped) !== 0 && (hi & PME_HI.FILE) === 0
          // Only a present entry carries a PFN; a swapped one holds a swap slot there.
          && ((hi & PME_HI.PRESENT) === 0 || !isZeroPfn(entryPfn(words[k]!, hi), zero));
        const pageDirty = dirtyBit ? ((hi & dirtyBit.bit) !== 0) === dirtyBit.setMeansDirty : undefined;
        if (stretch >= 0 && (!save || pageDirty !== stretchDirty)) {
          out.add(i, stretch, page, stretchDirty);
          stretch = -1;
        }
        if (save && stretch < 0) {
          stretch = page;
          stretchDirty = pageDirty;
        }
      }
      if (stretch >= 0) out.add(i, stretch, stop, stretchDirty);
    }
  }
}

// ---------------------------------------------------------------- page buffer

/** How the buffer for page data is prepared; bench/pages.ts measures each. */
export type PageBufferMode = "plain" | "hugepage" | "populate" | "hugepage-populate";

const MADV_HUGEPAGE = 14;
const MADV_POPULATE_WRITE = 23;
const HUGE_PAGE_SIZE = 2 * 1024 * 1024;
/**
 * Chosen with bench/pages.ts. First-touch faults are slow on this machine and
 * huge pages take 512 times fewer: copying 256 MiB took 79-88 ms into huge
 * pages against 124-267 ms into 4 KiB pages (populated up front or not), and
 * 2 GiB 0.6-1.0 s against 1.0-2.2 s (run-to-run noise is large there).
 * Populating the huge pages before the copy (MADV_POPULATE_WRITE) measured
 * the same as letting process_vm_readv fault them in, so it is not done.
 */
const DEFAULT_BUFFER_MODE: PageBufferMode = "hugepage";
/** The largest ArrayBuffer Bun makes over foreign memory. */
const MAX_VIEW_BYTES = 2 ** 32;

/** Page contents, in the order of the runs; memory mapped once, released by dispose(). */
export interface PageData {
  /** Address of the first byte in this process (0 when empty). */
  readonly address: number;
  readonly byteLength: number;
  /** All the data as one view (up to 4 GiB; use view() beyond that). */
  readonly bytes: Uint8Array;
  /** A view of `length` bytes at `offset`. */
  view(offset: number, length: number): Uint8Array;
  /** Unmap the buffer; views become invalid. Safe to call twice. */
  dispose(): void;
}

class MappedPages implements PageData {
  private mapAddress: number;
  private whole: Uint8Array | null = null;

  constructor(
    readonly address: number,
    readonly byteLength: number,
    mapAddress: number,
    private readonly mapLength: number,
  ) {
    this.mapAddress = mapAddress;
  }

  get bytes(): Uint8Array {
    if (this.whole) return this.whole;
    if (this.byteLength > MAX_VIEW_BYTES) throw new RangeError(`page data of ${this.byteLength} bytes is larger than one view can be; use view()`);
    this.whole = this.view(0, this.byteLength);
    return this.whole;
  }

  view(offset: number, length: number): Uint8Array {
    if (offset < 0 || length < 0 || offset + length > this.byteLength) {
      throw new RangeError(`page data view ${offset}+${length} is outside ${this.byteLength} bytes`);
    }
    if (this.mapAddress === 0 && this.byteLength > 0) throw new Error("page data used after dispose()");
    return length === 0 ? new Uint8Array(0) : memoryView(this.address + offset, length);
  }

  dispose(): void {
    if (this.mapAddress === 0) return;
    munmap(this.mapAddress, this.mapLength);
    this.mapAddress = 0;
    this.whole = null;
  }
}

function roundUp(n: number, to: number): number {
  return Math.ceil(n / to) * to;
}

/** Map an anonymous buffer of `byteLength` bytes the way `mode` says. */
export function mapPageBuffer(byteLength: number, mode: PageBufferMode = DEFAULT_BUFFER_MODE): PageData {
  if (byteLength === 0) return new MappedPages(0, 0, 0, 0);
  const huge = mode === "hugepage" || mode === "hugepage-populate";
  // Huge pages need 2 MiB-aligned blocks: map 2 MiB more and start at the first boundary.
  const mapLength = huge ? roundUp(byteLength, HUGE_PAGE_SIZE) + HUGE_PAGE_SIZE : roundUp(byteLength, PAGE_SIZE);
  const mapAddress = mmap(0, mapLength, PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS);
  const address = huge ? roundUp(mapAddress, HUGE_PAGE_SIZE) : mapAddress;
  const pages = new MappedPages(address, byteLength, mapAddress, mapLength);
  try {
    if (huge) {
      try {
        madvise(address, roundUp(byteLength, HUGE_PAGE_SIZE), MADV_HUGEPAGE);
      } catch (e) {
        // No transparent huge pages in this kernel: small pages still work.
        if (!(e instanceof SysError && e.errno === Errno.EINVAL)) throw e;
      }
    }
    if (mode === "populate" || mode === "hugepage-populate") madvise(address, roundUp(byteLength, PAGE_SIZE), MADV_POPULATE_WRITE);
  } catch (e) {
    pages.dispose();
    throw e;
  }
  return pages;
}

// ---------------------------------------------------------------- copying

/** Remote iovecs per process_vm_readv: the kernel's IOV_MAX. */
const IOV_MAX = 1024;
/**
 * Bytes per process_vm_readv or pread: the kernel caps one transfer at
 * MAX_RW_COUNT (2 GiB - 4 KiB) and would return short beyond it.
 */
const MAX_BYTES_PER_CALL = 1024 * 1024 * 1024;

export interface CopyOptions {
  /** Opens /proc/PID/mem through this when an unreadable range needs it; a private one otherwise. */
  proc?: ProcFs;
  counters?: PageCounters;
  /** Remote ranges per process_vm_readv (at most IOV_MAX, the default). */
  maxIovecsPerCall?: number;
  /** Bytes per process_vm_readv or /proc/PID/mem pread (default 1 GiB). */
  maxBytesPerCall?: number;
  buffer?: PageBufferMode;
  /**
   * The task runs again (a pre-dump copies after letting it go): a range it
   * has unmapped since the scan is saved as zeros instead of failing. That is
   * safe because the next round cannot find those pages unchanged: a new
   * mapping there is not the tracked one, so it is saved whole.
   */
  running?: boolean;
  /**
   * Read everything through /proc/PID/mem, opened at once: the fd stays
   * bound to the address space of now, so a task that execs or exits later
   * makes the reads fail instead of reading another address space under
   * the same pid (process_vm_readv looks the pid up on every call).
   */
  boundToMm?: boolean;
}

/**
 * A stretch of runs copied the same way: adjacent in the target (so one
 * remote range) and in the buffer (runs are laid out back to back), and of
 * areas that are all readable or all not.
 */
export interface Piece {
  remote: number;
  offset: number;
  length: number;
  readable: boolean;
}

function planPieces(areas: readonly Area[], runs: readonly PageRun[]): { pieces: Piece[]; byteLength: number } {
  const pieces: Piece[] = [];
  let offset = 0;
  for (const run of runs) {
    const first = Number(run.vaddr) / PAGE_SIZE;
    const index = areaIndexOf(areas, first);
    const area = areas[index];
    if (!Number.isInteger(first) || !(run.nrPages > 0) || area === undefined || first + run.nrPages > area.endPage) {
      throw new Error(`page copy: run ${hex(run.vaddr)} of ${run.nrPages} pages is not inside one of the given areas`);
    }
    const remote = first * PAGE_SIZE;
    const length = run.nrPages * PAGE_SIZE;
    const last = pieces[pieces.length - 1];
    if (last && last.readable === area.readable && last.remote + last.length === remote) last.length += length;
    else pieces.push({ remote, offset, length, readable: area.readable });
    offset += length;
  }
  return { pieces, byteLength: offset };
}

/** One set of iovec arrays for every copy (only the main thread copies). */
const remoteIov = new BigUint64Array(2 * IOV_MAX);
const localIov = new BigUint64Array(2);

/**
 * Copy the pages of `runs` (from scanPages) out of task `pid` into one new
 * buffer, in run order. `vmas` are the areas the runs were found in; their
 * `readable` decides how each run is read.
 */
export function copyPages(pid: number, vmas: readonly PageVma[], runs: readonly PageRun[], options: CopyOptions = {}): PageData {
  const counters = options.counters ?? newPageCounters();
  const maxIovecs = Math.min(options.maxIovecsPerCall ?? IOV_MAX, IOV_MAX);
  const maxBytes = options.maxBytesPerCall ?? MAX_BYTES_PER_CALL;
  if (!(maxIovecs >= 1) || !(maxBytes >= PAGE_SIZE) || maxBytes % PAGE_SIZE !== 0) {
    throw new Error(`page copy: bad limits (${maxIovecs} iovecs, ${maxBytes} bytes per call)`);
  }
  const { pieces, byteLength } = planPieces(toAreas(vmas), runs);
  const data = mapPageBuffer(byteLength, options.buffer);
  try {
    withProc(options.proc, (proc) => {
      const copier = new Copier(pid, proc, data, counters, maxBytes, options.running ?? false);
      try {
        copier.copy(pieces, maxIovecs);
      } finally {
        copier.close();
      }
    });
  } catch (e) {
    data.dispose();
    throw e;
  }
  return data;
}

/**
 * The pages of `runs` in one buffer laid out in run order, as copyPages
 * makes it, but filled piece by piece by the caller (snapshot.ts copies
 * while the task runs, a part at a time). dispose() releases the buffer
 * unless it was handed on.
 */
export class PieceCopy {
  readonly pieces: readonly Piece[];
  readonly data: PageData;
  private readonly copier: Copier;

  constructor(pid: number, vmas: readonly PageVma[], runs: readonly PageRun[], proc: ProcFs, options: Omit<CopyOptions, "proc"> = {}) {
    const planned = planPieces(toAreas(vmas), runs);
    this.pieces = planned.pieces;
    this.data = mapPageBuffer(planned.byteLength, options.buffer);
    try {
      this.copier = new Copier(pid, proc, this.data, options.counters ?? newPageCounters(), MAX_BYTES_PER_CALL, options.running ?? false, options.boundToMm ?? false);
    } catch (e) {
      // The mem fd could not be opened (the task is gone): nothing may keep the buffer.
      this.data.dispose();
      throw e;
    }
  }

  /** Copy `pieces` (parts of this.pieces: each within one, at the matching buffer offset) from the task. */
  copy(pieces: readonly Piece[]): void {
    // The copier takes a batch of pieces into one local range: give it runs
    // of pieces that are back to back in the buffer.
    let from = 0;
    for (let i = 1; i <= pieces.length; i++) {
      const prev = pieces[i - 1]!;
      const next = pieces[i];
      if (next && next.offset === prev.offset + prev.length) continue;
      this.copier.copy(pieces.slice(from, i), IOV_MAX);
      from = i;
    }
  }

  /** Close the /proc/PID/mem fd, if one was opened; the data stays. */
  close(): void {
    this.copier.close();
  }
}

class Copier {
  private memFd = -1;

  constructor(
    private readonly pid: number,
    private readonly proc: ProcFs,
    private readonly data: PageData,
    private readonly counters: PageCounters,
    private readonly maxBytes: number,
    private readonly running: boolean,
    /** Every read through /proc/PID/mem, opened now (CopyOptions.boundToMm). */
    private readonly memOnly = false,
  ) {
    if (memOnly) this.memFd = this.proc.open(this.pid, "mem", O.RDONLY);
  }

  copy(pieces: readonly Piece[], maxIovecs: number): void {
    let p = 0;
    // Bytes of pieces[p] already handed to an earlier batch (a piece longer than maxBytes).
    let pieceDone = 0;
    while (p < pieces.length) {
      const first = pieces[p]!;
      if (!first.readable || this.memOnly) {
        this.readMem(first.remote, first.offset, first.length);
        p++;
        continue;
      }
      // A batch: consecutive readable pieces, which are back to back in the
      // buffer, so one local iovec takes them all.
      const batchOffset = first.offset + pieceDone;
      let count = 0;
      let batchBytes = 0;
      while (p < pieces.length && count < maxIovecs && batchBytes < this.maxBytes) {
        const piece = pieces[p]!;
        if (!piece.readable) break;
        const take = Math.min(piece.length - pieceDone, this.maxBytes - batchBytes);
        setIovec(remoteIov, count++, piece.remote + pieceDone, take);
        batchBytes += take;
        if (pieceDone + take === piece.length) {
          p++;
          pieceDone = 0;
        } else {
          pieceDone += take;
        }
      }
      this.readBatch(count, batchOffset, batchBytes);
    }
  }

  /**
   * process_vm_readv of `count` remote ranges (in remoteIov) into the buffer
   * at `offset`. The kernel stops at the first page it cannot read and reports
   * how far it got; the next call starts there. A call that cannot read even
   * its first page (EFAULT) hands that range to /proc/PID/mem.
   */
  private readBatch(count: number, offset: number, bytes: number): void {
    let iov = 0;
    let done = 0;
    while (iov < count) {
      setIovec(localIov, 0, this.data.address + offset + done, bytes - done);
      let n = 0;
      this.counters.processVmReadvCalls++;
      try {
        n = processVmReadv(this.pid, localIov, 1, iov === 0 ? remoteIov : remoteIov.subarray(2 * iov), count - iov);
      } catch (e) {
        if (!(e instanceof SysError && e.errno === Errno.EFAULT)) throw e;
      }
      if (n === 0) {
        const remote = Number(remoteIov[2 * iov]!);
        const length = Number(remoteIov[2 * iov + 1]!);
        this.readMem(remote, offset + done, length);
        done += length;
        iov++;
        continue;
      }
      // Step over what was read, shortening a range read in part.
      while (n > 0) {
        const length = Number(remoteIov[2 * iov + 1]!);
        if (n >= length) {
          n -= length;
          done += length;
          iov++;
        } else {
          remoteIov[2 * iov] = remoteIov[2 * iov]! + BigInt(n);
          remoteIov[2 * iov + 1] = BigInt(length - n);
          done += n;
          n = 0;
        }
      }
    }
  }

  /** pread of /proc/PID/mem: FOLL_FORCE lets it read pages of PROT_NONE areas. */
  private readMem(remote: number, offset: number, length: number): void {
    if (this.memFd < 0) this.memFd = this.proc.open(this.pid, "mem", O.RDONLY);
    let done = 0;
    while (done < length) {
      const part = Math.min(length - done, this.maxBytes);
      this.counters.memPreads++;
      let n = 0;
      try {
        n = preadInto(this.memFd, this.data.view(offset + done, part), remote + done);
      } catch (e) {
        if (!(this.running && e instanceof SysError && (e.errno === Errno.EIO || e.errno === Errno.EFAULT))) throw e;
      }
      if (n === 0) {
        if (!this.running) throw new Error(`pread of /proc/${this.pid}/mem at ${hex(remote + done)} returned no data${this.memOnly ? " (the process exited or ran another program)" : ""}`);
        // Unmapped since the scan: zeros for the rest of the page, then go on.
        const skip = PAGE_SIZE - ((remote + done) % PAGE_SIZE);
        this.data.view(offset + done, Math.min(skip, length - done)).fill(0);
        this.counters.vanishedPages++;
        n = Math.min(skip, length - done);
      }
      done += n;
    }
  }

  close(): void {
    if (this.memFd >= 0) close(this.memFd);
    this.memFd = -1;
  }
}

/** Scan and copy in one go: the pages of `vmas` and their contents. */
export function collectPages(pid: number, vmas: readonly PageVma[], options: ScanOptions & CopyOptions = {}): { scan: PageScan; data: PageData } {
  const counters = options.counters ?? newPageCounters();
  const scan = scanPages(pid, vmas, { ...options, counters });
  const data = copyPages(pid, vmas, scan.runs, { ...options, counters });
  return { scan, data };
}

// ---------------------------------------------------------------- images

export { PE_PARENT, PE_PRESENT } from "../../image/pagemap";

/** Bytes per write(2) of page data: large, and under the kernel's 2 GiB cap per call. */
const WRITE_CHUNK_BYTES = 1024 * 1024 * 1024;

/** Write all page data to `fd` (the pages-N.img file) in big writes. */
export function writePages(sink: { write(bytes: Uint8Array): void }, data: PageData): void {
  for (let offset = 0; offset < data.byteLength; offset += WRITE_CHUNK_BYTES) {
    sink.write(data.view(offset, Math.min(WRITE_CHUNK_BYTES, data.byteLength - offset)));
  }
}

/**
 * pagemap-N.img entries for the runs, in CRIU's shape: vaddr, page count and
 * PE_PRESENT — or PE_PARENT for a run found unchanged since the previous
 * round, whose contents are not written again — with PE_LAZY added where a
 * lazy restore may leave the pages to its lazy-pages daemon (alone for a
 * lazy dump's runs, kept at the source). CRIU's own dumps mark PE_LAZY the
 * same way; on an in-parent run it is ours, and CRIU's readers take the two
 * flags apart. The count goes in both nr_pages and the pre-4.2 field.
 */
export function pagemapEntries(runs: readonly PageRun[]): PagemapEntry[] {
  return runs.map((run) => create(PagemapEntrySchema, {
    vaddr: run.vaddr,
    compatNrPages: run.nrPages,
    flags: run.lazy === "source" ? PE_LAZY : (run.dirty === false ? PE_PARENT : PE_PRESENT) | (run.lazy === "here" ? PE_LAZY : 0),
    nrPages: BigInt(run.nrPages),
  }));
}
