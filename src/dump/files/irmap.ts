/**
 * The irmap: from an inode (device and number, as an inotify watch or a
 * fanotify mark names it) back to a path that reaches it.
 *
 * The kernel keeps no path for a watched inode, only the inode and a file
 * handle. Restore re-adds watches by path, so the dump must find one. In
 * order of cost:
 *  1. an answer found earlier (an `irmap-cache` image a pre-dump wrote, or
 *     this run's own answers) — checked again, since files move;
 *  2. the file handle, opened through a mount of the device, whose
 *     /proc/self/fd link is a path — if that path still leads to the inode
 *     (a handle may give a disconnected or removed name);
 *  3. a depth-first search of a few directories where watched files usually
 *     live.
 * Every answer is checked by stat: right device, right inode.
 */
import { create } from "@bufbuild/protobuf";
import { ImageEncoder } from "../../image/encode";
import { IrmapCacheEntrySchema, type IrmapCacheEntry } from "../../image/gen/fh_pb";
import { readImageFile } from "../../image/image-file";
import { kind } from "../../image/magic";
import { readFdInfo, type FdInfo } from "../../proc/fdinfo";
import { readMountInfo, type MountInfo } from "../../proc/mountinfo";
import { ProcFs } from "../../proc/procfs";
import { openByHandleAt } from "../../sys/calls";
import { Errno, SysError } from "../../sys/errno";
import { close, fstat, getdents64, openat, statx } from "../../sys/libc";
import { AT, O, S_IF, S_IFMT } from "../../sys/nr";
import { decodeDirents, decodeKernelDev, encodeKernelDev, type Dirent, type FileHandle, type Statx } from "../../sys/structs";

/** The image's file name, in a pre-dump's directory or a dump's parent. */
export const IRMAP_CACHE_FILE = "irmap-cache";

/**
 * Where to search when neither cache nor handle gives a path. The programs
 * that hold inotify watches are mostly system daemons watching their
 * configuration and state (dbus, udev, systemd, cron, syslog, polkit), so
 * these few trees find most of them while staying small enough to read.
 * The whole root filesystem is not searched: on a big machine that takes
 * minutes, all of it with the tree frozen.
 */
export const DEFAULT_SCAN_PATHS: readonly string[] = [
  "/etc", "/var/log", "/var/spool", "/var/lib", "/usr/share/dbus-1", "/usr/lib/udev", "/run",
];

export interface IrmapOptions {
  /** Directories to search (--irmap-scan-path); DEFAULT_SCAN_PATHS when none are given. */
  scanPaths?: readonly string[];
  /** Directories that may hold an irmap-cache image, in order: the first that has one is used. */
  cacheDirs?: readonly string[];
  /** For /proc/self (mountinfo, fd links); a private one when not given. */
  proc?: ProcFs;
}

export interface IrmapCounters {
  /** Answers from the cache that still held. */
  cacheHits: number;
  /** Cache entries that no longer led to their inode (dropped). */
  stale: number;
  byHandle: number;
  byScan: number;
  /** Inodes no way found a path for. */
  failures: number;
}

/** No path reaches an inode; says which device and inode and where ckpt looked. */
export class IrmapError extends Error {
  override readonly name = "IrmapError";
  constructor(readonly sdev: number, readonly ino: bigint, looked: readonly string[]) {
    super(`no path found for inode ${ino} on device ${devName(sdev)}: ${looked.join("; ")}`);
  }
}

/** "254:0" for a kernel-internal device number. */
export function devName(sdev: number): string {
  const { major, minor } = decodeKernelDev(sdev);
  return `${major}:${minor}`;
}

const key = (sdev: number, ino: bigint): string => `${sdev}:${ino}`;

/** What a directory held when it was first read, for every later search. */
interface DirListing {
  /** Kernel-internal device of the directory itself. */
  sdev: number;
  ino: bigint;
  entries: Dirent[];
}

const DT_UNKNOWN = 0;
const DT_DIR = 4;

/** Errors that mean "nothing usable there" while probing a path, not a failure of ckpt. */
const ABSENT = new Set<number>([Errno.ENOENT, Errno.ENOTDIR, Errno.EACCES, Errno.ELOOP, Errno.ESTALE, Errno.EPERM]);

function absent(e: unknown): boolean {
  return e instanceof SysError && ABSENT.has(e.errno);
}

