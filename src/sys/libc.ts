/**
 * bun:ffi bindings to libc. Every wrapper either returns the call's result or
 * throws a SysError naming the call, its key arguments and errno.
 *
 * errno is thread-local: `__errno_location` is bound once and read right after a
 * failing call, before anything else can run on this thread. Only the main JS
 * thread calls into this module.
 */
import { dlopen, FFIType, ptr, read, toArrayBuffer, type Pointer } from "bun:ffi";
import { SysError } from "./errno";
import { AT, STATX, SYS } from "./nr";
import { decodeStatx, STATX_SIZE, type Statx } from "./structs";

const LIBC = "libc.so.6";

const lib = dlopen(LIBC, {
  __errno_location: { args: [], returns: "ptr" },
  openat: { args: ["i32", "ptr", "i32", "u32"], returns: "i32" },
  close: { args: ["i32"], returns: "i32" },
  mkdirat: { args: ["i32", "ptr", "u32"], returns: "i32" },
  unlinkat: { args: ["i32", "ptr", "i32"], returns: "i32" },
  renameat: { args: ["i32", "ptr", "i32", "ptr"], returns: "i32" },
  read: { args: ["i32", "ptr", "u64"], returns: FFIType.i64_fast },
  pread64: { args: ["i32", "ptr", "u64", "i64"], returns: FFIType.i64_fast },
  write: { args: ["i32", "ptr", "u64"], returns: FFIType.i64_fast },
  pwrite64: { args: ["i32", "ptr", "u64", "i64"], returns: FFIType.i64_fast },
  readlinkat: { args: ["i32", "ptr", "ptr", "u64"], returns: FFIType.i64_fast },
  statx: { args: ["i32", "ptr", "i32", "u32", "ptr"], returns: "i32" },
  getdents64: { args: ["i32", "ptr", "u64"], returns: FFIType.i64_fast },
  waitpid: { args: ["i32", "ptr", "i32"], returns: "i32" },
  kill: { args: ["i32", "i32"], returns: "i32" },
  getpid: { args: [], returns: "i32" },
  ioctl: { args: ["i32", "u64", "ptr"], returns: "i32" },
  mmap: { args: ["ptr", "u64", "i32", "i32", "i32", "i64"], returns: "ptr" },
  munmap: { args: ["ptr", "u64"], returns: "i32" },
  process_vm_readv: { args: ["i32", "ptr", "u64", "ptr", "u64", "u64"], returns: FFIType.i64_fast },
  process_vm_writev: { args: ["i32", "ptr", "u64", "ptr", "u64", "u64"], returns: FFIType.i64_fast },
  // glibc's syscall() is variadic; on x86_64 passing six integer arguments is
  // the same as a fixed six-argument call.
  syscall: { args: ["i64", "i64", "i64", "i64", "i64", "i64", "i64"], returns: "i64" },
});

const sym = lib.symbols;
const errnoPtr: Pointer = sym.__errno_location() as Pointer;

/** The errno of the last failed call on this thread. Read it immediately after the failure. */
export function lastErrno(): number {
  return read.i32(errnoPtr, 0);
}

/**
 * Throw the SysError for a failed call. Callers pass `lastErrno()` as the first
 * argument: JavaScript evaluates arguments left to right, so errno is read
 * before the argument strings are built (building them may allocate, and an
 * allocation may make libc calls of its own).
 */
export function fail(errno: number, call: string, args: readonly string[]): never {
  throw new SysError(call, args, errno);
}

/**
 * How many times each call was made through this module, by call name (raw
 * syscalls by the name their caller gives, e.g. "ptrace"). A dump reports the
 * difference of two snapshots as its syscall counts.
 */
export const callCounts: Record<string, number> = {};

export function counted(call: string): void {
  callCounts[call] = (callCounts[call] ?? 0) + 1;
}

/** A copy of the counters, to subtract from a later one. */
export function snapshotCallCounts(): Record<string, number> {
  return { ...callCounts };
}

/** Calls made since `before` (a snapshot), only those that happened. */
export function callCountsSince(before: Readonly<Record<string, number>>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [name, n] of Object.entries(callCounts)) {
    const d = n - (before[name] ?? 0);
    if (d > 0) out[name] = d;
  }
  return out;
}

const utf8Encoder = new TextEncoder();
const utf8Decoder = new TextDecoder();

/** NUL-terminated UTF-8 copy of a string, for path arguments. */
export function cstr(s: string): Uint8Array {
  return utf8Encoder.encode(`${s}\0`);
}

/** Render a dirfd for error messages. */
function showDirfd(dirfd: number): string {
  return dirfd === AT.FDCWD ? "AT_FDCWD" : String(dirfd);
}

function oct(n: number): string {
  return `0${n.toString(8)}`;
}

