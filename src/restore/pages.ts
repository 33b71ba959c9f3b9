/**
 * A process's saved pages back into its rebuilt address space: ckpt maps the
 * pages files of every round it needs read-only and copies with
 * process_vm_writev, up to IOV_MAX runs per call, so a pagemap of thousands
 * of small runs costs a few calls and a large run one; no buffer of ckpt's
 * is touched in between.
 */
import { close, fstat, mmap, munmap, openat, processVmWritev } from "../sys/libc";
import { AT, MAP, O, PAGE_SIZE, PROT } from "../sys/nr";
import type { PageChain, PagePiece, Round } from "./page-chain";

/** Runs per process_vm_writev (the kernel's UIO_MAXIOV). */
const IOV_MAX = 1024;
/** A single iovec longer than this is split (the kernel caps one transfer below 2 GiB). */
const MAX_RUN = 1 << 30;

export interface PageFill {
  pages: number;
  calls: number;
  ms: number;
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

/** A round's pages file mapped read-only. */
function mapPagesFile(r: Round): { base: number; size: number } {
  if (r.bytes === 0) return { base: 0, size: 0 };
  const fd = openat(AT.FDCWD, r.pagesPath, O.RDONLY | O.CLOEXEC);
  try {
    const have = Number(fstat(fd).size);
    if (have < r.bytes) throw new Error(`${r.pagesPath} holds ${have} bytes, its pagemap needs ${r.bytes}`);
    return { base: mmap(0, r.bytes, PROT.READ, MAP.PRIVATE | MAP.POPULATE, fd, 0), size: r.bytes };
  } finally {
    close(fd);
  }
}

/** The parts of `pieces` outside every range of `skip`. */
function outside(pieces: readonly PagePiece[], skip: readonly { start: bigint; end: bigint }[]): PagePiece[] {
  let out = [...pieces];
  for (const r of skip) {
    out = out.flatMap((p) => {
      const end = p.remote + BigInt(p.length);
      if (end <= r.start || p.remote >= r.end) return [p];
      const kept: PagePiece[] = [];
      if (p.remote < r.start) kept.push({ ...p, length: Number(r.start - p.remote) });
      if (end > r.end) {
        const cut = Number(r.end - p.remote);
        kept.push({ remote: r.end, round: p.round, offset: p.offset + cut, length: p.length - cut });
      }
      return kept;
    });
  }
  return out;
}

/**
 * Copy every saved page of the process (all must be writable now), following
 * in-parent runs down the chain; pages inside `skip` stay as they are.
 */
export function fillPages(pid: number, chain: PageChain, skip: readonly { start: bigint; end: bigint }[] = []): PageFill {
  const started = performance.now();
  const fill: PageFill = { pages: 0, calls: 0, ms: 0 };
  const pieces = skip.length > 0 ? outside(chain.pieces, skip) : chain.pieces;
  const maps: { base: number; size: number }[] = [];
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
    for (const piece of pieces) {
      const m = (maps[piece.round] ??= mapPagesFile(chain.loaded[piece.round]!));
      let left = piece.length;
      let off = piece.offset;
      let at = piece.remote;
      while (left > 0) {
        const len = Math.min(left, MAX_RUN);
        local[n * 2] = BigInt(m.base + off);
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
      fill.pages += piece.length / PAGE_SIZE;
    }
    flush();
  } finally {
    for (const m of maps) if (m && m.size > 0) munmap(m.base, m.size);
  }
  fill.ms = performance.now() - started;
  return fill;
}
