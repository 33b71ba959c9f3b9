/**
 * Socket system calls through raw syscall(2), with the x86_64 numbers and the
 * constants ckpt passes to them. Each wrapper returns the call's result or
 * throws a SysError naming the call, its key arguments and errno.
 *
 * Socket addresses travel as raw `struct sockaddr_*` bytes (what the kernel
 * reads and writes); the encoders and decoders below build and read them.
 */
import { Errno, SysError } from "./errno";
import { addressOf, syscall } from "./libc";

// ---------------------------------------------------------------- numbers and constants

/** x86_64 system call numbers of the socket calls. */
export const SOCK_SYS = {
  socket: 41, connect: 42, accept: 43, sendto: 44, recvfrom: 45, sendmsg: 46, recvmsg: 47,
  shutdown: 48, bind: 49, listen: 50, getsockname: 51, getpeername: 52, socketpair: 53,
  setsockopt: 54, getsockopt: 55, accept4: 288,
} as const;

/** Address families. */
export const AF = { UNSPEC: 0, UNIX: 1, INET: 2, INET6: 10, NETLINK: 16, PACKET: 17 } as const;
export type InetFamily = typeof AF.INET | typeof AF.INET6;

/** Socket types, and the flags socket(2)/socketpair(2)/accept4(2) take in the type argument. */
export const SOCK = {
  STREAM: 1, DGRAM: 2, RAW: 3, RDM: 4, SEQPACKET: 5, PACKET: 10,
  NONBLOCK: 0o4000, CLOEXEC: 0o2000000,
} as const;

/** IP protocol numbers (also the socket option levels of those protocols). */
export const IPPROTO = { IP: 0, ICMP: 1, TCP: 6, UDP: 17, IPV6: 41, ICMPV6: 58, RAW: 255 } as const;

/** Socket option levels. */
export const SOL = { SOCKET: 1, IP: 0, TCP: 6, UDP: 17, IPV6: 41, NETLINK: 270 } as const;

/** SOL_SOCKET options (asm-generic/socket.h; x86_64 uses the generic values). */
export const SO = {
  DEBUG: 1, REUSEADDR: 2, TYPE: 3, ERROR: 4, DONTROUTE: 5, BROADCAST: 6, SNDBUF: 7, RCVBUF: 8,
  KEEPALIVE: 9, OOBINLINE: 10, NO_CHECK: 11, PRIORITY: 12, LINGER: 13, BSDCOMPAT: 14,
  REUSEPORT: 15, PASSCRED: 16, PEERCRED: 17, RCVLOWAT: 18, SNDLOWAT: 19,
  /** struct timeval with a 64-bit time_t on x86_64 (the "_OLD" number is the native one here). */
  RCVTIMEO: 20,
  SNDTIMEO: 21,
  BINDTODEVICE: 25, ATTACH_FILTER: 26, DETACH_FILTER: 27, PEERNAME: 28, TIMESTAMP: 29,
  ACCEPTCONN: 30, PEERSEC: 31, SNDBUFFORCE: 32, RCVBUFFORCE: 33, PASSSEC: 34, TIMESTAMPNS: 35,
  MARK: 36, TIMESTAMPING: 37, PROTOCOL: 38, DOMAIN: 39, RXQ_OVFL: 40, WIFI_STATUS: 41,
  PEEK_OFF: 42, NOFCS: 43, LOCK_FILTER: 44, SELECT_ERR_QUEUE: 45, BUSY_POLL: 46,
  MAX_PACING_RATE: 47, INCOMING_CPU: 49, COOKIE: 57, PEERGROUPS: 59, ZEROCOPY: 60, TXTIME: 61,
  BINDTOIFINDEX: 62, BUF_LOCK: 72, RCVMARK: 75, PASSPIDFD: 76, PEERPIDFD: 77,
} as const;

/** IPPROTO_TCP options (linux/tcp.h). */
export const TCP_OPT = {
  NODELAY: 1, MAXSEG: 2, CORK: 3, KEEPIDLE: 4, KEEPINTVL: 5, KEEPCNT: 6, SYNCNT: 7, LINGER2: 8,
  DEFER_ACCEPT: 9, WINDOW_CLAMP: 10, INFO: 11, QUICKACK: 12, CONGESTION: 13, USER_TIMEOUT: 18,
  REPAIR: 19, REPAIR_QUEUE: 20, QUEUE_SEQ: 21, REPAIR_OPTIONS: 22, FASTOPEN: 23, TIMESTAMP: 24,
  NOTSENT_LOWAT: 25, REPAIR_WINDOW: 29,
} as const;