export function openat(dirfd: number, path: string, flags: number, mode = 0): number {
  counted("openat");
  const fd = sym.openat(dirfd, cstr(path), flags, mode);
  if (fd < 0) fail(lastErrno(), "openat", [showDirfd(dirfd), JSON.stringify(path), oct(flags)]);
  return fd;
}

export function close(fd: number): void {
  counted("close");
  if (sym.close(fd) < 0) fail(lastErrno(), "close", [String(fd)]);
}

export function mkdirat(dirfd: number, path: string, mode: number): void {
  counted("mkdirat");
  if (sym.mkdirat(dirfd, cstr(path), mode) < 0) fail(lastErrno(), "mkdirat", [showDirfd(dirfd), JSON.stringify(path), oct(mode)]);
}

/** unlinkat(2); `flags` AT_REMOVEDIR removes an empty directory. */
export function unlinkat(dirfd: number, path: string, flags = 0): void {
  counted("unlinkat");
  if (sym.unlinkat(dirfd, cstr(path), flags) < 0) fail(lastErrno(), "unlinkat", [showDirfd(dirfd), JSON.stringify(path), `0x${flags.toString(16)}`]);
}

export function renameat(olddirfd: number, oldpath: string, newdirfd: number, newpath: string): void {
  counted("renameat");
  if (sym.renameat(olddirfd, cstr(oldpath), newdirfd, cstr(newpath)) < 0) {
    fail(lastErrno(), "renameat", [showDirfd(olddirfd), JSON.stringify(oldpath), showDirfd(newdirfd), JSON.stringify(newpath)]);
  }
}

/** read(2) once; returns the byte count (0 at EOF). */
export function readInto(fd: number, buf: Uint8Array, len = buf.length): number {
  counted("read");
  const n = sym.read(fd, buf, len) as number;
  if (n < 0) fail(lastErrno(), "read", [String(fd), String(len)]);
  return n;
}

/** pread(2) once; returns the byte count (0 at EOF). */
export function preadInto(fd: number, buf: Uint8Array, offset: number | bigint, len = buf.length): number {
  counted("pread");
  const n = sym.pread64(fd, buf, len, offset) as number;
  if (n < 0) fail(lastErrno(), "pread", [String(fd), String(len), `0x${offset.toString(16)}`]);
  return n;
}

/** pread(2) into all of `buf` from `offset`, looping over short reads; returns the bytes read (fewer only at EOF). */
export function preadFull(fd: number, buf: Uint8Array, offset: bigint): number {
  let done = 0;
  while (done < buf.length) {
    const n = preadInto(fd, buf.subarray(done), offset + BigInt(done));
    if (n === 0) break;
    done += n;
  }
  return done;
}

/** write(2) all of `buf`, looping over short writes. */
export function writeAll(fd: number, buf: Uint8Array): void {
  let off = 0;
  while (off < buf.length) {
    const part = off === 0 ? buf : buf.subarray(off);
    counted("write");
    const n = sym.write(fd, part, part.length) as number;
    if (n < 0) fail(lastErrno(), "write", [String(fd), String(part.length)]);
    off += n;
  }
}

/** pwrite(2) all of `buf` at `offset`, looping over short writes. */
export function pwriteAll(fd: number, buf: Uint8Array, offset: number): void {
  let off = 0;
  while (off < buf.length) {
    const part = off === 0 ? buf : buf.subarray(off);
    counted("pwrite");
    const n = sym.pwrite64(fd, part, part.length, offset + off) as number;
    if (n < 0) fail(lastErrno(), "pwrite", [String(fd), String(part.length), String(offset + off)]);
    off += n;
  }
}

const linkBuf = new Uint8Array(4096);

/** readlinkat(2); returns the link target. */
export function readlinkat(dirfd: number, path: string): string {
  counted("readlinkat");
  const n = sym.readlinkat(dirfd, cstr(path), linkBuf, linkBuf.length) as number;
  if (n < 0) fail(lastErrno(), "readlinkat", [showDirfd(dirfd), JSON.stringify(path)]);
  return utf8Decoder.decode(linkBuf.subarray(0, n));
}

const statxBuf = new Uint8Array(STATX_SIZE);

/** statx(2) of `path` relative to `dirfd`. */
export function statx(dirfd: number, path: string, flags = 0, mask = STATX.BASIC_STATS | STATX.MNT_ID): Statx {
  counted("statx");
  if (sym.statx(dirfd, cstr(path), flags, mask, statxBuf) < 0) {
    fail(lastErrno(), "statx", [showDirfd(dirfd), JSON.stringify(path), `0x${flags.toString(16)}`]);
  }
  return decodeStatx(statxBuf);
}

/** fstat of an open fd, through statx(fd, "", AT_EMPTY_PATH). */
export function fstat(fd: number): Statx {
  counted("statx");
  if (sym.statx(fd, cstr(""), AT.EMPTY_PATH, STATX.BASIC_STATS | STATX.MNT_ID, statxBuf) < 0) {
    fail(lastErrno(), "statx", [String(fd), '""', "AT_EMPTY_PATH"]);
  }
  return decodeStatx(statxBuf);
}

