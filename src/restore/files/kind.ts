/**
 * The handler table's record for restore: how ckpt re-creates one kind of
 * open file of files.img inside its own process. Adding a kind is a module
 * exporting one of these and one line in kinds.ts.
 *
 * A kind gets all entries of its type at once, because some files only exist
 * together: both ends of a pipe come from one pipe2, a socketpair makes two
 * sockets, a memfd inode is shared by several open files.
 */
import type { FownEntry } from "../../image/gen/fown_pb";
import type { FileValidation } from "../../image/file-validation";
import { FdTypes, type FileEntry } from "../../image/gen/fdinfo_pb";
import type { ImageSet } from "../../image/image-set";
import type { TcpRestoreSession } from "./tcp-stream";

export interface FileRestoreOptions {
  /** The dump was a shell job (--shell-job): its terminal becomes the one ckpt's stdin refers to. */
  shellJob: boolean;
  /** "buildid": a regular file's recorded build-id must match too, not only its size. */
  fileValidation: FileValidation;
  /** Ignore changes of a file's rwx permission bits (the rest of its mode must match). */
  skipFileRwxCheck: boolean;
  /** --tcp-established: established connections are made again under this session's lock; without it they are refused. */
  tcp?: TcpRestoreSession;
}

/** One watch of an eventpoll file, for the engine to add inside the restored process. */
export interface EpollWatch {
  /** The watched file's fd number in the process that holds the epoll fd. */
  tfd: number;
  events: number;
  data: bigint;
}

/** What a kind's open step may use. Every fd a kind makes goes through `own` at once, so a failure closes it. */
export interface FileRestoreContext {
  images: ImageSet;
  opts: FileRestoreOptions;
  /** The files.img entry with this id (a FIFO's or terminal's path entry, say). */
  entry(id: number): FileEntry | undefined;
  /** Take charge of a new fd: it is closed when the restore of files ends or fails, unless kept. */
  own(fd: number): number;
  /** Close an owned fd that is no longer needed (an unused end of a pipe). */
  closeNow(fd: number): void;
  /** `fd` (owned) is the open file `id`; it stays open until finish() or abort(). */
  keep(id: number, fd: number): void;
  /** A path made for the restore (a ghost file), unlinked in finish() or abort(). */
  removeLater(path: string): void;
  /** The watch list of eventpoll file `id`. */
  setWatches(id: number, watches: readonly EpollWatch[]): void;
  /** The owner (F_SETOWN_EX, F_SETSIG) of the file open as `fd`, set by applyOwners once the tree exists. */
  setOwner(fd: number, fown: FownEntry | undefined): void;
}

export interface FileRestoreKind {
  /** For errors: "pipe", "unix socket" ... */
  name: string;
  type: FdTypes;
  /** Ids of other files.img entries that only describe part of `entry` (a FIFO's path): not opened on their own. */
  parts?(entry: FileEntry): number[];
  /** Refuse what cannot be restored before anything is opened (a terminal without --shell-job). */
  check?(entry: FileEntry, ctx: FileRestoreContext): void;
  /** Re-create every file of this kind (entries in files.img order) and `keep` each one. */
  open(entries: readonly FileEntry[], ctx: FileRestoreContext): void;
}

/** A file of the image set could not be re-created; names its id and what it is. */
export class FileRestoreError extends Error {
  override readonly name = "FileRestoreError";
  constructor(readonly id: number, readonly what: string, reason: string, options?: ErrorOptions) {
    super(`file id ${id} (${what}): ${reason}`, options);
  }
}

/** Run `step` for file `id`, turning any failure into a FileRestoreError naming the file. */
export function forFile<T>(id: number, what: string, step: () => T): T {
  try {
    return step();
  } catch (e) {
    if (e instanceof FileRestoreError) throw e;
    throw new FileRestoreError(id, what, e instanceof Error ? e.message : String(e), { cause: e });
  }
}

/** "INOTIFY (8)" for an entry's type. */
export function typeName(type: number): string {
  const name = FdTypes[type];
  return name === undefined ? String(type) : `${name} (${type})`;
}

/** The sub-message of an entry, or an error saying the entry lacks it. */
export function part<T>(entry: FileEntry, value: T | undefined, field: string): T {
  if (value === undefined) throw new FileRestoreError(entry.id, typeName(entry.type), `its files.img entry has no ${field} part`);
  return value;
}