/** TCP_REPAIR values: OFF sends a window probe to wake the peer, OFF_NO_WP does not. */
export const TCP_REPAIR_MODE = { ON: 1, OFF: 0, OFF_NO_WP: -1 } as const;

/** IPPROTO_IP options (linux/in.h). */
export const IP_OPT = { TOS: 1, TTL: 2, HDRINCL: 3, OPTIONS: 4, RECVERR: 11, FREEBIND: 15, TRANSPARENT: 19 } as const;

/** IPPROTO_IPV6 options (linux/in6.h). */
export const IPV6_OPT = { UNICAST_HOPS: 16, V6ONLY: 26, RECVERR: 25, TCLASS: 67, TRANSPARENT: 75, FREEBIND: 78 } as const;

/** Connection states, shared by TCP and (a subset) AF_UNIX (net/tcp_states.h). */
export const TCP_STATE = {
  ESTABLISHED: 1, SYN_SENT: 2, SYN_RECV: 3, FIN_WAIT1: 4, FIN_WAIT2: 5, TIME_WAIT: 6, CLOSE: 7,
  CLOSE_WAIT: 8, LAST_ACK: 9, LISTEN: 10, CLOSING: 11, NEW_SYN_RECV: 12,
} as const;

/** recv/send flags. */
export const MSG = {
  OOB: 0x1, PEEK: 0x2, DONTROUTE: 0x4, CTRUNC: 0x8, TRUNC: 0x20, DONTWAIT: 0x40, EOR: 0x80,
  WAITALL: 0x100, ERRQUEUE: 0x2000, NOSIGNAL: 0x4000, MORE: 0x8000, CMSG_CLOEXEC: 0x40000000,
} as const;

/** SOL_SOCKET control message types. */
export const SCM = { RIGHTS: 1, CREDENTIALS: 2, SECURITY: 3, PIDFD: 4 } as const;

/** shutdown(2) `how`. */
export const SHUT = { RD: 0, WR: 1, RDWR: 2 } as const;

/** Bits of sk->sk_shutdown, as sock_diag reports them: receive side and send side closed. */
export const SHUTDOWN = { RCV: 1, SEND: 2 } as const;

/** Netlink protocols (the third argument of socket(AF_NETLINK, ...)). */
export const NETLINK = { ROUTE: 0, SOCK_DIAG: 4 } as const;

const AF_NAME: Record<number, string> = { 0: "AF_UNSPEC", 1: "AF_UNIX", 2: "AF_INET", 10: "AF_INET6", 16: "AF_NETLINK", 17: "AF_PACKET" };
const TYPE_NAME: Record<number, string> = { 1: "SOCK_STREAM", 2: "SOCK_DGRAM", 3: "SOCK_RAW", 4: "SOCK_RDM", 5: "SOCK_SEQPACKET", 10: "SOCK_PACKET" };
const LEVEL_NAME: Record<number, string> = { 0: "SOL_IP", 1: "SOL_SOCKET", 6: "SOL_TCP", 17: "SOL_UDP", 41: "SOL_IPV6", 270: "SOL_NETLINK" };
const SO_NAME: Record<number, string> = Object.fromEntries(Object.entries(SO).map(([k, v]) => [v, `SO_${k}`]));

function showFamily(af: number): string {
  return AF_NAME[af] ?? String(af);
}

function showType(type: number): string {
  const base = type & 0xf;
  let s = TYPE_NAME[base] ?? String(base);
  if (type & SOCK.NONBLOCK) s += "|SOCK_NONBLOCK";
  if (type & SOCK.CLOEXEC) s += "|SOCK_CLOEXEC";
  return s;
}

function showOpt(level: number, opt: number): [string, string] {
  const lv = LEVEL_NAME[level] ?? String(level);
  return [lv, level === SOL.SOCKET ? (SO_NAME[opt] ?? String(opt)) : String(opt)];
}

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}