/** getdents64(2) into `buf`; returns the byte count (0 at the end of the directory). */
export function getdents64(fd: number, buf: Uint8Array): number {
  counted("getdents64");
  const n = sym.getdents64(fd, buf, buf.length) as number;
  if (n < 0) fail(lastErrno(), "getdents64", [String(fd), String(buf.length)]);
  return n;
}

const statusBuf = new Int32Array(1);

/** waitpid(2); returns the pid that changed state (0 with WNOHANG when none) and its raw status. */
export function waitpid(pid: number, options: number): { pid: number; status: number } {
  counted("waitpid");
  const r = sym.waitpid(pid, statusBuf, options);
  if (r < 0) fail(lastErrno(), "waitpid", [String(pid), `0x${options.toString(16)}`]);
  return { pid: r, status: statusBuf[0] ?? 0 };
}

export function kill(pid: number, sig: number): void {
  counted("kill");
  if (sym.kill(pid, sig) < 0) fail(lastErrno(), "kill", [String(pid), String(sig)]);
}

export function getpid(): number {
  return sym.getpid();
}

/** ioctl(2) with a pointer argument; returns the call's non-negative result. */
export function ioctl(fd: number, request: number, arg: Uint8Array | null, what = `0x${request.toString(16)}`): number {
  counted("ioctl");
  const r = sym.ioctl(fd, request, arg);
  if (r < 0) fail(lastErrno(), "ioctl", [String(fd), what]);
  return r;
}

/** mmap(2); returns the address. */
export function mmap(addr: number, length: number, prot: number, flags: number, fd = -1, offset = 0): number {
  counted("mmap");
  const p = sym.mmap(addr === 0 ? null : (addr as Pointer), length, prot, flags, fd, offset);
  // MAP_FAILED is (void *)-1, which bun reports as a non-pointer.
  if (p === null || (p as number) === -1 || (p as number) >= 2 ** 64 - 4096) {
    fail(lastErrno(), "mmap", [`0x${addr.toString(16)}`, String(length), String(prot), `0x${flags.toString(16)}`, String(fd)]);
  }
  return p as number;
}

export function madvise(addr: number, length: number, advice: number): void {
  syscall("madvise", SYS.madvise, [addr, length, advice], [`0x${addr.toString(16)}`, String(length), String(advice)]);
}

export function munmap(addr: number, length: number): void {
  counted("munmap");
  if (sym.munmap(addr as Pointer, length) < 0) fail(lastErrno(), "munmap", [`0x${addr.toString(16)}`, String(length)]);
}

/**
 * process_vm_readv(2) with caller-built iovec arrays (see structs.ts). Returns the
 * byte count, which may be short when a remote range is not mapped.
 */
export function processVmReadv(pid: number, local: BigUint64Array, localCount: number, remote: BigUint64Array, remoteCount: number): number {
  counted("process_vm_readv");
  const n = sym.process_vm_readv(pid, local, localCount, remote, remoteCount, 0) as number;
  if (n < 0) fail(lastErrno(), "process_vm_readv", [String(pid), `${localCount} local iov`, `${remoteCount} remote iov`]);
  return n;
}

export function processVmWritev(pid: number, local: BigUint64Array, localCount: number, remote: BigUint64Array, remoteCount: number): number {
  counted("process_vm_writev");
  const n = sym.process_vm_writev(pid, local, localCount, remote, remoteCount, 0) as number;
  if (n < 0) fail(lastErrno(), "process_vm_writev", [String(pid), `${localCount} local iov`, `${remoteCount} remote iov`]);
  return n;
}

type Arg = number | bigint;

/**
 * Raw syscall(2). Returns the kernel's result as a bigint (values such as
 * PEEKDATA words use all 64 bits); throws on -1 with the errno.
 */
export function syscall(name: string, nr: number, args: readonly Arg[], shown: readonly string[] = args.map(String)): bigint {
  counted(name);
  const a = [0, 0, 0, 0, 0, 0].map((z, i) => args[i] ?? z) as [Arg, Arg, Arg, Arg, Arg, Arg];
  const r = sym.syscall(nr, ...a) as bigint;
  if (r === -1n) fail(lastErrno(), name, shown);
  return r;
}

/**
 * A byte view of `length` bytes of this process's memory at `addr` (e.g. an
 * area from mmap). The view is valid until that memory is unmapped.
 */
export function memoryView(addr: number, length: number): Uint8Array {
  return new Uint8Array(toArrayBuffer(addr as Pointer, 0, length));
}

/** Address of a buffer, to put into a struct or pass as a syscall argument. */
export function addressOf(buf: NodeJS.TypedArray | DataView): number {
  return ptr(buf);
}
