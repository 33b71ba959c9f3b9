/**
 * The source end of a lazy migration (`ckpt dump --lazy-pages`): once the
 * images are written, the tree stays frozen here and its lazy pages — the
 * anonymous private memory the dump left out — are served from it to the
 * destination's `ckpt lazy-pages`, one PS_IOV_GET at a time, read straight
 * out of the frozen processes (nothing is copied in advance, so the freeze
 * costs no page copy at all).
 *
 * CRIU's protocol: GET {nr_pages, vaddr, dst_id = pid} is answered with
 * ADD_F|PE_PRESENT {nr_pages (possibly fewer), vaddr, dst_id} and the pages;
 * CLOSE with an int32 status. The destination sends CLOSE once it holds
 * every page (or its tree is gone): then the source's tree can go.
 */
import { poll } from "../sys/calls";
import { addressOf, processVmReadv } from "../sys/libc";
import { PAGE_SIZE, POLL } from "../sys/nr";
import { Connection, ConnectionLost, Listener, type Endpoint } from "./connection";
import { decodeIov, encodeIov, isClose, PS, PSI_SIZE } from "./protocol";
import { PE_PRESENT } from "../image/pagemap";
import { PageRuns } from "./page-runs";

/** The most one answer carries: a request for more gets this much, and asks again. */
const MAX_ANSWER = 4 << 20;
/** How often a wait looks at the interrupt guard. */
const POLL_MS = 100;

/** A run of pages: `nrPages` pages from `vaddr`. */
export interface LazyRun {
  vaddr: bigint;
  nrPages: number;
}

export interface LazyProcess {
  pid: number;
  runs: readonly LazyRun[];
}

export interface LazyServeResult {
  peer: string;
  pagesLazy: number;
  /** Distinct lazy pages the destination fetched. */
  pagesServed: number;
  requests: number;
  bytesSent: number;
  ms: number;
}

export class LazySource {
  private readonly header = new Uint8Array(PSI_SIZE);
  private readonly buffer = new Uint8Array(MAX_ANSWER);
  private readonly local = new BigUint64Array(2);
  private readonly remote = new BigUint64Array(2);

  private constructor(private readonly listener: Listener) {}

  /** Listen before anything is frozen: a port that cannot be had fails the dump up front. */
  static listen(at: Endpoint): LazySource {
    return new LazySource(Listener.open(at));
  }

  get where(): string {
    return this.listener.local;
  }

  /**
   * Serve one destination until its CLOSE. `interrupted` is awaited between
   * waits (a SIGINT/SIGTERM guard) and throws to abandon the serving.
   */
  async serve(processes: readonly LazyProcess[], interrupted: () => Promise<void>): Promise<LazyServeResult> {
    // Marks: 1 once a page was served.
    const byPid = new Map(processes.map((p) => [p.pid, PageRuns.of(p.runs.map((r) => ({ start: r.vaddr, end: r.vaddr + BigInt(r.nrPages * PAGE_SIZE) })), 0)]));
    const pagesLazy = [...byPid.values()].reduce((s, r) => s + r.pages, 0);
    while ((poll([{ fd: this.listener.fd, events: POLL.IN }], POLL_MS)[0]! & POLL.IN) === 0) await interrupted();
    const conn = this.listener.accept();
    const started = performance.now();
    let requests = 0;
    try {
      conn.noDelay(true);
      for (;;) {
        while ((poll([{ fd: conn.fd, events: POLL.IN }], POLL_MS)[0]! & (POLL.IN | POLL.HUP | POLL.ERR)) === 0) await interrupted();
        if (!conn.recvExact(this.header, PSI_SIZE, true)) throw new ConnectionLost(`${conn.peer} closed the connection before its CLOSE`);
        const iov = decodeIov(this.header);
        if (isClose(iov.cmd, iov.flags)) {
          conn.sendAll(new Uint8Array(4));
          conn.awaitClose();
          break;
        }
        if (iov.cmd !== PS.GET) throw new Error(`${conn.peer} sent command ${iov.cmd}; a lazy dump's server only answers page requests (GET) and CLOSE`);
        requests++;
        this.answer(conn, byPid, iov.dstId, iov.vaddr, iov.nrPages);
      }
      const served = [...byPid.values()].reduce((s, r) => s + r.marked, 0);
      return { peer: conn.peer, pagesLazy, pagesServed: served, requests, bytesSent: conn.sent, ms: performance.now() - started };
    } finally {
      conn.close();
    }
  }

  private answer(conn: Connection, byPid: Map<number, PageRuns>, dstId: bigint, vaddr: bigint, nrPages: bigint): void {
    const pid = Number(dstId);
    const runs = byPid.get(pid);
    const what = `a request for ${nrPages} page(s) of process ${pid} at 0x${vaddr.toString(16)}`;
    if (!runs) throw new Error(`${what}: no such process in this dump`);
    const run = runs.find(vaddr);
    if (run < 0 || nrPages === 0n || vaddr % BigInt(PAGE_SIZE) !== 0n) throw new Error(`${what}: not a lazy page of this dump`);
    const left = Number((runs.ends[run]! - vaddr) / BigInt(PAGE_SIZE));
    const pages = Math.min(Number(nrPages > BigInt(left) ? BigInt(left) : nrPages), MAX_ANSWER / PAGE_SIZE);
    const bytes = pages * PAGE_SIZE;
    this.readPages(pid, vaddr, bytes);
    conn.sendAll(encodeIov({ cmd: PS.ADD_F, flags: PE_PRESENT, nrPages: BigInt(pages), vaddr, dstId }, this.header));
    conn.sendAll(bytes === this.buffer.length ? this.buffer : this.buffer.subarray(0, bytes));
    runs.mark(vaddr, pages, 1);
  }

  /** Read `bytes` at `vaddr` of the frozen process `pid` into the buffer. */
  private readPages(pid: number, vaddr: bigint, bytes: number): void {
    this.local[0] = BigInt(addressOf(this.buffer));
    this.local[1] = BigInt(bytes);
    this.remote[0] = vaddr;
    this.remote[1] = BigInt(bytes);
    const got = processVmReadv(pid, this.local, 1, this.remote, 1);
    if (got !== bytes) throw new Error(`process ${pid}: read ${got} of ${bytes} bytes at 0x${vaddr.toString(16)} from the frozen process`);
  }

  close(): void {
    this.listener.close();
  }
}