export class Irmap {
  readonly counters: IrmapCounters = { cacheHits: 0, stale: 0, byHandle: 0, byScan: 0, failures: 0 };
  /** Time spent in resolve, in milliseconds (stats-dump's irmap_resolve). */
  ms = 0;
  readonly scanPaths: readonly string[];
  /** The irmap-cache file that was read, once loaded; null when none was found. */
  loadedFrom: string | null = null;

  private readonly cacheDirs: readonly string[];
  private readonly proc: ProcFs;
  private readonly ownsProc: boolean;
  private loaded = false;
  /** Known answers by device and inode: loaded ones and this run's. */
  private readonly cache = new Map<string, string>();
  /** Directory listings read by the search, by path (null: unreadable). */
  private readonly listings = new Map<string, DirListing | null>();
  private mounts: MountInfo[] | undefined;
  private readonly direntBuf = new Uint8Array(64 * 1024);

  constructor(opts: IrmapOptions = {}) {
    this.scanPaths = opts.scanPaths && opts.scanPaths.length > 0 ? [...opts.scanPaths] : DEFAULT_SCAN_PATHS;
    this.cacheDirs = opts.cacheDirs ?? [];
    this.ownsProc = opts.proc === undefined;
    this.proc = opts.proc ?? new ProcFs();
  }

  /** Release the private ProcFs, if this irmap made one. */
  close(): void {
    if (this.ownsProc) this.proc.close();
  }

  /**
   * A path that reaches inode `ino` of device `sdev` (kernel-internal form,
   * as fdinfo prints it) now; `handle` is the file handle fdinfo gave for it,
   * if any. Throws an IrmapError when nothing is found.
   */
  resolve(sdev: number, ino: bigint, handle: FileHandle | null): string {
    const started = performance.now();
    try {
      this.load();
      const k = key(sdev, ino);
      const looked: string[] = [];
      const cached = this.cache.get(k);
      if (cached !== undefined) {
        if (this.leadsTo(cached, sdev, ino)) {
          this.counters.cacheHits++;
          return cached;
        }
        this.counters.stale++;
        this.cache.delete(k);
        looked.push(`the cached path ${cached} is stale`);
      } else if (this.cacheDirs.length > 0) {
        looked.push(this.loadedFrom ? `not in ${this.loadedFrom}` : `no ${IRMAP_CACHE_FILE} in ${this.cacheDirs.join(", ")}`);
      }
      let path = handle && handle.bytes.length > 0 ? this.byHandle(sdev, ino, handle, looked) : null;
      if (path !== null) {
        this.counters.byHandle++;
      } else {
        if (!handle || handle.bytes.length === 0) looked.push("no file handle");
        path = this.byScan(sdev, ino, looked);
        if (path !== null) this.counters.byScan++;
      }
      if (path === null) {
        this.counters.failures++;
        throw new IrmapError(sdev, ino, looked);
      }
      this.cache.set(k, path);
      return path;
    } finally {
      this.ms += performance.now() - started;
    }
  }

  /** Every answer known (loaded and found) as an irmap-cache image. */
  cacheImage(): ImageEncoder {
    this.load();
    const enc = new ImageEncoder(kind("IRMAP_CACHE"));
    for (const [k, path] of this.cache) {
      const [dev, inode] = k.split(":");
      enc.add(IrmapCacheEntrySchema, create(IrmapCacheEntrySchema, { dev: Number(dev), inode: BigInt(inode ?? "0"), path }));
    }
    return enc;
  }

  /**
   * The first irmap-cache image of the cache directories, read once. A dump
   * calls this before it freezes the tree, so that reading and decoding the
   * cache is not part of the frozen time (resolve() loads it otherwise).
   */
  load(): void {
    if (this.loaded) return;
    this.loaded = true;
    for (const dir of this.cacheDirs) {
      const file = `${dir}/${IRMAP_CACHE_FILE}`;
      if (this.statOrNull(file, 0) === null) continue;
      for (const e of readIrmapCache(file)) this.cache.set(key(e.dev, e.inode), e.path);
      this.loadedFrom = file;
      return;
    }
  }

  private statOrNull(path: string, flags: number): Statx | null {
    try {
      return statx(AT.FDCWD, path, flags);
    } catch (e) {
      if (absent(e)) return null;
      throw e;
    }
  }

