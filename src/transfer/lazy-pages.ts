/**
 * `ckpt lazy-pages`: fills the memory of a lazily restored tree.
 *
 * With --page-server it is the destination end of a lazy (post-copy)
 * migration: it connects to the source (`ckpt dump --lazy-pages`, which
 * keeps the tree frozen there). Without, and for every run whose contents
 * the images hold (PE_LAZY beside PE_PRESENT or PE_PARENT: any dump, with
 * its parents), it reads the pages from DIR: the restore then costs no page
 * copy, and an iterative migration's downtime no longer grows with memory.
 *
 * It waits on DIR/lazy-pages.socket for `ckpt restore --lazy-pages` to hand
 * over one userfaultfd per restored process (restore/lazy.ts). From then on:
 *  - a thread touching a lazy page faults; the page (and a few after it in
 *    the same run) is read from the images or fetched from the source with
 *    PS_IOV_GET, and placed with UFFDIO_COPY, which wakes the thread;
 *  - when no fault waits, and once the tree runs (the restore closes its
 *    end of the socket), the rest is pulled in the background, a run of up
 *    to 1 MiB at a time;
 *  - a page of a registered area that was never saved (untouched memory),
 *    or one the process dropped (MADV_DONTNEED) or unmapped since, reads as
 *    zeros (UFFDIO_ZEROPAGE);
 *  - fork, mremap, munmap and madvise arrive as events: a forked child gets
 *    a userfaultfd of its own with the parent's progress, moved memory is
 *    followed to its new address.
 * When every lazy page is in place the source is told (CLOSE) and both ends
 * exit. If the source goes away first, or the images cannot be read, the
 * restored tree cannot get the rest of its memory: it is killed, never left
 * running on part of it. So it is if the daemon itself is killed: a guard
 * per process (sys/tree-guard.ts) holds its userfaultfd until every page is in.
 */
import { readFileSync } from "node:fs";
import { PageChain } from "../image/page-chain";
import { ImageSet } from "../image/image-set";
import { MmEntrySchema } from "../image/gen/mm_pb";
import { PstreeEntrySchema } from "../image/gen/pstree_pb";
import { entryLazyable, entryPageCount, splitPagemap } from "../image/pagemap";
import { fcntl, poll } from "../sys/calls";
import { Errno, SysError } from "../sys/errno";
import { addressOf, close, ioctl, readInto, unlinkat } from "../sys/libc";
import { AT, F, O, PAGE_SIZE, POLL, UFFD_EVENT, UFFD_MSG_SIZE, UFFDIO_COPY, UFFDIO_ZEROPAGE } from "../sys/nr";
import { accept4, AF, bind, cmsgFds, decodeCmsgs, listen, recvmsg, sendto, SOCK, socket, sockaddrUn } from "../sys/socket";
import { encodeUffdioCopy, encodeUffdioZeropage, uffdioDone, UFFDIO_COPY_SIZE, UFFDIO_ZEROPAGE_SIZE } from "../sys/structs";
import { Connection, ConnectionLost, type Endpoint } from "./connection";
import { decodeIov, encodeIov, PS, PSI_SIZE } from "./protocol";
import { PageRuns } from "./page-runs";
import { TreeGuard } from "../sys/tree-guard";

const LAZY_SOCKET = "lazy-pages.socket";
/** Pages fetched for one fault: the faulting page and the next ones of its run. */
const FAULT_PAGES = 16;
/** Pages fetched per background request. */
const BACKGROUND_PAGES = 256;
const POLL_IDLE_MS = 100;

export interface LazyPagesOptions {
  dir: string;
  /** The lazy dump's source; none: every lazy page is read from the images in `dir`. */
  source?: Endpoint;
  /** Called once the socket for the restore is listening. */
  onReady?: (socketPath: string) => void;
  /** For this long, a source that is not listening yet is tried again (started ahead of the dump). */
  waitSourceMs?: number;
}

export interface LazyPagesResult {
  /** Where the pages came from: the source's address, or the image directory. */
  source: string;
  processes: number;
  pagesLazy: number;
  faults: number;
  pagesOnFault: number;
  pagesInBackground: number;
  /** Of those, read from the images rather than fetched from the source. */
  pagesFromImages: number;
  zeroPages: number;
  bytesReceived: number;
  /** From the handoff to the last page in place. */
  ms: number;
}

/** A restored mm: its userfaultfd, whose pages it gets (the image pid), and where moved memory went. */
interface LazyMm {
  uffd: number;
  pid: number;
  /** The process's saved pages in the images (shared by forked mms). */
  saved: PageChain;
  /** Its lazy pages, marked 1 until placed. */
  progress: PageRuns;
  /** Where the background fetch looks next. */
  cursor: { run: number; page: number };
  /** mremap'd ranges: [start, end) now holds what was at `from` in the image. */
  moved: { start: bigint; end: bigint; from: bigint }[];
}

