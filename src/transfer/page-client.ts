/**
 * The sending end of --page-server: a dump's pagemaps and pages go to a page
 * server (ckpt's or CRIU's) over one TCP connection, in CRIU's protocol; the
 * other images stay in the local directory.
 *
 * Per pagemap: OPEN2 (answered with has-parent), then one ADD_F per entry in
 * address order, a present entry followed by its pages; CLOSE at the end,
 * answered with a status once the server has everything on disk. Only then
 * may the dump write its inventory.
 *
 * The server names its own pages files, so the local set cannot point at
 * them; what was sent for each process is recorded locally as
 * sent-pagemap-PID.img (a pagemap image with pages_id 0) for the next round
 * of an iterative migration to know what its parent holds.
 */
import type { PagemapEntry } from "../image/gen/pagemap_pb";
import type { ImageDirWriter, ImageSink } from "../image/image-dir";
import { LocalPageStore, pagemapImage, pagemapFileName, type PagemapTarget, type PageStore } from "../image/page-store";
import { entryInParent, entryPageCount, entryPresent } from "../image/pagemap";
import { PAGE_SIZE } from "../sys/nr";
import { Connection, type Endpoint } from "./connection";
import { encodeIov, encodeTarget, PS, PSI_SIZE } from "./protocol";

/** The local record of the pages of process `pid` a page server was sent. */
export function sentPagemapName(pid: number): string {
  return `sent-pagemap-${pid}.img`;
}

export interface PageServerCounters {
  pagemaps: number;
  pagesSent: number;
  holesSent: number;
  bytesSent: number;
}

export class PageServerClient implements PageStore {
  readonly counters: PageServerCounters = { pagemaps: 0, pagesSent: 0, holesSent: 0, bytesSent: 0 };
  private readonly header = new Uint8Array(PSI_SIZE);

  private constructor(private readonly conn: Connection, private readonly out: ImageDirWriter) {}

  /** Connect before anything is frozen: a server that is not there fails the dump up front. */
  static connect(server: Endpoint, out: ImageDirWriter): PageServerClient {
    const conn = Connection.connect(server);
    // Full segments for pages; the few questions are pushed by hand (see ask()).
    conn.cork(true);
    return new PageServerClient(conn, out);
  }

  get peer(): string {
    return this.conn.peer;
  }

  private send(cmd: number, t: { flags?: number; nrPages?: bigint; vaddr?: bigint; dstId?: bigint }): void {
    this.conn.sendAll(encodeIov({ cmd, flags: t.flags ?? 0, nrPages: t.nrPages ?? 0n, vaddr: t.vaddr ?? 0n, dstId: t.dstId ?? 0n }, this.header));
  }

  /** Send a command that the server answers, and read the `size`-byte answer. */
  private ask(cmd: number, dstId: bigint, size: number): Uint8Array {
    this.send(cmd, { dstId });
    // Uncorking pushes the question (and all before it) out now.
    this.conn.cork(false);
    const answer = new Uint8Array(size);
    this.conn.recvExact(answer);
    this.conn.cork(true);
    return answer;
  }

  save(target: PagemapTarget, entries: readonly PagemapEntry[], fill: (sink: ImageSink) => number): void {
    const dstId = encodeTarget(target);
    const hasParent = this.ask(PS.OPEN2, dstId, 1)[0] !== 0;
    const inParent = entries.find(entryInParent);
    if (inParent && !hasParent) {
      throw new Error(
        `${pagemapFileName(target)}: pages at 0x${inParent.vaddr.toString(16)} are left in the previous round, but the page server at ${this.conn.peer} has no parent round for them (start it with --prev-images-dir)`,
      );
    }
    this.counters.pagemaps++;
    let next = 0;
    /** Bytes still due for the present entry whose header went last. */
    let due = 0;
    // Send headers up to and including the next present entry (holes carry no data).
    const advance = (): void => {
      while (due === 0 && next < entries.length) {
        const e = entries[next++]!;
        const nr = entryPageCount(e);
        this.send(PS.ADD_F, { flags: e.flags, nrPages: BigInt(nr), vaddr: e.vaddr, dstId });
        if (entryPresent(e)) {
          due = nr * PAGE_SIZE;
          this.counters.pagesSent += nr;
        } else this.counters.holesSent += nr;
      }
    };
    const what = pagemapFileName(target);
    advance();
    fill({
      write: (bytes) => {
        let off = 0;
        while (off < bytes.length) {
          if (due === 0) advance();
          if (due === 0) throw new Error(`${what}: ${bytes.length - off} bytes of pages beyond what its present entries hold`);
          const n = Math.min(due, bytes.length - off);
          this.conn.sendAll(bytes.subarray(off, off + n));
          due -= n;
          off += n;
        }
      },
    });
    if (due !== 0) throw new Error(`${what}: ${due} bytes of pages missing for its present entries`);
    advance();
    if (due !== 0) throw new Error(`${what}: the pages of its present entries stopped short`);
    if (target.kind === "task") this.out.writeImage(sentPagemapName(target.id), pagemapImage(0, entries));
  }

  /** CLOSE, and wait until the server says it has written everything. */
  finish(): void {
    const status = new DataView(this.ask(PS.CLOSE, 0n, 4).buffer).getInt32(0, true);
    if (status !== 0) throw new Error(`the page server at ${this.conn.peer} ended the transfer with status ${status}`);
    this.counters.bytesSent = this.conn.sent;
  }

  /** After finish: close (the server waits for it). Before: a cut stream, which the server discards. */
  close(): void {
    this.counters.bytesSent = this.conn.sent;
    this.conn.close();
  }
}

/** Where a round's pages go: to the page server when one is given, else into the image set itself. */
export function openPageStore(out: ImageDirWriter, server: Endpoint | undefined): { store: PageStore; client: PageServerClient | null } {
  if (!server) return { store: new LocalPageStore(out), client: null };
  const client = PageServerClient.connect(server, out);
  return { store: client, client };
}
