/**
 * An established TCP connection made again from tcp-stream-INO.img, through
 * the kernel's repair mode, as CRIU does: in repair mode a socket binds
 * beside the listener that shares its port, takes its sequence numbers, is
 * "connected" without a handshake, gets the options both ends negotiated,
 * its window, and its queues written back (the receive queue as received
 * data, the sent-but-unacknowledged part of the send queue as sent; the
 * never-sent rest is written after repair mode is off, as ordinary data).
 *
 * The connection stays locked (no packet of it passes, sys/nftables.ts)
 * from before the socket exists until the tree is about to run: then the
 * dump's lock is ended if it is on this host, and the restore's own.
 */
import { isFieldSet } from "@bufbuild/protobuf";
import { TcpStreamEntrySchema, type TcpStreamEntry } from "../../image/gen/tcp-stream_pb";
import type { InetSkEntry } from "../../image/gen/sk-inet_pb";
import type { ImageSet } from "../../image/image-set";
import { readImageFile } from "../../image/image-file";
import { NftDropTable } from "../../sys/nftables";
import { connect, IPPROTO, sendto, setsockoptBytes, setsockoptInt, TCP_OPT, type InetFamily } from "../../sys/socket";
import { endTcpLockHolder, readTcpLockRecord, repairOff } from "../../transfer/tcp-lock";
import type { ProcFs } from "../../proc/procfs";

const TCP_RECV_QUEUE = 1;
const TCP_SEND_QUEUE = 2;
const TCPI_OPT = { TIMESTAMPS: 1, SACK: 2, WSCALE: 4 } as const;
/** TCP option kinds for TCP_REPAIR_OPTIONS. */
const TCPOPT = { MAXSEG: 2, WINDOW: 3, SACK_PERM: 4, TIMESTAMP: 8 } as const;
/** The kernel makes one buffer of a repair-mode write to the receive queue: big ones are split. */
const MAX_CHUNK = 64 * 1024;

/** The connections a restore makes, under a network lock of its own until the tree runs. */
export class TcpRestoreSession {
  private table: NftDropTable | null = null;

  constructor(private readonly dir: string, private readonly proc: ProcFs) {}

  /** Drop every packet of the connection `self` → `peer` until finish(). */
  lock(family: InetFamily, self: { addr: Uint8Array; port: number }, peer: { addr: Uint8Array; port: number }): void {
    this.table ??= NftDropTable.create(`ckpt-restore-${process.pid}`);
    this.table.add([{ family, src: self.addr, sport: self.port, dst: peer.addr, dport: peer.port }]);
  }

  /** The tree is about to run: the dump's lock (if its holder is on this host) and ours go. */
  finish(): void {
    if (!this.table) return;
    const holder = readTcpLockRecord(this.dir);
    if (holder) endTcpLockHolder(this.proc, holder);
    this.abort();
  }

  /** Ours goes (a failed restore: its sockets were closed in the lock's shadow). */
  abort(): void {
    this.table?.close();
    this.table = null;
  }
}

function sendChunks(fd: number, bytes: Uint8Array, what: string): void {
  let off = 0;
  while (off < bytes.length) {
    const n = sendto(fd, bytes.subarray(off, Math.min(bytes.length, off + MAX_CHUNK)));
    if (n <= 0) throw new Error(`writing the ${what} back stopped after ${off} of ${bytes.length} bytes`);
    off += n;
  }
}

function setQueueSeq(fd: number, queue: number, seq: number): void {
  setsockoptInt(fd, IPPROTO.TCP, TCP_OPT.REPAIR_QUEUE, queue);
  setsockoptInt(fd, IPPROTO.TCP, TCP_OPT.QUEUE_SEQ, seq | 0);
}