/** The image address of what is now at `addr`. */
function original(mm: LazyMm, addr: bigint): bigint {
  for (const m of mm.moved) if (addr >= m.start && addr < m.end) return m.from + (addr - m.start);
  return addr;
}

/**
 * The runs a lazy restore left to us (PE_LAZY), wherever their contents
 * are, cut at the bounds of the process's areas: one UFFDIO_COPY must stay
 * inside one area (else ENOENT, and the faulting thread waits on), and a
 * CRIU pagemap entry may span neighbouring areas (CRIU's lazy-pages cuts
 * them the same way).
 */
function lazyRunsOf(images: ImageSet, pid: number): { start: bigint; end: bigint }[] {
  const name = `pagemap-${pid}.img`;
  const { entries } = splitPagemap(images.raw(name), images.path(name));
  const vmas = images.one(`mm-${pid}.img`, MmEntrySchema).vmas;
  const out: { start: bigint; end: bigint }[] = [];
  let v = 0;
  for (const e of entries.filter(entryLazyable)) {
    const [start, end] = [e.vaddr, e.vaddr + BigInt(entryPageCount(e) * PAGE_SIZE)];
    // Entries and areas are both in address order.
    while (v < vmas.length && vmas[v]!.end <= start) v++;
    for (let i = v; i < vmas.length && vmas[i]!.start < end; i++) {
      const [from, to] = [start > vmas[i]!.start ? start : vmas[i]!.start, end < vmas[i]!.end ? end : vmas[i]!.end];
      if (from < to) out.push({ start: from, end: to });
    }
  }
  return out;
}

/** A process and every descendant it has now (children of every thread, recursively). */
function treeOf(pid: number, into: Set<number>): void {
  if (into.has(pid)) return;
  into.add(pid);
  try {
    for (const task of readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(/\s+/).filter(Boolean)) treeOf(Number(task), into);
  } catch {
    // gone
  }
}

/** The restore failed before its tree ran: it removed what it made, nothing to kill here. */
class HandoffFailed extends Error {
  override readonly name = "HandoffFailed";
}

export class LazyPagesDaemon {
  private readonly mms: LazyMm[] = [];
  private readonly hostPids: number[] = [];
  private readonly header = new Uint8Array(PSI_SIZE);
  private readonly buffer = new Uint8Array(BACKGROUND_PAGES * PAGE_SIZE);
  private readonly msg = new Uint8Array(UFFD_MSG_SIZE * 16);
  private readonly copyArg = new Uint8Array(UFFDIO_COPY_SIZE);
  private readonly zeroArg = new Uint8Array(UFFDIO_ZEROPAGE_SIZE);
  private readonly counters = { faults: 0, pagesOnFault: 0, pagesInBackground: 0, pagesFromImages: 0, zeroPages: 0 };
  private images: ImageSet | null = null;
  /** One per process: holds its userfaultfd, and kills it should this daemon die before every page is in (sys/tree-guard.ts). */
  private readonly guards: TreeGuard[] = [];
  /** Each process's saved pages and lazy runs, by image pid: opened as the restore connected (openAhead), or at its handoff. */
  private readonly opened = new Map<number, { saved: PageChain; runs: { start: bigint; end: bigint }[] }>();

  private constructor(private readonly source: Connection | null, private readonly dir: string) {}

  /** Connect to the source (if any), take the restore's userfaultfds, and fill every lazy page. */
  static run(opts: LazyPagesOptions): LazyPagesResult {
    const source = opts.source ? Connection.connect(opts.source, opts.waitSourceMs ?? 0) : null;
    const daemon = new LazyPagesDaemon(source, opts.dir);
    try {
      source?.noDelay(true);
      const restore = daemon.acceptRestore(opts.onReady);
      daemon.openAhead();
      const started = performance.now();
      try {
        daemon.fill(restore);
      } catch (e) {
        if (e instanceof HandoffFailed) throw e;
        const killed = daemon.killTree();
        throw new Error(`${(e as Error).message}: the restored tree could not get the rest of its memory and was killed (${killed} process(es))`, { cause: e });
      }
      // Every page is in place: the tree may live without this daemon.
      for (const g of daemon.guards) g.release();
      const ms = performance.now() - started;
      if (source) {
        // Everything is in place: the source may end (and its tree with it).
        source.sendAll(encodeIov({ cmd: PS.CLOSE, nrPages: 0n, vaddr: 0n, dstId: 0n }, daemon.header));
        const status = new Uint8Array(4);
        source.recvExact(status);
      }
      return { source: source?.peer ?? opts.dir, processes: daemon.hostPids.length, pagesLazy: daemon.pagesLazy, ...daemon.counters, bytesReceived: source?.received ?? 0, ms };
    } finally {
      // Not released: the tree goes (the daemon failed, and has killed it already).
      for (const g of daemon.guards) g.abandon();
      for (const m of daemon.mms) close(m.uffd);
      for (const { saved } of daemon.opened.values()) saved.close();
      source?.close();
    }
  }

