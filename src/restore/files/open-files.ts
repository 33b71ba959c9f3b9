/**
 * The files of an image set, re-created in ckpt's own process: one ckpt fd
 * per file id of files.img, each an open file with the state the dump
 * recorded (flags, position, owner, contents, queues ...). The engine hands
 * them to the restored processes, which take them with pidfd_getfd, so fds
 * that shared an open file share it again.
 *
 * Kinds are opened through the handler table (kinds.ts). Everything made on
 * the way is tracked from the moment it exists, so a failure leaves no fd
 * and no temporary file behind.
 */
import type { FownEntry } from "../../image/gen/fown_pb";
import { restoreFown } from "./file-state";
import { FileEntrySchema, type FileEntry } from "../../image/gen/fdinfo_pb";
import { fcntl } from "../../sys/calls";
import { close, openat, unlinkat } from "../../sys/libc";
import { AT, F, O } from "../../sys/nr";
import type { ImageSet } from "../../image/image-set";
import { makeRoomForFiles } from "./fd-limit";
import { forFile, typeName, type EpollWatch, type FileRestoreContext, type FileRestoreKind, type FileRestoreOptions } from "./kind";
import { restoreKind, RESTORE_KINDS } from "./kinds";

export type { EpollWatch, FileRestoreOptions } from "./kind";
export { FileRestoreError } from "./kind";

export class OpenedFiles {
  /** ckpt's fd of each file id. */
  private readonly files = new Map<number, number>();
  /** fds made on the way that are no file's (yet): closed when open() ends. */
  private readonly helpers = new Set<number>();
  /** fds of mapped files opened again with a mapping's access mode, by "id:access". */
  private readonly reopened = new Map<string, number>();
  /** Paths made for the restore (ghost files), unlinked by finish() and abort(). */
  private readonly temporary: string[] = [];
  private readonly watches = new Map<number, readonly EpollWatch[]>();
  /** Owners to set once the tree's processes exist (F_SETOWN_EX names one of them). */
  private readonly owners: { fd: number; fown: FownEntry }[] = [];

  private constructor() {}

  /**
   * Re-create every file of files.img in ckpt's own process. Called after all
   * restored processes exist (so F_SETOWN owners exist). On failure nothing
   * it made is left: the error names the file id.
   */
  static open(images: ImageSet, opts: FileRestoreOptions): OpenedFiles {
    const files = new OpenedFiles();
    try {
      files.openAll(images, opts);
    } catch (e) {
      const problems = files.abort();
      if (problems.length > 0 && e instanceof Error) e.message += ` (cleaning up after it: ${problems.join("; ")})`;
      throw e;
    }
    files.closeHelpers();
    return files;
  }

  /** ckpt's own fd holding file `id`; throws an error naming the id if there is none. */
  fd(id: number): number {
    const fd = this.files.get(id);
    if (fd === undefined) throw new Error(`ckpt holds no open file with id ${id} (files.img has none, or it is only a FIFO's or terminal's path)`);
    return fd;
  }

  /**
   * An fd of file `id` open for `access` (O_RDONLY or O_RDWR), for a mapping:
   * a vma records the access its file was mapped with (fdflags), which may
   * differ from the file entry's own (CRIU saves a memfd mapped shared and
   * writable as a read-only file entry). A new open of the same file is made
   * through /proc/self/fd then, once per id and access.
   */
  fdForMapping(id: number, access: number): number {
    const fd = this.fd(id);
    const held = fcntl(fd, F.GETFL) & O.ACCMODE;
    if (held === access || held === O.RDWR) return fd;
    const key = `${id}:${access}`;
    let again = this.reopened.get(key);
    if (again === undefined) {
      again = openat(AT.FDCWD, `/proc/self/fd/${fd}`, access | O.CLOEXEC);
      this.reopened.set(key, again);
    }
    return again;
  }

  /** The file ids ckpt holds an fd for. */
  ids(): number[] {
    return [...this.files.keys()];
  }

  /** How many fds ckpt holds for the restored files. */
  get count(): number {
    return this.files.size;
  }

  /**
   * Watches of eventpoll file `id`: the engine adds them with epoll_ctl inside
   * the first restored process holding that epoll fd (the tfd key is the
   * target's fd number, so ckpt cannot add them itself). Empty for other ids.
   */
  epollWatches(id: number): readonly EpollWatch[] {
    return this.watches.get(id) ?? [];
  }