  /** Whether `path` (not following a final symlink) is inode `ino` of device `sdev`. */
  private leadsTo(path: string, sdev: number, ino: bigint): boolean {
    if (!path.startsWith("/")) return false;
    const st = this.statOrNull(path, AT.SYMLINK_NOFOLLOW);
    return st !== null && st.ino === ino && encodeKernelDev(st.devMajor, st.devMinor) === sdev;
  }

  private mountTable(): MountInfo[] {
    this.mounts ??= readMountInfo(this.proc, "self");
    return this.mounts;
  }

  /**
   * Open the handle through each mount of the device (whole-filesystem
   * mounts first: a bind mount of a subtree reaches only part of it) and take
   * the fd's link as the path if it leads back to the inode.
   */
  private byHandle(sdev: number, ino: bigint, handle: FileHandle, looked: string[]): string | null {
    const mounts = this.mountTable().filter((m) => encodeKernelDev(m.major, m.minor) === sdev);
    if (mounts.length === 0) {
      looked.push(`no mount of device ${devName(sdev)} to open its file handle through`);
      return null;
    }
    mounts.sort((a, b) => Number(b.root === "/") - Number(a.root === "/"));
    for (const m of mounts) {
      let mountFd = -1;
      let fd = -1;
      try {
        // open_by_handle_at refuses an O_PATH fd as the mount fd. Opening a
        // directory costs an IN_OPEN event should anyone watch the mount's root.
        mountFd = openat(AT.FDCWD, m.mountPoint, O.RDONLY | O.DIRECTORY | O.CLOEXEC);
        const st = fstat(mountFd);
        // Another mount on top of this mount point hides it.
        if (encodeKernelDev(st.devMajor, st.devMinor) !== sdev) {
          looked.push(`mount ${m.mntId} at ${m.mountPoint} is covered by another mount`);
          continue;
        }
        fd = openByHandleAt(mountFd, handle, O.PATH | O.CLOEXEC);
        const link = this.proc.readlink("self", `fd/${fd}`);
        if (this.leadsTo(link, sdev, ino)) return link;
        looked.push(`its file handle opened through ${m.mountPoint} names ${JSON.stringify(link)}, which does not lead to it`);
      } catch (e) {
        if (!(e instanceof SysError)) throw e;
        looked.push(`its file handle through ${m.mountPoint}: ${e.message}`);
      } finally {
        if (fd >= 0) close(fd);
        if (mountFd >= 0) close(mountFd);
      }
    }
    return null;
  }

  /** Depth-first through every scan path in turn; the first match wins. */
  private byScan(sdev: number, ino: bigint, looked: string[]): string | null {
    // Mount points of the wanted device: a search may need to pass through
    // other filesystems to reach one, and needs to enter no others.
    const targets = this.mountTable().filter((m) => encodeKernelDev(m.major, m.minor) === sdev).map((m) => m.mountPoint);
    const mountDevs = new Map(this.mountTable().map((m) => [m.mountPoint, encodeKernelDev(m.major, m.minor)]));
    // Directories by device and inode: one seen twice (scan paths that nest, a bind mount) is searched once.
    const seen = new Set<string>();
    for (const root of this.scanPaths) {
      const stack = [root];
      while (stack.length > 0) {
        const dir = stack.pop() ?? "";
        const listing = this.listing(dir, dir === root);
        if (!listing || seen.has(key(listing.sdev, listing.ino))) continue;
        seen.add(key(listing.sdev, listing.ino));
        if (listing.sdev === sdev && listing.ino === ino) return dir;
        const subdirs: string[] = [];
        for (const e of listing.entries) {
          const path = dir === "/" ? `/${e.name}` : `${dir}/${e.name}`;
          // d_ino is the inode's number on the directory's own device (a mount point's shows what is under it).
          if (listing.sdev === sdev && e.ino === ino && this.leadsTo(path, sdev, ino)) return path;
          if (e.type !== DT_DIR && e.type !== DT_UNKNOWN) continue;
          const dev = mountDevs.get(path) ?? listing.sdev;
          if (dev === sdev || targets.some((t) => t.startsWith(`${path}/`))) subdirs.push(path);
        }
        for (let i = subdirs.length - 1; i >= 0; i--) stack.push(subdirs[i] ?? "");
      }
    }
    looked.push(`not found under ${this.scanPaths.join(", ")} (${seen.size} directories searched)`);
    return null;
  }

