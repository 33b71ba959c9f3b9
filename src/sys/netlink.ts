/**
 * Netlink framing: one request out, its reply messages in, with the kernel's
 * errors turned into SysErrors. Per-family knowledge (which payload, which
 * attributes) lives with the callers, e.g. src/proc/sock-diag.ts.
 *
 * Layouts (linux/netlink.h): struct nlmsghdr { u32 len; u16 type; u16 flags;
 * u32 seq; u32 pid; } is 16 bytes; messages and attributes (struct nlattr /
 * rtattr { u16 len; u16 type; }) are padded to 4 bytes.
 */
import { Errno, SysError } from "./errno";
import { close } from "./libc";
import { AF, MSG, recvmsg, SOCK, sendto, socket, sockaddrNl } from "./socket";

/** Control message types. */
export const NLMSG = { NOOP: 1, ERROR: 2, DONE: 3, OVERRUN: 4 } as const;

/** nlmsg_flags bits. */
export const NLM_F = {
  REQUEST: 0x1, MULTI: 0x2, ACK: 0x4, ECHO: 0x8, DUMP_INTR: 0x10, DUMP_FILTERED: 0x20,
  ROOT: 0x100, MATCH: 0x200, DUMP: 0x300,
} as const;

export const NLMSGHDR_SIZE = 16;
export const NLMSGHDR_OFF = { len: 0, type: 4, flags: 6, seq: 8, pid: 12 } as const;
/** struct nlattr / struct rtattr header. */
export const NLA_HDRLEN = 4;
/** nla_type carries NLA_F_NESTED and NLA_F_NET_BYTEORDER in its top two bits. */
export const NLA_TYPE_MASK = 0x3fff;

/** NLMSG_ALIGN / NLA_ALIGN / RTA_ALIGN: round up to 4. */
export function nlAlign(n: number): number {
  return (n + 3) & ~3;
}

/** A received message; `payload` is a view into the receive buffer, valid only inside the callback. */
export interface NlMessage {
  type: number;
  flags: number;
  seq: number;
  portId: number;
  payload: Uint8Array;
}

/** Encode one request message: header plus payload, padded. */
export function encodeNlRequest(type: number, flags: number, seq: number, payload: Uint8Array): Uint8Array {
  const len = NLMSGHDR_SIZE + payload.length;
  const out = new Uint8Array(nlAlign(len));
  const v = new DataView(out.buffer);
  v.setUint32(NLMSGHDR_OFF.len, len, true);
  v.setUint16(NLMSGHDR_OFF.type, type, true);
  v.setUint16(NLMSGHDR_OFF.flags, flags, true);
  v.setUint32(NLMSGHDR_OFF.seq, seq, true);
  v.setUint32(NLMSGHDR_OFF.pid, 0, true);
  out.set(payload, NLMSGHDR_SIZE);
  return out;
}

/**
 * Walk the messages in the first `len` bytes of `buf`. Throws on a header
 * whose length runs past the data (a truncated or corrupt read).
 */
export function forEachNlMessage(buf: Uint8Array, len: number, fn: (m: NlMessage) => void): void {
  const v = new DataView(buf.buffer, buf.byteOffset, len);
  let off = 0;
  while (off + NLMSGHDR_SIZE <= len) {
    const mlen = v.getUint32(off + NLMSGHDR_OFF.len, true);
    if (mlen < NLMSGHDR_SIZE || off + mlen > len) throw new Error(`netlink message at ${off} claims ${mlen} bytes of ${len - off} left`);
    fn({
      type: v.getUint16(off + NLMSGHDR_OFF.type, true),
      flags: v.getUint16(off + NLMSGHDR_OFF.flags, true),
      seq: v.getUint32(off + NLMSGHDR_OFF.seq, true),
      portId: v.getUint32(off + NLMSGHDR_OFF.pid, true),
      payload: buf.subarray(off + NLMSGHDR_SIZE, off + mlen),
    });
    off += nlAlign(mlen);
  }
}

