/**
 * Unix sockets, rebuilt in an order that lets each step succeed:
 *
 *  1. sockets: a socketpair for two sockets of the image set connected to
 *     each other (a socketpair, or both ends of an accepted connection),
 *     socket(2) for the rest;
 *  2. names: listeners first, so that a connection accepted from a listener,
 *     which shares its listener's name, is not bound a second time; a stale
 *     socket file left at a path is replaced (never anything else), a name
 *     whose file was deleted is bound and unlinked again, and the file gets
 *     its recorded owner and mode;
 *  3. listen(2) with the recorded backlog;
 *  4. queued data (sk-queues.img), sent into each receiving socket in order
 *     by its socketpair end, or, for a named datagram socket, by the socket
 *     connected to it or a throw-away one: stream bytes at once, datagrams
 *     one by one;
 *  5. datagram sockets connected to a named socket that is not connected back;
 *  6. shutdown state, then options, owner and status flags.
 *
 * A socket that sent to one outside the dumped tree is connected to it by
 * name: the entry of such a peer (CRIU marks it USK_EXTERN) is only a name;
 * without one, the peer is looked up among the sockets of this host.
 */
import { FdTypes, type FileEntry } from "../../image/gen/fdinfo_pb";
import { SkPacketEntrySchema, type SkPacketEntry } from "../../image/gen/sk-packet_pb";
import { SkShutdown } from "../../image/gen/sk-opts_pb";
import type { UnixSkEntry } from "../../image/gen/sk-unix_pb";
import { unixSocket } from "../../proc/sock-diag";
import { chmodPath, chownPath } from "../../sys/calls";
import { Errno, SysError } from "../../sys/errno";
import { statOrNull } from "../../sys/file";
import { unlinkat } from "../../sys/libc";
import { AT, S_IF, S_IFMT } from "../../sys/nr";
import { AF, bind, connect, getsockoptInt, listen, MSG, sendto, setsockoptInt, SHUT, shutdown, SO, SOCK, sockaddrUn, socket, socketpair, SOL, TCP_STATE, unixName } from "../../sys/socket";
import { restoreFileState } from "./file-state";
import { FileRestoreError, forFile, part, type FileRestoreContext, type FileRestoreKind } from "./kind";
import { fileTypeName } from "./regular";
import { restoreSkOpts } from "./sk-opts";

/** UnixSkEntry.uflags: an entry describing a peer outside the dumped tree (only its name counts). */
const USK_EXTERN = 1;
const TYPE_NAMES: Record<number, string> = { [SOCK.STREAM]: "stream", [SOCK.DGRAM]: "datagram", [SOCK.SEQPACKET]: "seqpacket" };

interface SkName {
  /** struct sockaddr_un for bind and connect. */
  addr: Uint8Array;
  abstract: boolean;
  /** A path, or "@" and the abstract name. */
  text: string;
}

interface Sk {
  entry: FileEntry;
  usk: UnixSkEntry;
  name: SkName | null;
  what: string;
  fd: number;
  /** The other end of this socket's socketpair. */
  pair?: Sk;
}

function nameOf(usk: UnixSkEntry): SkName | null {
  if (usk.name.length === 0) return null;
  const { abstract, name } = unixName(usk.name);
  if (!abstract && name === "") return null;
  if (abstract) return { addr: sockaddrUn(usk.name), abstract, text: `@${name.slice(1)}` };
  return { addr: sockaddrUn(name), abstract, text: name };
}

function describe(usk: UnixSkEntry, name: SkName | null): string {
  return `unix ${TYPE_NAMES[usk.type] ?? `type ${usk.type}`} socket${name ? ` ${name.text}` : ""}`;
}

/**
 * Bind `sk` to its name. `livePaths`: the paths that sockets of the set
 * which still had their file at dump time own; a stale socket file there is
 * theirs to replace, even while a socket whose file was removed binds first.
 */
function bindName(sk: Sk, name: SkName, livePaths: ReadonlySet<string>): void {
  const { usk } = sk;
  if (!name.abstract) {
    if (!name.text.startsWith("/")) throw new Error(`bound to the relative path ${name.text}, which the images do not say where to resolve`);
    const there = statOrNull(name.text, AT.SYMLINK_NOFOLLOW);
    const ours = there !== null && (there.mode & S_IFMT) === S_IF.SOCK && livePaths.has(name.text);
    if (there && usk.deleted && !ours) {
      throw new Error(`its socket file ${name.text} was removed before the dump, and that path is now taken by a ${fileTypeName(there.mode)}`);
    }
    if (there && (there.mode & S_IFMT) !== S_IF.SOCK) throw new Error(`${name.text} is a ${fileTypeName(there.mode)}, not a stale socket file ckpt may replace`);
    if (there) unlinkat(AT.FDCWD, name.text);
  }
  bind(sk.fd, name.addr);
  if (name.abstract) return;
  if (usk.filePerms) {
    chownPath(name.text, usk.filePerms.uid, usk.filePerms.gid);
    chmodPath(name.text, usk.filePerms.mode & 0o7777);
  }
  if (usk.deleted) unlinkat(AT.FDCWD, name.text);
}