/** The entry and both queues' bytes of the socket's tcp-stream image. */
export function readTcpStream(images: ImageSet, isk: InetSkEntry): { entry: TcpStreamEntry; inq: Uint8Array; outq: Uint8Array } {
  const name = `tcp-stream-${isk.ino.toString(16)}.img`;
  if (!images.has(name)) throw new Error(`${name} is missing: the connection's state was not saved`);
  const img = readImageFile(images.path(name));
  const first = img.entries[0];
  if (!first || first.message.$typeName !== TcpStreamEntrySchema.typeName) throw new Error(`${name} holds no TCP stream entry`);
  const entry = first.message as TcpStreamEntry;
  if (!isFieldSet(entry, TcpStreamEntrySchema.field.unsqLen)) throw new Error(`${name}: unsq_len is not set (an image too old to tell sent from unsent data)`);
  const payload = first.payload ?? new Uint8Array(0);
  return { entry, inq: payload.subarray(0, entry.inqLen), outq: payload.subarray(entry.inqLen, entry.inqLen + entry.outqLen) };
}

/**
 * Make socket `fd` (new, TCP, in repair mode, bound to its address) the
 * established connection to `peerAddr` the image describes, and take it out
 * of repair mode.
 */
export function restoreTcpStream(fd: number, family: InetFamily, peerAddr: Uint8Array, s: { entry: TcpStreamEntry; inq: Uint8Array; outq: Uint8Array }): void {
  const e = s.entry;
  setQueueSeq(fd, TCP_RECV_QUEUE, (e.inqSeq - e.inqLen) >>> 0);
  setQueueSeq(fd, TCP_SEND_QUEUE, (e.outqSeq - e.outqLen) >>> 0);
  // In repair mode: no SYN, the socket is ESTABLISHED at once.
  connect(fd, peerAddr);
  const opts: [number, number][] = [];
  if (e.optMask & TCPI_OPT.SACK) opts.push([TCPOPT.SACK_PERM, 0]);
  if (e.optMask & TCPI_OPT.WSCALE) opts.push([TCPOPT.WINDOW, e.sndWscale + ((e.rcvWscale ?? 0) << 16)]);
  if (e.optMask & TCPI_OPT.TIMESTAMPS) opts.push([TCPOPT.TIMESTAMP, 0]);
  opts.push([TCPOPT.MAXSEG, e.mssClamp]);
  const raw = new Uint8Array(opts.length * 8);
  const v = new DataView(raw.buffer);
  opts.forEach(([code, val], i) => {
    v.setUint32(i * 8, code, true);
    v.setUint32(i * 8 + 4, val >>> 0, true);
  });
  setsockoptBytes(fd, IPPROTO.TCP, TCP_OPT.REPAIR_OPTIONS, raw);
  if (e.optMask & TCPI_OPT.TIMESTAMPS) setsockoptInt(fd, IPPROTO.TCP, TCP_OPT.TIMESTAMP, (e.timestamp ?? 0) | 0);
  if (s.inq.length > 0) {
    setsockoptInt(fd, IPPROTO.TCP, TCP_OPT.REPAIR_QUEUE, TCP_RECV_QUEUE);
    sendChunks(fd, s.inq, "receive queue");
  }
  const unsent = e.unsqLen ?? 0;
  const sent = s.outq.length - unsent;
  if (sent > 0) {
    setsockoptInt(fd, IPPROTO.TCP, TCP_OPT.REPAIR_QUEUE, TCP_SEND_QUEUE);
    sendChunks(fd, s.outq.subarray(0, sent), "send queue (sent part)");
  }
  if (isFieldSet(e, TcpStreamEntrySchema.field.sndWl1)) {
    const w = new Uint8Array(20);
    const wv = new DataView(w.buffer);
    [e.sndWl1 ?? 0, e.sndWnd ?? 0, e.maxWindow ?? 0, e.rcvWnd ?? 0, e.rcvWup ?? 0].forEach((x, i) => wv.setUint32(i * 4, x >>> 0, true));
    setsockoptBytes(fd, IPPROTO.TCP, TCP_OPT.REPAIR_WINDOW, w);
  }
  if (!repairOff(fd)) throw new Error("the socket refused to leave repair mode");
  // Never sent before the dump: written now as the program wrote it (it goes out once the lock is gone).
  if (unsent > 0) sendChunks(fd, s.outq.subarray(sent), "send queue (unsent part)");
}
