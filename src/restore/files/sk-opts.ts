/**
 * Socket options every socket entry carries (SkOptsEntry), set on a new
 * socket where they differ from what it has: a fresh socket already has the
 * defaults, and an option set needlessly can change behaviour (an explicit
 * SO_SNDBUF turns off the kernel's buffer autotuning). Options the entry
 * leaves out stay as they are.
 */
import { isFieldSet } from "@bufbuild/protobuf";
import { SkOptsEntrySchema, type SkOptsEntry } from "../../image/gen/sk-opts_pb";
import { getBoundDevice, getsockoptInt, getsockoptLinger, getsockoptTimeval, setsockoptBytes, setsockoptInt, setsockoptLinger, setsockoptTimeval, SO, SOL } from "../../sys/socket";

const FLAGS = [
  ["reuseaddr", SO.REUSEADDR], ["soPasscred", SO.PASSCRED], ["soPasssec", SO.PASSSEC], ["soDontroute", SO.DONTROUTE],
  ["soNoCheck", SO.NO_CHECK], ["soReuseport", SO.REUSEPORT], ["soBroadcast", SO.BROADCAST], ["soKeepalive", SO.KEEPALIVE],
] as const;

const INTS = [["soPriority", SO.PRIORITY], ["soRcvlowat", SO.RCVLOWAT], ["soMark", SO.MARK], ["soOobinline", SO.OOBINLINE]] as const;

/**
 * The recorded SO_SNDBUF / SO_RCVBUF is what getsockopt reported: the kernel
 * doubles what is set (for its bookkeeping), so half of it is set back, with
 * the FORCE variant so the system's maximum does not cut it.
 */
function restoreBuffer(fd: number, opt: typeof SO.SNDBUF | typeof SO.RCVBUF, force: number, recorded: number): void {
  if (getsockoptInt(fd, SOL.SOCKET, opt) !== recorded) setsockoptInt(fd, SOL.SOCKET, force, Math.floor(recorded / 2));
}

export function restoreSkOpts(fd: number, o: SkOptsEntry): void {
  if (o.soFilter.length > 0) throw new Error("the socket has a BPF filter (SO_ATTACH_FILTER), which ckpt cannot restore yet");
  restoreBuffer(fd, SO.SNDBUF, SO.SNDBUFFORCE, o.soSndbuf);
  restoreBuffer(fd, SO.RCVBUF, SO.RCVBUFFORCE, o.soRcvbuf);
  // Setting the sizes locked them; SO_BUF_LOCK says which locks the socket really had.
  if (isFieldSet(o, SkOptsEntrySchema.field.soBufLock) && getsockoptInt(fd, SOL.SOCKET, SO.BUF_LOCK) !== o.soBufLock) {
    setsockoptInt(fd, SOL.SOCKET, SO.BUF_LOCK, o.soBufLock);
  }
  const snd = { sec: Number(o.soSndTmoSec), usec: Number(o.soSndTmoUsec) };
  const sndNow = getsockoptTimeval(fd, SO.SNDTIMEO);
  if (snd.sec !== sndNow.sec || snd.usec !== sndNow.usec) setsockoptTimeval(fd, SO.SNDTIMEO, snd);
  const rcv = { sec: Number(o.soRcvTmoSec), usec: Number(o.soRcvTmoUsec) };
  const rcvNow = getsockoptTimeval(fd, SO.RCVTIMEO);
  if (rcv.sec !== rcvNow.sec || rcv.usec !== rcvNow.usec) setsockoptTimeval(fd, SO.RCVTIMEO, rcv);
  for (const [field, opt] of FLAGS) {
    if (!isFieldSet(o, SkOptsEntrySchema.field[field])) continue;
    const want = o[field] ? 1 : 0;
    if ((getsockoptInt(fd, SOL.SOCKET, opt) !== 0 ? 1 : 0) !== want) setsockoptInt(fd, SOL.SOCKET, opt, want);
  }
  for (const [field, opt] of INTS) {
    if (!isFieldSet(o, SkOptsEntrySchema.field[field])) continue;
    if (getsockoptInt(fd, SOL.SOCKET, opt) !== o[field]) setsockoptInt(fd, SOL.SOCKET, opt, o[field]);
  }
  // The entry has a linger time only when lingering was on.
  if (isFieldSet(o, SkOptsEntrySchema.field.soLinger)) {
    const now = getsockoptLinger(fd);
    if (!now.onoff || now.linger !== o.soLinger) setsockoptLinger(fd, { onoff: 1, linger: o.soLinger });
  }
  if (o.soBoundDev && getBoundDevice(fd) !== o.soBoundDev) setsockoptBytes(fd, SOL.SOCKET, SO.BINDTODEVICE, new TextEncoder().encode(o.soBoundDev));
}
