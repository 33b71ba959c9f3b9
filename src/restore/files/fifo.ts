/**
 * FIFOs: a FIFO entry names its path through a regular-file entry (regf_id),
 * which also holds the open file's flags and owner. The path is opened first
 * O_RDWR|O_NONBLOCK — that never waits for a peer and keeps the FIFO's pipe
 * alive — to put back the unread bytes (fifo-data.img); then each open file
 * is opened with its own flags (non-blocking, as the helper is a peer), and
 * the helper is closed once all of them are: a FIFO nobody read (or wrote)
 * then has no reader (or writer), as in the dumped tree.
 */
import { FdTypes } from "../../image/gen/fdinfo_pb";
import { fstat, openat } from "../../sys/libc";
import { AT, O, S_IF, S_IFMT } from "../../sys/nr";
import { reopenFlags, restoreFileState } from "./file-state";
import { Ghosts } from "./ghost";
import { forFile, part, type FileRestoreKind } from "./kind";
import { pipeData, refillPipe } from "./pipe";

export const fifoKind: FileRestoreKind = {
  name: "FIFO",
  type: FdTypes.FIFO,
  parts: (e) => (e.fifo?.regfId ? [e.fifo.regfId] : []),
  open(entries, ctx) {
    const saved = pipeData(ctx.images, "fifo-data.img");
    /** The O_RDWR helper of each FIFO, by pipe id. */
    const helpers = new Map<number, number>();
    const ghosts = new Ghosts(ctx);
    for (const e of entries) {
      const fifo = part(e, e.fifo, "fifo");
      const pathEntry = ctx.entry(fifo.regfId);
      const reg = pathEntry?.reg;
      if (!pathEntry || !reg) throw new Error(`file id ${e.id} (FIFO): files.img has no path entry ${fifo.regfId} for it`);
      forFile(e.id, `FIFO ${reg.name}`, () => {
        // An unlinked FIFO is made again beside its old path (and unlinked once the tree holds it).
        const path = ghosts.pathFor(pathEntry, reg) ?? reg.name;
        if (!helpers.has(fifo.pipeId)) {
          const helper = ctx.own(openat(AT.FDCWD, path, O.RDWR | O.NONBLOCK | O.NOFOLLOW | O.CLOEXEC));
          if ((fstat(helper).mode & S_IFMT) !== S_IF.FIFO) throw new Error(`${path} is no longer a FIFO`);
          refillPipe(helper, saved.get(fifo.pipeId));
          helpers.set(fifo.pipeId, helper);
        }
        // The helper made sure a FIFO is there; no O_NOFOLLOW here, which the
        // kernel would keep in the file's flags for F_GETFL to show.
        const fd = ctx.own(openat(AT.FDCWD, path, reopenFlags(reg.flags) | O.NONBLOCK));
        if ((fstat(fd).mode & S_IFMT) !== S_IF.FIFO) throw new Error(`${path} is no longer a FIFO`);
        restoreFileState(fd, { flags: reg.flags, fown: reg.fown }, ctx);
        ctx.keep(e.id, fd);
      });
    }
    for (const helper of helpers.values()) ctx.closeNow(helper);
  },
};
