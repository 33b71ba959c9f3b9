/**
 * The common shape of kinds whose open files each stand alone (eventfd,
 * eventpoll, signalfd, timerfd): per entry, a new ckpt fd made from the
 * entry's own part, then the file's status flags and owner, and kept.
 */
import type { FdTypes, FileEntry } from "../../image/gen/fdinfo_pb";
import type { FownEntry } from "../../image/gen/fown_pb";
import { restoreFileState } from "./file-state";
import { forFile, part, type FileRestoreContext, type FileRestoreKind } from "./kind";

/** What the part of such an entry always has. */
interface StandalonePart {
  flags: number;
  fown?: FownEntry;
}

export function standaloneKind<P extends StandalonePart>(k: {
  name: string;
  type: FdTypes;
  /** The entry's part of this kind (entry.efd ...), and its field name for errors. */
  part: (e: FileEntry) => P | undefined;
  field: string;
  /** For errors: what one file is, when the kind's name does not say enough. */
  describe?: (p: P) => string;
  /** ckpt's new fd for one file, taken with ctx.own, in the state the part records. */
  make: (p: P, ctx: FileRestoreContext, e: FileEntry) => number;
  /** The status flags to set, where the part keeps more than that in `flags`. */
  statusFlags?: (p: P) => number;
}): FileRestoreKind {
  return {
    name: k.name,
    type: k.type,
    open(entries, ctx) {
      for (const e of entries) {
        const p = part(e, k.part(e), k.field);
        forFile(e.id, k.describe?.(p) ?? k.name, () => {
          const fd = k.make(p, ctx, e);
          restoreFileState(fd, { flags: k.statusFlags?.(p) ?? p.flags, fown: p.fown }, ctx);
          ctx.keep(e.id, fd);
        });
      }
    },
  };
}
