/**
 * sock_diag (NETLINK_SOCK_DIAG): the kernel's own table of sockets, read once
 * per dump and then looked up by inode.
 *
 * What the kernel reports is the network namespace of the netlink socket, i.e.
 * of the process calling this (enter the target's netns first when it differs).
 * Sockets without an inode (unaccepted AF_UNIX embryos, TCP request and
 * TIME_WAIT sockets) belong to no file descriptor and are left out of the maps.
 */
import { Errno, SysError } from "../sys/errno";
import { forEachAttr, NLM_F, nlRequest, withNetlink, type NlMessage } from "../sys/netlink";
import { AF, formatIpv4, formatIpv6, IPPROTO, NETLINK, unixName, type InetFamily } from "../sys/socket";

/** nlmsg_type of every sock_diag request and reply. */
export const SOCK_DIAG_BY_FAMILY = 20;

/** A state mask with every state: bit (1 << state) selects sockets in that state. */
export const ALL_STATES = 0xffffffff;

/** The mask selecting exactly `states` (TCP_STATE values). */
export function stateMask(...states: number[]): number {
  return states.reduce((m, s) => (m | (1 << s)) >>> 0, 0);
}

// ---------------------------------------------------------------- AF_UNIX layouts (linux/unix_diag.h)

/** struct unix_diag_req, 24 bytes. */
export const UNIX_DIAG_REQ_SIZE = 24;
export const UNIX_DIAG_REQ_OFF = { family: 0, protocol: 1, states: 4, ino: 8, show: 12, cookie: 16 } as const;
/** struct unix_diag_msg, 16 bytes; attributes follow. */
export const UNIX_DIAG_MSG_SIZE = 16;
export const UNIX_DIAG_MSG_OFF = { family: 0, type: 1, state: 2, ino: 4, cookie: 8 } as const;

/** udiag_show bits: which attributes to send. */
export const UDIAG_SHOW = { NAME: 0x1, VFS: 0x2, PEER: 0x4, ICONS: 0x8, RQLEN: 0x10, MEMINFO: 0x20, UID: 0x40 } as const;

/** Attribute types of a unix_diag reply. */
export const UNIX_DIAG = { NAME: 0, VFS: 1, PEER: 2, ICONS: 3, RQLEN: 4, MEMINFO: 5, SHUTDOWN: 6, UID: 7 } as const;

const UNIX_SHOW = UDIAG_SHOW.NAME | UDIAG_SHOW.VFS | UDIAG_SHOW.PEER | UDIAG_SHOW.ICONS | UDIAG_SHOW.RQLEN | UDIAG_SHOW.UID;

/** One AF_UNIX socket as sock_diag describes it. */
export interface UnixDiag {
  /** Inode of the socket (what /proc/PID/fd/N shows as socket:[ino]). */
  ino: number;
  /** SOCK.STREAM, SOCK.DGRAM or SOCK.SEQPACKET. */
  type: number;
  /** TCP_STATE value: LISTEN, ESTABLISHED (connected, socketpair) or CLOSE (unconnected). */
  state: number;
  /** The kernel's socket cookie (unique per boot, never reused). */
  cookie: bigint;
  /**
   * sun_path of the bound address exactly as the kernel keeps it (a copy), or
   * null when unbound: a path includes its terminating NUL, an abstract name
   * starts with a 0 byte and has no terminator (autobind names are "\0" and 5
   * hex digits).
   */
  nameBytes: Uint8Array | null;
  /** The same name as text: a path without its NUL, an abstract name with its leading "\0". */
  name: string | null;
  /** Whether the name is abstract (no file in the filesystem). */
  abstract: boolean;
  /**
   * The socket file a path-bound socket created at bind time: its inode, and
   * the device of its filesystem in the kernel's internal dev_t (major << 20 |
   * minor, see encodeKernelDev), not the stat(2) encoding.
   */
  vfs: { ino: number; dev: number } | null;
  /**
   * Inode of the peer: the other end of a socketpair or accepted connection,
   * the socket a datagram socket is connect()ed to. A stream client whose
   * connection is still waiting in the listener's queue reports its embryo,
   * which has no inode yet: 0. Null when there is no peer.
   */
  peer: number | null;
  /**
   * Listeners only: for each connection waiting to be accepted, in queue
   * order, the inode of the *connecting* socket (not of the embryo that
   * accept() will return). Null for other states.
   */
  icons: number[] | null;
  /**
   * Receive side. A listener: connections waiting to be accepted. A stream or
   * seqpacket socket: unread bytes. A datagram socket: the length of the first
   * queued datagram only (0 when empty).
   */
  rqlen: number;
  /**
   * Send side. A listener: its backlog limit (listen()'s argument, capped by
   * net.core.somaxconn). Others: bytes of send buffer still charged to this
   * socket (sk_wmem_alloc: skb truesize of data the peer has not read yet).
   */
  wqlen: number;
  /** sk_shutdown: SHUTDOWN.RCV | SHUTDOWN.SEND bits. A stream shutdown mirrors onto the peer. */
  shutdown: number;
  /** Owner uid as seen from this user namespace, null if the kernel did not say. */
  uid: number | null;
}