/**
 * Walk the attributes in `bytes` (a message payload from `start`). `data` is a
 * view without the attribute header or padding; copy what must outlive the
 * callback. A malformed length ends the walk.
 */
export function forEachAttr(bytes: Uint8Array, start: number, fn: (type: number, data: Uint8Array) => void): void {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let off = nlAlign(start);
  while (off + NLA_HDRLEN <= bytes.length) {
    const alen = v.getUint16(off, true);
    const type = v.getUint16(off + 2, true) & NLA_TYPE_MASK;
    if (alen < NLA_HDRLEN || off + alen > bytes.length) break;
    fn(type, bytes.subarray(off + NLA_HDRLEN, off + alen));
    off += nlAlign(alen);
  }
}

/** socket(AF_NETLINK, SOCK_RAW|SOCK_CLOEXEC, protocol). */
export function openNetlink(protocol: number): number {
  return socket(AF.NETLINK, SOCK.RAW | SOCK.CLOEXEC, protocol);
}

/**
 * One reused receive buffer. The kernel sizes dump messages by the largest
 * buffer a reader has offered, capped just under 32 KiB, so 32 KiB always
 * holds a whole one.
 */
const RECV_SIZE = 32 * 1024;
const recvBuf = new Uint8Array(RECV_SIZE);
let nextSeq = 1;

/** What a request is, for error messages: `call(args...)`. */
export interface NlWhat {
  call: string;
  args: readonly string[];
}

/**
 * Send one request on netlink socket `fd` and feed each reply message to
 * `onMessage` until the exchange ends: NLMSG_DONE for a dump (NLM_F_DUMP in
 * `flags`); for other requests the acknowledgement, which is asked for here.
 * NLMSG_ERROR with a non-zero code, and a dump ending in an error, throw a
 * SysError for `what` with that errno; so does a dump the kernel marks
 * inconsistent (EINTR: run it again).
 */
export function nlRequest(fd: number, type: number, flags: number, payload: Uint8Array, what: NlWhat, onMessage: (m: NlMessage) => void): void {
  const seq = nextSeq++;
  const dump = (flags & NLM_F.DUMP) === NLM_F.DUMP;
  const req = encodeNlRequest(type, flags | NLM_F.REQUEST | (dump ? 0 : NLM_F.ACK), seq, payload);
  sendto(fd, req, 0, sockaddrNl(0));
  let done = false;
  let interrupted = false;
  while (!done) {
    const r = recvmsg(fd, recvBuf, 0);
    if (r.flags & MSG.TRUNC) throw new Error(`${what.call}: a netlink reply did not fit in ${RECV_SIZE} bytes`);
    forEachNlMessage(recvBuf, r.bytes, (m) => {
      if (done || m.seq !== seq) return;
      if (m.flags & NLM_F.DUMP_INTR) interrupted = true;
      if (m.type === NLMSG.ERROR) {
        const code = m.payload.length >= 4 ? new DataView(m.payload.buffer, m.payload.byteOffset, 4).getInt32(0, true) : 0;
        if (code < 0) throw new SysError(what.call, what.args, -code);
        done = true;
      } else if (m.type === NLMSG.DONE) {
        const code = m.payload.length >= 4 ? new DataView(m.payload.buffer, m.payload.byteOffset, 4).getInt32(0, true) : 0;
        if (code < 0) throw new SysError(what.call, what.args, -code);
        done = true;
      } else if (m.type === NLMSG.OVERRUN) {
        throw new Error(`${what.call}: netlink overrun`);
      } else if (m.type !== NLMSG.NOOP) {
        onMessage(m);
      }
    });
  }
  if (interrupted) throw new SysError(what.call, [...what.args, "dump interrupted"], Errno.EINTR);
}

/** Open a netlink socket of `protocol`, run `fn` with it, close it. */
export function withNetlink<T>(protocol: number, fn: (fd: number) => T): T {
  const fd = openNetlink(protocol);
  try {
    return fn(fd);
  } finally {
    close(fd);
  }
}
