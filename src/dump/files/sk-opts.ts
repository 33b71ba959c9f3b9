/** Socket options every socket entry carries (SkOptsEntry), read through ckpt's fd on the socket. */
import { create } from "@bufbuild/protobuf";
import { SkOptsEntrySchema, SkShutdown, type SkOptsEntry } from "../../image/gen/sk-opts_pb";
import { Errno, SysError } from "../../sys/errno";
import { getBoundDevice, getsockoptInt, getsockoptLinger, getsockoptTimeval, SO, SOL } from "../../sys/socket";

/** Errnos of an option this socket's family does not have (kernels differ: e.g. SO_PASSCRED on a unix stream socket). */
const NOT_HERE = new Set<number>([Errno.EOPNOTSUPP, Errno.ENOPROTOOPT, Errno.EINVAL]);

export function readSkOpts(fd: number): SkOptsEntry {
  const int = (opt: number): number => getsockoptInt(fd, SOL.SOCKET, opt);
  /** An option the entry may leave out: undefined where the socket has no such option. */
  const maybe = (opt: number): number | undefined => {
    try {
      return int(opt);
    } catch (e) {
      if (e instanceof SysError && NOT_HERE.has(e.errno)) return undefined;
      throw e;
    }
  };
  const flag = (opt: number): boolean | undefined => {
    const v = maybe(opt);
    return v === undefined ? undefined : v !== 0;
  };
  const snd = getsockoptTimeval(fd, SO.SNDTIMEO);
  const rcv = getsockoptTimeval(fd, SO.RCVTIMEO);
  const linger = getsockoptLinger(fd);
  const dev = getBoundDevice(fd);
  return create(SkOptsEntrySchema, {
    soSndbuf: int(SO.SNDBUF), soRcvbuf: int(SO.RCVBUF),
    soSndTmoSec: BigInt(snd.sec), soSndTmoUsec: BigInt(snd.usec),
    soRcvTmoSec: BigInt(rcv.sec), soRcvTmoUsec: BigInt(rcv.usec),
    reuseaddr: flag(SO.REUSEADDR), soPriority: maybe(SO.PRIORITY), soRcvlowat: maybe(SO.RCVLOWAT),
    soMark: maybe(SO.MARK), soPasscred: flag(SO.PASSCRED), soPasssec: flag(SO.PASSSEC),
    soDontroute: flag(SO.DONTROUTE), soNoCheck: flag(SO.NO_CHECK),
    soReuseport: flag(SO.REUSEPORT), soBroadcast: flag(SO.BROADCAST),
    soKeepalive: flag(SO.KEEPALIVE), soOobinline: maybe(SO.OOBINLINE),
    ...(linger.onoff ? { soLinger: linger.linger } : {}),
    ...(dev ? { soBoundDev: dev } : {}),
  });
}

/**
 * The shutdown field of a socket entry: present only when a direction is
 * shut, as CRIU writes it; CRIU's restore calls shutdown() for any value that
 * is present, and NONE is no valid how.
 */
export function shutdownField(bits: number): { shutdown?: SkShutdown } {
  const how = [SkShutdown.NONE, SkShutdown.READ, SkShutdown.WRITE, SkShutdown.BOTH][bits & 3] ?? SkShutdown.NONE;
  return how === SkShutdown.NONE ? {} : { shutdown: how };
}