function u32(b: Uint8Array, off: number): number {
  return new DataView(b.buffer, b.byteOffset, b.byteLength).getUint32(off, true);
}

function cookieOf(b: Uint8Array, off: number): bigint {
  return BigInt(u32(b, off)) | (BigInt(u32(b, off + 4)) << 32n);
}

function encodeUnixReq(states: number, show: number, ino = 0, cookie: [number, number] = [0, 0]): Uint8Array {
  const out = new Uint8Array(UNIX_DIAG_REQ_SIZE);
  const v = new DataView(out.buffer);
  const o = UNIX_DIAG_REQ_OFF;
  v.setUint8(o.family, AF.UNIX);
  v.setUint32(o.states, states >>> 0, true);
  v.setUint32(o.ino, ino, true);
  v.setUint32(o.show, show, true);
  v.setUint32(o.cookie, cookie[0], true);
  v.setUint32(o.cookie + 4, cookie[1], true);
  return out;
}

/** Decode one unix_diag reply message (copies everything it keeps). */
export function decodeUnixDiag(p: Uint8Array): UnixDiag {
  if (p.length < UNIX_DIAG_MSG_SIZE) throw new Error(`unix_diag_msg of ${p.length} bytes`);
  const o = UNIX_DIAG_MSG_OFF;
  const d: UnixDiag = {
    ino: u32(p, o.ino),
    type: p[o.type] ?? 0,
    state: p[o.state] ?? 0,
    cookie: cookieOf(p, o.cookie),
    nameBytes: null,
    name: null,
    abstract: false,
    vfs: null,
    peer: null,
    icons: null,
    rqlen: 0,
    wqlen: 0,
    shutdown: 0,
    uid: null,
  };
  forEachAttr(p, UNIX_DIAG_MSG_SIZE, (type, a) => {
    switch (type) {
      case UNIX_DIAG.NAME: {
        d.nameBytes = a.slice();
        const n = unixName(a);
        d.name = n.name;
        d.abstract = n.abstract;
        break;
      }
      case UNIX_DIAG.VFS:
        if (a.length >= 8) d.vfs = { ino: u32(a, 0), dev: u32(a, 4) };
        break;
      case UNIX_DIAG.PEER:
        if (a.length >= 4) d.peer = u32(a, 0);
        break;
      case UNIX_DIAG.ICONS:
        d.icons = Array.from({ length: a.length >> 2 }, (_, i) => u32(a, 4 * i));
        break;
      case UNIX_DIAG.RQLEN:
        if (a.length >= 8) {
          d.rqlen = u32(a, 0);
          d.wqlen = u32(a, 4);
        }
        break;
      case UNIX_DIAG.SHUTDOWN:
        d.shutdown = a[0] ?? 0;
        break;
      case UNIX_DIAG.UID:
        if (a.length >= 4) d.uid = u32(a, 0);
        break;
    }
  });
  return d;
}

function unixMessages(m: NlMessage, out: (d: UnixDiag) => void): void {
  if (m.type !== SOCK_DIAG_BY_FAMILY) return;
  const d = decodeUnixDiag(m.payload);
  if (d.ino !== 0) out(d);
}

/**
 * Every AF_UNIX socket of this network namespace, by inode: one dump request
 * (a few multipart reads). Call once per checkpoint and look inodes up in the
 * map, or through SocketTable.
 */
