/**
 * The memory part of one process's dump: which pages of its private areas to
 * save and their contents, copied while the tree is frozen and written to
 * pages-N.img later (pages.ts does the work; this shapes it for dump.ts).
 */
import type { PagemapEntry } from "../image/gen/pagemap_pb";
import type { MapArea } from "../proc/maps";
import type { ProcFs } from "../proc/procfs";
import { collectPages, pagemapEntries, writePages, type PageCounters, type PageVma } from "./pages";

export type PageScanChoice = "auto" | "ioctl" | "pagemap";

export interface PageCopy {
  entries: PagemapEntry[];
  pagesScanned: number;
  pagesWritten: number;
  /** Time spent finding and copying the pages. */
  ms: number;
  /** Write the contents (pages-N.img); returns the byte count. */
  writeTo(fd: number): number;
  dispose(): void;
}

export function copyProcessPages(pid: number, areas: readonly MapArea[], choice: PageScanChoice, proc: ProcFs, counters: PageCounters): PageCopy {
  const t = performance.now();
  const vmas: PageVma[] = areas.map((a) => ({ start: a.start, end: a.end, readable: a.read, fileBacked: a.inode !== 0n }));
  const method = choice === "ioctl" ? "pagemap-scan" : choice === "pagemap" ? "pagemap-read" : "auto";
  const { scan, data } = collectPages(pid, vmas, { method, proc, counters });
  return {
    entries: pagemapEntries(scan.runs),
    pagesScanned: scan.pagesScanned,
    pagesWritten: scan.pagesToSave,
    ms: performance.now() - t,
    writeTo(fd) {
      writePages(fd, data);
      return data.byteLength;
    },
    dispose() {
      data.dispose();
    },
  };
}