/** The address of the socket `sk` is connected to, from the image set or, for one outside it, from this host's sockets. */
function peerAddress(sk: Sk, byIno: ReadonlyMap<number, Sk>, externs: ReadonlyMap<number, SkName>): Uint8Array {
  const ino = sk.usk.peer;
  const inImage = byIno.get(ino);
  if (inImage) {
    if (!inImage.name) throw new Error(`connected to unix socket ${ino}, which has no name to connect to again`);
    return inImage.name.addr;
  }
  const ext = externs.get(ino);
  if (ext) return ext.addr;
  const live = unixSocket(ino);
  if (live?.nameBytes && live.type === sk.usk.type) return sockaddrUn(live.abstract ? live.nameBytes : (live.name ?? ""));
  throw new Error(`connected to unix socket ${ino} outside the dumped tree, which this host no longer has and the images do not name`);
}

/**
 * Connect each datagram socket to its one-way peer. A socket connected
 * elsewhere refuses others (EPERM), so a socket others connect to connects
 * only after them.
 */
function connectOneWay(socks: readonly Sk[], byIno: ReadonlyMap<number, Sk>, externs: ReadonlyMap<number, SkName>): void {
  const pending = socks.filter((s) => s.usk.peer !== 0 && !s.pair && s.usk.state !== TCP_STATE.LISTEN);
  while (pending.length > 0) {
    const free = pending.findIndex((s) => !pending.some((o) => o.usk.peer === s.usk.ino));
    const [sk] = pending.splice(Math.max(free, 0), 1) as [Sk];
    forFile(sk.entry.id, sk.what, () => {
      if (sk.usk.type !== SOCK.DGRAM) throw new Error(`connected to unix socket ${sk.usk.peer}, which is not connected back and not in the image set`);
      connect(sk.fd, peerAddress(sk, byIno, externs));
    });
  }
}

/** send all of `data` from `fd` (to `addr` when given) without blocking; a full send buffer is grown. */
function sendQueued(fd: number, data: Uint8Array, stream: boolean, addr: Uint8Array | null): void {
  let off = 0;
  let grown = 0;
  do {
    try {
      const n = sendto(fd, off === 0 ? data : data.subarray(off), MSG.DONTWAIT | MSG.NOSIGNAL, addr);
      off = stream ? off + n : data.length;
    } catch (e) {
      // The sender's buffer is charged until the receiver reads: grow it
      // (the recorded size is set back afterwards). Twenty doublings is
      // more than any queue the receiver could have held.
      if (!(e instanceof SysError && e.errno === Errno.EAGAIN) || grown++ >= 20) throw e;
      setsockoptInt(fd, SOL.SOCKET, SO.SNDBUFFORCE, getsockoptInt(fd, SOL.SOCKET, SO.SNDBUF));
    }
  } while (off < data.length);
}

/**
 * Put back the packets queued on each socket, in order, before any datagram
 * socket connects one way (a connected socket takes data from its peer
 * only). A socketpair end gets them from its other end; a named datagram
 * socket from the socket connected to it, sending by address so that the
 * receiver sees the same sender, or else from a throw-away socket.
 */
function refillQueues(socks: readonly Sk[], ctx: FileRestoreContext): void {
  const byId = new Map(socks.map((s) => [s.entry.id, s]));
  const queues = new Map<number, Uint8Array[]>();
  for (const raw of ctx.images.raw("sk-queues.img", true)) {
    const p = raw.message as SkPacketEntry;
    if (p.$typeName !== SkPacketEntrySchema.typeName) throw new Error(`${ctx.images.path("sk-queues.img")}: an entry of type ${p.$typeName}`);
    if (p.scm.length > 0) throw new FileRestoreError(p.idFor, "socket queue", "a queued packet carries control messages, which ckpt cannot restore yet");
    queues.set(p.idFor, [...(queues.get(p.idFor) ?? []), raw.payload ?? new Uint8Array(0)]);
  }
  for (const [id, packets] of queues) {
    const rcv = byId.get(id);
    // ckpt dumps the queues of unix sockets only.
    if (!rcv) throw new FileRestoreError(id, "socket queue", ctx.entry(id) ? "sk-queues.img holds data for it, but it is not a unix socket" : "sk-queues.img holds data for a file files.img does not have");
    forFile(id, rcv.what, () => {
      const stream = rcv.usk.type === SOCK.STREAM;
      if (rcv.pair) {
        for (const p of packets) sendQueued(rcv.pair.fd, p, stream, null);
        return;
      }
      if (rcv.usk.type !== SOCK.DGRAM || !rcv.name) throw new Error("data is queued on it, but no socket of the image set can send it there again");
      const sender = socks.find((s) => s.usk.peer === rcv.usk.ino && !s.pair);
      const from = sender?.fd ?? ctx.own(socket(AF.UNIX, SOCK.DGRAM | SOCK.CLOEXEC));
      try {
        for (const p of packets) sendQueued(from, p, false, rcv.name.addr);
      } finally {
        if (!sender) ctx.closeNow(from);
      }
    });
  }
}