  /** Listen on DIR/lazy-pages.socket and take the one restore that comes; the socket file goes once it is in. */
  private acceptRestore(onReady?: (path: string) => void): number {
    const path = `${this.dir}/${LAZY_SOCKET}`;
    const listener = socket(AF.UNIX, SOCK.SEQPACKET | SOCK.CLOEXEC);
    try {
      try {
        unlinkat(AT.FDCWD, path);
      } catch {
        // none left from before
      }
      bind(listener, sockaddrUn(path));
      listen(listener, 1);
      onReady?.(path);
      return accept4(listener, SOCK.CLOEXEC);
    } finally {
      close(listener);
      try {
        unlinkat(AT.FDCWD, path);
      } catch {
        // removed already
      }
    }
  }

  /**
   * The restore connects once it has checked the set, and spends the next
   * 10–20 ms making the tree before its first handoff: open every process's
   * pages meanwhile, on this core, so that a handoff (which the restore waits
   * for before letting the tree go) is only the fd. A process that cannot be
   * opened now is opened (and its error reported) at its handoff.
   */
  openAhead(): void {
    let images: ImageSet;
    let pids: number[];
    try {
      images = this.images ??= ImageSet.openPages(this.dir);
      pids = images.entries("pstree.img", PstreeEntrySchema).map((e) => e.pid);
    } catch {
      return;
    }
    for (const pid of pids) {
      try {
        this.open(images, pid);
      } catch {
        // Said at its handoff, if it comes.
      }
    }
  }

  /** Process `pid`'s saved pages and lazy runs, opened once. */
  private open(images: ImageSet, pid: number): { saved: PageChain; runs: { start: bigint; end: bigint }[] } {
    const have = this.opened.get(pid);
    if (have) return have;
    const saved = PageChain.open(images, pid);
    try {
      const opened = { saved, runs: lazyRunsOf(images, pid) };
      this.opened.set(pid, opened);
      return opened;
    } catch (e) {
      saved.close();
      throw e;
    }
  }

  private readonly handoffData = new Uint8Array(8);
  private readonly handoffControl = new Uint8Array(64);
  private pagesLazy = 0;

  /**
   * One handoff message from the restore: a process's userfaultfd (true), or
   * the end of them (false, answered). Faults are served meanwhile: the
   * restore itself makes the kernel touch lazy memory (rseq registration).
   */
  private takeHandoff(conn: number): boolean {
    const got = recvmsg(conn, this.handoffData, 0, this.handoffControl);
    const fds = cmsgFds(decodeCmsgs(got.control));
    if (got.bytes === 0) throw new HandoffFailed("the restore went away before handing over every userfaultfd (it failed, and removed what it made)");
    const ids = new Uint32Array(this.handoffData.buffer);
    const [pid, hostPid] = [ids[0]!, ids[1]!];
    if (pid === 0) {
      sendto(conn, new Uint8Array([1]));
      return false;
    }
    if (fds.length !== 1) throw new HandoffFailed(`the restore sent ${fds.length} fds for process ${pid}`);
    fcntl(fds[0]!, F.SETFL, O.NONBLOCK);
    // A guard of its own, started while the restore goes on with the rest
    // (its start is then no downtime): from here a daemon that dies leaves
    // the process's threads waiting on their faults until the guard has
    // killed it, never reading zeros where its memory was to come.
    this.guards.push(TreeGuard.launch([hostPid], [fds[0]!]));
    // The restore has checked the set (and its parents' digests) before handing anything over.
    const { saved, runs } = this.open((this.images ??= ImageSet.openPages(this.dir)), pid);
    if (saved.lazy.length > 0 && !this.source) {
      throw new Error(`pagemap-${pid}.img leaves ${saved.lazyPages} page(s) at the source (a --lazy-pages dump): run ckpt lazy-pages with --page-server --address SOURCE --port N`);
    }
    const progress = PageRuns.of(runs, 1);
    this.pagesLazy += progress.marked;
    this.mms.push({ uffd: fds[0]!, pid, saved, progress, cursor: { run: 0, page: 0 }, moved: [] });
    this.hostPids.push(hostPid);
    return true;
  }