// ---------------------------------------------------------------- creating and connecting

/** socket(2); returns the new fd. */
export function socket(domain: number, type: number, protocol = 0): number {
  return Number(syscall("socket", SOCK_SYS.socket, [domain, type, protocol], [showFamily(domain), showType(type), String(protocol)]));
}

/** socketpair(2); returns both fds. */
export function socketpair(domain: number, type: number, protocol = 0): [number, number] {
  const fds = new Int32Array(2);
  syscall("socketpair", SOCK_SYS.socketpair, [domain, type, protocol, addressOf(fds)], [showFamily(domain), showType(type), String(protocol)]);
  return [fds[0] ?? -1, fds[1] ?? -1];
}

/** bind(2) to a raw sockaddr (see sockaddrUn / sockaddrIn / sockaddrIn6 / sockaddrNl). */
export function bind(fd: number, addr: Uint8Array): void {
  syscall("bind", SOCK_SYS.bind, [fd, addressOf(addr), addr.length], [String(fd), describeSockaddr(addr)]);
}

/** connect(2) to a raw sockaddr. */
export function connect(fd: number, addr: Uint8Array): void {
  syscall("connect", SOCK_SYS.connect, [fd, addressOf(addr), addr.length], [String(fd), describeSockaddr(addr)]);
}

/** listen(2). */
export function listen(fd: number, backlog: number): void {
  syscall("listen", SOCK_SYS.listen, [fd, backlog], [String(fd), String(backlog)]);
}

/** accept4(2) without asking for the peer's address; returns the new fd. */
export function accept4(fd: number, flags: number = SOCK.CLOEXEC): number {
  return Number(syscall("accept4", SOCK_SYS.accept4, [fd, 0, 0, flags], [String(fd), "NULL", "NULL", hex(flags)]));
}

/** shutdown(2); `how` is one of SHUT. */
export function shutdown(fd: number, how: number): void {
  syscall("shutdown", SOCK_SYS.shutdown, [fd, how], [String(fd), ["SHUT_RD", "SHUT_WR", "SHUT_RDWR"][how] ?? String(how)]);
}

// ---------------------------------------------------------------- addresses

const SOCKADDR_STORAGE_SIZE = 128;

/** getsockname(2): the socket's own address as raw sockaddr bytes (a copy). */
export function getsockname(fd: number): Uint8Array {
  return nameCall("getsockname", SOCK_SYS.getsockname, fd);
}

/** getpeername(2): the connected peer's address as raw sockaddr bytes (a copy). */
export function getpeername(fd: number): Uint8Array {
  return nameCall("getpeername", SOCK_SYS.getpeername, fd);
}

function nameCall(name: string, nr: number, fd: number): Uint8Array {
  const buf = new Uint8Array(SOCKADDR_STORAGE_SIZE);
  const len = new Uint32Array([buf.length]);
  syscall(name, nr, [fd, addressOf(buf), addressOf(len)], [String(fd)]);
  // The kernel reports the full length even when it had to truncate.
  return buf.slice(0, Math.min(len[0] ?? 0, buf.length));
}

/** offsetof(struct sockaddr_un, sun_path); sun_path holds 108 bytes. */
export const SUN_PATH_OFFSET = 2;
export const SUN_PATH_MAX = 108;

/**
 * struct sockaddr_un for a bound or connected name. A string starting with
 * "\0" (or bytes starting with 0) is an abstract name and is passed exactly,
 * without a terminator; anything else is a filesystem path and gets its NUL.
 * An empty name gives the bare family (autobind when passed to bind).
 */
export function sockaddrUn(name: string | Uint8Array): Uint8Array {
  const bytes = typeof name === "string" ? utf8.encode(name) : name;
  const abstract = bytes.length > 0 && bytes[0] === 0;
  const pathLen = bytes.length === 0 || abstract ? bytes.length : bytes.length + 1;
  if (pathLen > SUN_PATH_MAX) throw new Error(`unix socket name of ${bytes.length} bytes is longer than sun_path`);
  const out = new Uint8Array(SUN_PATH_OFFSET + pathLen);
  new DataView(out.buffer).setUint16(0, AF.UNIX, true);
  out.set(bytes, SUN_PATH_OFFSET);
  return out;
}

