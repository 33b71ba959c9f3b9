/**
 * Regular files, directories and the "mem" character devices (/dev/null ...):
 * opened again by path with the recorded flags, at the recorded position.
 * As CRIU does, a regular file whose size is not the dumped one is refused:
 * its contents changed, and the restored process would read something else.
 * Unlinked files come back from their ghost images (ghost.ts).
 */
import { isFieldSet } from "@bufbuild/protobuf";
import { FdTypes, type FileEntry } from "../../image/gen/fdinfo_pb";
import { validatesSize } from "../../image/file-validation";
import { RegFileEntrySchema, type RegFileEntry } from "../../image/gen/regfile_pb";
import { statOrNull } from "../../sys/file";
import { buildIdHex, buildIdWords, readBuildId } from "../../sys/build-id";
import { close, fstat, openat } from "../../sys/libc";
import { AT, O, S_IF, S_IFMT } from "../../sys/nr";
import { reopenFlags, restoreFileState } from "./file-state";
import { Ghosts } from "./ghost";
import { forFile, part, type FileRestoreContext, type FileRestoreKind } from "./kind";

const TYPE_NAMES: Record<number, string> = {
  [S_IF.REG]: "regular file", [S_IF.DIR]: "directory", [S_IF.CHR]: "character device", [S_IF.BLK]: "block device",
  [S_IF.FIFO]: "FIFO", [S_IF.SOCK]: "socket", [S_IF.LNK]: "symbolic link",
};

/** "a directory", "a regular file" ... for a st_mode. */
export function fileTypeName(mode: number): string {
  return TYPE_NAMES[mode & S_IFMT] ?? `file of type 0${(mode & S_IFMT).toString(8)}`;
}

/** The file at `path` now, not following a final symlink; a clear error when it is gone. */
function statNow(path: string): { mode: number } {
  const st = statOrNull(path, AT.SYMLINK_NOFOLLOW);
  if (!st) throw new Error(`${path} is gone`);
  return st;
}

function checkType(path: string, recordedMode: number | undefined, mode: number): void {
  if (recordedMode !== undefined && (recordedMode & S_IFMT) !== (mode & S_IFMT)) {
    throw new Error(`${path} is a ${fileTypeName(mode)} now; it was a ${fileTypeName(recordedMode)} when dumped`);
  }
}

/** As CRIU: the whole mode must be the recorded one, or all but the rwx bits with --skip-file-rwx-check. */
function checkMode(name: string, recorded: number | undefined, now: number, skipRwx: boolean): void {
  if (recorded === undefined) return;
  const mask = skipRwx ? ~0o777 : ~0;
  if ((recorded & mask) === (now & mask)) return;
  const octal = (m: number): string => `0${(m & 0o7777).toString(8)}`;
  const onlyRwx = (recorded & ~0o777) === (now & ~0o777);
  throw new Error(`${name} has mode ${octal(now)} now but had ${octal(recorded)} when dumped${onlyRwx ? "; restore with --skip-file-rwx-check to allow changed permissions" : ""}`);
}

/** The file open as `fd` must be the build the images recorded (its ELF build-id), as CRIU's default validation asks. */
function checkBuildId(reg: RegFileEntry, fd: number): void {
  // The restored fd may be write-only: read through a read-only open of the same file.
  const reader = openat(AT.FDCWD, `/proc/self/fd/${fd}`, O.RDONLY | O.CLOEXEC);
  let now: Uint8Array | undefined;
  try {
    now = readBuildId(reader);
  } finally {
    close(reader);
  }
  const recorded = new Uint8Array(new Uint32Array(reg.buildId).buffer);
  const words = now === undefined ? [] : buildIdWords(now);
  const same = words.length === reg.buildId.length && words.every((w, i) => w === reg.buildId[i]);
  if (same) return;
  const was = buildIdHex(recorded);
  throw new Error(`${reg.name} ${now ? `is another build now (build-id ${buildIdHex(now)})` : "has no build-id now"}; it was build-id ${was} when dumped; restore with --file-validation filesize to check its size alone`);
}

function openRegular(e: FileEntry, reg: RegFileEntry, ghosts: Ghosts, ctx: FileRestoreContext): number {
  if (!reg.name.startsWith("/")) throw new Error(`the dumped path "${reg.name}" is not absolute`);
  const ghost = ghosts.pathFor(e, reg);
  const path = ghost ?? reg.name;
  const mode = isFieldSet(reg, RegFileEntrySchema.field.mode) ? reg.mode : undefined;
  // Look before opening: a path that became a FIFO would block the open.
  if (!ghost) {
    const now = statNow(path).mode;
    checkType(path, mode, now);
    if ((now & S_IFMT) === S_IF.LNK && !(reg.flags & O.NOFOLLOW)) throw new Error(`${path} is a symbolic link now; ckpt does not follow it`);
  }
  // No O_NOFOLLOW of ckpt's own: the kernel keeps it in the file's flags,
  // where F_GETFL would show the program a flag it never asked for.
  const fd = ctx.own(openat(AT.FDCWD, path, reopenFlags(reg.flags)));
  const st = fstat(fd);
  checkType(path, mode, st.mode);
  // A log (O_WRONLY|O_APPEND) may have grown since: CRIU's rule, and images
  // from before ckpt followed it still carry its size.
  if ((st.mode & S_IFMT) === S_IF.REG && isFieldSet(reg, RegFileEntrySchema.field.size) && validatesSize(reg.flags) && st.size !== reg.size) {
    throw new Error(`${reg.name} is ${st.size} bytes now but was ${reg.size} bytes when dumped; ckpt restores only files that did not change`);
  }
  if (!ghost) {
    checkMode(reg.name, mode, st.mode, ctx.opts.skipFileRwxCheck);
    if (ctx.opts.fileValidation === "buildid" && reg.buildId.length > 0 && (st.mode & S_IFMT) === S_IF.REG) checkBuildId(reg, fd);
  }
  // An O_PATH fd has no position, owner or status flags to set.
  if (!(reg.flags & O.PATH)) restoreFileState(fd, { flags: reg.flags, fown: reg.fown, pos: reg.pos }, ctx);
  return fd;
}

export const regularKind: FileRestoreKind = {
  name: "regular file",
  type: FdTypes.REG,
  open(entries, ctx) {
    const ghosts = new Ghosts(ctx);
    for (const e of entries) {
      const reg = part(e, e.reg, "reg");
      forFile(e.id, reg.name, () => ctx.keep(e.id, openRegular(e, reg, ghosts, ctx)));
    }
  },
};