  private left(): number {
    return this.mms.reduce((s, m) => s + m.progress.marked, 0);
  }

  /**
   * The event loop: the restore's handoff, faults first, the background
   * fetch when none waits. The background fetch starts once the restore
   * closes its end of the socket, which it does as soon as the tree runs (or
   * when it failed): until then the restore is letting the tree go, and is
   * downtime; a page copy on the other core would only slow it down.
   */
  private fill(restore: number): void {
    let turn = 0;
    let handoff = restore;
    let handingOver = true;
    try {
      while (handoff >= 0 || (this.left() > 0 && this.mms.length > 0)) {
        const src = this.source;
        const fds = [...(src ? [{ fd: src.fd, events: POLL.IN }] : []), ...(handoff >= 0 ? [{ fd: handoff, events: POLL.IN }] : []), ...this.mms.map((m) => ({ fd: m.uffd, events: POLL.IN }))];
        // Until the handoff ends, wait; after it, only look (there is background work).
        const ready = poll(fds, handoff >= 0 ? POLL_IDLE_MS : 0);
        const seen = (i: number): boolean => (ready[i]! & (POLL.IN | POLL.HUP | POLL.ERR)) !== 0;
        if (src && seen(0)) throw new ConnectionLost(`the source at ${src.peer} closed the connection with ${this.left()} lazy page(s) not yet here`);
        let handled = false;
        // A fork adds an mm while we go: walk the ones polled.
        const polled = this.mms.slice();
        const handoffAt = src ? 1 : 0;
        const first = handoffAt + (handoff >= 0 ? 1 : 0);
        polled.forEach((m, i) => {
          if (seen(first + i)) handled = this.drain(m) || handled;
        });
        if (handoff >= 0 && seen(handoffAt)) {
          if (handingOver) handingOver = this.takeHandoff(handoff);
          else {
            // After the last handoff, the next thing on the socket is its end: the tree runs.
            close(handoff);
            handoff = -1;
          }
          continue;
        }
        if (handled || handoff >= 0) continue;
        // Nothing waits: one background request, round-robin over the mms.
        const live = this.mms.filter((m) => m.progress.marked > 0);
        if (live.length === 0) break;
        const m = live[turn++ % live.length]!;
        const at = m.progress.nextMarked(m.cursor);
        if (at !== null) this.fetch(m, at, at, BACKGROUND_PAGES, false);
      }
    } finally {
      if (handoff >= 0) close(handoff);
    }
  }

  /** Read and handle the events waiting on one userfaultfd; false when there were none. */
  private drain(m: LazyMm): boolean {
    let any = false;
    for (;;) {
      let n: number;
      try {
        n = readInto(m.uffd, this.msg);
      } catch (e) {
        if (e instanceof SysError && e.errno === Errno.EAGAIN) return any;
        throw e;
      }
      if (n <= 0) {
        // The mm is gone (every process using it exited).
        this.drop(m);
        return any;
      }
      any = true;
      for (let at = 0; at + UFFD_MSG_SIZE <= n; at += UFFD_MSG_SIZE) this.handle(m, at);
    }
  }

  private drop(m: LazyMm): void {
    const i = this.mms.indexOf(m);
    if (i < 0) return;
    this.mms.splice(i, 1);
    close(m.uffd);
  }

  private handle(m: LazyMm, at: number): void {
    const v = new DataView(this.msg.buffer, at, UFFD_MSG_SIZE);
    const event = v.getUint8(0);
    const arg = (i: number): bigint => v.getBigUint64(8 + 8 * i, true);
    const page = (a: bigint): bigint => a - (a % BigInt(PAGE_SIZE));
    switch (event) {
      case UFFD_EVENT.PAGEFAULT: {
        this.counters.faults++;
        const here = page(arg(1));
        const from = original(m, here);
        if (m.progress.markAt(from) === 1) this.fetch(m, here, from, FAULT_PAGES, true);
        else this.zero(m, here);
        return;
      }
      case UFFD_EVENT.FORK: {
        const child = v.getUint32(8, true);
        fcntl(child, F.SETFL, O.NONBLOCK);
        this.mms.push({ uffd: child, pid: m.pid, saved: m.saved, progress: m.progress.clone(), cursor: { ...m.cursor }, moved: m.moved.map((x) => ({ ...x })) });
        return;
      }
      case UFFD_EVENT.REMAP: {
        const [from, to, len] = [arg(0), arg(1), arg(2)];
        m.moved.unshift({ start: to, end: to + len, from: original(m, from) });
        return;
      }
      case UFFD_EVENT.REMOVE:
      case UFFD_EVENT.UNMAP: {
        // Dropped or gone: what the source holds for it is no longer wanted (a later touch reads zeros).
        const [start, end] = [arg(0), arg(1)];
        m.progress.mark(original(m, start), Number((end - start) / BigInt(PAGE_SIZE)), 0);
        return;
      }
      default:
        throw new Error(`userfaultfd event 0x${event.toString(16)} of process ${m.pid}, which lazy-pages does not know`);
    }
  }