/** struct sockaddr_in (16 bytes) for a dotted-quad address and a host-order port. */
export function sockaddrIn(addr: string, port: number): Uint8Array {
  const out = new Uint8Array(16);
  const v = new DataView(out.buffer);
  v.setUint16(0, AF.INET, true);
  v.setUint16(2, port, false);
  out.set(parseIpv4(addr), 4);
  return out;
}

/** struct sockaddr_in6 (28 bytes) for an IPv6 address and a host-order port. */
export function sockaddrIn6(addr: string, port: number, scopeId = 0, flowinfo = 0): Uint8Array {
  const out = new Uint8Array(28);
  const v = new DataView(out.buffer);
  v.setUint16(0, AF.INET6, true);
  v.setUint16(2, port, false);
  v.setUint32(4, flowinfo, false);
  out.set(parseIpv6(addr), 8);
  v.setUint32(24, scopeId, true);
  return out;
}

/** struct sockaddr_nl (12 bytes); port id 0 is the kernel. */
export function sockaddrNl(portId = 0, groups = 0): Uint8Array {
  const out = new Uint8Array(12);
  const v = new DataView(out.buffer);
  v.setUint16(0, AF.NETLINK, true);
  v.setUint32(4, portId, true);
  v.setUint32(8, groups, true);
  return out;
}

/** A decoded socket address. Ports are in host order. */
export type Sockaddr =
  | { family: typeof AF.UNIX; /** sun_path bytes as the kernel gave them (may end in NUL, abstract starts with 0). */ path: Uint8Array; abstract: boolean; /** Path without its NUL, or "\0name" for abstract; "" when unnamed. */ name: string }
  | { family: typeof AF.INET; addr: string; port: number }
  | { family: typeof AF.INET6; addr: string; port: number; flowinfo: number; scopeId: number }
  | { family: typeof AF.NETLINK; portId: number; groups: number }
  | { family: number; raw: Uint8Array };

/** Decode raw sockaddr bytes (as getsockname / getpeername return them). */
export function decodeSockaddr(raw: Uint8Array): Sockaddr {
  if (raw.length < 2) return { family: AF.UNSPEC, raw };
  const v = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  const family = v.getUint16(0, true);
  if (family === AF.UNIX) {
    const path = raw.slice(SUN_PATH_OFFSET);
    return { family, path, ...unixName(path) };
  }
  if (family === AF.INET && raw.length >= 8) {
    return { family, addr: formatIpv4(raw.subarray(4, 8)), port: v.getUint16(2, false) };
  }
  if (family === AF.INET6 && raw.length >= 28) {
    return { family, addr: formatIpv6(raw.subarray(8, 24)), port: v.getUint16(2, false), flowinfo: v.getUint32(4, false), scopeId: v.getUint32(24, true) };
  }
  if (family === AF.NETLINK && raw.length >= 12) {
    return { family, portId: v.getUint32(4, true), groups: v.getUint32(8, true) };
  }
  return { family, raw: raw.slice() };
}

/**
 * Read a sun_path as the kernel stores it: an abstract name (leading 0) is
 * taken whole and shown with its leading "\0"; a path is cut at its first NUL.
 */
export function unixName(path: Uint8Array): { abstract: boolean; name: string } {
  if (path.length === 0) return { abstract: false, name: "" };
  if (path[0] === 0) return { abstract: true, name: latin1OrUtf8(path) };
  const nul = path.indexOf(0);
  return { abstract: false, name: utf8d.decode(nul < 0 ? path : path.subarray(0, nul)) };
}

/** Abstract names are arbitrary bytes; decode as UTF-8 when that is lossless. */
function latin1OrUtf8(b: Uint8Array): string {
  const s = utf8d.decode(b);
  return s.includes("\uFFFD") ? String.fromCharCode(...b) : s;
}

function describeSockaddr(raw: Uint8Array): string {
  const a = decodeSockaddr(raw);
  if ("name" in a) return `{AF_UNIX, ${JSON.stringify(a.name)}}`;
  if ("port" in a) return `{${showFamily(a.family)}, ${a.addr}:${a.port}}`;
  if ("portId" in a) return `{AF_NETLINK, pid ${a.portId}, groups ${hex(a.groups)}}`;
  return `{${showFamily(a.family)}, ${raw.length} bytes}`;
}

