/**
 * The directory a dump writes into. It is private (created 0700, files 0600),
 * every file is created exclusively (a dump never overwrites anything), and
 * inventory.img — the file that makes a directory an image set — is written
 * last, under a temporary name renamed into place. A failed dump calls
 * discard(), which removes what it wrote, so it can never look complete.
 */
import { symlinkat } from "../sys/calls";
import { SysError, Errno } from "../sys/errno";
import { close, fstat, mkdirat, openat, renameat, unlinkat, writeAll } from "../sys/libc";
import { AT, O, S_IF, S_IFMT } from "../sys/nr";
import type { ImageEncoder } from "./encode";
import { FileDigest } from "./digest";
import { create } from "@bufbuild/protobuf";
import { CkptImageDigestSchema, type CkptImageDigest } from "./gen/inventory_pb";

export const INVENTORY = "inventory.img";
const INVENTORY_TMP = ".inventory.img.partial";

export class ImageDirError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ImageDirError";
  }
}

/** Where a file's bytes go: written to its fd and into its digest. */
export interface ImageSink {
  write(bytes: Uint8Array): void;
}

/** A file being written by ImageDirWriter.create. */
export interface ImageFile extends ImageSink {
  close(): void;
}

export class ImageDirWriter {
  private readonly written: string[] = [];
  /** Files written under a partial name until publishStaged(). */
  private readonly staged: string[] = [];
  /** The digest of every file written, by name (the inventory records them). */
  private readonly fileDigests = new Map<string, FileDigest>();
  /** Bytes written so far, for the summary. */
  bytes = 0;

  private constructor(readonly path: string, private readonly dirfd: number, private readonly created: boolean) {}

  /** Open (or create, mode 0700) the directory; refuse one that already holds an image set. */
  static open(path: string): ImageDirWriter {
    let created = false;
    try {
      mkdirat(AT.FDCWD, path, 0o700);
      created = true;
    } catch (e) {
      if (!(e instanceof SysError && e.errno === Errno.EEXIST)) throw new ImageDirError(`cannot create image directory ${path}: ${(e as Error).message}`);
    }
    let dirfd: number;
    try {
      dirfd = openat(AT.FDCWD, path, O.RDONLY | O.DIRECTORY | O.CLOEXEC);
    } catch (e) {
      throw new ImageDirError(`cannot open image directory ${path}: ${(e as Error).message}`);
    }
    const st = fstat(dirfd);
    if ((st.mode & S_IFMT) !== S_IF.DIR) {
      close(dirfd);
      throw new ImageDirError(`${path} is not a directory`);
    }
    const dir = new ImageDirWriter(path, dirfd, created);
    if (dir.exists(INVENTORY)) {
      close(dirfd);
      throw new ImageDirError(`${path} already holds an image set (${INVENTORY}); dump into an empty directory`);
    }
    return dir;
  }

  private exists(name: string): boolean {
    try {
      close(openat(this.dirfd, name, O.RDONLY | O.CLOEXEC | O.NOFOLLOW | O.PATH));
      return true;
    } catch {
      return false;
    }
  }

  /** Create `name` exclusively and let `fill` write it through a sink; it returns the byte count. */
  writeWith(name: string, fill: (sink: ImageSink) => number): void {
    const file = this.create(name);
    try {
      fill(file);
    } catch (e) {
      if (e instanceof ImageDirError) throw e;
      throw new ImageDirError(`cannot write ${this.path}/${name}: ${(e as Error).message}`);
    } finally {
      file.close();
    }
  }

  /**
   * Create `name` exclusively, to be written piece by piece (the page server
   * writes as the stream arrives). `staged`: it is written as `.NAME.partial`
   * and appears under its own name only at publishStaged() — a writer killed
   * midway leaves no file that looks like a finished image.
   */
  create(name: string, opts: { staged?: boolean } = {}): ImageFile {
    const onDisk = opts.staged ? `.${name}.partial` : name;
    let fd: number;
    try {
      fd = openat(this.dirfd, onDisk, O.WRONLY | O.CREAT | O.EXCL | O.CLOEXEC, 0o600);
    } catch (e) {
      if (e instanceof SysError && e.errno === Errno.EEXIST) throw new ImageDirError(`${this.path}/${onDisk} exists already; dump into an empty directory`);
      throw new ImageDirError(`cannot write ${this.path}/${onDisk}: ${(e as Error).message}`);
    }
    this.written.push(onDisk);
    if (opts.staged) this.staged.push(name);
    const digest = new FileDigest();
    this.fileDigests.set(name, digest);
    const path = `${this.path}/${onDisk}`;
    let open = true;
    return {
      write: (bytes) => {
        try {
          writeAll(fd, bytes);
        } catch (e) {
          throw new ImageDirError(`cannot write ${path}: ${(e as Error).message}`);
        }
        digest.update(bytes);
        this.bytes += bytes.length;
      },
      close() {
        if (!open) return;
        open = false;
        close(fd);
      },
    };
  }

  /** Give every staged file its own name (see create). */
  publishStaged(): void {
    for (const name of this.staged.splice(0)) {
      const partial = `.${name}.partial`;
      try {
        renameat(this.dirfd, partial, this.dirfd, name);
      } catch (e) {
        throw new ImageDirError(`cannot rename ${this.path}/${partial} to ${name}: ${(e as Error).message}`);
      }
      this.written[this.written.indexOf(partial)] = name;
    }
  }

  write(name: string, bytes: Uint8Array): void {
    this.writeWith(name, (sink) => {
      sink.write(bytes);
      return bytes.length;
    });
  }

  /** Size and digest of every file written so far, for the inventory. */
  digests(): CkptImageDigest[] {
    return [...this.fileDigests].map(([name, d]) => create(CkptImageDigestSchema, { name, size: BigInt(d.size), xxh64: d.value() }));
  }

  writeImage(name: string, enc: ImageEncoder): void {
    this.write(name, enc.bytes());
  }

  /** A symbolic link `name` → `target` (the `parent` link of an iterative dump). */
  symlink(name: string, target: string): void {
    try {
      symlinkat(target, this.dirfd, name);
    } catch (e) {
      if (e instanceof SysError && e.errno === Errno.EEXIST) throw new ImageDirError(`${this.path}/${name} exists already; dump into an empty directory`);
      throw new ImageDirError(`cannot create ${this.path}/${name}: ${(e as Error).message}`);
    }
    this.written.push(name);
  }

  /** The last step of a dump: the inventory appears whole or not at all. */
  commitInventory(enc: ImageEncoder): void {
    this.write(INVENTORY_TMP, enc.bytes());
    this.fileDigests.delete(INVENTORY_TMP);
    try {
      renameat(this.dirfd, INVENTORY_TMP, this.dirfd, INVENTORY);
    } catch (e) {
      throw new ImageDirError(`cannot write ${this.path}/${INVENTORY}: ${(e as Error).message}`);
    }
    this.written[this.written.indexOf(INVENTORY_TMP)] = INVENTORY;
  }

  /** Remove everything this dump wrote (and the directory if the dump created it). */
  discard(): string[] {
    const problems: string[] = [];
    for (const name of this.written.splice(0).reverse()) {
      try {
        unlinkat(this.dirfd, name);
      } catch (e) {
        if (!(e instanceof SysError && e.errno === Errno.ENOENT)) problems.push((e as Error).message);
      }
    }
    if (this.created) {
      try {
        unlinkat(AT.FDCWD, this.path, AT.REMOVEDIR);
      } catch (e) {
        problems.push((e as Error).message);
      }
    }
    return problems;
  }

  close(): void {
    close(this.dirfd);
  }
}