  /** Get up to `max` pages from image address `from` (from the images, else the source) and place them at `here`. */
  private fetch(m: LazyMm, here: bigint, from: bigint, max: number, onFault: boolean): void {
    const want = m.progress.span(from, max, 1);
    if (want === 0) return;
    let pages = m.saved.read(from, this.buffer.subarray(0, want * PAGE_SIZE)) / PAGE_SIZE;
    if (pages > 0) this.counters.pagesFromImages += pages;
    else pages = this.fetchFromSource(m, from, want);
    this.place(m, here, pages);
    m.progress.mark(from, pages, 0);
    if (onFault) this.counters.pagesOnFault += pages;
    else this.counters.pagesInBackground += pages;
  }

  /** PS_IOV_GET of `want` pages at `from` into the buffer; returns how many came. */
  private fetchFromSource(m: LazyMm, from: bigint, want: number): number {
    const source = this.source;
    if (!source) throw new Error(`process ${m.pid}: no saved page at 0x${from.toString(16)}, and no source to fetch it from`);
    source.sendAll(encodeIov({ cmd: PS.GET, nrPages: BigInt(want), vaddr: from, dstId: BigInt(m.pid) }, this.header));
    source.recvExact(this.header);
    const answer = decodeIov(this.header);
    if (answer.cmd !== PS.ADD_F || answer.vaddr !== from || answer.nrPages === 0n || answer.nrPages > BigInt(want)) {
      throw new Error(`the source answered a request for ${want} page(s) of process ${m.pid} at 0x${from.toString(16)} with command ${answer.cmd}, ${answer.nrPages} page(s) at 0x${answer.vaddr.toString(16)}`);
    }
    const pages = Number(answer.nrPages);
    source.recvExact(this.buffer, pages * PAGE_SIZE);
    return pages;
  }

  /** UFFDIO_COPY of the buffer's first `pages` pages to `here`, page by page past any already there. */
  private place(m: LazyMm, here: bigint, pages: number): void {
    const base = BigInt(addressOf(this.buffer));
    let done = 0;
    while (done < pages) {
      const off = BigInt(done * PAGE_SIZE);
      encodeUffdioCopy(here + off, base + off, BigInt((pages - done) * PAGE_SIZE), this.copyArg);
      try {
        ioctl(m.uffd, UFFDIO_COPY, this.copyArg, `UFFDIO_COPY(0x${(here + off).toString(16)}, ${pages - done} pages) for process ${m.pid}`);
        return;
      } catch (e) {
        const copied = uffdioDone(this.copyArg, 32);
        if (copied > 0n) done += Number(copied) / PAGE_SIZE;
        if (!(e instanceof SysError)) throw e;
        // EEXIST: a page there already (placed for another thread's fault); skip it.
        if (e.errno === Errno.EEXIST) done++;
        // ENOENT: the area is gone, nothing left to place; ESRCH: so is the mm, nothing more to do for it.
        else if (e.errno === Errno.ENOENT) return;
        else if (e.errno === Errno.ESRCH) {
          this.drop(m);
          return;
        }
        else if (e.errno !== Errno.EAGAIN) throw e;
      }
    }
  }

  /** A page that reads as zeros (never saved, or dropped since). */
  private zero(m: LazyMm, here: bigint): void {
    encodeUffdioZeropage(here, BigInt(PAGE_SIZE), this.zeroArg);
    try {
      ioctl(m.uffd, UFFDIO_ZEROPAGE, this.zeroArg, `UFFDIO_ZEROPAGE(0x${here.toString(16)}) for process ${m.pid}`);
      this.counters.zeroPages++;
    } catch (e) {
      if (!(e instanceof SysError && ([Errno.EEXIST, Errno.ENOENT, Errno.ESRCH, Errno.EAGAIN] as number[]).includes(e.errno))) throw e;
    }
  }

  /** SIGKILL every restored process and its descendants; returns how many. */
  private killTree(): number {
    const all = new Set<number>();
    for (const pid of this.hostPids) treeOf(pid, all);
    for (const pid of all) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // gone already
      }
    }
    return all.size;
  }
}