export function unixSockets(states = ALL_STATES): Map<number, UnixDiag> {
  const map = new Map<number, UnixDiag>();
  withNetlink(NETLINK.SOCK_DIAG, (fd) =>
    nlDump(fd, encodeUnixReq(states, UNIX_SHOW), ["AF_UNIX", "dump"], (m) => unixMessages(m, (d) => map.set(d.ino, d))),
  );
  return map;
}

/**
 * One AF_UNIX socket by inode, with a request for just that socket; undefined
 * when no socket of this namespace has that inode. For many lookups, dump
 * once with unixSockets() instead.
 */
export function unixSocket(ino: number): UnixDiag | undefined {
  let found: UnixDiag | undefined;
  try {
    withNetlink(NETLINK.SOCK_DIAG, (fd) =>
      nlGet(fd, encodeUnixReq(ALL_STATES, UNIX_SHOW, ino, [0xffffffff, 0xffffffff]), ["AF_UNIX", `ino ${ino}`], (m) =>
        unixMessages(m, (d) => {
          found = d;
        }),
      ),
    );
  } catch (e) {
    if (e instanceof SysError && e.errno === Errno.ENOENT) return undefined;
    throw e;
  }
  return found;
}

// ---------------------------------------------------------------- AF_INET / AF_INET6 layouts (linux/inet_diag.h)

/** struct inet_diag_sockid, 48 bytes: ports and addresses in network order. */
export const INET_DIAG_SOCKID_SIZE = 48;
export const INET_DIAG_SOCKID_OFF = { sport: 0, dport: 2, src: 4, dst: 20, if: 36, cookie: 40 } as const;
/** struct inet_diag_req_v2, 56 bytes. */
export const INET_DIAG_REQ_V2_SIZE = 56;
export const INET_DIAG_REQ_V2_OFF = { family: 0, protocol: 1, ext: 2, states: 4, id: 8 } as const;
/** struct inet_diag_msg, 72 bytes; attributes follow. */
export const INET_DIAG_MSG_SIZE = 72;
export const INET_DIAG_MSG_OFF = { family: 0, state: 1, timer: 2, retrans: 3, id: 4, expires: 52, rqueue: 56, wqueue: 60, uid: 64, inode: 68 } as const;

/** Attribute types of an inet_diag reply (and, minus one, the idiag_ext bit that asks for the first eight). */
export const INET_DIAG = {
  MEMINFO: 1, INFO: 2, VEGASINFO: 3, CONG: 4, TOS: 5, TCLASS: 6, SKMEMINFO: 7, SHUTDOWN: 8,
  DCTCPINFO: 9, PROTOCOL: 10, SKV6ONLY: 11, LOCALS: 12, PEERS: 13, PAD: 14, MARK: 15,
  BBRINFO: 16, CLASS_ID: 17, MD5SIG: 18, ULP_INFO: 19, SK_BPF_STORAGES: 20, CGROUP_ID: 21, SOCKOPT: 22,
} as const;

/** idiag_ext bit for one of the first eight INET_DIAG attributes. */
export function inetDiagExt(attr: number): number {
  return 1 << (attr - 1);
}

/** One TCP (or other inet) socket as sock_diag describes it. */
export interface InetDiag {
  /** Inode of the socket (socket:[ino] in /proc/PID/fd). */
  ino: number;
  family: InetFamily;
  protocol: number;
  /** TCP_STATE value. */
  state: number;
  /** The kernel's socket cookie. */
  cookie: bigint;
  /** Local address as text ("127.0.0.1", "::1", "::ffff:10.0.0.1"). */
  src: string;
  /** Remote address as text ("0.0.0.0" / "::" when not connected). */
  dst: string;
  /**
   * The four idiag_src words as CRIU's images store them: each __be32 read as a
   * little-endian u32, i.e. the address bytes in memory order (127.0.0.1 is
   * 0x0100007f). AF_INET uses only the first word (CRIU keeps just that one).
   */
  srcWords: [number, number, number, number];
  dstWords: [number, number, number, number];
  /** Local and remote ports, host order. */
  srcPort: number;
  dstPort: number;
  /** Interface the socket is bound to (SO_BINDTODEVICE), 0 for none. */
  ifindex: number;
  /**
   * For a listener: connections completed and waiting for accept(). Others:
   * bytes received and not read yet.
   */
  rqueue: number;
  /**
   * For a listener: the backlog limit (listen()'s argument capped by
   * somaxconn). Others: bytes sent and not yet acknowledged (plus unsent).
   */
  wqueue: number;
  uid: number;
  /** Pending timer (0 none, 1 retransmit, 2 keepalive, 3 TIME_WAIT, 4 zero-window probe), its expiry in ms, retransmits. */
  timer: number;
  expires: number;
  retrans: number;
  /** sk_shutdown: SHUTDOWN.RCV | SHUTDOWN.SEND, null if not reported. */
  shutdown: number | null;
  /** AF_INET6 only: IPV6_V6ONLY; null for AF_INET. */
  v6only: boolean | null;
  /** IP_TOS (AF_INET) or IPV6_TCLASS (AF_INET6) when reported. */
  tos: number | null;
  tclass: number | null;
  /** SO_MARK (reported to CAP_NET_ADMIN only). */
  mark: number | null;
}

