import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  collectPages, copyPages, newPageCounters, PE_PRESENT, pagemapEntries, scanPages, writePages, type PageData, type PageRun,
  type PageScan, type PageVma,
} from "../src/dump/memory/pages";
import { zeroPagePfns } from "../src/dump/memory/pagemap-cache";
import { readMaps, type MapArea } from "../src/proc/maps";
import { ProcFs } from "../src/proc/procfs";
import { close, openat, preadInto, writeAll } from "../src/sys/libc";
import { AT, O, PAGE_SIZE } from "../src/sys/nr";
import { buildC, startReady, tempDir, type Target } from "./helpers/target";

const SMALL_VMAS = 4096;
const FILE_PAGES = 16;
const SPARSE_PAGES = 4096;

/**
 * A process whose memory holds every case the page selection must get right.
 * It prints the address of each area on its "ready" line, then sleeps.
 *   anon:   64 pages, MADV_NOHUGEPAGE; pages 0-9 and 30-39 written with pattern(),
 *           20-29 only read (the zero page), the rest never touched
 *   file:   the test's file mapped MAP_PRIVATE read-write; every page read, pages 3
 *           and 7 written (so only those two are anonymous copies)
 *   none:   8 pages, pages 0, 1 and 5 written, then mprotect(PROT_NONE)
 *   small:  SMALL_VMAS pages, each written, every other one made read-only, so
 *           each page is an area of its own
 *   hzero:  a 2 MiB-aligned MADV_HUGEPAGE block that is only read (the huge
 *           zero page where THP allows it)
 *   sparse: SPARSE_PAGES pages in one area, every other one written: more separate
 *           regions than the kernel's 512-region bounce buffer holds
 */
const TARGET_SOURCE = `
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>
#define PG 4096UL
static unsigned char pattern(unsigned long page, unsigned long off) { return (unsigned char)(page * 131 + off * 7 + 1); }
static void fill(unsigned char *p, unsigned long page) { for (unsigned long o = 0; o < PG; o++) p[o] = pattern(page, o); }
static void *map(size_t len, int prot) {
  void *p = mmap(NULL, len, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) { perror("mmap"); exit(1); }
  return p;
}
volatile unsigned char sink;
int main(int argc, char **argv) {
  unsigned long nsmall = strtoul(argv[2], NULL, 0);
  unsigned char *anon = map(64 * PG, PROT_READ | PROT_WRITE);
  madvise(anon, 64 * PG, MADV_NOHUGEPAGE);
  for (unsigned long p = 0; p < 10; p++) fill(anon + p * PG, p);
  for (unsigned long p = 30; p < 40; p++) fill(anon + p * PG, p);
  for (unsigned long p = 20; p < 30; p++) sink += anon[p * PG + 5];

  int fd = open(argv[1], O_RDONLY);
  if (fd < 0) { perror("open"); return 1; }
  unsigned char *file = mmap(NULL, ${FILE_PAGES} * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  if (file == MAP_FAILED) { perror("mmap file"); return 1; }
  for (unsigned long p = 0; p < ${FILE_PAGES}; p++) sink += file[p * PG];
  file[3 * PG + 100] = 0xab;
  file[7 * PG] = 0xcd;

  unsigned char *none = map(8 * PG, PROT_READ | PROT_WRITE);
  madvise(none, 8 * PG, MADV_NOHUGEPAGE);
  fill(none, 1000); fill(none + PG, 1001); fill(none + 5 * PG, 1005);
  mprotect(none, 8 * PG, PROT_NONE);

  unsigned char *small = map(nsmall * PG, PROT_READ | PROT_WRITE);
  madvise(small, nsmall * PG, MADV_NOHUGEPAGE);
  for (unsigned long p = 0; p < nsmall; p++) small[p * PG] = (unsigned char)(p + 1);
  for (unsigned long p = 0; p < nsmall; p += 2) mprotect(small + p * PG, PG, PROT_READ);

  unsigned char *hraw = map(4UL << 20, PROT_READ | PROT_WRITE);
  unsigned char *hzero = (unsigned char *)(((uintptr_t)hraw + (2UL << 20) - 1) & ~((2UL << 20) - 1));
  madvise(hzero, 2UL << 20, MADV_HUGEPAGE);
  for (unsigned long o = 0; o < (2UL << 20); o += PG) sink += hzero[o];

  unsigned char *sparse = map(${SPARSE_PAGES} * PG, PROT_READ | PROT_WRITE);
  madvise(sparse, ${SPARSE_PAGES} * PG, MADV_NOHUGEPAGE);
  for (unsigned long p = 0; p < ${SPARSE_PAGES}; p += 2) sparse[p * PG + 9] = (unsigned char)p | 1;

  printf("ready %lx %lx %lx %lx %lx %lx\\n", (unsigned long)anon, (unsigned long)file, (unsigned long)none,
         (unsigned long)small, (unsigned long)hzero, (unsigned long)sparse);
  fflush(stdout);
  for (;;) pause();
}
`;

