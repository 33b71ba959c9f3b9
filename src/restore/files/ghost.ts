/**
 * Ghost files: open files that were unlinked when dumped. Their contents are
 * in ghost-file-ID.img (ID in hex, from the remap-fpath entry naming the
 * file); restore writes them into a new file beside the original path, named
 * PATH.cr.ID.ghost as CRIU names its own, opens that, and unlinks it once
 * every process holds its fds — so the file is again open and unlinked.
 *
 * Files that were one inode (two opens of one unlinked file) come back as
 * one: the ghost images carry the dumped device and inode.
 */
import { isFieldSet } from "@bufbuild/protobuf";
import type { FileEntry } from "../../image/gen/fdinfo_pb";
import { GhostChunkEntrySchema, GhostFileEntrySchema, type GhostChunkEntry, type GhostFileEntry } from "../../image/gen/ghost-file_pb";
import type { RegFileEntry } from "../../image/gen/regfile_pb";
import { RemapFilePathEntrySchema, RemapType, type RemapFilePathEntry } from "../../image/gen/remap-file-path_pb";
import { chmodPath, chownPath, fchmod, fchown, ftruncate, futimens, mknodPath } from "../../sys/calls";
import { Errno, SysError } from "../../sys/errno";
import { openat, pwriteAll } from "../../sys/libc";
import { AT, O, S_IF, S_IFMT } from "../../sys/nr";
import type { FileRestoreContext } from "./kind";

/** utimensat's "leave this time alone". */
const UTIME_OMIT = (1n << 30n) - 2n;

/** Where each remapped file is, by its id; ghost files made on first use. */
export class Ghosts {
  private readonly remaps = new Map<number, RemapFilePathEntry>();
  /** Re-created ghosts by dumped "dev:ino" (or by remap id when the image lacks them). */
  private readonly made = new Map<string, string>();

  constructor(private readonly ctx: FileRestoreContext) {
    for (const r of ctx.images.entries("remap-fpath.img", RemapFilePathEntrySchema, true)) this.remaps.set(r.origId, r);
  }

  /** The path to open for file `entry`: a ghost's temporary path, or undefined when the file was not unlinked. */
  pathFor(entry: FileEntry, reg: RegFileEntry): string | undefined {
    const remap = this.remaps.get(entry.id);
    if (!remap) return undefined;
    const type = remap.remapType;
    if (type !== RemapType.GHOST) {
      throw new Error(`${reg.name} is remapped as ${RemapType[type] ?? type}; ckpt restores only ghost (unlinked) files`);
    }
    return this.create(reg.name, remap.remapId);
  }

  /** An unlinked FIFO: only its inode (its unread bytes are the FIFO restore's). */
  private createFifo(key: string, path: string, origPath: string, g: GhostFileEntry): string {
    try {
      mknodPath(path, S_IF.FIFO | 0o600);
    } catch (e) {
      if (e instanceof SysError && e.errno === Errno.EEXIST) {
        throw new Error(`cannot re-create unlinked FIFO ${origPath}: ${path} exists (left by an earlier restore?); remove it and restore again`);
      }
      throw new Error(`cannot re-create unlinked FIFO ${origPath} at ${path}: ${(e as Error).message}`);
    }
    this.ctx.removeLater(path);
    chownPath(path, g.uid, g.gid);
    chmodPath(path, g.mode & 0o7777);
    this.made.set(key, path);
    return path;
  }

  private create(origPath: string, remapId: number): string {
    const image = `ghost-file-${remapId.toString(16)}.img`;
    const raw = this.ctx.images.raw(image);
    const head = raw[0]?.message;
    if (!head || head.$typeName !== GhostFileEntrySchema.typeName) throw new Error(`${image} does not begin with a ghost file header`);
    const g = head as GhostFileEntry;
    const key = isFieldSet(g, GhostFileEntrySchema.field.ino) ? `${g.dev}:${g.ino}` : `remap ${remapId}`;
    const have = this.made.get(key);
    if (have) return have;
    const path = `${origPath}.cr.${remapId.toString(16)}.ghost`;
    if ((g.mode & S_IFMT) === S_IF.FIFO) return this.createFifo(key, path, origPath, g);
    if ((g.mode & S_IFMT) !== S_IF.REG) throw new Error(`${image}: an unlinked file of mode 0${g.mode.toString(8)}; ckpt restores only unlinked regular files and FIFOs`);
    let fd: number;
    try {
      fd = openat(AT.FDCWD, path, O.RDWR | O.CREAT | O.EXCL | O.NOFOLLOW | O.CLOEXEC, 0o600);
    } catch (e) {
      if (e instanceof SysError && e.errno === Errno.EEXIST) {
        throw new Error(`cannot re-create unlinked file ${origPath}: ${path} exists (left by an earlier restore?); remove it and restore again`);
      }
      throw new Error(`cannot re-create unlinked file ${origPath} at ${path}: ${(e as Error).message}`);
    }
    this.ctx.removeLater(path);
    this.ctx.own(fd);
    try {
      writeContents(fd, image, g, raw.slice(1).map((e) => ({ chunk: e.message as GhostChunkEntry, data: e.payload })), raw[0]?.payload);
      fchown(fd, g.uid, g.gid);
      fchmod(fd, g.mode & 0o7777);
      if (g.mtim) {
        const atime = g.atim ? { sec: g.atim.tvSec, nsec: g.atim.tvUsec * 1000n } : { sec: 0n, nsec: UTIME_OMIT };
        futimens(fd, atime, { sec: g.mtim.tvSec, nsec: g.mtim.tvUsec * 1000n });
      }
    } finally {
      this.ctx.closeNow(fd);
    }
    this.made.set(key, path);
    return path;
  }
}

/** A ghost's contents: all of it after the header, or in chunks at offsets (holes left as holes). */
function writeContents(fd: number, image: string, g: GhostFileEntry, chunks: { chunk: GhostChunkEntry; data?: Uint8Array }[], whole?: Uint8Array): void {
  if (g.chunks) {
    for (const { chunk, data } of chunks) {
      if (chunk.$typeName !== GhostChunkEntrySchema.typeName || !data) throw new Error(`${image}: a chunk entry without its data`);
      pwriteAll(fd, data, Number(chunk.off));
    }
  } else if (whole && whole.length > 0) {
    pwriteAll(fd, whole, 0);
  }
  if (isFieldSet(g, GhostFileEntrySchema.field.size)) {
    const written = g.chunks ? undefined : whole?.length ?? 0;
    if (written !== undefined && BigInt(written) > g.size) throw new Error(`${image}: ${written} bytes of contents for a file of ${g.size}`);
    ftruncate(fd, g.size);
  }
}