const SHUT_OF: Partial<Record<SkShutdown, number>> = { [SkShutdown.READ]: SHUT.RD, [SkShutdown.WRITE]: SHUT.WR, [SkShutdown.BOTH]: SHUT.RDWR };

export const unixSocketKind: FileRestoreKind = {
  name: "unix socket",
  type: FdTypes.UNIXSK,
  open(entries, ctx) {
    const externs = new Map<number, SkName>();
    const socks: Sk[] = [];
    const byIno = new Map<number, Sk>();
    for (const entry of entries) {
      const usk = part(entry, entry.usk, "usk");
      const name = nameOf(usk);
      if (usk.uflags & USK_EXTERN) {
        if (name) externs.set(usk.ino, name);
        continue;
      }
      const sk: Sk = { entry, usk, name, what: describe(usk, name), fd: -1 };
      if (byIno.has(usk.ino)) throw new Error(`file ids ${byIno.get(usk.ino)!.entry.id} and ${entry.id} are both unix socket ${usk.ino}`);
      if (!(usk.type in TYPE_NAMES)) throw new Error(`file id ${entry.id}: a unix socket of type ${usk.type}, which ckpt cannot restore`);
      byIno.set(usk.ino, sk);
      socks.push(sk);
    }

    for (const sk of socks) {
      if (sk.fd >= 0) continue;
      forFile(sk.entry.id, sk.what, () => {
        const peer = byIno.get(sk.usk.peer);
        const type = sk.usk.type | SOCK.CLOEXEC;
        if (peer && peer !== sk && peer.fd < 0 && peer.usk.peer === sk.usk.ino && peer.usk.type === sk.usk.type && sk.usk.state !== TCP_STATE.LISTEN) {
          const [a, b] = socketpair(AF.UNIX, type).map((fd) => ctx.own(fd)) as [number, number];
          [sk.fd, peer.fd, sk.pair, peer.pair] = [a, b, peer, sk];
        } else {
          sk.fd = ctx.own(socket(AF.UNIX, type));
        }
      });
    }

    // Listeners, then sockets of no pair, then pair ends: the first to take a
    // name keeps it. Within each, sockets whose file was removed go first:
    // bound and unlinked, they leave the path to one that kept it (two
    // listeners of one path, the older one's file replaced by the newer's).
    const rank = (s: Sk): number => (s.usk.state === TCP_STATE.LISTEN ? 0 : s.pair ? 4 : 2) + (s.usk.deleted ? 0 : 1);
    const livePaths = new Set(socks.filter((s) => s.name && !s.name.abstract && !s.usk.deleted).map((s) => s.name!.text));
    // Names bound by a socket that keeps its file, and names of listeners:
    // a connection accepted from a listener shares its name and gets none of its own.
    const taken = new Set<string>();
    const listened = new Set<string>();
    for (const sk of [...socks].sort((a, b) => rank(a) - rank(b))) {
      if (!sk.name) continue;
      const path = sk.name.text;
      const listener = sk.usk.state === TCP_STATE.LISTEN;
      if (taken.has(path) || (!listener && listened.has(path))) continue;
      if (listener) listened.add(path);
      if (!sk.usk.deleted) taken.add(path);
      forFile(sk.entry.id, sk.what, () => bindName(sk, sk.name!, livePaths));
    }
    for (const sk of socks) {
      if (sk.usk.state === TCP_STATE.LISTEN) forFile(sk.entry.id, sk.what, () => listen(sk.fd, sk.usk.backlog));
    }
    refillQueues(socks, ctx);
    connectOneWay(socks, byIno, externs);
    for (const sk of socks) {
      forFile(sk.entry.id, sk.what, () => {
        const how = SHUT_OF[sk.usk.shutdown];
        if (how !== undefined) shutdown(sk.fd, how);
        restoreSkOpts(sk.fd, part(sk.entry, sk.usk.opts, "usk.opts"));
        restoreFileState(sk.fd, { flags: sk.usk.flags, fown: sk.usk.fown }, ctx);
        ctx.keep(sk.entry.id, sk.fd);
      });
    }
  },
};
