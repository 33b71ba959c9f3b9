/**
 * Unix sockets: socketpairs, listening, connected and datagram sockets, with
 * the data queued in them.
 *
 * What a socket is (type, state, name, peer, queue length) comes from
 * sock_diag, read once for the whole dump. Queued data is read with MSG_PEEK
 * through ckpt's own fd on the socket, so nothing is consumed; datagrams are
 * stepped through with SO_PEEK_OFF, which is put back as it was. Each packet
 * becomes an sk-queues entry for the socket that would receive it.
 *
 * Refused, by name: a listener with connections not yet accepted, data with
 * fds in flight (SCM_RIGHTS), and a socket connected to one outside the tree.
 */
import { create } from "@bufbuild/protobuf";
import { FdTypes, FileEntrySchema } from "../../image/gen/fdinfo_pb";
import { SkPacketEntrySchema } from "../../image/gen/sk-packet_pb";
import { FilePermsEntrySchema, UnixSkEntrySchema } from "../../image/gen/sk-unix_pb";
import type { UnixDiag } from "../../proc/sock-diag";
import { close, statx } from "../../sys/libc";
import { AT, O } from "../../sys/nr";
import { cmsgFds, cmsgSpace, decodeCmsgs, getsockoptInt, MSG, recvPeek, setsockoptInt, SO, SOCK, SOL, TCP_STATE } from "../../sys/socket";
import { readFown, type OpenFd } from "./fd-access";
import { UnsupportedFileError } from "./file-table";
import type { FdDumpContext, FdKind } from "./kind";
import { readSkOpts, shutdownField } from "./sk-opts";

/** The inode in a "socket:[INO]" link. */
export function socketInode(link: string): number | undefined {
  const m = /^socket:\[(\d+)\]$/.exec(link);
  return m ? Number(m[1]) : undefined;
}

/** Where each dumped unix socket was found, by inode, for the peer check. */
type Dumped = Map<number, { pid: number; fd: number; diag: UnixDiag }>;

const MAX_DGRAM = 1 << 17;
const control = new Uint8Array(cmsgSpace(4 * 253));

/** Queued packets of a socket, peeked. Throws naming the socket when fds are in flight. */
function peekQueue(local: number, d: UnixDiag, where: string): Uint8Array[] {
  const stream = d.type === SOCK.STREAM;
  const oldOff = getsockoptInt(local, SOL.SOCKET, SO.PEEK_OFF);
  const packets: Uint8Array[] = [];
  const buf = new Uint8Array(stream ? Math.max(d.rqlen, 1) : MAX_DGRAM);
  // A stream peek reads across writes in one go from the head (peek offset
  // off); datagrams come one per peek, so step with the offset.
  setsockoptInt(local, SOL.SOCKET, SO.PEEK_OFF, stream ? -1 : 0);
  try {
    for (;;) {
      const r = recvPeek(local, buf, control);
      if (!r) break;
      const fds = cmsgFds(decodeCmsgs(r.control));
      if (fds.length > 0 || r.flags & MSG.CTRUNC) {
        for (const f of fds) close(f);
        throw new Error(`${where}: its queue carries file descriptors in flight (SCM_RIGHTS), which ckpt cannot dump yet`);
      }
      if (r.flags & MSG.TRUNC) throw new Error(`${where}: a queued datagram is larger than ${MAX_DGRAM} bytes`);
      if (r.bytes === 0 && stream) break;
      if (r.bytes === 0) {
        // The peek offset cannot step over an empty packet: the same one
        // would come back forever. On a seqpacket socket whose peer is gone
        // it is the end of the queue once every queued byte was seen (the
        // kernel's count, rqlen, is all the queue's bytes there); anything
        // else is a zero-length packet ckpt cannot save the rest behind.
        const seen = packets.reduce((n, p) => n + p.length, 0);
        if (d.type === SOCK.SEQPACKET && seen >= d.rqlen) break;
        throw new Error(`${where}: its queue holds a zero-length packet, which ckpt cannot dump yet`);
      }
      packets.push(buf.slice(0, r.bytes));
      if (stream) break;
    }
  } finally {
    setsockoptInt(local, SOL.SOCKET, SO.PEEK_OFF, oldOff);
  }
  return packets;
}

