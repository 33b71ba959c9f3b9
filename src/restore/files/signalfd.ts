/** signalfd: a new one reading the recorded signal mask. */
import { FdTypes } from "../../image/gen/fdinfo_pb";
import { signalfd4 } from "../../sys/calls";
import { SFD } from "../../sys/nr";
import { standaloneKind } from "./standalone";

export const signalfdKind = standaloneKind({
  name: "signalfd",
  type: FdTypes.SIGNALFD,
  part: (e) => e.sgfd,
  field: "sgfd",
  make: (sg, ctx) => ctx.own(signalfd4(sg.sigmask, SFD.CLOEXEC)),
});
