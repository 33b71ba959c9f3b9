/**
 * Open files of the dumped tree, as files.img entries with ids that fdinfo,
 * fs, mm and vma entries refer to.
 *
 * This is the part a simple task needs: regular files, directories and the
 * memory character devices (/dev/null, /dev/zero, ...), which CRIU also dumps
 * as regular files. Every other fd kind is refused with an error naming the
 * pid, the fd and the kind, so a dump never silently drops an fd.
 */
import { create } from "@bufbuild/protobuf";
import { FdinfoEntrySchema, FdTypes, FileEntrySchema, type FdinfoEntry, type FileEntry } from "../image/gen/fdinfo_pb";
import { FownEntrySchema } from "../image/gen/fown_pb";
import { RegFileEntrySchema } from "../image/gen/regfile_pb";
import { readFdInfo } from "../proc/fdinfo";
import type { ProcFs } from "../proc/procfs";
import { O, S_IF, S_IFMT } from "../sys/nr";
import type { Statx } from "../sys/structs";

/** Character devices of the "mem" driver (null, zero, full, random, urandom ...): plain files to CRIU. */
const MEM_MAJOR = 1;
/** FD_CLOEXEC as fdinfo entries store it. */
const FD_CLOEXEC = 1;

/** An fd kind this dump cannot save yet. */
export class UnsupportedFileError extends Error {
  constructor(readonly pid: number, readonly fd: number | string, readonly what: string) {
    super(`process ${pid}: ${typeof fd === "number" ? `fd ${fd}` : fd} is ${what}, which ckpt cannot dump yet`);
    this.name = "UnsupportedFileError";
  }
}

/** What a regular-file entry needs to know about an open file or a mapped one. */
export interface RegularFile {
  path: string;
  /** O_* flags without O_CLOEXEC (that one is per fd). */
  flags: number;
  pos: bigint;
  st: Statx;
  mntId: number;
}

/** files.img under construction: one entry per file, ids from 1. */
export class FileTable {
  readonly entries: FileEntry[] = [];
  private nextId = 1;

  /** Add a regular file (or directory, or memory device); returns its id. */
  addRegular(f: RegularFile): number {
    const id = this.nextId++;
    this.entries.push(create(FileEntrySchema, {
      type: FdTypes.REG,
      id,
      reg: create(RegFileEntrySchema, {
        id,
        flags: f.flags,
        pos: f.pos,
        fown: create(FownEntrySchema, { uid: 0, euid: 0, signum: 0, pidType: 0, pid: 0 }),
        name: f.path,
        mntId: f.mntId,
        size: f.st.size,
        mode: f.st.mode,
      }),
    }));
    return id;
  }
}

/** A human name for the kind of an fd we refuse, from its link text and mode. */
function describeKind(link: string, mode: number): string {
  const anon = /^anon_inode:\[?([^\]]+)\]?$/.exec(link);
  if (anon) return `an ${anon[1]} fd`;
  if (link.startsWith("pipe:")) return "a pipe";
  if (link.startsWith("socket:")) return "a socket";
  switch (mode & S_IFMT) {
    case S_IF.FIFO: return `a FIFO (${link})`;
    case S_IF.SOCK: return `a socket (${link})`;
    case S_IF.CHR: return `a character device (${link})`;
    case S_IF.BLK: return `a block device (${link})`;
  }
  return `an unsupported file (${link})`;
}

/** Whether a file is one this issue dumps as a regular-file entry. */
function isPlainFile(st: Statx): boolean {
  const type = st.mode & S_IFMT;
  if (type === S_IF.REG || type === S_IF.DIR) return true;
  return type === S_IF.CHR && st.rdevMajor === MEM_MAJOR;
}

/**
 * A path as the kernel shows it in a link, checked: an unlinked file's link
 * ends in " (deleted)" and its contents would be lost, so refuse it.
 */
function checkedPath(pid: number, fd: number | string, link: string): string {
  if (link.endsWith(" (deleted)")) throw new UnsupportedFileError(pid, fd, `an unlinked file (${link})`);
  if (!link.startsWith("/")) throw new UnsupportedFileError(pid, fd, describeKind(link, 0));
  return link;
}

/** fdinfo entries of one process's fd table; files go into `table`. */
export function dumpFds(proc: ProcFs, pid: number, table: FileTable): FdinfoEntry[] {
  const fds = proc.list(pid, "fd").map(Number).sort((a, b) => a - b);
  const out: FdinfoEntry[] = [];
  for (const fd of fds) {
    const link = proc.readlink(pid, `fd/${fd}`);
    const st = proc.stat(pid, `fd/${fd}`);
    if (!isPlainFile(st)) throw new UnsupportedFileError(pid, fd, describeKind(link, st.mode));
    const path = checkedPath(pid, fd, link);
    const info = readFdInfo(proc, pid, fd);
    const id = table.addRegular({ path, flags: info.flags & ~O.CLOEXEC, pos: info.pos, st, mntId: info.mntId });
    out.push(create(FdinfoEntrySchema, { id, flags: info.flags & O.CLOEXEC ? FD_CLOEXEC : 0, type: FdTypes.REG, fd }));
  }
  return out;
}

/** A directory or file named by a /proc link (cwd, root, exe) as a regular-file entry. */
export function dumpLinkedFile(proc: ProcFs, pid: number, name: "cwd" | "root" | "exe", table: FileTable): number {
  const link = proc.readlink(pid, name);
  const st = proc.stat(pid, name);
  const path = checkedPath(pid, name, link);
  const flags = name === "exe" ? O.RDONLY : O.RDONLY | O.DIRECTORY;
  return table.addRegular({ path, flags, pos: 0n, st, mntId: Number(st.mntId) });
}