  /**
   * A directory's entries, read on first use and kept for every later search
   * of this irmap (a dump with many watches under one directory reads it once).
   * Scan roots may be symlinks; below them nothing is followed.
   */
  private listing(dir: string, isRoot: boolean): DirListing | null {
    if (this.listings.has(dir)) return this.listings.get(dir) ?? null;
    let listing: DirListing | null = null;
    let fd = -1;
    try {
      fd = openat(AT.FDCWD, dir, O.RDONLY | O.DIRECTORY | O.CLOEXEC | (isRoot ? 0 : O.NOFOLLOW));
      const st = fstat(fd);
      if ((st.mode & S_IFMT) === S_IF.DIR) {
        const entries: Dirent[] = [];
        for (let n = getdents64(fd, this.direntBuf); n > 0; n = getdents64(fd, this.direntBuf)) {
          for (const d of decodeDirents(this.direntBuf, n)) if (d.name !== "." && d.name !== "..") entries.push(d);
        }
        listing = { sdev: encodeKernelDev(st.devMajor, st.devMinor), ino: st.ino, entries };
      }
    } catch (e) {
      if (!absent(e)) throw e;
    } finally {
      if (fd >= 0) close(fd);
    }
    this.listings.set(dir, listing);
    return listing;
  }
}

/** Entries of an irmap-cache image; throws naming the file when it is something else. */
export function readIrmapCache(path: string): IrmapCacheEntry[] {
  const img = readImageFile(path);
  if (img.kind.name !== "IRMAP_CACHE") throw new Error(`${path} is a ${img.kind.name} image, not an irmap cache`);
  return img.entries.map((e) => e.message as IrmapCacheEntry);
}

/** The file handle an fdinfo watch or mark line carries; null when it has none. */
export function watchHandle(w: { fhandleBytes: number; fhandleType: number; fhandle: Uint8Array }): FileHandle | null {
  return w.fhandleBytes > 0 ? { type: w.fhandleType, bytes: w.fhandle } : null;
}

/** The inodes an inotify or fanotify fd's fdinfo names, with their handles. */
function watchedInodes(info: FdInfo): { sdev: number; ino: bigint; handle: FileHandle | null }[] {
  const out = info.inotify.map((w) => ({ sdev: w.sdev, ino: w.ino, handle: watchHandle(w) }));
  for (const m of info.fanotify?.marks ?? []) if (m.type === "inode") out.push({ sdev: m.sdev, ino: m.ino, handle: watchHandle(m) });
  return out;
}

/** The link text of inotify and fanotify fds. */
const NOTIFY_LINKS = new Set(["anon_inode:inotify", "anon_inode:[fanotify]"]);

/** A process or fd that went away while it was being looked at. */
function vanished(e: unknown): boolean {
  return e instanceof SysError && (e.errno === Errno.ENOENT || e.errno === Errno.ESRCH);
}

/**
 * Resolve every inode that inotify watches and fanotify inode marks of these
 * processes name, filling `irmap`'s cache (a pre-dump runs this after letting
 * the tree go, and writes irmap.cacheImage() for the dump to revalidate).
 * The processes run meanwhile: fds and processes that vanish are skipped,
 * and inodes with no path are left to the dump to report (they are counted in
 * irmap.counters.failures). Returns how many distinct inodes it resolved.
 */
export function resolveTreeWatches(proc: ProcFs, pids: readonly number[], irmap: Irmap): number {
  const done = new Set<string>();
  for (const pid of pids) {
    let fds: string[];
    try {
      fds = proc.list(pid, "fd");
    } catch (e) {
      if (vanished(e)) continue;
      throw e;
    }
    for (const fd of fds) {
      let info: FdInfo;
      try {
        if (!NOTIFY_LINKS.has(proc.readlink(pid, `fd/${fd}`))) continue;
        info = readFdInfo(proc, pid, Number(fd));
      } catch (e) {
        if (vanished(e)) continue;
        throw e;
      }
      for (const w of watchedInodes(info)) {
        const k = key(w.sdev, w.ino);
        if (done.has(k)) continue;
        try {
          irmap.resolve(w.sdev, w.ino, w.handle);
          done.add(k);
        } catch (e) {
          if (!(e instanceof IrmapError)) throw e;
        }
      }
    }
  }
  return done.size;
}
