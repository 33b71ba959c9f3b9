/** signalfd: the signal mask it reads, from fdinfo. */
import { create } from "@bufbuild/protobuf";
import { FdTypes, FileEntrySchema } from "../../image/gen/fdinfo_pb";
import { SignalfdEntrySchema } from "../../image/gen/signalfd_pb";
import { O } from "../../sys/nr";
import { fdinfoField, readFown } from "./fd-access";
import type { FdKind } from "./kind";

export const signalfdKind: FdKind = {
  name: "signalfd",
  type: FdTypes.SIGNALFD,
  matches: (f) => f.link === "anon_inode:[signalfd]",
  dump(f, id, ctx) {
    const mask = fdinfoField(f, "signalfd", "sigmask");
    ctx.table.add(create(FileEntrySchema, {
      type: FdTypes.SIGNALFD, id,
      sgfd: create(SignalfdEntrySchema, { id, flags: f.info.flags & ~O.CLOEXEC, fown: readFown(ctx.access.local(f.fd)), sigmask: BigInt(`0x${mask}`) }),
    }));
  },
};
