/**
 * eventfd: counter and semaphore mode. The dump keeps EFD_SEMAPHORE in bit 0
 * of the flags (an eventfd is always O_RDWR, so O_WRONLY's bit is free);
 * eventfd2 takes a 32-bit start value, so a larger counter is written.
 */
import { FdTypes } from "../../image/gen/fdinfo_pb";
import { eventfd2 } from "../../sys/calls";
import { writeAll } from "../../sys/libc";
import { EFD } from "../../sys/nr";
import { O_ACCMODE } from "./file-state";
import { standaloneKind } from "./standalone";

/** Bit 0 of an eventfd entry's flags: EFD_SEMAPHORE (see src/dump/files/eventfd.ts, the image's writer). */
const SEMAPHORE_FLAG = 1;

export const eventfdKind = standaloneKind({
  name: "eventfd",
  type: FdTypes.EVENTFD,
  part: (e) => e.efd,
  field: "efd",
  make(efd, ctx) {
    const semaphore = efd.flags & SEMAPHORE_FLAG ? EFD.SEMAPHORE : 0;
    const small = efd.counter <= 0xffffffffn;
    const fd = ctx.own(eventfd2(small ? Number(efd.counter) : 0, EFD.CLOEXEC | semaphore));
    if (!small) writeAll(fd, new Uint8Array(new BigUint64Array([efd.counter]).buffer));
    return fd;
  },
  statusFlags: (efd) => efd.flags & ~O_ACCMODE,
});
