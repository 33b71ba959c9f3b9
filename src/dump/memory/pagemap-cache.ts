/**
 * Reading /proc/PID/pagemap in windows that span neighbouring areas (the
 * seed-003 idea), for kernels without the PAGEMAP_SCAN ioctl.
 *
 * A process with thousands of small areas would cost one pread per area if
 * each were read on its own. The cache instead reads, on a miss, one window of
 * at least 2 MiB of address space starting at the area that missed and
 * running over the areas after it, so one pread serves all of them. The holes
 * between those areas are read too (the kernel reports them as empty entries),
 * which is cheap: 8 bytes per 4 KiB of hole, and a window is bounded.
 *
 * Each pagemap entry is a u64 (Documentation/admin-guide/mm/pagemap.rst):
 * bit 63 present, 62 swapped, 61 file page or shared anonymous page, bits 0-54
 * the page frame number when present (shown only to CAP_SYS_ADMIN). Entries are
 * kept as pairs of u32 words so that decoding needs no BigInt: the flag bits
 * and the top of the PFN sit in the high word.
 */
import { close, madvise, memoryView, mmap, munmap, openat, preadInto } from "../../sys/libc";
import { AT, MAP, O, PAGE_SIZE, PROT } from "../../sys/nr";

const PAGEMAP_ENTRY_SIZE = 8;
/** Flag bits of a pagemap entry, as bits of its high 32-bit word. */
export const PME_HI = {
  PRESENT: 1 << 31,
  SWAPPED: 1 << 30,
  FILE: 1 << 29,
  /** Bit 57: still write-protected by a userfaultfd (not written since). */
  UFFD_WP: 1 << 25,
  /** Bit 55: soft-dirty. */
  SOFT_DIRTY: 1 << 23,
  /** PFN bits 32-54. */
  PFN: 0x7fffff,
} as const;

/** The smallest window a fill reads, in bytes of address space (CRIU's PAGEMAP_MAX_AREA). */
export const MIN_WINDOW_BYTES = 2 * 1024 * 1024;

/** An area in page numbers (address / PAGE_SIZE), sorted and not overlapping its neighbours. */
export interface PageSpan {
  firstPage: number;
  endPage: number;
}

/** PFN of one pagemap entry given as its two u32 words; only meaningful for a present page. */
export function entryPfn(lo: number, hi: number): number {
  // PFNs of real memory stay far below 2^53, so a double holds them exactly.
  return (hi & PME_HI.PFN) * 2 ** 32 + lo;
}

export class PagemapCache {
  /** Entries of the cached window: two u32 words (low, high) per page. */
  readonly words: Uint32Array;
  /** First page number the window holds. */
  firstPage = 0;
  /** Page number just past the window; equal to firstPage when nothing is cached. */
  endPage = 0;
  private readonly bytes: Uint8Array;
  private readonly windowPages: number;

  /**
   * `fd` is an open /proc/PID/pagemap; `spans` the areas the caller will walk,
   * in address order; `onPread` counts each pread for the caller's counters.
   */
  constructor(
    private readonly fd: number,
    private readonly spans: readonly PageSpan[],
    windowBytes: number,
    private readonly onPread: () => void,
  ) {
    this.windowPages = Math.ceil(Math.max(windowBytes, MIN_WINDOW_BYTES) / PAGE_SIZE);
    // One buffer for the whole walk: a window is never larger than windowPages.
    this.bytes = new Uint8Array(this.windowPages * PAGEMAP_ENTRY_SIZE);
    this.words = new Uint32Array(this.bytes.buffer);
  }

  covers(page: number): boolean {
    return page >= this.firstPage && page < this.endPage;
  }

  /**
   * Read the window that starts at `page` of span `spanIndex` and runs over the
   * spans after it, as far as the window size allows: it stops at the end of
   * the last span that starts inside the window (cut at the window's edge), so
   * no pread reaches into a hole after the last area it serves.
   */
  fill(spanIndex: number, page: number): void {
    const span = this.spans[spanIndex];
    if (span === undefined || page < span.firstPage || page >= span.endPage) {
      throw new Error(`pagemap cache: page 0x${page.toString(16)} is not in area #${spanIndex}`);
    }
    const limit = page + this.windowPages;
    let end = Math.min(span.endPage, limit);
    for (let i = spanIndex + 1; i < this.spans.length; i++) {
      const next = this.spans[i]!;
      if (next.firstPage >= limit) break;
      end = Math.min(next.endPage, limit);
    }
    const want = (end - page) * PAGEMAP_ENTRY_SIZE;
    let got = 0;
    // pagemap answers a pread whole in practice; loop in case it is ever short.
    while (got < want) {
      const n = preadInto(this.fd, this.bytes.subarray(got, want), page * PAGEMAP_ENTRY_SIZE + got);
      this.onPread();
      if (n === 0) throw new Error(`pread of pagemap at page 0x${(page + got / PAGEMAP_ENTRY_SIZE).toString(16)} returned no data`);
      got += n;
    }
    this.firstPage = page;
    this.endPage = end;
  }
}

