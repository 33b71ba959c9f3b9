/**
 * An established TCP connection, read through the kernel's repair mode
 * (TCP_REPAIR) as CRIU does: with the socket in repair mode nothing it holds
 * goes out, and its sequence numbers, negotiated options, window and both
 * queues can be read. The result is CRIU's tcp-stream-INO.img: the entry,
 * then the receive queue's bytes, then the send queue's.
 *
 * The connection is locked first (transfer/tcp-lock.ts: no packet of it
 * passes), and the socket handed to the lock's holder. Repair mode is on only
 * for the read, a few syscalls while the tree is frozen: a tree that runs on
 * with a socket in repair mode gets EPERM from its reads, so a ckpt that dies
 * later (during a lazy dump's serve, say) must not leave it so. Once the tree
 * has been killed the holder turns repair mode on again and closes the
 * socket, silently: no FIN or reset, the peer knows nothing.
 */
import { create } from "@bufbuild/protobuf";
import { TcpStreamEntrySchema, type TcpStreamEntry } from "../../image/gen/tcp-stream_pb";
import { ImageEncoder } from "../../image/encode";
import { kind } from "../../image/magic";
import { fcntl } from "../../sys/calls";
import { ioctl } from "../../sys/libc";
import { F } from "../../sys/nr";
import { AF, getsockoptBytes, getsockoptInt, IPPROTO, MSG, recvfrom, setsockoptInt, TCP_OPT, TCP_REPAIR_MODE, TCP_STATE, type InetFamily } from "../../sys/socket";
import type { TcpLock } from "../../transfer/tcp-lock";

/** ioctls that measure the queues (linux/sockios.h, asm-generic/ioctls.h). */
const SIOCINQ = 0x541b;
const SIOCOUTQ = 0x5411;
const SIOCOUTQNSD = 0x894b;
/** TCP_REPAIR_QUEUE values. */
const TCP_RECV_QUEUE = 1;
const TCP_SEND_QUEUE = 2;
/** tcpi_options bits. */
export const TCPI_OPT = { TIMESTAMPS: 1, SACK: 2, WSCALE: 4 } as const;

/** One end of the connection: the address's bytes (4 or 16) and the port. */
export interface TcpEnd {
  addr: Uint8Array;
  port: number;
}

function ioctlInt(fd: number, req: number, what: string): number {
  const b = new Uint8Array(4);
  ioctl(fd, req, b, what);
  return new DataView(b.buffer).getInt32(0, true);
}

/** The sequence number of `queue` and its `len` bytes (peeked: they stay). */
function readQueue(fd: number, queue: number, len: number): { seq: number; bytes: Uint8Array } {
  setsockoptInt(fd, IPPROTO.TCP, TCP_OPT.REPAIR_QUEUE, queue);
  const seq = getsockoptInt(fd, IPPROTO.TCP, TCP_OPT.QUEUE_SEQ) >>> 0;
  const name = queue === TCP_RECV_QUEUE ? "receive" : "send";
  if (len === 0) return { seq, bytes: new Uint8Array(0) };
  // One byte more than expected: a queue longer than its measure is an error, not a silent cut.
  const buf = new Uint8Array(len + 1);
  const got = recvfrom(fd, buf, MSG.PEEK | MSG.DONTWAIT);
  if (got !== len) throw new Error(`the ${name} queue holds ${got} bytes, ${len} expected`);
  return { seq, bytes: buf.subarray(0, len) };
}

/**
 * Lock the connection, put the socket in repair mode and read it. `local` is
 * ckpt's fd of the tree's socket (the same socket object). Returns the image.
 */
export function dumpTcpStream(local: number, family: InetFamily, self: TcpEnd, peer: TcpEnd, lock: TcpLock): ImageEncoder {
  lock.lock([{ family, src: self.addr, sport: self.port, dst: peer.addr, dport: peer.port }]);
  // The holder's own copy: it closes the socket silently once the tree is gone.
  lock.hold(fcntl(local, F.DUPFD_CLOEXEC, 0));
  setsockoptInt(local, IPPROTO.TCP, TCP_OPT.REPAIR, TCP_REPAIR_MODE.ON);
  try {
    return readRepaired(local);
  } finally {
    // No window probe: the lock would drop it, and the tree is still frozen.
    setsockoptInt(local, IPPROTO.TCP, TCP_OPT.REPAIR, TCP_REPAIR_MODE.OFF_NO_WP);
  }
}

/** The image of a socket in repair mode. */
function readRepaired(local: number): ImageEncoder {
  const info = getsockoptBytes(local, IPPROTO.TCP, TCP_OPT.INFO, 8);
  if (info[0] !== TCP_STATE.ESTABLISHED) throw new Error(`the connection left ESTABLISHED (state ${info[0]}) while being saved`);
  const options = info[5]!;
  const outqLen = ioctlInt(local, SIOCOUTQ, "SIOCOUTQ");
  const unsqLen = ioctlInt(local, SIOCOUTQNSD, "SIOCOUTQNSD");
  const inqLen = ioctlInt(local, SIOCINQ, "SIOCINQ");
  // In repair mode TCP_MAXSEG reads the clamp the peer announced.
  const mssClamp = getsockoptInt(local, IPPROTO.TCP, TCP_OPT.MAXSEG);
  const entry: TcpStreamEntry = create(TcpStreamEntrySchema, {
    inqLen, outqLen, unsqLen, mssClamp, optMask: options, sndWscale: 0, inqSeq: 0, outqSeq: 0,
  });
  if (options & TCPI_OPT.WSCALE) {
    entry.sndWscale = info[6]! & 0xf;
    entry.rcvWscale = info[6]! >> 4;
  }
  if (options & TCPI_OPT.TIMESTAMPS) entry.timestamp = getsockoptInt(local, IPPROTO.TCP, TCP_OPT.TIMESTAMP) >>> 0;
  const w = new DataView(getsockoptBytes(local, IPPROTO.TCP, TCP_OPT.REPAIR_WINDOW, 20).buffer);
  entry.sndWl1 = w.getUint32(0, true);
  entry.sndWnd = w.getUint32(4, true);
  entry.maxWindow = w.getUint32(8, true);
  entry.rcvWnd = w.getUint32(12, true);
  entry.rcvWup = w.getUint32(16, true);
  const inq = readQueue(local, TCP_RECV_QUEUE, inqLen);
  const outq = readQueue(local, TCP_SEND_QUEUE, outqLen);
  entry.inqSeq = inq.seq;
  entry.outqSeq = outq.seq;
  const payload = new Uint8Array(inqLen + outqLen);
  payload.set(inq.bytes, 0);
  payload.set(outq.bytes, inqLen);
  return new ImageEncoder(kind("TCP_STREAM")).add(TcpStreamEntrySchema, entry, payload);
}

/** tcp-stream-INO.img, CRIU's name (the inode in hex). */
export function tcpStreamImageName(ino: number): string {
  return `tcp-stream-${ino.toString(16)}.img`;
}

/** The address bytes of `family` from an image's words (network order read as little-endian u32s). */
export function endBytes(family: InetFamily, words: readonly number[]): Uint8Array {
  const out = new Uint8Array(family === AF.INET ? 4 : 16);
  const v = new DataView(out.buffer);
  words.slice(0, out.length / 4).forEach((w, i) => v.setUint32(4 * i, w, true));
  return out;
}
