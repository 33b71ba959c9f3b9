/** eventfd: its counter (and semaphore mode) from fdinfo. */
import { create } from "@bufbuild/protobuf";
import { EventfdFileEntrySchema } from "../../image/gen/eventfd_pb";
import { FdTypes, FileEntrySchema } from "../../image/gen/fdinfo_pb";
import { O } from "../../sys/nr";
import { fdinfoField, readFown } from "./fd-access";
import type { FdKind } from "./kind";

/**
 * EFD_SEMAPHORE has no field of its own in CRIU's entry. An eventfd is always
 * open O_RDWR, so bit 0 of its flags (O_WRONLY's bit) is free: ckpt records
 * semaphore mode there. F_SETFL ignores access-mode bits, so a restorer that
 * does not know this loses only the mode, as it would anyway.
 */
export const EVENTFD_SEMAPHORE_FLAG = 1;

export const eventfdKind: FdKind = {
  name: "eventfd",
  type: FdTypes.EVENTFD,
  matches: (f) => f.link === "anon_inode:[eventfd]",
  dump(f, id, ctx) {
    const count = fdinfoField(f, "eventfd", "eventfd-count");
    const semaphore = f.info.fields.get("eventfd-semaphore") === "1" ? EVENTFD_SEMAPHORE_FLAG : 0;
    ctx.table.add(create(FileEntrySchema, {
      type: FdTypes.EVENTFD, id,
      efd: create(EventfdFileEntrySchema, {
        id, flags: (f.info.flags & ~O.CLOEXEC) | semaphore, fown: readFown(ctx.access.local(f.fd)), counter: BigInt(`0x${count}`),
      }),
    }));
  },
};
