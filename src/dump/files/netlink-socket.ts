/**
 * Netlink sockets (route, uevent, and every other protocol): protocol, the
 * bound port id, multicast memberships and a default destination, as CRIU
 * keeps them (FileEntry.nlsk). All of it is asked of the socket itself:
 * getsockname for the port id, NETLINK_LIST_MEMBERSHIPS for every group
 * (getsockname shows only the first 32), getpeername for the destination.
 * Unread messages are not saved: a socket with some is refused, as CRIU
 * refuses it (a kernel reply or event would be lost).
 */
import { create } from "@bufbuild/protobuf";
import { FdTypes, FileEntrySchema } from "../../image/gen/fdinfo_pb";
import { NetlinkSkEntrySchema } from "../../image/gen/sk-netlink_pb";
import { O } from "../../sys/nr";
import { AF, decodeSockaddr, getpeername, getsockname, getsockoptBytes, getsockoptInt, recvPeek, SO, SOL } from "../../sys/socket";
import { readFown } from "./fd-access";
import { UnsupportedFileError } from "./file-table";
import type { FdKind } from "./kind";
import { readSkOpts } from "./sk-opts";
import { socketInode } from "./unix-socket";

/** getsockopt(SOL_NETLINK): the groups joined, as a bit mask in u32 words. */
const NETLINK_LIST_MEMBERSHIPS = 9;
/** Words asked for: 1,024 groups; no protocol has more. */
const MEMBERSHIP_WORDS = 32;

/** The portid and group of a netlink sockaddr; zeros for an unconnected socket's peer. */
function netlinkAddress(raw: Uint8Array): { portId: number; groups: number } {
  const a = decodeSockaddr(raw);
  return "portId" in a ? { portId: a.portId, groups: a.groups } : { portId: 0, groups: 0 };
}

/** The multicast groups joined, as u32 mask words without trailing zero words. */
function memberships(fd: number): number[] {
  const raw = getsockoptBytes(fd, SOL.NETLINK, NETLINK_LIST_MEMBERSHIPS, 4 * MEMBERSHIP_WORDS);
  const words = Array.from(new Uint32Array(raw.buffer, raw.byteOffset, Math.floor(raw.length / 4)));
  while (words.length > 0 && words[words.length - 1] === 0) words.pop();
  return words;
}

const peekBuf = new Uint8Array(1);

export const netlinkSocketKind: FdKind = {
  name: "netlink socket",
  type: FdTypes.NETLINKSK,
  matches(f, ctx) {
    if (socketInode(f.link) === undefined) return false;
    return getsockoptInt(ctx.access.local(f.fd), SOL.SOCKET, SO.DOMAIN) === AF.NETLINK;
  },
  dump(f, id, ctx) {
    const ino = socketInode(f.link)!;
    const local = ctx.access.local(f.fd);
    if (recvPeek(local, peekBuf) !== null) throw new UnsupportedFileError(f.pid, f.fd, `a netlink socket with unread messages (${f.link})`);
    const self = netlinkAddress(getsockname(local));
    const peer = netlinkAddress(getpeername(local));
    // The kernel's "connected" state is a default destination: a port id or a group.
    const connected = peer.portId !== 0 || peer.groups !== 0;
    ctx.table.add(create(FileEntrySchema, {
      type: FdTypes.NETLINKSK, id,
      nlsk: create(NetlinkSkEntrySchema, {
        id, ino, protocol: getsockoptInt(local, SOL.SOCKET, SO.PROTOCOL),
        state: connected ? 1 : 0,
        flags: f.info.flags & ~O.CLOEXEC,
        portid: self.portId, groups: memberships(local),
        dstPortid: peer.portId,
        // getpeername gives the group as a mask; the image keeps its number.
        dstGroup: peer.groups === 0 ? 0 : 32 - Math.clz32(peer.groups),
        fown: readFown(local), opts: readSkOpts(local),
      }),
    }));
  },
};