/** A path-bound socket's file: its permissions, or that it is gone. */
function boundFile(d: UnixDiag): { filePerms?: ReturnType<typeof create<typeof FilePermsEntrySchema>>; deleted?: boolean } {
  if (!d.name || d.abstract || !d.vfs) return {};
  try {
    const st = statx(AT.FDCWD, d.name, AT.SYMLINK_NOFOLLOW);
    if (Number(st.ino) === d.vfs.ino) return { filePerms: create(FilePermsEntrySchema, { mode: st.mode, uid: st.uid, gid: st.gid }) };
  } catch {
    // the path is gone or leads elsewhere: the socket file was removed
  }
  return { deleted: true };
}

export const unixSocketKind: FdKind = {
  name: "unix socket",
  type: FdTypes.UNIXSK,
  matches(f, ctx) {
    const ino = socketInode(f.link);
    return ino !== undefined && ctx.sockets.unix(ino) !== undefined;
  },
  dump(f: OpenFd, id: number, ctx: FdDumpContext) {
    const ino = socketInode(f.link)!;
    const d = ctx.sockets.unix(ino)!;
    const where = `process ${f.pid} fd ${f.fd} (unix socket ${ino})`;
    if (d.state === TCP_STATE.LISTEN && (d.icons?.length ?? 0) > 0) {
      throw new UnsupportedFileError(f.pid, f.fd, `a listening unix socket with ${d.icons!.length} connection(s) not yet accepted`);
    }
    const local = ctx.access.local(f.fd);
    const dumped = (ctx.shared.get("unix") as Dumped | undefined) ?? new Map();
    ctx.shared.set("unix", dumped);
    dumped.set(ino, { pid: f.pid, fd: f.fd, diag: d });
    // A datagram socket's rqlen is the length of its first datagram only,
    // which is 0 for an empty one with more behind it: peek those always.
    if (d.state !== TCP_STATE.LISTEN && (d.rqlen > 0 || d.type === SOCK.DGRAM)) {
      for (const p of peekQueue(local, d, where)) {
        ctx.table.image("sk-queues.img", "SK_QUEUES").add(SkPacketEntrySchema, create(SkPacketEntrySchema, { idFor: id, length: p.length }), p);
      }
    }
    ctx.table.add(create(FileEntrySchema, {
      type: FdTypes.UNIXSK, id,
      usk: create(UnixSkEntrySchema, {
        id, ino, type: d.type, state: d.state, flags: f.info.flags & ~O.CLOEXEC, uflags: 0,
        backlog: d.state === TCP_STATE.LISTEN ? d.wqlen : 0, peer: d.peer ?? 0,
        fown: readFown(local), opts: readSkOpts(local), name: d.nameBytes ?? new Uint8Array(0),
        ...shutdownField(d.shutdown), ...boundFile(d),
      }),
    }));
  },
  finish(ctx) {
    const dumped = ctx.shared.get("unix") as Dumped | undefined;
    for (const [ino, s] of dumped ?? []) {
      const peer = s.diag.peer;
      if (peer === null || dumped!.has(peer)) continue;
      if (peer === 0) throw new UnsupportedFileError(s.pid, s.fd, `a unix socket (${ino}) whose connection has not been accepted yet`);
      // A datagram socket may send to a named socket outside the tree (e.g. /dev/log); restore reconnects by name.
      if (s.diag.type === SOCK.DGRAM && ctx.sockets.unix(peer)?.name) continue;
      throw new UnsupportedFileError(s.pid, s.fd, `a unix socket (${ino}) connected to socket ${peer} outside the dumped tree`);
    }
  },
};
