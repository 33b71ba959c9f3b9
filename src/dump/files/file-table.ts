/**
 * files.img under construction, and the images that hang off its entries
 * (pipe data, socket queues, ghost files ...). File ids are unique across
 * every kind: fdinfo, fs, mm and vma entries all refer to them.
 */
import { create } from "@bufbuild/protobuf";
import { FdTypes, FileEntrySchema, type FileEntry } from "../../image/gen/fdinfo_pb";
import { FownEntrySchema, type FownEntry } from "../../image/gen/fown_pb";
import { RegFileEntrySchema } from "../../image/gen/regfile_pb";
import { ImageEncoder } from "../../image/encode";
import { kind } from "../../image/magic";
import type { Statx } from "../../sys/structs";
import { validatesSize, type FileValidation } from "../../image/file-validation";
import { buildIdWords, readBuildId } from "../../sys/build-id";
import { SysError } from "../../sys/errno";
import { close } from "../../sys/libc";
import { S_IF, S_IFMT } from "../../sys/nr";
import type { ShmemContents } from "../memory/shmem";

/** An fd kind (or a state of one) this dump cannot save. */
export class UnsupportedFileError extends Error {
  constructor(readonly pid: number, readonly fd: number | string, readonly what: string) {
    super(`process ${pid}: ${typeof fd === "number" ? `fd ${fd}` : fd} is ${what}, which ckpt cannot dump yet`);
    this.name = "UnsupportedFileError";
  }
}

/** F_SETOWN/F_SETSIG state of a file nobody asked to be signalled about. */
export function noOwner(): FownEntry {
  return create(FownEntrySchema, { uid: 0, euid: 0, signum: 0, pidType: 0, pid: 0 });
}

/** What a regular-file entry needs to know about an open file or a mapped one. */
export interface RegularFile {
  path: string;
  /** O_* flags without O_CLOEXEC (that one is per fd). */
  flags: number;
  pos: bigint;
  st: Statx;
  fown?: FownEntry;
  /**
   * How to read the file for its build-id (--file-validation buildid): a
   * function opening it read-only, and whether the caller's fd must be
   * closed here (false when the caller closes what it opened).
   */
  open?: { fd: () => number; close: boolean };
}

export class FileTable {
  readonly entries: FileEntry[] = [];
  /** Contents of memfds and shared anonymous memory, written with pages images of their own when the dump is written. */
  readonly shmem: ShmemContents[] = [];
  /** memfd inodes saved so far (memfd.img), by inode number: their inode ids. */
  readonly memfdInodes = new Map<bigint, number>();
  /** Ghost files saved so far by "dev:ino": their ghost ids, so an unlinked file opened and mapped is saved once. */
  readonly ghosts = new Map<string, number>();
  /** The largest unlinked file saved as a ghost, in bytes (--ghost-limit); no limit when unset. */
  ghostLimit?: bigint;
  /** Build-ids go into the entries of ELF files with "buildid" (CRIU's default); sizes always. */
  fileValidation: FileValidation = "buildid";
  /** Build-ids read so far by "dev:ino" (undefined: none, or unreadable). */
  private readonly buildIds = new Map<string, number[] | undefined>();
  /** Further images by file name, in the order they were first used. */
  readonly images = new Map<string, ImageEncoder>();
  private nextId = 1;

  newId(): number {
    return this.nextId++;
  }

  add(entry: FileEntry): void {
    this.entries.push(entry);
  }

  /** The encoder of a further image (e.g. "pipes-data.img" of kind PIPES_DATA), made on first use. */
  image(fileName: string, kindName: string): ImageEncoder {
    let enc = this.images.get(fileName);
    if (!enc) {
      enc = new ImageEncoder(kind(kindName));
      this.images.set(fileName, enc);
    }
    return enc;
  }

  /**
   * The build-id of an ELF regular file whose size is validated too, read
   * once per inode; none for other files, and none (the size alone, as in
   * CRIU) for one that cannot be read.
   */
  private buildIdField(f: RegularFile): { buildId?: number[] } {
    if (this.fileValidation !== "buildid" || !f.open || (f.st.mode & S_IFMT) !== S_IF.REG || !validatesSize(f.flags) || f.st.size === 0n) return {};
    const key = `${f.st.dev}:${f.st.ino}`;
    if (!this.buildIds.has(key)) {
      let words: number[] | undefined;
      let fd = -1;
      try {
        fd = f.open.fd();
        const id = readBuildId(fd);
        words = id ? buildIdWords(id) : undefined;
      } catch (e) {
        if (!(e instanceof SysError)) throw e;
      } finally {
        if (fd >= 0 && f.open.close) close(fd);
      }
      this.buildIds.set(key, words);
    }
    const words = this.buildIds.get(key);
    return words ? { buildId: words } : {};
  }

  /** Add a regular file (or directory, or memory device) under `id` (a new id if not given); returns the id. */
  addRegular(f: RegularFile, id = this.newId()): number {
    this.entries.push(create(FileEntrySchema, {
      type: FdTypes.REG,
      id,
      reg: create(RegFileEntrySchema, {
        id,
        flags: f.flags,
        pos: f.pos,
        fown: f.fown ?? noOwner(),
        name: f.path,
        // No mnt_id: it names an entry of a mountpoints image, which is
        // written only with the mount namespace. CRIU looks it up when it
        // is set and fails, for ghost files, when there is none.
        ...(validatesSize(f.flags) ? { size: f.st.size } : {}),
        ...this.buildIdField(f),
        mode: f.st.mode,
      }),
    }));
    return id;
  }
}
