/** Whole-file reads and writes and directory listings through the libc layer. */
import { Errno, SysError } from "./errno";
import { close, fstat, getdents64, openat, preadInto, pwriteAll, statx } from "./libc";
import { AT, O } from "./nr";
import { decodeDirents, type Statx } from "./structs";

/** statx of `path`, or null when nothing is there (ENOENT); other errors throw. */
export function statOrNull(path: string, flags = 0): Statx | null {
  try {
    return statx(AT.FDCWD, path, flags);
  } catch (e) {
    if (e instanceof SysError && e.errno === Errno.ENOENT) return null;
    throw e;
  }
}

/** Contents of a regular file, or of a /proc or /sys file (which report size 0). */
export function readWholeFile(path: string): Uint8Array {
  const fd = openat(AT.FDCWD, path, O.RDONLY | O.CLOEXEC);
  try {
    // Files of /proc and /sys report size 0 and hold data all the same:
    // read those until EOF.
    const size = Number(fstat(fd).size);
    let buf = new Uint8Array(size > 0 ? size : 4096);
    let off = 0;
    for (;;) {
      if (off === buf.length) {
        if (size > 0) break;
        const bigger = new Uint8Array(buf.length * 2);
        bigger.set(buf);
        buf = bigger;
      }
      const n = preadInto(fd, buf.subarray(off), off);
      if (n === 0) break;
      off += n;
    }
    return off === buf.length ? buf : buf.subarray(0, off);
  } finally {
    close(fd);
  }
}

/**
 * Write a file in one go. With `exclusive` the file must not exist yet
 * (O_EXCL), so two writers never interleave into one image.
 */
export function writeWholeFile(path: string, bytes: Uint8Array, mode = 0o600, exclusive = false): void {
  const flags = O.WRONLY | O.CREAT | O.CLOEXEC | (exclusive ? O.EXCL : O.TRUNC);
  const fd = openat(AT.FDCWD, path, flags, mode);
  try {
    pwriteAll(fd, bytes, 0);
  } finally {
    close(fd);
  }
}

/**
 * Names in an open directory, without . and .., in the order getdents64
 * returns them; `buf` is the caller's reusable buffer. Returns the number of
 * getdents64 calls with the names, for callers that count syscalls.
 */
export function readDirectoryNames(fd: number, buf: Uint8Array): { names: string[]; calls: number } {
  const names: string[] = [];
  let calls = 0;
  for (;;) {
    const n = getdents64(fd, buf);
    calls++;
    if (n === 0) return { names, calls };
    for (const d of decodeDirents(buf, n)) if (d.name !== "." && d.name !== "..") names.push(d.name);
  }
}

/** Names in a directory, without . and .., sorted. */
export function listDirectory(path: string): string[] {
  const fd = openat(AT.FDCWD, path, O.RDONLY | O.DIRECTORY | O.CLOEXEC);
  try {
    return readDirectoryNames(fd, new Uint8Array(32 * 1024)).names.sort();
  } finally {
    close(fd);
  }
}