function encodeInetReq(family: number, protocol: number, states: number, ext: number): Uint8Array {
  const out = new Uint8Array(INET_DIAG_REQ_V2_SIZE);
  const v = new DataView(out.buffer);
  const o = INET_DIAG_REQ_V2_OFF;
  v.setUint8(o.family, family);
  v.setUint8(o.protocol, protocol);
  v.setUint8(o.ext, ext);
  v.setUint32(o.states, states >>> 0, true);
  return out;
}

function words(b: Uint8Array, off: number): [number, number, number, number] {
  return [u32(b, off), u32(b, off + 4), u32(b, off + 8), u32(b, off + 12)];
}

/** Decode one inet_diag reply message. */
export function decodeInetDiag(p: Uint8Array, protocol: number): InetDiag {
  if (p.length < INET_DIAG_MSG_SIZE) throw new Error(`inet_diag_msg of ${p.length} bytes`);
  const v = new DataView(p.buffer, p.byteOffset, p.byteLength);
  const o = INET_DIAG_MSG_OFF;
  const id = o.id;
  const s = INET_DIAG_SOCKID_OFF;
  const family = p[o.family] === AF.INET6 ? AF.INET6 : AF.INET;
  const addr = (off: number): string => (family === AF.INET ? formatIpv4(p.subarray(off, off + 4)) : formatIpv6(p.subarray(off, off + 16)));
  const d: InetDiag = {
    ino: v.getUint32(o.inode, true),
    family,
    protocol,
    state: p[o.state] ?? 0,
    cookie: cookieOf(p, id + s.cookie),
    src: addr(id + s.src),
    dst: addr(id + s.dst),
    srcWords: words(p, id + s.src),
    dstWords: words(p, id + s.dst),
    srcPort: v.getUint16(id + s.sport, false),
    dstPort: v.getUint16(id + s.dport, false),
    ifindex: v.getUint32(id + s.if, true),
    rqueue: v.getUint32(o.rqueue, true),
    wqueue: v.getUint32(o.wqueue, true),
    uid: v.getUint32(o.uid, true),
    timer: p[o.timer] ?? 0,
    expires: v.getUint32(o.expires, true),
    retrans: p[o.retrans] ?? 0,
    shutdown: null,
    v6only: null,
    tos: null,
    tclass: null,
    mark: null,
  };
  forEachAttr(p, INET_DIAG_MSG_SIZE, (type, a) => {
    switch (type) {
      case INET_DIAG.SHUTDOWN:
        d.shutdown = a[0] ?? 0;
        break;
      case INET_DIAG.SKV6ONLY:
        d.v6only = (a[0] ?? 0) !== 0;
        break;
      case INET_DIAG.TOS:
        d.tos = a[0] ?? 0;
        break;
      case INET_DIAG.TCLASS:
        d.tclass = a[0] ?? 0;
        break;
      case INET_DIAG.MARK:
        if (a.length >= 4) d.mark = u32(a, 0);
        break;
      case INET_DIAG.PROTOCOL:
        d.protocol = a[0] ?? d.protocol;
        break;
    }
  });
  return d;
}

/**
 * Every socket of `family` and `protocol` (IPPROTO.TCP by default; UDP works
 * where udp_diag is available) in one of `states` (a mask of 1 << TCP_STATE),
 * by inode. IPv6 sockets come only from AF_INET6 (a dual-stack listener on ::
 * is not in the AF_INET dump).
 */