  /**
   * Set the owner of every file that had one (F_SETSIG, F_SETOWN_EX): the
   * files are opened before the tree's processes exist, the owners need them.
   */
  applyOwners(): void {
    const idOf = new Map([...this.files].map(([id, fd]) => [fd, id]));
    for (const { fd, fown } of this.owners.splice(0)) {
      const id = idOf.get(fd);
      forFile(id ?? -1, "the owner of the file", () => restoreFown(fd, fown));
    }
  }

  /** After every process has pulled its fds: unlink temporary/ghost paths, close all ckpt fds. */
  finish(): void {
    const problems = this.release();
    if (problems.length > 0) throw new Error(`cleaning up restored files: ${problems.join("; ")}`);
  }

  /** On failure: the same cleanup, never throwing; returns the problems met. */
  abort(): string[] {
    return this.release();
  }

  private release(): string[] {
    const problems: string[] = [];
    const attempt = (what: string, step: () => void): void => {
      try {
        step();
      } catch (e) {
        problems.push(`${what}: ${e instanceof Error ? e.message : String(e)}`);
      }
    };
    for (const path of this.temporary.splice(0)) attempt(`removing ${path}`, () => unlinkat(AT.FDCWD, path));
    for (const [id, fd] of this.files) attempt(`closing file id ${id}`, () => close(fd));
    this.files.clear();
    for (const [key, fd] of this.reopened) attempt(`closing file id ${key.split(":")[0]} opened again for a mapping`, () => close(fd));
    this.reopened.clear();
    this.watches.clear();
    problems.push(...this.closeHelpers());
    return problems;
  }

  private closeHelpers(): string[] {
    const problems: string[] = [];
    for (const fd of this.helpers) {
      try {
        close(fd);
      } catch (e) {
        problems.push(`closing fd ${fd}: ${(e as Error).message}`);
      }
    }
    this.helpers.clear();
    return problems;
  }

  private context(images: ImageSet, opts: FileRestoreOptions, byId: ReadonlyMap<number, FileEntry>): FileRestoreContext {
    return {
      images,
      opts,
      entry: (id) => byId.get(id),
      own: (fd) => {
        this.helpers.add(fd);
        return fd;
      },
      closeNow: (fd) => {
        if (!this.helpers.delete(fd)) throw new Error(`fd ${fd} is not a helper of the restore of files`);
        close(fd);
      },
      keep: (id, fd) => {
        if (this.files.has(id)) throw new Error(`file id ${id} was opened twice`);
        if (!this.helpers.delete(fd)) throw new Error(`fd ${fd} for file id ${id} was not made by the restore of files`);
        this.files.set(id, fd);
      },
      removeLater: (path) => {
        this.temporary.push(path);
      },
      setWatches: (id, watches) => {
        this.watches.set(id, watches);
      },
      setOwner: (fd, fown) => {
        if (fown && (fown.signum !== 0 || fown.pid !== 0)) this.owners.push({ fd, fown });
      },
    };
  }

  private openAll(images: ImageSet, opts: FileRestoreOptions): void {
    const entries = images.entries("files.img", FileEntrySchema);
    const byId = new Map<number, FileEntry>();
    for (const e of entries) {
      if (byId.has(e.id)) throw new Error(`${images.path("files.img")}: two entries have file id ${e.id}`);
      byId.set(e.id, e);
    }
    const ctx = this.context(images, opts, byId);
    const byKind = new Map<FileRestoreKind, FileEntry[]>();
    for (const e of entries) {
      const kind = restoreKind(e.type);
      if (!kind) throw new Error(`file id ${e.id} is of type ${typeName(e.type)}, which ckpt cannot restore`);
      byKind.set(kind, [...(byKind.get(kind) ?? []), e]);
    }
    // Entries that only describe part of another file (a FIFO's path) are opened by that file's kind.
    const parts = new Set<number>();
    for (const [kind, list] of byKind) for (const e of list) for (const id of kind.parts?.(e) ?? []) parts.add(id);
    for (const [kind, list] of byKind) {
      const own = list.filter((e) => !parts.has(e.id));
      byKind.set(kind, own);
      for (const e of own) kind.check?.(e, ctx);
    }
    makeRoomForFiles([...byKind.values()].reduce((n, list) => n + list.length, 0));
    for (const kind of RESTORE_KINDS) {
      const list = byKind.get(kind);
      if (list && list.length > 0) kind.open(list, ctx);
    }
  }
}
