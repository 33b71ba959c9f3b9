/**
 * TCP sockets that listen (IPv4 and IPv6). Their state is an address, a port,
 * a backlog and options, which a restore can recreate by bind and listen.
 * Connected TCP needs the kernel's repair mode and is refused by name, as is
 * any other inet socket (UDP, raw) for now.
 */
import { create } from "@bufbuild/protobuf";
import { FdTypes, FileEntrySchema } from "../../image/gen/fdinfo_pb";
import { InetSkEntrySchema } from "../../image/gen/sk-inet_pb";
import { O } from "../../sys/nr";
import { AF, getsockoptInt, IPPROTO, SO, SOCK, SOL, TCP_STATE } from "../../sys/socket";
import { readFown } from "./fd-access";
import { UnsupportedFileError } from "./file-table";
import type { FdKind } from "./kind";
import { readSkOpts, shutdownField } from "./sk-opts";
import { socketInode } from "./unix-socket";

const STATE_NAMES: Record<number, string> = Object.fromEntries(Object.entries(TCP_STATE).map(([k, v]) => [v, k]));

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
    if ((family !== AF.INET && family !== AF.INET6) || type !== SOCK.STREAM || proto !== IPPROTO.TCP) {
      throw new UnsupportedFileError(f.pid, f.fd, `a socket of family ${family}, type ${type}, protocol ${proto} (${f.link})`);
    }
    const d = ctx.sockets.tcp(family, ino);
    if (!d) throw new UnsupportedFileError(f.pid, f.fd, `a TCP socket sock_diag does not list (${f.link}; another network namespace?)`);
    if (d.state !== TCP_STATE.LISTEN) {
      throw new UnsupportedFileError(f.pid, f.fd, `a TCP socket in state ${STATE_NAMES[d.state] ?? d.state} (${d.src}:${d.srcPort} → ${d.dst}:${d.dstPort}); only listening TCP sockets can be dumped`);
    }
    ctx.table.add(create(FileEntrySchema, {
      type: FdTypes.INETSK, id,
      isk: create(InetSkEntrySchema, {
        id, ino, family, type, proto, state: d.state, srcPort: d.srcPort, dstPort: 0,
        flags: f.info.flags & ~O.CLOEXEC, backlog: d.wqueue,
        // A listener has no peer, but CRIU wants a destination address of the
        // family's length all the same (it refuses "Addr len mismatch").
        srcAddr: family === AF.INET ? [d.srcWords[0]] : [...d.srcWords], dstAddr: family === AF.INET ? [0] : [0, 0, 0, 0],
        fown: readFown(local), opts: readSkOpts(local),
        ...(family === AF.INET6 ? { v6only: d.v6only ?? false } : {}),
        ...shutdownField(d.shutdown ?? 0),
      }),
    }));
  },
};
