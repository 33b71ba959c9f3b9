/**
 * Inet sockets whose state a restore can recreate with plain calls:
 *   - TCP that listens (address, port, backlog, options: bind and listen);
 *   - TCP that is neither listening nor connected (a new socket, perhaps
 *     bound: sock_diag does not list those, getsockname tells the port);
 *   - UDP, bound or not, connected or not (bind and connect again).
 * Established TCP is saved with the kernel's repair mode under
 * --tcp-established (tcp-stream.ts) and refused by name without it; TCP in
 * any other connected state is refused, as is any other inet socket (raw,
 * ICMP, UDP-Lite). As in CRIU, a UDP socket's
 * queued datagrams are not saved (a restore looks like a loss on the
 * network), and one with a corked datagram waiting to go out is refused.
 */
import { create } from "@bufbuild/protobuf";
import { FdTypes, FileEntrySchema } from "../../image/gen/fdinfo_pb";
import { InetSkEntrySchema, IpOptsEntrySchema, TcpOptsEntrySchema, type TcpOptsEntry } from "../../image/gen/sk-inet_pb";
import type { InetDiag } from "../../proc/sock-diag";
import { Errno, SysError } from "../../sys/errno";
import { O } from "../../sys/nr";
import { AF, getpeername, getsockname, getsockoptInt, IP_OPT, IPPROTO, IPV6_OPT, SO, SOCK, SOL, TCP_OPT, TCP_STATE, type InetFamily } from "../../sys/socket";
import { readFown } from "./fd-access";
import { UnsupportedFileError } from "./file-table";
import type { FdKind } from "./kind";
import { readSkOpts, shutdownField } from "./sk-opts";
import { socketInode } from "./unix-socket";
import { dumpTcpStream, endBytes, tcpStreamImageName } from "./tcp-stream";

const STATE_NAMES: Record<number, string> = Object.fromEntries(Object.entries(TCP_STATE).map(([k, v]) => [v, k]));

/** An address and port as the image keeps them: the address bytes in network order read as little-endian u32s. */
interface Endpoint {
  words: number[];
  port: number;
}

/** Decode getsockname/getpeername bytes of `family` into image words and a port. */
function endpoint(family: InetFamily, raw: Uint8Array): Endpoint {
  const v = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  const port = v.getUint16(2, false);
  if (family === AF.INET) return { words: [v.getUint32(4, true)], port };
  return { words: [8, 12, 16, 20].map((off) => v.getUint32(off, true)), port };
}

/** The peer of an unconnected socket: the family's any-address, port 0. */
function noPeer(family: InetFamily): Endpoint {
  return { words: family === AF.INET ? [0] : [0, 0, 0, 0], port: 0 };
}

function peerOf(family: InetFamily, fd: number): Endpoint | null {
  try {
    return endpoint(family, getpeername(fd));
  } catch (e) {
    if (e instanceof SysError && e.errno === Errno.ENOTCONN) return null;
    throw e;
  }
}

/** IP_FREEBIND, or IPV6_FREEBIND for an AF_INET6 socket (either one allows a free bind there). */
/** A TCP socket's own options; as CRIU, only those not 0 are written. */
function tcpOpts(fd: number): TcpOptsEntry {
  const get = (opt: number): number => getsockoptInt(fd, IPPROTO.TCP, opt);
  const [cork, nodelay, keepcnt, keepidle, keepintvl] = [TCP_OPT.CORK, TCP_OPT.NODELAY, TCP_OPT.KEEPCNT, TCP_OPT.KEEPIDLE, TCP_OPT.KEEPINTVL].map(get) as [number, number, number, number, number];
  return create(TcpOptsEntrySchema, {
    ...(cork ? { cork: true } : {}), ...(nodelay ? { nodelay: true } : {}),
    ...(keepcnt ? { keepcnt } : {}), ...(keepidle ? { keepidle } : {}), ...(keepintvl ? { keepintvl } : {}),
  });
}

function freebind(fd: number, family: InetFamily): boolean {
  if (getsockoptInt(fd, IPPROTO.IP, IP_OPT.FREEBIND) !== 0) return true;
  return family === AF.INET6 && getsockoptInt(fd, IPPROTO.IPV6, IPV6_OPT.FREEBIND) !== 0;
}

