/** Socket options every socket entry carries (SkOptsEntry), read through ckpt's fd on the socket. */
import { create } from "@bufbuild/protobuf";
import { SkOptsEntrySchema, SkShutdown, type SkOptsEntry } from "../../image/gen/sk-opts_pb";
import { getBoundDevice, getsockoptInt, getsockoptLinger, getsockoptTimeval, SO, SOL } from "../../sys/socket";

export function readSkOpts(fd: number): SkOptsEntry {
  const int = (opt: number): number => getsockoptInt(fd, SOL.SOCKET, opt);
  const snd = getsockoptTimeval(fd, SO.SNDTIMEO);
  const rcv = getsockoptTimeval(fd, SO.RCVTIMEO);
  const linger = getsockoptLinger(fd);
  const dev = getBoundDevice(fd);
  return create(SkOptsEntrySchema, {
    soSndbuf: int(SO.SNDBUF), soRcvbuf: int(SO.RCVBUF),
    soSndTmoSec: BigInt(snd.sec), soSndTmoUsec: BigInt(snd.usec),
    soRcvTmoSec: BigInt(rcv.sec), soRcvTmoUsec: BigInt(rcv.usec),
    reuseaddr: int(SO.REUSEADDR) !== 0, soPriority: int(SO.PRIORITY), soRcvlowat: int(SO.RCVLOWAT),
    soMark: int(SO.MARK), soPasscred: int(SO.PASSCRED) !== 0, soPasssec: int(SO.PASSSEC) !== 0,
    soDontroute: int(SO.DONTROUTE) !== 0, soNoCheck: int(SO.NO_CHECK) !== 0,
    soReuseport: int(SO.REUSEPORT) !== 0, soBroadcast: int(SO.BROADCAST) !== 0,
    soKeepalive: int(SO.KEEPALIVE) !== 0, soOobinline: int(SO.OOBINLINE),
    ...(linger.onoff ? { soLinger: linger.linger } : {}),
    ...(dev ? { soBoundDev: dev } : {}),
  });
}

/** sock_diag's shutdown bits (RCV 1, SEND 2) as the entry's enum. */
export function shutdownOf(bits: number): SkShutdown {
  return [SkShutdown.NONE, SkShutdown.READ, SkShutdown.WRITE, SkShutdown.BOTH][bits & 3] ?? SkShutdown.NONE;
}
