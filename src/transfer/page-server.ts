/**
 * `ckpt page-server`: the receiving end of a migration's pages. It accepts one
 * connection from a dump or pre-dump (ckpt's or CRIU's --page-server), writes
 * each pagemap and its pages into DIR exactly as a local dump would, and ends
 * when the sender closes the stream.
 *
 * Nothing it writes looks finished until the stream is: every file is
 * written under a partial name and renamed only when CLOSE arrives, before
 * the status that tells the sender its pages are safe. A stream cut short
 * (sender killed, network gone) or a malformed one removes everything this
 * server wrote.
 *
 * With --prev-images-dir (an iterative migration) the directory links its
 * parent round as a local dump would; runs the sender leaves in the parent
 * are checked to be there, since a restore would otherwise miss them.
 */
import { isAbsolute, join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { ImageEncoder } from "../image/encode";
import { PagemapEntrySchema, PagemapHeadSchema } from "../image/gen/pagemap_pb";
import { readImageFile } from "../image/image-file";
import { ImageDirWriter, type ImageFile } from "../image/image-dir";
import { kind } from "../image/magic";
import { PageCoverage, PE_PARENT, PE_PRESENT, splitPagemap } from "../image/pagemap";
import { pagemapFileName, type PagemapTarget } from "../image/page-store";
import { statOrNull } from "../sys/file";
import { PAGE_SIZE } from "../sys/nr";
import { Connection, ConnectionLost, Listener, type Endpoint } from "./connection";
import { decodeIov, decodeTarget, encodeTarget, isClose, PS, PSI_SIZE, type PageServerIov } from "./protocol";

/** CRIU's page server numbers its pages files from here, apart from a dump writing into the same directory. */
const FIRST_PAGES_ID = 0x10001;
/** Pages are received through one reused buffer of this size. */
const CHUNK = 4 << 20;
/** No pagemap entry covers more than the 47-bit user address space. */
const MAX_ENTRY_PAGES = 1n << 35n;

export interface PageServerOptions extends Endpoint {
  dir: string;
  /** The previous round's directory, relative to `dir` unless absolute. */
  prevImagesDir?: string;
  /** Called once the socket listens (with the port the kernel chose for port 0). */
  onListening?: (where: { local: string; port: number }) => void;
}

export interface PageServerResult {
  dir: string;
  peer: string;
  pagemaps: number;
  pagesReceived: number;
  /** Pages the sender recorded as in the parent round. */
  pagesInParent: number;
  bytesReceived: number;
  /** From the connection to the sender's CLOSE. */
  ms: number;
}

/** A malformed or unexpected message; the stream is refused. */
export class PageStreamError extends Error {
  override readonly name = "PageStreamError";
}

/** The pagemap being received. */
interface OpenPagemap {
  target: PagemapTarget;
  dstId: bigint;
  image: ImageEncoder;
  pages: ImageFile;
  /** What the parent round holds for this pagemap; null without one. */
  parent: PageCoverage | null;
}

export class PageServer {
  private nextPagesId = FIRST_PAGES_ID;
  private current: OpenPagemap | null = null;
  private readonly buffer = new Uint8Array(CHUNK);
  private readonly parentDir: string | null;
  readonly counters = { pagemaps: 0, pagesReceived: 0, pagesInParent: 0 };

  private constructor(private readonly out: ImageDirWriter, prev: string | undefined) {
    if (prev === undefined) {
      this.parentDir = null;
      return;
    }
    const path = isAbsolute(prev) ? prev : join(out.path, prev);
    const st = statOrNull(path);
    if (!st) throw new Error(`--prev-images-dir ${prev}: ${path} does not exist`);
    out.symlink("parent", prev);
    this.parentDir = path;
  }

  /** Listen, serve one sender, and return what it sent; throws (having removed what it wrote) if the stream fails. */
  static serve(opts: PageServerOptions): PageServerResult {
    const out = ImageDirWriter.open(opts.dir);
    let server: PageServer | null = null;
    let conn: Connection | null = null;
    try {
      server = new PageServer(out, opts.prevImagesDir);
      const listener = Listener.open(opts);
      try {
        opts.onListening?.({ local: listener.local, port: listener.port });
        conn = listener.accept();
      } finally {
        listener.close();
      }
      const started = performance.now();
      server.receive(conn);
      const ms = performance.now() - started;
      return { dir: opts.dir, peer: conn.peer, ...server.counters, bytesReceived: conn.received, ms };
    } catch (e) {
      server?.abandonCurrent();
      out.discard();
      throw e;
    } finally {
      conn?.close();
      out.close();
    }
  }

  /** The message loop: until CLOSE, or a broken stream (an error). */
  private receive(conn: Connection): void {
    conn.noDelay(true);
    const header = new Uint8Array(PSI_SIZE);
    for (;;) {
      if (!conn.recvExact(header, PSI_SIZE, true)) throw new ConnectionLost(`${conn.peer} closed the stream before its CLOSE: the transfer is incomplete`);
      const iov = decodeIov(header);
      if (isClose(iov.cmd, iov.flags)) {
        this.closeCurrent();
        this.out.publishStaged();
        const status = new Uint8Array(4);
        conn.sendAll(status);
        // The sender closes first, so TIME_WAIT stays on its side.
        if (!conn.awaitClose()) throw new PageStreamError(`${conn.peer} sent more after CLOSE`);
        return;
      }
      switch (iov.cmd) {
        case PS.OPEN:
        case PS.OPEN2: {
          const hasParent = this.open(iov);
          if (iov.cmd === PS.OPEN2) conn.sendAll(new Uint8Array([hasParent ? 1 : 0]));
          break;
        }
        case PS.PARENT: {
          const answer = new Uint8Array(4);
          new DataView(answer.buffer).setInt32(0, this.parentPagemap(this.target(iov)) ? 1 : 0, true);
          conn.sendAll(answer);
          break;
        }
        case PS.ADD_F:
        case PS.ADD:
        case PS.HOLE:
          this.add(conn, iov, iov.cmd === PS.ADD_F ? iov.flags : iov.cmd === PS.ADD ? PE_PRESENT : PE_PARENT);
          break;
        case PS.GET:
          throw new PageStreamError("a request for pages (PS_IOV_GET): this page server receives a dump's pages; lazy restores fetch them from the dump's own server");
        default:
          throw new PageStreamError(`unknown command ${iov.cmd} (flags ${iov.flags})`);
      }
    }
  }

  private target(iov: PageServerIov): PagemapTarget {
    const t = decodeTarget(iov.dstId);
    if (!t) throw new PageStreamError(`a pagemap id of unknown type (dst_id 0x${iov.dstId.toString(16)})`);
    return t;
  }

  /** The parent round's pagemap for `t`, if the directory has a parent and it one. */
  private parentPagemap(t: PagemapTarget): PageCoverage | null {
    if (!this.parentDir) return null;
    const path = `${this.parentDir}/${pagemapFileName(t)}`;
    if (!statOrNull(path)) return null;
    try {
      return new PageCoverage(splitPagemap(readImageFile(path).entries, path).entries);
    } catch (e) {
      throw new Error(`the parent round's ${path} cannot be read: ${(e as Error).message}`, { cause: e });
    }
  }

  /** Start a pagemap (ending the one before); returns whether the parent round has one for it. */
  private open(iov: PageServerIov): boolean {
    const target = this.target(iov);
    this.closeCurrent();
    const pagesId = this.nextPagesId++;
    const image = new ImageEncoder(kind("PAGEMAP")).add(PagemapHeadSchema, create(PagemapHeadSchema, { pagesId }));
    const pages = this.out.create(`pages-${pagesId}.img`, { staged: true });
    const parent = this.parentPagemap(target);
    this.current = { target, dstId: encodeTarget(target), image, pages, parent };
    this.counters.pagemaps++;
    return parent !== null;
  }

  private add(conn: Connection, iov: PageServerIov, flags: number): void {
    const cur = this.current;
    if (!cur || iov.dstId !== cur.dstId) {
      // CRIU once sent pages without opening; it still serves them by opening on the fly.
      this.open(iov);
    }
    const open = this.current!;
    if (iov.nrPages === 0n || iov.nrPages > MAX_ENTRY_PAGES) throw new PageStreamError(`an entry of ${iov.nrPages} pages at 0x${iov.vaddr.toString(16)}`);
    if (iov.vaddr % BigInt(PAGE_SIZE) !== 0n) throw new PageStreamError(`an entry at 0x${iov.vaddr.toString(16)}, not page-aligned`);
    const nr = Number(iov.nrPages);
    open.image.add(PagemapEntrySchema, create(PagemapEntrySchema, { vaddr: iov.vaddr, compatNrPages: nr, nrPages: iov.nrPages, flags }));
    if (flags & PE_PARENT) {
      const first = Number(iov.vaddr / BigInt(PAGE_SIZE));
      if (!open.parent) throw new PageStreamError(`${pagemapFileName(open.target)}: pages at 0x${iov.vaddr.toString(16)} are left in the parent round, but this page server has none for it (start it with --prev-images-dir)`);
      if (!open.parent.holds(first, first + nr)) throw new PageStreamError(`${pagemapFileName(open.target)}: pages 0x${iov.vaddr.toString(16)}+${nr} are left in the parent round, which does not hold them all`);
      this.counters.pagesInParent += nr;
    }
    if (!(flags & PE_PRESENT)) return;
    let left = nr * PAGE_SIZE;
    while (left > 0) {
      const n = Math.min(left, this.buffer.length);
      conn.recvExact(this.buffer, n);
      open.pages.write(n === this.buffer.length ? this.buffer : this.buffer.subarray(0, n));
      left -= n;
    }
    this.counters.pagesReceived += nr;
  }

  /** A failed stream: close the pages file being written (discard removes it). */
  abandonCurrent(): void {
    this.current?.pages.close();
    this.current = null;
  }

  /** Write the pagemap being received (under its partial name) and close its pages file. */
  closeCurrent(): void {
    const cur = this.current;
    if (!cur) return;
    this.current = null;
    cur.pages.close();
    const file = this.out.create(pagemapFileName(cur.target), { staged: true });
    try {
      file.write(cur.image.bytes());
    } finally {
      file.close();
    }
  }
}
