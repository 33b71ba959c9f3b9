/**
 * Inet sockets a restore makes with plain calls: listening TCP (bind and
 * listen with the recorded backlog), TCP never connected (perhaps bound),
 * and UDP (bound and connected again as recorded). SO_REUSEADDR is on while
 * binding — connections of the dumped listener may still linger in
 * TIME_WAIT on that port — and then set as recorded. Established TCP comes
 * back through the kernel's repair mode with --tcp-established
 * (tcp-stream.ts) and is refused by name without it.
 */
import { isFieldSet } from "@bufbuild/protobuf";
import { FdTypes } from "../../image/gen/fdinfo_pb";
import { InetSkEntrySchema, type InetSkEntry, type TcpOptsEntry } from "../../image/gen/sk-inet_pb";
import { SkOptsEntrySchema, SkShutdown } from "../../image/gen/sk-opts_pb";
import { AF, bind, connect, formatIpv4, formatIpv6, IP_OPT, IPPROTO, IPV6_OPT, listen, setsockoptInt, SHUT, shutdown, SO, SOCK, sockaddrIn, sockaddrIn6, socket, SOL, TCP_OPT, TCP_STATE, type InetFamily } from "../../sys/socket";
import { Errno, SysError } from "../../sys/errno";
import { restoreFileState } from "./file-state";
import { forFile, part, type FileRestoreKind } from "./kind";
import { restoreSkOpts } from "./sk-opts";
import { readTcpStream, restoreTcpStream } from "./tcp-stream";

const STATE_NAMES: Record<number, string> = Object.fromEntries(Object.entries(TCP_STATE).map(([k, v]) => [v, k]));

/** The address words as the image keeps them: the address's bytes in network order, read as little-endian u32s. */
function addressBytes(words: readonly number[], count: number): Uint8Array {
  if (words.length !== count) throw new Error(`the image holds ${words.length} address words, expected ${count}`);
  const out = new Uint8Array(4 * count);
  const v = new DataView(out.buffer);
  words.forEach((w, i) => v.setUint32(4 * i, w, true));
  return out;
}

function sockaddrOf(family: number, words: readonly number[], port: number): { addr: Uint8Array; text: string } {
  if (family === AF.INET) {
    const ip = formatIpv4(addressBytes(words, 1));
    return { addr: sockaddrIn(ip, port), text: `${ip}:${port}` };
  }
  const ip = formatIpv6(addressBytes(words, 4));
  return { addr: sockaddrIn6(ip, port), text: `[${ip}]:${port}` };
}

const isTcp = (isk: InetSkEntry): boolean => isk.type === SOCK.STREAM && isk.proto === IPPROTO.TCP;
const isUdp = (isk: InetSkEntry): boolean => isk.type === SOCK.DGRAM && isk.proto === IPPROTO.UDP;

/** Whether the socket was bound: a port, or an address other than the any-address. */
function wasBound(isk: InetSkEntry): boolean {
  return isk.srcPort !== 0 || isk.srcAddr.some((w) => w !== 0);
}