/** The byte pattern() of the C program puts at `off` of page `page`. */
function pattern(page: number, off: number): number {
  return (page * 131 + off * 7 + 1) & 0xff;
}

/** Areas whose private pages a dump saves: private mappings other than the kernel's special ones. */
function wantedVmas(areas: readonly MapArea[]): PageVma[] {
  return areas
    .filter((a) => !a.shared && !["[vdso]", "[vvar]", "[vvar_vclock]", "[vsyscall]"].includes(a.path))
    .map((a) => ({ start: a.start, end: a.end, readable: a.read, fileBacked: a.inode !== 0n }));
}

/** Pages of `runs` that fall in [start, start + pages * PAGE_SIZE), as page indexes from `start`. */
function pagesIn(runs: readonly PageRun[], start: bigint, pages: number): number[] {
  const end = start + BigInt(pages * PAGE_SIZE);
  const out: number[] = [];
  for (const r of runs) {
    for (let i = 0; i < r.nrPages; i++) {
      const addr = r.vaddr + BigInt(i * PAGE_SIZE);
      if (addr >= start && addr < end) out.push(Number((addr - start) / BigInt(PAGE_SIZE)));
    }
  }
  return out;
}

/** Compare copied data with what pread of /proc/PID/mem reads for every run. */
function expectMatchesMem(pid: number, runs: readonly PageRun[], data: PageData): void {
  const fd = openat(AT.FDCWD, `/proc/${pid}/mem`, O.RDONLY);
  try {
    let offset = 0;
    const bytes = data.bytes;
    for (const r of runs) {
      const want = new Uint8Array(r.nrPages * PAGE_SIZE);
      expect(preadInto(fd, want, r.vaddr)).toBe(want.length);
      const got = bytes.subarray(offset, offset + want.length);
      if (Buffer.compare(got, want) !== 0) throw new Error(`run 0x${r.vaddr.toString(16)} (${r.nrPages} pages) differs from /proc/${pid}/mem`);
      offset += want.length;
    }
    expect(offset).toBe(data.byteLength);
  } finally {
    close(fd);
  }
}

const targets: Target[] = [];
afterAll(() => targets.forEach((t) => t.kill()));