export const inetSocketKind: FdKind = {
  name: "inet socket",
  type: FdTypes.INETSK,
  matches(f) {
    // Whatever is left among sockets once unix sockets were taken: ask the socket itself.
    return socketInode(f.link) !== undefined;
  },
  dump(f, id, ctx) {
    const ino = socketInode(f.link)!;
    const local = ctx.access.local(f.fd);
    const family = getsockoptInt(local, SOL.SOCKET, SO.DOMAIN);
    const type = getsockoptInt(local, SOL.SOCKET, SO.TYPE);
    const proto = getsockoptInt(local, SOL.SOCKET, SO.PROTOCOL);
    const tcp = type === SOCK.STREAM && proto === IPPROTO.TCP;
    const udp = type === SOCK.DGRAM && proto === IPPROTO.UDP;
    if ((family !== AF.INET && family !== AF.INET6) || !(tcp || udp)) {
      throw new UnsupportedFileError(f.pid, f.fd, `a socket of family ${family}, type ${type}, protocol ${proto} (${f.link})`);
    }
    const src = endpoint(family, getsockname(local));
    const peer = peerOf(family, local);
    let state: number;
    let backlog = 0;
    let d: InetDiag | undefined;
    if (tcp) {
      d = ctx.sockets.tcp(family, ino);
      // Not listed: never listened nor connected (sock_diag walks only those tables).
      state = d?.state ?? TCP_STATE.CLOSE;
      if (!d && peer) throw new UnsupportedFileError(f.pid, f.fd, `a connected TCP socket sock_diag does not list (${f.link}; another network namespace?)`);
      const where = `(${d?.src}:${d?.srcPort} → ${d?.dst}:${d?.dstPort})`;
      if (state === TCP_STATE.ESTABLISHED && peer) {
        const lock = ctx.opts.tcpLock;
        if (!lock) throw new UnsupportedFileError(f.pid, f.fd, `an established TCP connection ${where}; dump with --tcp-established to save it (and restore with --tcp-established)`);
        ctx.table.images.set(tcpStreamImageName(ino), dumpTcpStream(local, family, { addr: endBytes(family, src.words), port: src.port }, { addr: endBytes(family, peer.words), port: peer.port }, lock));
      } else if (state !== TCP_STATE.LISTEN && state !== TCP_STATE.CLOSE) {
        throw new UnsupportedFileError(f.pid, f.fd, `a TCP socket in state ${STATE_NAMES[state] ?? state} ${where}; only listening, unconnected and (with --tcp-established) established TCP sockets can be dumped`);
      }
      if (state === TCP_STATE.LISTEN) backlog = d!.wqueue;
    } else {
      d = ctx.sockets.udp(family, ino);
      if (d && d.wqueue !== 0) throw new UnsupportedFileError(f.pid, f.fd, `a UDP socket with ${d.wqueue} bytes corked, waiting to be sent (${f.link})`);
      // CRIU's convention for datagram sockets: ESTABLISHED once connected.
      state = peer ? TCP_STATE.ESTABLISHED : TCP_STATE.CLOSE;
    }
    const dst = peer ?? noPeer(family);
    ctx.table.add(create(FileEntrySchema, {
      type: FdTypes.INETSK, id,
      isk: create(InetSkEntrySchema, {
        id, ino, family, type, proto, state, srcPort: src.port, dstPort: dst.port,
        flags: f.info.flags & ~O.CLOEXEC, backlog,
        // CRIU wants a destination address of the family's length even
        // without a peer (it refuses "Addr len mismatch").
        srcAddr: src.words, dstAddr: dst.words,
        fown: readFown(local), opts: readSkOpts(local),
        // IP(V6)_FREEBIND: a bind to an address the host does not have (yet) must be allowed again at restore.
        ipOpts: create(IpOptsEntrySchema, { freebind: freebind(local, family) }),
        ...(family === AF.INET6 ? { v6only: getsockoptInt(local, IPPROTO.IPV6, IPV6_OPT.V6ONLY) !== 0 } : {}),
        ...shutdownField(d?.shutdown ?? 0),
        ...(proto === IPPROTO.TCP ? { tcpOpts: tcpOpts(local) } : {}),
      }),
    }));
  },
};
