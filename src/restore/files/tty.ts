/**
 * Terminals. A dump saves the terminal of a shell job (--shell-job) only
 * because the tree must keep using *a* terminal, not that one: as CRIU does,
 * restore gives it the terminal ckpt's stdin refers to, opened again per open
 * file with the recorded flags (O_NOCTTY always: ckpt must not make it its
 * own controlling terminal). Termios, window size and the session belong to
 * the user's terminal as it is now and are left alone. Without --shell-job a
 * terminal is refused before anything is opened.
 */
import { FdTypes, type FileEntry } from "../../image/gen/fdinfo_pb";
import { ioctl, openat, readlinkat } from "../../sys/libc";
import { AT, O } from "../../sys/nr";
import { reopenFlags, restoreFileState } from "./file-state";
import { forFile, part, type FileRestoreContext, type FileRestoreKind } from "./kind";

const TCGETS = 0x5401;
/** struct termios as TCGETS fills it (36 bytes), with room to spare. */
const termiosBuf = new Uint8Array(64);

function dumpedPath(e: FileEntry, ctx: FileRestoreContext): string {
  return ctx.entry(e.tty?.regfId ?? 0)?.reg?.name ?? "a terminal";
}

/** The terminal on ckpt's stdin; a clear error when stdin is not one. */
function stdinTerminal(): string {
  const link = readlinkat(AT.FDCWD, "/proc/self/fd/0");
  try {
    ioctl(0, TCGETS, termiosBuf, "TCGETS");
  } catch (e) {
    throw new Error(`restoring a shell job needs a terminal on ckpt's stdin, which is ${link}`, { cause: e });
  }
  return link;
}

export const ttyKind: FileRestoreKind = {
  name: "terminal",
  type: FdTypes.TTY,
  parts: (e) => (e.tty?.regfId ? [e.tty.regfId] : []),
  check(e, ctx) {
    part(e, e.tty, "tty");
    if (!ctx.opts.shellJob) {
      forFile(e.id, `terminal ${dumpedPath(e, ctx)}`, () => {
        throw new Error("the dumped tree used a terminal; restore it with --shell-job to give it ckpt's terminal");
      });
    }
  },
  open(entries, ctx) {
    let terminal: string | undefined;
    for (const e of entries) {
      const tty = e.tty!;
      forFile(e.id, `terminal ${dumpedPath(e, ctx)}`, () => {
        terminal ??= stdinTerminal();
        // Through ckpt's fd 0: the same terminal even where its path is not reachable.
        // Non-blocking: some terminals wait for carrier on open; the recorded flags follow.
        const fd = ctx.own(openat(AT.FDCWD, "/proc/self/fd/0", reopenFlags(tty.flags) | O.NONBLOCK));
        restoreFileState(fd, { flags: tty.flags, fown: tty.fown }, ctx);
        ctx.keep(e.id, fd);
      });
    }
  },
};