export function inetSockets(family: InetFamily, protocol: number = IPPROTO.TCP, states = ALL_STATES): Map<number, InetDiag> {
  const ext = inetDiagExt(family === AF.INET ? INET_DIAG.TOS : INET_DIAG.TCLASS);
  const map = new Map<number, InetDiag>();
  const fam = family === AF.INET ? "AF_INET" : "AF_INET6";
  withNetlink(NETLINK.SOCK_DIAG, (fd) =>
    nlDump(fd, encodeInetReq(family, protocol, states, ext), [fam, `proto ${protocol}`, "dump"], (m) => {
      if (m.type !== SOCK_DIAG_BY_FAMILY) return;
      const d = decodeInetDiag(m.payload, protocol);
      if (d.ino !== 0) map.set(d.ino, d);
    }),
  );
  return map;
}

// ---------------------------------------------------------------- requests

function nlDump(fd: number, payload: Uint8Array, args: string[], fn: (m: NlMessage) => void): void {
  nlRequest(fd, SOCK_DIAG_BY_FAMILY, NLM_F.DUMP, payload, { call: "sock_diag", args: ["SOCK_DIAG_BY_FAMILY", ...args] }, fn);
}

function nlGet(fd: number, payload: Uint8Array, args: string[], fn: (m: NlMessage) => void): void {
  nlRequest(fd, SOCK_DIAG_BY_FAMILY, 0, payload, { call: "sock_diag", args: ["SOCK_DIAG_BY_FAMILY", ...args] }, fn);
}

// ---------------------------------------------------------------- lookup

/** What SocketTable.find returns: the record and which table it came from. */
export type SocketRecord = { kind: "unix"; diag: UnixDiag } | { kind: "tcp"; diag: InetDiag };

/**
 * Socket lookups for one dump. Each table (AF_UNIX, TCP over IPv4, TCP over
 * IPv6) is read with one dump the first time it is needed and then answers
 * every later lookup from memory; `refresh()` forgets them.
 */
export class SocketTable {
  private unixMap: Map<number, UnixDiag> | null = null;
  private tcp4: Map<number, InetDiag> | null = null;
  private tcp6: Map<number, InetDiag> | null = null;
  private udp4: Map<number, InetDiag> | null = null;
  private udp6: Map<number, InetDiag> | null = null;

  /** The UDP socket of `family` with inode `ino`, if listed (an unbound one is not). */
  udp(family: InetFamily, ino: number): InetDiag | undefined {
    if (family === AF.INET) {
      this.udp4 ??= inetSockets(AF.INET, IPPROTO.UDP);
      return this.udp4.get(ino);
    }
    this.udp6 ??= inetSockets(AF.INET6, IPPROTO.UDP);
    return this.udp6.get(ino);
  }

  /** The AF_UNIX socket with inode `ino`, if any. */
  unix(ino: number): UnixDiag | undefined {
    this.unixMap ??= unixSockets();
    return this.unixMap.get(ino);
  }

  /** The TCP socket of `family` with inode `ino`, if any. */
  tcp(family: InetFamily, ino: number): InetDiag | undefined {
    if (family === AF.INET) {
      this.tcp4 ??= inetSockets(AF.INET);
      return this.tcp4.get(ino);
    }
    this.tcp6 ??= inetSockets(AF.INET6);
    return this.tcp6.get(ino);
  }

  /**
   * The socket with inode `ino` in whichever table holds it (AF_UNIX first,
   * then TCP/IPv4, then TCP/IPv6). Pass `family` (SO_DOMAIN of the fd) to read
   * only the table that can hold it.
   */
  find(ino: number, family?: number): SocketRecord | undefined {
    if (family === undefined || family === AF.UNIX) {
      const u = this.unix(ino);
      if (u) return { kind: "unix", diag: u };
    }
    for (const f of [AF.INET, AF.INET6] as const) {
      if (family !== undefined && family !== f) continue;
      const t = this.tcp(f, ino);
      if (t) return { kind: "tcp", diag: t };
    }
    return undefined;
  }

  refresh(): void {
    this.unixMap = this.tcp4 = this.tcp6 = this.udp4 = this.udp6 = null;
  }
}