const utf8 = new TextEncoder();
const utf8d = new TextDecoder();

/** "a.b.c.d" → 4 bytes in network order. */
export function parseIpv4(s: string): Uint8Array {
  const parts = s.split(".");
  const out = new Uint8Array(4);
  if (parts.length !== 4) throw new Error(`bad IPv4 address ${JSON.stringify(s)}`);
  parts.forEach((p, i) => {
    const n = Number(p);
    if (!/^\d{1,3}$/.test(p) || n > 255) throw new Error(`bad IPv4 address ${JSON.stringify(s)}`);
    out[i] = n;
  });
  return out;
}

/** 4 network-order bytes → "a.b.c.d". */
export function formatIpv4(b: Uint8Array): string {
  return `${b[0]}.${b[1]}.${b[2]}.${b[3]}`;
}

/** An IPv6 address in text form (with "::" and an optional dotted IPv4 tail) → 16 bytes. */
export function parseIpv6(s: string): Uint8Array {
  const bad = (): never => {
    throw new Error(`bad IPv6 address ${JSON.stringify(s)}`);
  };
  const out = new Uint8Array(16);
  const halves = s.split("::");
  if (halves.length > 2) bad();
  const groups = (part: string): number[] => {
    if (part === "") return [];
    const words: number[] = [];
    const fields = part.split(":");
    fields.forEach((f, i) => {
      if (i === fields.length - 1 && f.includes(".")) {
        const v4 = parseIpv4(f);
        words.push((v4[0]! << 8) | v4[1]!, (v4[2]! << 8) | v4[3]!);
      } else {
        if (!/^[0-9a-fA-F]{1,4}$/.test(f)) bad();
        words.push(Number.parseInt(f, 16));
      }
    });
    return words;
  };
  const head = groups(halves[0] ?? "");
  const tail = halves.length === 2 ? groups(halves[1] ?? "") : [];
  if (halves.length === 1 ? head.length !== 8 : head.length + tail.length > 7) bad();
  const words = [...head, ...new Array<number>(8 - head.length - tail.length).fill(0), ...tail];
  words.forEach((w, i) => {
    out[2 * i] = w >> 8;
    out[2 * i + 1] = w & 0xff;
  });
  return out;
}

/**
 * 16 network-order bytes → RFC 5952 text: lower case, the longest run of two
 * or more zero groups (the first on a tie) as "::", IPv4-mapped addresses
 * with a dotted tail.
 */
