/**
 * A process's saved pages back into its rebuilt address space: ckpt maps its
 * pages-N.img read-only and copies with process_vm_writev, up to IOV_MAX
 * runs per call, so a pagemap of thousands of small runs costs a few calls
 * and a large run one; no buffer of ckpt's is touched in between.
 */
import type { PagemapEntry } from "../image/gen/pagemap_pb";
import { close, fstat, mmap, munmap, openat, processVmWritev } from "../sys/libc";
import { AT, MAP, O, PAGE_SIZE, PROT } from "../sys/nr";

/** Runs per process_vm_writev (the kernel's UIO_MAXIOV). */
const IOV_MAX = 1024;
/** A single iovec longer than this is split (the kernel caps one transfer below 2 GiB). */
const MAX_RUN = 1 << 30;

export interface PageFill {
  pages: number;
  calls: number;
  ms: number;
}

/** Pages of one pagemap entry (CRIU 4.2 writes nr_pages; older images only compat_nr_pages). */
export function entryPages(e: PagemapEntry): number {
  return e.nrPages !== undefined && e.nrPages !== 0n ? Number(e.nrPages) : e.compatNrPages;
}

/** The remote address the `done`th byte of a batch of `n` runs goes to. */
function remoteAddressAt(remote: BigUint64Array, n: number, done: number): bigint {
  let left = BigInt(done);
  for (let i = 0; i < n; i++) {
    const len = remote[i * 2 + 1] ?? 0n;
    if (left < len) return (remote[i * 2] ?? 0n) + left;
    left -= len;
  }
  return 0n;
}

/** Copy every entry's pages from `pagesPath` to `pid` at the entries' addresses (all must be writable now). */
export function fillPages(pid: number, pagesPath: string, entries: readonly PagemapEntry[]): PageFill {
  const started = performance.now();
  const fill: PageFill = { pages: 0, calls: 0, ms: 0 };
  const total = entries.reduce((s, e) => s + entryPages(e), 0);
  if (total === 0) return fill;
  const fd = openat(AT.FDCWD, pagesPath, O.RDONLY | O.CLOEXEC);
  let base = 0;
  const size = total * PAGE_SIZE;
  try {
    const have = Number(fstat(fd).size);
    if (have < size) throw new Error(`${pagesPath} holds ${have} bytes, its pagemap needs ${size}`);
    base = mmap(0, size, PROT.READ, MAP.PRIVATE | MAP.POPULATE, fd, 0);
  } finally {
    close(fd);
  }
  const local = new BigUint64Array(IOV_MAX * 2);
  const remote = new BigUint64Array(IOV_MAX * 2);
  let n = 0;
  let batchBytes = 0;
  const flush = (): void => {
    if (n === 0) return;
    const wrote = processVmWritev(pid, local, n, remote, n);
    fill.calls++;
    if (wrote !== batchBytes) throw new Error(`process ${pid}: no writable memory at 0x${remoteAddressAt(remote, n, wrote).toString(16)} for the image's pages (process_vm_writev wrote ${wrote} of ${batchBytes} bytes)`);
    n = 0;
    batchBytes = 0;
  };
  try {
    let off = 0;
    for (const e of entries) {
      if (e.inParent) throw new Error(`pagemap of ${pid}: pages at 0x${e.vaddr.toString(16)} are in a parent image, which this restore does not follow`);
      let left = entryPages(e) * PAGE_SIZE;
      let at = e.vaddr;
      while (left > 0) {
        const len = Math.min(left, MAX_RUN);
        local[n * 2] = BigInt(base + off);
        local[n * 2 + 1] = BigInt(len);
        remote[n * 2] = at;
        remote[n * 2 + 1] = BigInt(len);
        n++;
        batchBytes += len;
        off += len;
        at += BigInt(len);
        left -= len;
        if (n === IOV_MAX || batchBytes >= MAX_RUN) flush();
      }
      fill.pages += entryPages(e);
    }
    flush();
  } finally {
    munmap(base, size);
  }
  fill.ms = performance.now() - started;
  return fill;
}