describe("page selection and copy against a live process", () => {
  let pid = 0;
  let vmas: PageVma[] = [];
  let anon = 0n;
  let file = 0n;
  let none = 0n;
  let small = 0n;
  let hzero = 0n;
  let sparse = 0n;
  let fileContents = new Uint8Array(0);
  let viaScan: PageScan;
  let viaReads: PageScan;

  beforeAll(async () => {
    const exe = buildC("pages-target", TARGET_SOURCE);
    const dir = tempDir("pages");
    const path = join(dir, "mapped");
    fileContents = Uint8Array.from({ length: FILE_PAGES * PAGE_SIZE }, (_, i) => (i * 13 + 5) & 0xff);
    writeFileSync(path, fileContents);
    const { target, words } = await startReady([exe, path, String(SMALL_VMAS)]);
    targets.push(target);
    pid = target.pid;
    [anon, file, none, small, hzero, sparse] = words.map((w) => BigInt(`0x${w}`)) as [bigint, bigint, bigint, bigint, bigint, bigint];
    const proc = new ProcFs();
    try {
      vmas = wantedVmas(readMaps(proc, pid));
    } finally {
      proc.close();
    }
    viaScan = scanPages(pid, vmas, { method: "pagemap-scan" });
    viaReads = scanPages(pid, vmas, { method: "pagemap-read" });
  });

  test("the target has the areas the test relies on", () => {
    // Every small page is an area of its own, and the PROT_NONE area is there and unreadable.
    const smallEnd = small + BigInt(SMALL_VMAS * PAGE_SIZE);
    expect(vmas.filter((v) => v.start >= small && v.end <= smallEnd).length).toBe(SMALL_VMAS);
    expect(vmas.find((v) => v.start === none)?.readable).toBe(false);
    expect(vmas.find((v) => v.start === file)?.fileBacked).toBe(true);
  });

  test("PAGEMAP_SCAN: one ioctl for the whole process, no pagemap reads", () => {
    expect(viaScan.method).toBe("pagemap-scan");
    expect(viaScan.counters.pagemapScanIoctls).toBe(1);
    expect(viaScan.counters.pagemapPreads).toBe(0);
    expect(viaScan.pagesScanned).toBe(vmas.reduce((s, v) => s + Number((v.end - v.start) / BigInt(PAGE_SIZE)), 0));
  });

  test("written anonymous pages are saved; holes are not, nor zero-page reads where the kernel maps the zero page", () => {
    // Some kernels (VMs booted with pvm_no_zero_page=1) give each read fault a zeroed page of its own: a real page to save.
    const readsSaved = zeroPagePfns().small < 0;
    const saved = [...Array(10).keys(), ...(readsSaved ? Array.from({ length: 10 }, (_, i) => 20 + i) : []), ...Array.from({ length: 10 }, (_, i) => 30 + i)];
    expect(pagesIn(viaScan.runs, anon, 64)).toEqual(saved);
    // Runs split at holes (and at the zero pages, where there are some).
    expect(viaScan.runs.filter((r) => r.vaddr >= anon && r.vaddr < anon + 64n * BigInt(PAGE_SIZE))).toEqual(
      readsSaved
        ? [{ vaddr: anon, nrPages: 10 }, { vaddr: anon + 20n * BigInt(PAGE_SIZE), nrPages: 20 }]
        : [{ vaddr: anon, nrPages: 10 }, { vaddr: anon + 30n * BigInt(PAGE_SIZE), nrPages: 10 }],
    );
  });

  test("zeroPagePfns finds the zero page exactly when read faults share one PFN", () => {
    // The target read anon pages 20..29: one shared PFN there means a zero page.
    const fd = openat(AT.FDCWD, `/proc/${pid}/pagemap`, O.RDONLY);
    try {
      const pfns = [20, 21, 29].map((p) => {
        const entry = new BigUint64Array(1);
        preadInto(fd, new Uint8Array(entry.buffer), Number(((anon / BigInt(PAGE_SIZE)) + BigInt(p)) * 8n));
        return Number(entry[0]! & ((1n << 55n) - 1n));
      });
      expect(pfns[0]).toBeGreaterThan(0);
      const shared = pfns.every((p) => p === pfns[0]);
      expect(zeroPagePfns().small).toBe(shared ? pfns[0]! : -1);
    } finally {
      close(fd);
    }
  });

  test("a private file mapping gives only its written pages", () => {
    expect(pagesIn(viaScan.runs, file, FILE_PAGES)).toEqual([3, 7]);
  });

  test("the PROT_NONE area's written pages are saved, the huge zero page is not", () => {
    expect(pagesIn(viaScan.runs, none, 8)).toEqual([0, 1, 5]);
    // Read-only huge block: the huge (or small) zero page, or, without zero pages, 512 real zero-filled pages.
    expect(pagesIn(viaScan.runs, hzero, 512)).toEqual(zeroPagePfns().small < 0 ? [...Array(512).keys()] : []);
  });

  test("runs never cross an area boundary: every small page is a run of its own", () => {
    const smallRuns = viaScan.runs.filter((r) => r.vaddr >= small && r.vaddr < small + BigInt(SMALL_VMAS * PAGE_SIZE));
    expect(smallRuns.length).toBe(SMALL_VMAS);
    expect(smallRuns.every((r) => r.nrPages === 1)).toBe(true);
  });

  test("more regions than the kernel's bounce buffer: still one ioctl, every region once", () => {
    // 2048 separate written pages in one area, as 2048 runs; the stale walk_end
    // the kernel reports after such a walk must not cause a second call.
    expect(pagesIn(viaScan.runs, sparse, SPARSE_PAGES)).toEqual(Array.from({ length: SPARSE_PAGES / 2 }, (_, i) => 2 * i));
    expect(viaScan.runs.filter((r) => r.vaddr >= sparse && r.vaddr < sparse + BigInt(SPARSE_PAGES * PAGE_SIZE)).length).toBe(SPARSE_PAGES / 2);
    expect(viaScan.counters.pagemapScanIoctls).toBe(1);
    const vaddrs = viaScan.runs.map((r) => r.vaddr);
    expect(new Set(vaddrs).size).toBe(vaddrs.length);
    // The same area alone: its last page is a hole, so no region ends at the span's end.
    const alone = vmas.filter((v) => v.start === sparse);
    expect(alone.length).toBe(1);
    const s = scanPages(pid, alone, { method: "pagemap-scan" });
    expect(s.counters.pagemapScanIoctls).toBe(1);
    expect(s.runs.length).toBe(SPARSE_PAGES / 2);
  });

  test("pagemap reads find exactly what PAGEMAP_SCAN finds, with far fewer preads than areas", () => {
    expect(viaReads.method).toBe("pagemap-read");
    expect(viaReads.runs).toEqual(viaScan.runs);
    expect(viaReads.pagesScanned).toBe(viaScan.pagesScanned);
    expect(viaReads.pagesToSave).toBe(viaScan.pagesToSave);
    expect(viaReads.counters.pagemapScanIoctls).toBe(0);
    expect(viaReads.counters.pagemapPreads).toBeGreaterThan(0);
    expect(viaReads.counters.pagemapPreads).toBeLessThan(vmas.length / 8);
  });

  test("a 2 MiB window still serves the 4096 small areas with a handful of preads", () => {
    const smallVmas = vmas.filter((v) => v.start >= small && v.end <= small + BigInt(SMALL_VMAS * PAGE_SIZE));
    const s = scanPages(pid, smallVmas, { method: "pagemap-read", pagemapWindowBytes: 2 * 1024 * 1024 });
    // 16 MiB of areas in 2 MiB windows.
    expect(s.counters.pagemapPreads).toBe((SMALL_VMAS * PAGE_SIZE) / (2 * 1024 * 1024));
    expect(s.runs.length).toBe(SMALL_VMAS);
    expect(s.runs).toEqual(scanPages(pid, smallVmas, { method: "pagemap-scan" }).runs);
  });

  test("a full output vector makes the scan resume at walk_end, with the same result", () => {
    const tiny = scanPages(pid, vmas, { method: "pagemap-scan", scanVectorRegions: 3 });
    expect(tiny.counters.pagemapScanIoctls).toBeGreaterThan(3);
    expect(tiny.runs).toEqual(viaScan.runs);
    // Larger than the kernel's bounce buffer but too small for the process:
    // resumes after internal flushes.
    const mid = scanPages(pid, vmas, { method: "pagemap-scan", scanVectorRegions: 700 });
    expect(mid.counters.pagemapScanIoctls).toBeGreaterThan(1);
    expect(mid.runs).toEqual(viaScan.runs);
  });

  test("auto uses PAGEMAP_SCAN here and counts into the caller's counters", () => {
    const counters = newPageCounters();
    const s = scanPages(pid, vmas, { counters });
    expect(s.method).toBe("pagemap-scan");
    expect(s.counters).toBe(counters);
    expect(counters.pagemapScanIoctls).toBe(1);
  });

  test("copy: contents match /proc/PID/mem; PROT_NONE pages come through /proc/PID/mem", () => {
    const counters = newPageCounters();
    const data = copyPages(pid, vmas, viaScan.runs, { counters });
    try {
      expect(data.byteLength).toBe(viaScan.pagesToSave * PAGE_SIZE);
      expectMatchesMem(pid, viaScan.runs, data);
      // Check a few pages against what the program wrote, not only against the kernel's view.
      let offset = 0;
      const at = (addr: bigint): number => {
        let o = 0;
        for (const r of viaScan.runs) {
          if (addr >= r.vaddr && addr < r.vaddr + BigInt(r.nrPages * PAGE_SIZE)) return o + Number(addr - r.vaddr);
          o += r.nrPages * PAGE_SIZE;
        }
        throw new Error(`0x${addr.toString(16)} not saved`);
      };
      offset = at(none + 5n * BigInt(PAGE_SIZE));
      expect(data.bytes[offset + 17]).toBe(pattern(1005, 17));
      offset = at(anon + 31n * BigInt(PAGE_SIZE));
      expect(data.bytes[offset + 4095]).toBe(pattern(31, 4095));
      offset = at(file + 3n * BigInt(PAGE_SIZE));
      expect(data.bytes[offset + 100]).toBe(0xab);
      expect(data.bytes[offset + 101]).toBe(fileContents[3 * PAGE_SIZE + 101]!);
      offset = at(small + 4095n * BigInt(PAGE_SIZE));
      expect(data.bytes[offset]).toBe(4096 & 0xff);
      // The unreadable area is one range: pages 0-1 and page 5 are two pieces.
      expect(counters.memPreads).toBe(2);
      // Readable runs are merged where they touch (the 4096 small areas are one range),
      // so a few calls do it all.
      expect(counters.processVmReadvCalls).toBeLessThanOrEqual(Math.ceil(viaScan.runs.length / 1024) + 2);
    } finally {
      data.dispose();
    }
  });

  test("copy in small batches gives the same bytes", () => {
    const counters = newPageCounters();
    const whole = copyPages(pid, vmas, viaScan.runs);
    const batched = copyPages(pid, vmas, viaScan.runs, { counters, maxIovecsPerCall: 4, maxBytesPerCall: 2 * PAGE_SIZE, buffer: "plain" });
    try {
      expect(counters.processVmReadvCalls).toBeGreaterThan(viaScan.pagesToSave / 2 - 10);
      expect(Buffer.compare(batched.bytes, whole.bytes)).toBe(0);
    } finally {
      whole.dispose();
      batched.dispose();
    }
  });

  test("a range process_vm_readv cannot read is finished from /proc/PID/mem (short reads resume)", () => {
    // Claim the PROT_NONE area is readable: process_vm_readv reads up to it,
    // returns short, then refuses it; the copy must still be complete.
    const lying = vmas.map((v) => ({ ...v, readable: true }));
    const counters = newPageCounters();
    const data = copyPages(pid, lying, viaScan.runs, { counters, buffer: "populate" });
    try {
      expectMatchesMem(pid, viaScan.runs, data);
      expect(counters.memPreads).toBeGreaterThanOrEqual(1);
      expect(counters.processVmReadvCalls).toBeGreaterThanOrEqual(2);
    } finally {
      data.dispose();
    }
  });

  test("writePages writes the data; pagemapEntries are CRIU's {vaddr, nr_pages, PE_PRESENT}", () => {
    const { scan, data } = collectPages(pid, vmas);
    const path = join(tempDir("pages-img"), "pages-1.img");
    const fd = openat(AT.FDCWD, path, O.WRONLY | O.CREAT | O.TRUNC, 0o600);
    try {
      writePages({ write: (bytes) => writeAll(fd, bytes) }, data);
    } finally {
      close(fd);
    }
    try {
      expect(Buffer.compare(readFileSync(path), data.bytes)).toBe(0);
      const entries = pagemapEntries(scan.runs);
      expect(entries.length).toBe(scan.runs.length);
      const first = entries[0]!;
      expect(first.vaddr).toBe(scan.runs[0]!.vaddr);
      expect(first.flags).toBe(PE_PRESENT);
      expect(PE_PRESENT).toBe(4);
      expect(first.nrPages).toBe(BigInt(scan.runs[0]!.nrPages));
      expect(first.compatNrPages).toBe(scan.runs[0]!.nrPages);
      expect(entries.reduce((s, e) => s + Number(e.nrPages), 0)).toBe(data.byteLength / PAGE_SIZE);
    } finally {
      data.dispose();
      data.dispose();
    }
  });

  test("bad input is refused with the offending range named", () => {
    const a = vmas[0]!;
    expect(() => scanPages(pid, [a, a])).toThrow(/overlap/);
    expect(() => scanPages(pid, [{ ...a, end: a.end - 1n }])).toThrow(/not page-aligned/);
    expect(() => copyPages(pid, [a], [{ vaddr: a.end, nrPages: 1 }])).toThrow(/not inside one of the given areas/);
  });

  test("nothing wanted: no calls, no buffer", () => {
    const s = scanPages(pid, []);
    expect(s.runs).toEqual([]);
    expect(s.counters).toEqual(newPageCounters());
    const data = copyPages(pid, [], []);
    expect(data.byteLength).toBe(0);
    expect(data.bytes.length).toBe(0);
    data.dispose();
  });
});