/** The shared zero page's PFN and the huge zero page's first PFN, each -1 when the kernel maps none. */
export interface ZeroPfns {
  small: number;
  hugeFirst: number;
}

const MADV_HUGEPAGE = 14;
const HUGE_PAGE_SIZE = 2 * 1024 * 1024;
const HUGE_PAGE_PFNS = HUGE_PAGE_SIZE / PAGE_SIZE;
let zeroPfnsCache: ZeroPfns | null = null;

/**
 * Find the zero pages' PFNs by reading fresh anonymous memory of our own and
 * looking at our own pagemap: a read fault on untouched private anonymous
 * memory maps the shared zero page. They are the same for every process, so
 * this runs once. It is a zero page only if two separate reads land on the
 * same PFN: a kernel without one (some VMs boot with pvm_no_zero_page=1)
 * gives every read fault a zero-filled page of its own, which is then as real
 * a page of the process as a written one, and is saved.
 *
 * The huge zero page is found the same way with 2 MiB-aligned MADV_HUGEPAGE
 * areas. pagemap also marks it with bit 61 (it is not an anonymous page), so
 * the FILE rule alone skips it today; knowing its PFNs keeps the fallback in
 * step with PAGEMAP_SCAN's PFNZERO even if that marking changes.
 */
export function zeroPagePfns(): ZeroPfns {
  if (zeroPfnsCache) return zeroPfnsCache;
  const fd = openat(AT.FDCWD, "/proc/self/pagemap", O.RDONLY | O.CLOEXEC);
  try {
    const small = readOwnPfns(fd, PAGE_SIZE, 0);
    if (small[0] === 0) {
      // PFNs read as 0 without CAP_SYS_ADMIN; every page would look like the zero page.
      throw new Error("pagemap shows no PFN for the zero page (reading PFNs needs CAP_SYS_ADMIN)");
    }
    const smallPfn = small[0] !== null && small[0] === small[1] ? small[0] : -1;
    // Without THP (or with use_zero_page off) the reads map the small zero page again.
    const huge = readOwnPfns(fd, HUGE_PAGE_SIZE, MADV_HUGEPAGE);
    const hugeFirst = huge[0] !== null && huge[0] === huge[1] && huge[0] !== smallPfn && huge[0] % HUGE_PAGE_PFNS === 0 ? huge[0] : -1;
    zeroPfnsCache = { small: smallPfn, hugeFirst };
    return zeroPfnsCache;
  } finally {
    close(fd);
  }
}

/**
 * Map two `block`-aligned blocks of read-only anonymous memory at once,
 * optionally advise them, read the first byte of each, and return the PFNs of
 * those two pages from our pagemap (null when not present). Both stay mapped
 * until both are read: a page freed in between could come back for the second
 * read and pass for a shared one.
 */
function readOwnPfns(pagemapFd: number, block: number, advice: number): [number | null, number | null] {
  // One block more than needed, so that two aligned blocks fit wherever mmap puts it.
  const length = 3 * block;
  const addr = mmap(0, length, PROT.READ, MAP.PRIVATE | MAP.ANONYMOUS);
  try {
    const first = Math.ceil(addr / block) * block;
    const blocks = [first, first + block];
    if (advice !== 0) {
      try {
        madvise(first, 2 * block, advice);
      } catch {
        // A kernel without transparent huge pages refuses the advice: no huge zero page either.
        return [null, null];
      }
    }
    const entry = new Uint8Array(PAGEMAP_ENTRY_SIZE);
    const words = new Uint32Array(entry.buffer);
    // The read faults are what map the zero page; the values themselves are 0.
    for (const at of blocks) if (memoryView(at, 1)[0] !== 0) throw new Error("fresh anonymous memory does not read as zero");
    const pfns = blocks.map((at) => {
      preadInto(pagemapFd, entry, (at / PAGE_SIZE) * PAGEMAP_ENTRY_SIZE);
      const hi = words[1]!;
      return (hi & PME_HI.PRESENT) === 0 ? null : entryPfn(words[0]!, hi);
    });
    return [pfns[0] ?? null, pfns[1] ?? null];
  } finally {
    munmap(addr, length);
  }
}
