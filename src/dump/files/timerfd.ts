/**
 * timerfd: clock, expirations not yet read, and the timer setting from
 * fdinfo. it_value is the time left (relative, as timerfd_gettime gives it).
 */
import { create } from "@bufbuild/protobuf";
import { FdTypes, FileEntrySchema } from "../../image/gen/fdinfo_pb";
import { TimerfdEntrySchema } from "../../image/gen/timerfd_pb";
import { O } from "../../sys/nr";
import { fdinfoField, readFown, type OpenFd } from "./fd-access";
import type { FdKind } from "./kind";

function field(f: OpenFd, key: string): string {
  return fdinfoField(f, "timerfd", key);
}

/** "(SEC, NSEC)" as fdinfo prints a timespec. */
function timespec(f: OpenFd, key: string): [bigint, bigint] {
  const m = /^\((\d+),\s*(\d+)\)$/.exec(field(f, key));
  if (!m) throw new Error(`process ${f.pid} fd ${f.fd}: cannot read timerfd ${key} "${field(f, key)}"`);
  return [BigInt(m[1]!), BigInt(m[2]!)];
}

export const timerfdKind: FdKind = {
  name: "timerfd",
  type: FdTypes.TIMERFD,
  matches: (f) => f.link === "anon_inode:[timerfd]",
  dump(f, id, ctx) {
    const [vsec, vnsec] = timespec(f, "it_value");
    const [isec, insec] = timespec(f, "it_interval");
    ctx.table.add(create(FileEntrySchema, {
      type: FdTypes.TIMERFD, id,
      tfd: create(TimerfdEntrySchema, {
        id, flags: f.info.flags & ~O.CLOEXEC, fown: readFown(ctx.access.local(f.fd)),
        clockid: Number(field(f, "clockid")), ticks: BigInt(field(f, "ticks")),
        settimeFlags: Number.parseInt(field(f, "settime flags"), 8),
        vsec, vnsec, isec, insec,
      }),
    }));
  },
};
