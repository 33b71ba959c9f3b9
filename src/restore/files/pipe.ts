/**
 * Pipes: every end of one dumped pipe (entries sharing a pipe_id) comes from
 * one pipe2, refilled with the bytes that were unread (pipes-data.img) at the
 * recorded capacity. A second open file of the same end (an end reopened
 * through /proc) is a new open of ckpt's end through /proc/self/fd. An end
 * no entry names was closed in the dumped tree, and is closed here too, once
 * the data is in: readers then see end-of-file after the data, writers EPIPE,
 * as they would have.
 */
import { FdTypes, type FileEntry } from "../../image/gen/fdinfo_pb";
import { PipeDataEntrySchema, type PipeDataEntry } from "../../image/gen/pipe_pb";
import { fcntl, pipe2 } from "../../sys/calls";
import { writeAll } from "../../sys/libc";
import { F, O } from "../../sys/nr";
import type { ImageSet } from "../../image/image-set";
import { O_ACCMODE, reopenOwn, restoreFileState } from "./file-state";
import { forFile, part, type FileRestoreKind } from "./kind";

/** Unread data and capacity of each pipe of a pipes-data style image, by pipe id. */
export function pipeData(images: ImageSet, name: string): Map<number, { entry: PipeDataEntry; data: Uint8Array }> {
  const out = new Map<number, { entry: PipeDataEntry; data: Uint8Array }>();
  for (const raw of images.raw(name, true)) {
    const entry = raw.message as PipeDataEntry;
    if (entry.$typeName !== PipeDataEntrySchema.typeName) throw new Error(`${images.path(name)}: an entry of type ${entry.$typeName}`);
    if (out.has(entry.pipeId)) throw new Error(`${images.path(name)}: pipe ${entry.pipeId} has two data entries`);
    out.set(entry.pipeId, { entry, data: raw.payload ?? new Uint8Array(0) });
  }
  return out;
}

/**
 * Give the pipe behind `writable` its recorded capacity, then its unread
 * bytes. `writable` is non-blocking, so a pipe that cannot take them fails
 * instead of hanging ckpt.
 */
export function refillPipe(writable: number, saved: { entry: PipeDataEntry; data: Uint8Array } | undefined): void {
  if (!saved) return;
  const size = saved.entry.size;
  if (size > 0 && fcntl(writable, F.GETPIPE_SZ) !== size) fcntl(writable, F.SETPIPE_SZ, size);
  if (saved.data.length > 0) writeAll(writable, saved.data);
}

export const pipeKind: FileRestoreKind = {
  name: "pipe",
  type: FdTypes.PIPE,
  open(entries, ctx) {
    const saved = pipeData(ctx.images, "pipes-data.img");
    const byPipe = new Map<number, FileEntry[]>();
    for (const e of entries) {
      const pipeId = part(e, e.pipe, "pipe").pipeId;
      byPipe.set(pipeId, [...(byPipe.get(pipeId) ?? []), e]);
    }
    for (const [pipeId, ends] of byPipe) {
      const [r, w] = pipe2(O.CLOEXEC | O.NONBLOCK).map((fd) => ctx.own(fd)) as [number, number];
      forFile(ends[0]!.id, `pipe ${pipeId}`, () => refillPipe(w, saved.get(pipeId)));
      let readGiven = false;
      let writeGiven = false;
      for (const e of ends) {
        const p = e.pipe!;
        forFile(e.id, `pipe ${pipeId}`, () => {
          const acc = p.flags & O_ACCMODE;
          let fd: number;
          if (acc === O.RDONLY && !readGiven) {
            fd = r;
            readGiven = true;
          } else if (acc === O.WRONLY && !writeGiven) {
            fd = w;
            writeGiven = true;
          } else {
            fd = ctx.own(reopenOwn(acc === O.WRONLY ? w : r, p.flags));
          }
          restoreFileState(fd, { flags: p.flags, fown: p.fown }, ctx);
          ctx.keep(e.id, fd);
        });
      }
      if (!readGiven) ctx.closeNow(r);
      if (!writeGiven) ctx.closeNow(w);
    }
  },
};