export function formatIpv6(b: Uint8Array): string {
  const w = Array.from({ length: 8 }, (_, i) => (b[2 * i]! << 8) | b[2 * i + 1]!);
  if (w.slice(0, 5).every((x) => x === 0) && w[5] === 0xffff) return `::ffff:${formatIpv4(b.subarray(12, 16))}`;
  let bestAt = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (w[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && w[j] === 0) j++;
    if (j - i > bestLen) {
      bestAt = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hexs = w.map((x) => x.toString(16));
  if (bestAt < 0) return hexs.join(":");
  return `${hexs.slice(0, bestAt).join(":")}::${hexs.slice(bestAt + bestLen).join(":")}`;
}

// ---------------------------------------------------------------- socket options

/** getsockopt(2) for an int-valued option. */
export function getsockoptInt(fd: number, level: number, opt: number): number {
  const val = new Int32Array(1);
  const len = new Uint32Array([4]);
  syscall("getsockopt", SOCK_SYS.getsockopt, [fd, level, opt, addressOf(val), addressOf(len)], [String(fd), ...showOpt(level, opt)]);
  return val[0] ?? 0;
}

/** getsockopt(2) into a `size`-byte buffer; returns the bytes the kernel wrote (a copy). */
export function getsockoptBytes(fd: number, level: number, opt: number, size: number): Uint8Array {
  const buf = new Uint8Array(Math.max(size, 1));
  const len = new Uint32Array([size]);
  syscall("getsockopt", SOCK_SYS.getsockopt, [fd, level, opt, addressOf(buf), addressOf(len)], [String(fd), ...showOpt(level, opt), String(size)]);
  return buf.slice(0, Math.min(len[0] ?? 0, size));
}

/** setsockopt(2) with an int value. */
export function setsockoptInt(fd: number, level: number, opt: number, value: number): void {
  const val = new Int32Array([value]);
  syscall("setsockopt", SOCK_SYS.setsockopt, [fd, level, opt, addressOf(val), 4], [String(fd), ...showOpt(level, opt), String(value)]);
}

/** setsockopt(2) with raw bytes (an empty array passes a zero length). */
export function setsockoptBytes(fd: number, level: number, opt: number, value: Uint8Array): void {
  const buf = value.length > 0 ? value : new Uint8Array(1);
  syscall("setsockopt", SOCK_SYS.setsockopt, [fd, level, opt, addressOf(buf), value.length], [String(fd), ...showOpt(level, opt), `${value.length} bytes`]);
}

/** struct timeval as SO_RCVTIMEO / SO_SNDTIMEO carry it (two i64 on x86_64); {0,0} means no timeout. */
export interface Timeval {
  sec: number;
  usec: number;
}
export const TIMEVAL_SIZE = 16;

export function getsockoptTimeval(fd: number, opt: typeof SO.RCVTIMEO | typeof SO.SNDTIMEO): Timeval {
  const b = getsockoptBytes(fd, SOL.SOCKET, opt, TIMEVAL_SIZE);
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  return { sec: Number(v.getBigInt64(0, true)), usec: Number(v.getBigInt64(8, true)) };
}

export function setsockoptTimeval(fd: number, opt: typeof SO.RCVTIMEO | typeof SO.SNDTIMEO, tv: Timeval): void {
  const b = new Uint8Array(TIMEVAL_SIZE);
  const v = new DataView(b.buffer);
  v.setBigInt64(0, BigInt(tv.sec), true);
  v.setBigInt64(8, BigInt(tv.usec), true);
  setsockoptBytes(fd, SOL.SOCKET, opt, b);
}

/** struct linger: l_onoff, l_linger (seconds), two ints. */
export interface Linger {
  onoff: number;
  linger: number;
}

export function getsockoptLinger(fd: number): Linger {
  const b = getsockoptBytes(fd, SOL.SOCKET, SO.LINGER, 8);
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  return { onoff: v.getInt32(0, true), linger: v.getInt32(4, true) };
}

export function setsockoptLinger(fd: number, l: Linger): void {
  setsockoptBytes(fd, SOL.SOCKET, SO.LINGER, new Uint8Array(new Int32Array([l.onoff, l.linger]).buffer));
}

/** SO_BINDTODEVICE as a name ("" when the socket is not bound to a device). */
export function getBoundDevice(fd: number): string {
  const b = getsockoptBytes(fd, SOL.SOCKET, SO.BINDTODEVICE, 16);
  const nul = b.indexOf(0);
  return utf8d.decode(nul < 0 ? b : b.subarray(0, nul));
}

// ---------------------------------------------------------------- sending and receiving

/** sendto(2); `addr` is a raw sockaddr or null. Returns the bytes sent. */
export function sendto(fd: number, data: Uint8Array, flags = 0, addr: Uint8Array | null = null): number {
  const buf = data.length > 0 ? data : new Uint8Array(1);
  return Number(syscall("sendto", SOCK_SYS.sendto, [fd, addressOf(buf), data.length, flags, addr ? addressOf(addr) : 0, addr?.length ?? 0], [String(fd), `${data.length} bytes`, hex(flags)]));
}

/** recvfrom(2) into `buf` without asking for the sender's address. Returns the byte count. */
export function recvfrom(fd: number, buf: Uint8Array, flags = 0, len = buf.length): number {
  return Number(syscall("recvfrom", SOCK_SYS.recvfrom, [fd, addressOf(buf), len, flags, 0, 0], [String(fd), String(len), hex(flags)]));
}

/**
 * struct msghdr on x86_64: msg_name@0, msg_namelen@8 (u32), msg_iov@16,
 * msg_iovlen@24, msg_control@32, msg_controllen@40, msg_flags@48 (int); 56 bytes.
 */
export const MSGHDR_SIZE = 56;
export const MSGHDR_OFF = { name: 0, namelen: 8, iov: 16, iovlen: 24, control: 32, controllen: 40, flags: 48 } as const;

/** struct cmsghdr: cmsg_len (u64, header included)@0, cmsg_level@8, cmsg_type@12, data@16. */
export const CMSGHDR_SIZE = 16;

/** CMSG_ALIGN: control messages are padded to 8 bytes on x86_64. */
export function cmsgAlign(n: number): number {
  return (n + 7) & ~7;
}

/** CMSG_SPACE: bytes one control message with `dataLen` data bytes takes in a buffer. */
export function cmsgSpace(dataLen: number): number {
  return CMSGHDR_SIZE + cmsgAlign(dataLen);
}

function encodeMsghdr(iov: BigUint64Array, name: Uint8Array | null, control: Uint8Array | null): Uint8Array {
  const hdr = new Uint8Array(MSGHDR_SIZE);
  const v = new DataView(hdr.buffer);
  const o = MSGHDR_OFF;
  if (name) {
    v.setBigUint64(o.name, BigInt(addressOf(name)), true);
    v.setUint32(o.namelen, name.length, true);
  }
  v.setBigUint64(o.iov, BigInt(addressOf(iov)), true);
  v.setBigUint64(o.iovlen, 1n, true);
  if (control && control.length > 0) {
    v.setBigUint64(o.control, BigInt(addressOf(control)), true);
    v.setBigUint64(o.controllen, BigInt(control.length), true);
  }
  return hdr;
}

/** One control message: level and type, and a copy of its data bytes. */
export interface Cmsg {
  level: number;
  type: number;
  data: Uint8Array;
}

/** Build a control buffer from messages (for sendmsg). */
export function encodeCmsgs(msgs: readonly Cmsg[]): Uint8Array {
  const out = new Uint8Array(msgs.reduce((n, m) => n + cmsgSpace(m.data.length), 0));
  const v = new DataView(out.buffer);
  let off = 0;
  for (const m of msgs) {
    v.setBigUint64(off, BigInt(CMSGHDR_SIZE + m.data.length), true);
    v.setInt32(off + 8, m.level, true);
    v.setInt32(off + 12, m.type, true);
    out.set(m.data, off + CMSGHDR_SIZE);
    off += cmsgSpace(m.data.length);
  }
  return out;
}

/** Split a received control buffer into its messages. */
export function decodeCmsgs(control: Uint8Array): Cmsg[] {
  const v = new DataView(control.buffer, control.byteOffset, control.byteLength);
  const out: Cmsg[] = [];
  let off = 0;
  while (off + CMSGHDR_SIZE <= control.length) {
    const len = Number(v.getBigUint64(off, true));
    if (len < CMSGHDR_SIZE || off + len > control.length) break;
    out.push({ level: v.getInt32(off + 8, true), type: v.getInt32(off + 12, true), data: control.slice(off + CMSGHDR_SIZE, off + len) });
    off += cmsgAlign(len);
  }
  return out;
}

/** The SCM_RIGHTS control message passing `fds`. */
export function rightsCmsg(fds: readonly number[]): Cmsg {
  return { level: SOL.SOCKET, type: SCM.RIGHTS, data: new Uint8Array(new Int32Array(fds).buffer) };
}

/** File descriptors installed in this process by SCM_RIGHTS messages (the caller owns and closes them). */
export function cmsgFds(msgs: readonly Cmsg[]): number[] {
  const fds: number[] = [];
  for (const m of msgs) {
    if (m.level !== SOL.SOCKET || m.type !== SCM.RIGHTS) continue;
    const v = new DataView(m.data.buffer, m.data.byteOffset, m.data.byteLength);
    for (let i = 0; i + 4 <= m.data.length; i += 4) fds.push(v.getInt32(i, true));
  }
  return fds;
}

/** struct ucred of an SCM_CREDENTIALS message (pid, uid, gid as the receiver's namespaces see them). */
export interface Ucred {
  pid: number;
  uid: number;
  gid: number;
}

export function cmsgCredentials(msgs: readonly Cmsg[]): Ucred | null {
  const m = msgs.find((c) => c.level === SOL.SOCKET && c.type === SCM.CREDENTIALS && c.data.length >= 12);
  if (!m) return null;
  const v = new DataView(m.data.buffer, m.data.byteOffset, m.data.byteLength);
  return { pid: v.getInt32(0, true), uid: v.getUint32(4, true), gid: v.getUint32(8, true) };
}

/** sendmsg(2) of one data buffer with optional control messages and destination. Returns the bytes sent. */
export function sendmsg(fd: number, data: Uint8Array, opts: { control?: readonly Cmsg[]; addr?: Uint8Array; flags?: number } = {}): number {
  const buf = data.length > 0 ? data : new Uint8Array(1);
  const iov = new BigUint64Array([BigInt(addressOf(buf)), BigInt(data.length)]);
  const control = opts.control && opts.control.length > 0 ? encodeCmsgs(opts.control) : null;
  const hdr = encodeMsghdr(iov, opts.addr ?? null, control);
  const flags = opts.flags ?? 0;
  const n = syscall("sendmsg", SOCK_SYS.sendmsg, [fd, addressOf(hdr), flags], [String(fd), `${data.length} bytes`, `${opts.control?.length ?? 0} cmsg`, hex(flags)]);
  return Number(n);
}

/** What one recvmsg returned. */
export interface Received {
  /** Bytes placed in the data buffer. With MSG_TRUNC in the call's flags, the datagram's real length instead. */
  bytes: number;
  /** msg_flags as the kernel set them (MSG.TRUNC, MSG.CTRUNC, MSG.EOR, MSG.OOB ...). */
  flags: number;
  /** The control bytes the kernel wrote: a view into the caller's control buffer, empty when none. */
  control: Uint8Array;
}

/**
 * recvmsg(2) into `buf` with `flags`; control messages land in `control`
 * (pass an empty array to take none). Throws SysError on failure (EAGAIN with
 * MSG_DONTWAIT and nothing queued).
 *
 * SCM_RIGHTS files are installed into this process as soon as the kernel hands
 * them over, MSG_PEEK included; MSG_CMSG_CLOEXEC is always added so they never
 * leak across exec, and the caller must close what cmsgFds() reports. With a
 * control buffer too small for them the kernel drops them and sets MSG_CTRUNC.
 */
export function recvmsg(fd: number, buf: Uint8Array, flags: number, control: Uint8Array = new Uint8Array(0)): Received {
  const data = buf.length > 0 ? buf : new Uint8Array(1);
  const iov = new BigUint64Array([BigInt(addressOf(data)), BigInt(buf.length)]);
  const hdr = encodeMsghdr(iov, null, control);
  const all = flags | MSG.CMSG_CLOEXEC;
  const n = syscall("recvmsg", SOCK_SYS.recvmsg, [fd, addressOf(hdr), all], [String(fd), String(buf.length), hex(all)]);
  const v = new DataView(hdr.buffer);
  const clen = control.length > 0 ? Number(v.getBigUint64(MSGHDR_OFF.controllen, true)) : 0;
  // The kernel echoes MSG_CMSG_CLOEXEC back into msg_flags; it says nothing about the message.
  const outFlags = v.getInt32(MSGHDR_OFF.flags, true) & ~MSG.CMSG_CLOEXEC;
  return { bytes: Number(n), flags: outFlags, control: control.subarray(0, Math.min(clen, control.length)) };
}

/**
 * Look at what is queued on a socket without taking it: recvmsg with
 * MSG_PEEK|MSG_DONTWAIT (plus `extraFlags`, e.g. MSG.TRUNC to learn a
 * datagram's full length). Returns null when nothing is queued (EAGAIN).
 *
 * Where the peek starts is the socket's SO_PEEK_OFF (off, -1, by default: from
 * the head). When it is on, each peek starts at that offset and moves it on
 * by the bytes peeked, so repeated calls step through the queue.
 */
export function recvPeek(fd: number, buf: Uint8Array, control: Uint8Array = new Uint8Array(0), extraFlags = 0): Received | null {
  try {
    return recvmsg(fd, buf, MSG.PEEK | MSG.DONTWAIT | extraFlags, control);
  } catch (e) {
    if (e instanceof SysError && e.errno === Errno.EAGAIN) return null;
    throw e;
  }
}
