/**
 * Listening TCP sockets (IPv4 and IPv6): a new socket bound to the recorded
 * address and port, listening with the recorded backlog. SO_REUSEADDR is on
 * while binding — connections of the dumped listener may still linger in
 * TIME_WAIT on that port — and then set as recorded. Other TCP states need
 * the kernel's repair mode, which ckpt does not use yet; the dump refuses
 * them, and so does restore, by name.
 */
import { isFieldSet } from "@bufbuild/protobuf";
import { FdTypes } from "../../image/gen/fdinfo_pb";
import { InetSkEntrySchema, type InetSkEntry } from "../../image/gen/sk-inet_pb";
import { SkOptsEntrySchema } from "../../image/gen/sk-opts_pb";
import { AF, bind, formatIpv4, formatIpv6, IPPROTO, IPV6_OPT, listen, setsockoptInt, SO, SOCK, sockaddrIn, sockaddrIn6, socket, SOL, TCP_STATE } from "../../sys/socket";
import { Errno, SysError } from "../../sys/errno";
import { restoreFileState } from "./file-state";
import { forFile, part, type FileRestoreKind } from "./kind";
import { restoreSkOpts } from "./sk-opts";

const STATE_NAMES: Record<number, string> = Object.fromEntries(Object.entries(TCP_STATE).map(([k, v]) => [v, k]));

/** The address words as the image keeps them: the address's bytes in network order, read as little-endian u32s. */
function addressBytes(words: readonly number[], count: number): Uint8Array {
  if (words.length !== count) throw new Error(`the image holds ${words.length} address words, expected ${count}`);
  const out = new Uint8Array(4 * count);
  const v = new DataView(out.buffer);
  words.forEach((w, i) => v.setUint32(4 * i, w, true));
  return out;
}

function sockaddrOf(isk: InetSkEntry): { addr: Uint8Array; text: string } {
  if (isk.family === AF.INET) {
    const ip = formatIpv4(addressBytes(isk.srcAddr, 1));
    return { addr: sockaddrIn(ip, isk.srcPort), text: `${ip}:${isk.srcPort}` };
  }
  const ip = formatIpv6(addressBytes(isk.srcAddr, 4));
  return { addr: sockaddrIn6(ip, isk.srcPort), text: `[${ip}]:${isk.srcPort}` };
}

export const inetSocketKind: FileRestoreKind = {
  name: "inet socket",
  type: FdTypes.INETSK,
  check(e) {
    const isk = part(e, e.isk, "isk");
    forFile(e.id, "inet socket", () => {
      if ((isk.family !== AF.INET && isk.family !== AF.INET6) || isk.type !== SOCK.STREAM || isk.proto !== IPPROTO.TCP) {
        throw new Error(`a socket of family ${isk.family}, type ${isk.type}, protocol ${isk.proto}; ckpt restores only TCP sockets`);
      }
      if (isk.state !== TCP_STATE.LISTEN) throw new Error(`a TCP socket in state ${STATE_NAMES[isk.state] ?? isk.state}; ckpt restores only listening TCP sockets`);
    });
  },
  open(entries, ctx) {
    for (const e of entries) {
      const isk = part(e, e.isk, "isk");
      const { addr, text } = sockaddrOf(isk);
      forFile(e.id, `TCP listener ${text}`, () => {
        const fd = ctx.own(socket(isk.family, SOCK.STREAM | SOCK.CLOEXEC, IPPROTO.TCP));
        if (isk.family === AF.INET6 && isFieldSet(isk, InetSkEntrySchema.field.v6only)) setsockoptInt(fd, IPPROTO.IPV6, IPV6_OPT.V6ONLY, isk.v6only ? 1 : 0);
        setsockoptInt(fd, SOL.SOCKET, SO.REUSEADDR, 1);
        const opts = part(e, isk.opts, "isk.opts");
        try {
          bind(fd, addr);
        } catch (err) {
          if (!(err instanceof SysError && err.errno === Errno.EADDRINUSE)) throw err;
          // TIME_WAIT connections block a new bind unless the socket they
          // came from had SO_REUSEADDR too: the dumped program could not
          // have restarted on that port yet either.
          const why = opts.reuseaddr
            ? "another socket is bound to the port"
            : "another socket is bound to the port, or connections of the dumped listener linger in TIME_WAIT (it had no SO_REUSEADDR, so they block the port for up to 60 s)";
          throw new Error(`${err.message}: ${why}`);
        }
        listen(fd, isk.backlog);
        // Off unless recorded on (restoreSkOpts sets it when the entry has it).
        if (!isFieldSet(opts, SkOptsEntrySchema.field.reuseaddr)) setsockoptInt(fd, SOL.SOCKET, SO.REUSEADDR, 0);
        restoreSkOpts(fd, opts);
        restoreFileState(fd, { flags: isk.flags, fown: isk.fown });
        ctx.keep(e.id, fd);
      });
    }
  },
};
