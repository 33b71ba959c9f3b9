/**
 * A process's saved pages back into its rebuilt address space: ckpt reads
 * the pages files of every round it needs through a window of its own (one
 * large pread serves every run it holds) and copies with process_vm_writev,
 * up to IOV_MAX runs per call, so a pagemap of thousands of small runs costs
 * a few calls and a large run one.
 *
 * Why not map the files: measured on this kind of VM, faulting a mapping of
 * the page cache in costs more than copying it out (1.6 GiB: ~920 ms mapped
 * against ~640 ms read into a reused window in a side by side test, and
 * 1.4-1.6 s against 0.43-0.44 s in `ckpt restore`, the target's own faults
 * included in both). The windows live as long as ckpt, so their pages are
 * faulted in once per restore, not once per process or round.
 *
 * Why not let the task pread its pages itself (one copy, not two): its own
 * faults, one per page in copy_to_user, cost far more than the ones
 * process_vm_writev takes through get_user_pages. 1 GiB took 2.9 s that way
 * against 0.35 s this way (batched injected preads, measured side by side).
 */
import { addressOf, close, fstat, openat, preadFull, processVmWritev } from "../sys/libc";
import { AT, O, PAGE_SIZE } from "../sys/nr";
import type { PageChain, PagePiece, Round } from "../image/page-chain";

/** Runs per process_vm_writev (the kernel's UIO_MAXIOV). */
const IOV_MAX = 1024;
/** A single call moves at most this much (the kernel caps one transfer below 2 GiB). */
const MAX_RUN = 1 << 30;
/** Bytes of a pages file read at a time (a round's window). */
const WINDOW = 16 << 20;

/** The windows of a chain's rounds, by depth: reused by every fill of this ckpt. */
const windowBuffers: Uint8Array[] = [];

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

/** The part of a round's pages file that is in ckpt's memory now. */
class PagesWindow {
  private fd = -1;
  private start = 0;
  private end = 0;

  constructor(
    private readonly round: Round,
    private readonly buffer: Uint8Array,
  ) {}

  /**
   * ckpt's address of `length` bytes (at most a window) at `offset` in the
   * file, read in if need be, with what `ahead()` says the next pieces want
   * from there (bytes from `offset`, at most a window): `beforeMove` runs
   * first, since whatever still points into the window's old contents must
   * be written out.
   */
  addressOf(offset: number, length: number, ahead: () => number, beforeMove: () => void): number {
    if (offset < this.start || offset + length > this.end) {
      beforeMove();
      if (this.fd < 0) {
        this.fd = openat(AT.FDCWD, this.round.pagesPath, O.RDONLY | O.CLOEXEC);
        const have = Number(fstat(this.fd).size);
        if (have < this.round.bytes) throw new Error(`${this.round.pagesPath} holds ${have} bytes, its pagemap needs ${this.round.bytes}`);
      }
      const want = Math.min(Math.max(length, ahead()), this.buffer.length, this.round.bytes - offset);
      if (want < length) throw new Error(`${this.round.pagesPath}: ${length} bytes at ${offset} lie past the ${this.round.bytes} its pagemap gives`);
      const got = preadFull(this.fd, this.buffer.subarray(0, want), BigInt(offset));
      if (got !== want) throw new Error(`${this.round.pagesPath} ended at ${offset + got} bytes while its pagemap needs ${this.round.bytes}`);
      this.start = offset;
      this.end = offset + want;
    }
    return addressOf(this.buffer) + (offset - this.start);
  }

  close(): void {
    if (this.fd >= 0) close(this.fd);
    this.fd = -1;
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

/** The most pieces looked at ahead of a window read. */
const LOOK_AHEAD = 256;
/** A gap in a pages file worth reading through rather than reading again after it. */
const READ_THROUGH = 1 << 20;

/**
 * Bytes from `pieces[i]`'s offset that the window should hold for it and
 * the pieces after it from the same round: those that follow it in the
 * file, each within a small gap of the last and all within a window. A
 * window read then faults in (and reads) no more of ckpt's buffer than the
 * pieces need: a lazy restore fills a few scattered pages, and a 16 MiB read
 * for each cost tens of milliseconds.
 */
function readAhead(pieces: readonly PagePiece[], i: number): number {
  const first = pieces[i]!;
  let reach = first.offset + first.length;
  for (let j = i + 1; j < pieces.length && j <= i + LOOK_AHEAD; j++) {
    const p = pieces[j]!;
    if (p.round !== first.round) continue;
    if (p.offset < reach || p.offset > reach + READ_THROUGH || p.offset + p.length > first.offset + WINDOW) break;
    reach = p.offset + p.length;
  }
  return reach - first.offset;
}

/**
 * Copy every saved page of the process (all must be writable now), following
 * in-parent runs down the chain; pages inside `skip` stay as they are.
 */
export function fillPages(pid: number, chain: PageChain, skip: readonly { start: bigint; end: bigint }[] = []): PageFill {
  const started = performance.now();
  const fill: PageFill = { pages: 0, calls: 0, ms: 0 };
  const pieces = skip.length > 0 ? outside(chain.pieces, skip) : chain.pieces;
  const windows: PagesWindow[] = [];
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
    pieces.forEach((piece, i) => {
      const w = (windows[piece.round] ??= new PagesWindow(chain.loaded[piece.round]!, (windowBuffers[piece.round] ??= new Uint8Array(WINDOW))));
      let left = piece.length;
      let off = piece.offset;
      let at = piece.remote;
      while (left > 0) {
        const len = Math.min(left, WINDOW);
        // Before any index is taken: moving the window flushes, which empties the batch.
        const from = w.addressOf(off, len, () => (off === piece.offset ? readAhead(pieces, i) : WINDOW), flush);
        local[n * 2] = BigInt(from);
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
    });
    flush();
  } finally {
    for (const w of windows) w?.close();
  }
  fill.ms = performance.now() - started;
  return fill;
}
