/**
 * timerfd: clock, time left, interval, and expirations not yet read.
 *
 * The image holds the time that was left (relative, as timerfd_gettime gives
 * it). A timer set with TFD_TIMER_ABSTIME is armed again at now + that time
 * on its clock, keeping its flags (TFD_TIMER_CANCEL_ON_SET needs them); the
 * others relative. A periodic timer caught at its very expiry (no time left)
 * is given 1 ns, since a zero value would disarm it. The expiration count is
 * put back with TFD_IOC_SET_TICKS after arming (arming clears it).
 */
import { FdTypes } from "../../image/gen/fdinfo_pb";
import type { TimerfdEntry } from "../../image/gen/timerfd_pb";
import { clockGettime, timerfdCreate, timerfdSettime } from "../../sys/calls";
import { ioctl } from "../../sys/libc";
import { TFD, TFD_IOC_SET_TICKS } from "../../sys/nr";
import type { FileRestoreContext } from "./kind";
import { standaloneKind } from "./standalone";

const NSEC = 1_000_000_000n;

function makeTimer(t: TimerfdEntry, ctx: FileRestoreContext): number {
  const fd = ctx.own(timerfdCreate(t.clockid, TFD.CLOEXEC));
  let [sec, nsec] = [t.vsec, t.vnsec];
  const periodic = t.isec !== 0n || t.insec !== 0n;
  if (sec === 0n && nsec === 0n && periodic) nsec = 1n;
  const armed = sec !== 0n || nsec !== 0n;
  let flags = 0;
  if (armed && t.settimeFlags & TFD.TIMER_ABSTIME) {
    const now = clockGettime(t.clockid);
    const total = (now.sec + sec) * NSEC + now.nsec + nsec;
    [sec, nsec, flags] = [total / NSEC, total % NSEC, t.settimeFlags];
  }
  if (armed) timerfdSettime(fd, flags, { intervalSec: t.isec, intervalNsec: t.insec, valueSec: sec, valueNsec: nsec });
  if (t.ticks > 0n) ioctl(fd, TFD_IOC_SET_TICKS, new Uint8Array(new BigUint64Array([t.ticks]).buffer), "TFD_IOC_SET_TICKS");
  return fd;
}

export const timerfdKind = standaloneKind({
  name: "timerfd",
  type: FdTypes.TIMERFD,
  part: (e) => e.tfd,
  field: "tfd",
  describe: (t) => `timerfd on clock ${t.clockid}`,
  make: makeTimer,
});
