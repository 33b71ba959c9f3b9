/**
 * Netlink sockets: a new socket of the recorded protocol, bound to its old
 * port id (or, when another socket holds that id now, to one the kernel
 * picks, as CRIU does: port ids are the kernel's to hand out and few
 * programs depend on theirs), joined to every multicast group it had, and
 * connected to its default destination when it had one.
 */
import { FdTypes } from "../../image/gen/fdinfo_pb";
import { Errno, SysError } from "../../sys/errno";
import { AF, bind, connect, setsockoptInt, SOCK, sockaddrNl, socket, SOL } from "../../sys/socket";
import { restoreSkOpts } from "./sk-opts";
import { standaloneKind } from "./standalone";

/** setsockopt(SOL_NETLINK): join one multicast group (any number, past the first 32 too). */
const NETLINK_ADD_MEMBERSHIP = 1;

export const netlinkSocketKind = standaloneKind({
  name: "netlink socket",
  type: FdTypes.NETLINKSK,
  part: (e) => e.nlsk,
  field: "nlsk",
  make(nl, ctx) {
    const fd = ctx.own(socket(AF.NETLINK, SOCK.RAW | SOCK.CLOEXEC, nl.protocol));
    if (nl.portid !== 0) {
      try {
        bind(fd, sockaddrNl(nl.portid));
      } catch (e) {
        if (!(e instanceof SysError && e.errno === Errno.EADDRINUSE)) throw e;
        bind(fd, sockaddrNl(0));
      }
    }
    nl.groups.forEach((word, i) => {
      for (let bit = 0; bit < 32; bit++) if ((word >>> bit) & 1) setsockoptInt(fd, SOL.NETLINK, NETLINK_ADD_MEMBERSHIP, 32 * i + bit + 1);
    });
    if (nl.state === 1) connect(fd, sockaddrNl(nl.dstPortid, nl.dstGroup === 0 ? 0 : (1 << (nl.dstGroup - 1)) >>> 0));
    if (nl.opts) restoreSkOpts(fd, nl.opts);
    return fd;
  },
});