export const inetSocketKind: FileRestoreKind = {
  name: "inet socket",
  type: FdTypes.INETSK,
  check(e, ctx) {
    const isk = part(e, e.isk, "isk");
    forFile(e.id, "inet socket", () => {
      if ((isk.family !== AF.INET && isk.family !== AF.INET6) || !(isTcp(isk) || isUdp(isk))) {
        throw new Error(`a socket of family ${isk.family}, type ${isk.type}, protocol ${isk.proto}; ckpt restores only TCP and UDP sockets`);
      }
      if (isTcp(isk) && isk.state === TCP_STATE.ESTABLISHED) {
        if (!ctx.opts.tcp) throw new Error(`an established TCP connection ${sockaddrOf(isk.family, isk.srcAddr, isk.srcPort).text} → ${sockaddrOf(isk.family, isk.dstAddr, isk.dstPort).text}; restore with --tcp-established`);
      } else if (isTcp(isk) && isk.state !== TCP_STATE.LISTEN && isk.state !== TCP_STATE.CLOSE) {
        throw new Error(`a TCP socket in state ${STATE_NAMES[isk.state] ?? isk.state}; ckpt restores only listening, unconnected and established TCP sockets`);
      }
    });
  },
  open(entries, ctx) {
    for (const e of entries) {
      const isk = part(e, e.isk, "isk");
      const { addr, text } = sockaddrOf(isk.family, isk.srcAddr, isk.srcPort);
      const established = isTcp(isk) && isk.state === TCP_STATE.ESTABLISHED;
      const peer = established ? sockaddrOf(isk.family, isk.dstAddr, isk.dstPort) : null;
      const what = isTcp(isk) ? (isk.state === TCP_STATE.LISTEN ? `TCP listener ${text}` : established ? `TCP connection ${text} → ${peer!.text}` : `TCP socket ${text}`) : `UDP socket ${text}`;
      forFile(e.id, what, () => {
        const fd = ctx.own(socket(isk.family, isk.type | SOCK.CLOEXEC, isk.proto));
        if (isk.family === AF.INET6 && isFieldSet(isk, InetSkEntrySchema.field.v6only)) setsockoptInt(fd, IPPROTO.IPV6, IPV6_OPT.V6ONLY, isk.v6only ? 1 : 0);
        const opts = part(e, isk.opts, "isk.opts");
        const stream = established ? readTcpStream(ctx.images, isk) : null;
        if (established) {
          const family = isk.family as InetFamily;
          // No packet of the connection passes until the tree runs.
          ctx.opts.tcp!.lock(family, { addr: addressBytes(isk.srcAddr, family === AF.INET ? 1 : 4), port: isk.srcPort }, { addr: addressBytes(isk.dstAddr, family === AF.INET ? 1 : 4), port: isk.dstPort });
          // Repair mode before the bind: it lets the socket share its port with the listener it came from.
          setsockoptInt(fd, IPPROTO.TCP, TCP_OPT.REPAIR, 1);
        }
        if (wasBound(isk)) {
          // Free bind while binding: the address was the socket's at dump
          // time, but it may be missing here (or came with IP_FREEBIND that
          // was turned off after the bind). Set as recorded afterwards.
          setsockoptInt(fd, IPPROTO.IP, IP_OPT.FREEBIND, 1);
          // (Repair mode's forced reuse covers an established socket; SO_REUSEADDR would weaken it.)
          if (!established) setsockoptInt(fd, SOL.SOCKET, SO.REUSEADDR, 1);
          try {
            bind(fd, addr);
          } catch (err) {
            if (!(err instanceof SysError && err.errno === Errno.EADDRINUSE)) throw err;
            // TIME_WAIT connections block a new bind unless the socket they
            // came from had SO_REUSEADDR too: the dumped program could not
            // have restarted on that port yet either.
            const why = opts.reuseaddr || !isTcp(isk)
              ? "another socket is bound to the port"
              : "another socket is bound to the port, or connections of the dumped listener linger in TIME_WAIT (it had no SO_REUSEADDR, so they block the port for up to 60 s)";
            throw new Error(`${err.message}: ${why}`);
          }
          if (!isk.ipOpts?.freebind) setsockoptInt(fd, IPPROTO.IP, IP_OPT.FREEBIND, 0);
          // Off unless recorded on (restoreSkOpts sets it when the entry has it).
          if (!isFieldSet(opts, SkOptsEntrySchema.field.reuseaddr)) setsockoptInt(fd, SOL.SOCKET, SO.REUSEADDR, 0);
        } else if (isk.ipOpts?.freebind) setsockoptInt(fd, IPPROTO.IP, IP_OPT.FREEBIND, 1);
        if (isTcp(isk) && isk.state === TCP_STATE.LISTEN) listen(fd, isk.backlog);
        if (isUdp(isk) && isk.state === TCP_STATE.ESTABLISHED) connect(fd, sockaddrOf(isk.family, isk.dstAddr, isk.dstPort).addr);
        if (stream) restoreTcpStream(fd, isk.family as InetFamily, peer!.addr, stream);
        restoreSkOpts(fd, opts);
        if (isTcp(isk) && isk.tcpOpts) restoreTcpOpts(fd, isk.tcpOpts);
        if (isk.shutdown) shutdown(fd, SHUT_HOW[isk.shutdown]!);
        restoreFileState(fd, { flags: isk.flags, fown: isk.fown }, ctx);
        ctx.keep(e.id, fd);
      });
    }
  },
};

/** The TCP options the entry records (CRIU writes only those not 0). */
function restoreTcpOpts(fd: number, o: TcpOptsEntry): void {
  if (o.nodelay) setsockoptInt(fd, IPPROTO.TCP, TCP_OPT.NODELAY, 1);
  if (o.cork) setsockoptInt(fd, IPPROTO.TCP, TCP_OPT.CORK, 1);
  if (o.keepcnt) setsockoptInt(fd, IPPROTO.TCP, TCP_OPT.KEEPCNT, o.keepcnt);
  if (o.keepidle) setsockoptInt(fd, IPPROTO.TCP, TCP_OPT.KEEPIDLE, o.keepidle);
  if (o.keepintvl) setsockoptInt(fd, IPPROTO.TCP, TCP_OPT.KEEPINTVL, o.keepintvl);
}

/** shutdown()'s `how` for each SkShutdown value. */
const SHUT_HOW: Record<number, number> = { [SkShutdown.READ]: SHUT.RD, [SkShutdown.WRITE]: SHUT.WR, [SkShutdown.BOTH]: SHUT.RDWR };
