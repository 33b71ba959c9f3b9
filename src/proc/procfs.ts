/**
 * /proc access with cached directory fds (the seed-000 idea).
 *
 * A dump opens dozens of files under /proc/PID for each task, and between them
 * it sometimes needs /proc/self. Keeping a single cached directory fd would
 * see-saw (open PID, close, open self, close, open PID ...). ProcFs keeps one
 * cached fd for the current /proc/PID and a separate one for /proc/self, and
 * opens every proc file with openat() on them. Switching to another PID closes
 * the old PID's directory; /proc/self stays open until close().
 *
 * The dirfd also pins the task: if it exits and its pid is reused, openat() on
 * the old directory fails (ESRCH) instead of reading the newcomer's files, which
 * a path like "/proc/1234/maps" would silently do.
 */
import { readDirectoryNames } from "../sys/file";
import { close, fstat, openat, readInto, readlinkat, statx } from "../sys/libc";
import { AT, O } from "../sys/nr";
import type { Statx } from "../sys/structs";

/** Which /proc directory: a pid, or "self" for this process. */
export type ProcTarget = number | "self";

/** Syscall counters, for the stats image and for tests of the caching. */
export interface ProcCounters {
  /** openat() of /proc/PID or /proc/self directories. */
  dirOpens: number;
  /** close() of those directories. */
  dirCloses: number;
  /** openat() of files under them. */
  fileOpens: number;
  /** read() calls on proc files. */
  reads: number;
  /** statx() calls. */
  stats: number;
  /** readlinkat() calls. */
  readlinks: number;
}

export class ProcFs {
  readonly counters: ProcCounters = { dirOpens: 0, dirCloses: 0, fileOpens: 0, reads: 0, stats: 0, readlinks: 0 };
  private pid = 0;
  private pidFd = -1;
  private selfFd = -1;
  /** One read buffer, grown when a file does not fit, reused for every read. */
  private buf = new Uint8Array(64 * 1024);
  private readonly dec = new TextDecoder();

  constructor(private readonly root = "/proc") {}

  /** The cached directory fd of /proc/PID or /proc/self, opening it on first use. */
  dir(target: ProcTarget): number {
    if (target === "self") {
      if (this.selfFd < 0) this.selfFd = this.openDir("self");
      return this.selfFd;
    }
    if (this.pid === target && this.pidFd >= 0) return this.pidFd;
    this.closePid();
    this.pidFd = this.openDir(String(target));
    this.pid = target;
    return this.pidFd;
  }

  private openDir(name: string): number {
    const fd = openat(AT.FDCWD, `${this.root}/${name}`, O.RDONLY | O.DIRECTORY | O.CLOEXEC);
    this.counters.dirOpens++;
    return fd;
  }

  /** The pid whose directory is cached now, 0 for none. */
  get cachedPid(): number {
    return this.pidFd >= 0 ? this.pid : 0;
  }

  /** Drop the cached /proc/PID directory (e.g. when that task is done). */
  closePid(): void {
    if (this.pidFd < 0) return;
    close(this.pidFd);
    this.counters.dirCloses++;
    this.pidFd = -1;
    this.pid = 0;
  }

  /** Close both cached directories. */
  close(): void {
    this.closePid();
    if (this.selfFd >= 0) {
      close(this.selfFd);
      this.counters.dirCloses++;
      this.selfFd = -1;
    }
  }

  /** openat() a file under /proc/PID; the caller owns the returned fd. */
  open(target: ProcTarget, name: string, flags: number = O.RDONLY): number {
    const fd = openat(this.dir(target), name, flags | O.CLOEXEC);
    this.counters.fileOpens++;
    return fd;
  }

  /** Text of a file directly under /proc (uptime, mounts ...), which belongs to no pid. */
  readGlobalText(name: string): string {
    const fd = openat(AT.FDCWD, `${this.root}/${name}`, O.RDONLY | O.CLOEXEC);
    this.counters.fileOpens++;
    return this.dec.decode(this.readToEnd(fd));
  }

  /** Whole contents of a proc file. */
  readBytes(target: ProcTarget, name: string): Uint8Array {
    return this.readToEnd(this.open(target, name)).slice();
  }

  /** Whole contents of a proc file as text. */
  readText(target: ProcTarget, name: string): string {
    return this.dec.decode(this.readToEnd(this.open(target, name)));
  }

  /**
   * Whole contents of a proc file as text, read on Bun's thread pool: the
   * file is opened here (through the cached dirfd, so it is this task's), and
   * the reading, with whatever the kernel does to produce the text (smaps
   * walks every page table), runs on another core while the caller goes on.
   * The returned promise is marked handled, so a caller that fails before
   * awaiting it leaves no unhandled rejection; the fd is closed either way.
   * Counted as one read: the read() calls themselves are the pool's.
   */
  readTextInBackground(target: ProcTarget, name: string): Promise<string> {
    const fd = this.open(target, name);
    this.counters.reads++;
    let text: Promise<string>;
    try {
      text = Bun.file(fd).bytes().then((bytes) => this.dec.decode(bytes)).finally(() => close(fd));
    } catch (e) {
      close(fd);
      throw e;
    }
    text.catch(() => {});
    return text;
  }

  /**
   * Read `fd` to EOF into the shared buffer, growing it when the file does not
   * fit, then close `fd`. Proc files hand out short reads (often one page or
   * one record at a time), so one read is never assumed to be all. The result
   * is a view of the shared buffer, valid until the next read.
   */
  private readToEnd(fd: number): Uint8Array {
    try {
      let len = 0;
      for (;;) {
        if (len === this.buf.length) {
          const bigger = new Uint8Array(this.buf.length * 2);
          bigger.set(this.buf);
          this.buf = bigger;
        }
        const n = readInto(fd, this.buf.subarray(len));
        this.counters.reads++;
        if (n === 0) return this.buf.subarray(0, len);
        len += n;
      }
    } finally {
      close(fd);
    }
  }

  /** Target of a link under /proc/PID (cwd, exe, fd/N, map_files/...). */
  readlink(target: ProcTarget, name: string): string {
    this.counters.readlinks++;
    return readlinkat(this.dir(target), name);
  }

  /** statx() of a file under /proc/PID; follows links (fd/N gives the open file). */
  stat(target: ProcTarget, name: string, flags = 0): Statx {
    this.counters.stats++;
    return statx(this.dir(target), name, flags);
  }

  /** fstat() of an fd the caller holds, counted with the other stats. */
  fstat(fd: number): Statx {
    this.counters.stats++;
    return fstat(fd);
  }

  /** Names in a directory under /proc/PID (task, fd, map_files, ...), without . and .. */
  list(target: ProcTarget, name: string): string[] {
    const fd = this.open(target, name, O.RDONLY | O.DIRECTORY);
    try {
      const { names, calls } = readDirectoryNames(fd, this.buf);
      this.counters.reads += calls;
      return names;
    } finally {
      close(fd);
    }
  }
}
