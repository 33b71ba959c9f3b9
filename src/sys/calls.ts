/**
 * Typed wrappers for the system calls glibc has no (usable) wrapper for:
 * kcmp, pidfd_open, pidfd_getfd, name_to_handle_at, open_by_handle_at,
 * userfaultfd. Each throws a SysError naming the call on failure.
 */
import { Errno, SysError } from "./errno";
import { addressOf, cstr, syscall } from "./libc";
import { F, KCMP, SYS } from "./nr";
import { decodeFileHandle, emptyFileHandle, encodeFileHandle, type FileHandle } from "./structs";

/** kcmp's verdict on two kernel objects: equal, or ordered for sorting, or merely different. */
export type KcmpOrder = "equal" | "less" | "greater" | "different";
const KCMP_RESULT: readonly KcmpOrder[] = ["equal", "less", "greater", "different"];

const KCMP_NAME: Record<number, string> = Object.fromEntries(Object.entries(KCMP).map(([k, v]) => [v, `KCMP_${k}`]));

/**
 * kcmp(2): compare a kernel object of two tasks. For KCMP_FILE, idx1 and idx2
 * are fd numbers in pid1 and pid2.
 */
export function kcmp(pid1: number, pid2: number, type: number, idx1 = 0, idx2 = 0): KcmpOrder {
  const r = syscall("kcmp", SYS.kcmp, [pid1, pid2, type, idx1, idx2], [String(pid1), String(pid2), KCMP_NAME[type] ?? String(type), String(idx1), String(idx2)]);
  const order = KCMP_RESULT[Number(r)];
  if (!order) throw new Error(`kcmp returned ${r}`);
  return order;
}

/** pidfd_open(2): a file descriptor that refers to process `pid`. */
export function pidfdOpen(pid: number, flags = 0): number {
  return Number(syscall("pidfd_open", SYS.pidfd_open, [pid, flags], [String(pid), String(flags)]));
}

/** pidfd_getfd(2): a duplicate, in this process, of fd `targetFd` of the process behind `pidfd`. */
export function pidfdGetfd(pidfd: number, targetFd: number): number {
  return Number(syscall("pidfd_getfd", SYS.pidfd_getfd, [pidfd, targetFd, 0], [String(pidfd), String(targetFd), "0"]));
}

/** name_to_handle_at(2): a persistent handle for `path` and the id of its mount. */
export function nameToHandleAt(dirfd: number, path: string, flags = 0): { handle: FileHandle; mountId: number } {
  const buf = emptyFileHandle();
  const mountId = new Int32Array(1);
  const p = cstr(path);
  syscall("name_to_handle_at", SYS.name_to_handle_at, [dirfd, addressOf(p), addressOf(buf), addressOf(mountId), flags], [String(dirfd), JSON.stringify(path), `0x${flags.toString(16)}`]);
  return { handle: decodeFileHandle(buf), mountId: mountId[0] ?? 0 };
}

/** open_by_handle_at(2): open the file a handle names; `mountFd` is any fd on its mount. */
export function openByHandleAt(mountFd: number, handle: FileHandle, flags: number): number {
  const buf = encodeFileHandle(handle);
  return Number(syscall("open_by_handle_at", SYS.open_by_handle_at, [mountFd, addressOf(buf), flags], [String(mountFd), `handle type ${handle.type}`, `0${flags.toString(8)}`]));
}

/**
 * poll(2): wait up to `timeoutMs` (-1: for ever) for any of `fds`; returns
 * each one's revents, in order (EINTR counts as nothing ready).
 */
export function poll(fds: readonly { fd: number; events: number }[], timeoutMs: number): number[] {
  const buf = new Int32Array(fds.length * 2);
  fds.forEach((f, i) => {
    buf[i * 2] = f.fd;
    buf[i * 2 + 1] = f.events & 0xffff;
  });
  try {
    syscall("poll", SYS.poll, [fds.length > 0 ? addressOf(buf) : 0, fds.length, timeoutMs], [`${fds.length} fds`, String(timeoutMs)]);
  } catch (e) {
    if (e instanceof SysError && e.errno === Errno.EINTR) return fds.map(() => 0);
    throw e;
  }
  return fds.map((_, i) => ((buf[i * 2 + 1] ?? 0) >>> 16) & 0xffff);
}

/** userfaultfd(2). */
export function userfaultfd(flags: number): number {
  return Number(syscall("userfaultfd", SYS.userfaultfd, [flags], [`0x${flags.toString(16)}`]));
}

const F_NAME: Record<number, string> = Object.fromEntries(Object.entries(F).map(([k, v]) => [v, `F_${k}`]));

/** fcntl(2) with an integer argument; returns the call's result. */
export function fcntl(fd: number, cmd: number, arg = 0): number {
  return Number(syscall("fcntl", SYS.fcntl, [fd, cmd, arg], [String(fd), F_NAME[cmd] ?? String(cmd), String(arg)]));
}

/** fcntl(2) with a pointer argument (F_GETOWN_EX, F_GETOWNER_UIDS): fills `buf`. */
export function fcntlInto(fd: number, cmd: number, buf: Int32Array | Uint32Array): void {
  syscall("fcntl", SYS.fcntl, [fd, cmd, addressOf(buf)], [String(fd), F_NAME[cmd] ?? String(cmd)]);
}

/** pipe2(2): [read end, write end]. */
export function pipe2(flags: number): [number, number] {
  const fds = new Int32Array(2);
  syscall("pipe2", SYS.pipe2, [addressOf(fds), flags], [`0${flags.toString(8)}`]);
  return [fds[0] ?? -1, fds[1] ?? -1];
}

/** tee(2): duplicate up to `len` bytes of pipe `fdIn` into pipe `fdOut` without consuming them. */
export function tee(fdIn: number, fdOut: number, len: number, flags: number): number {
  return Number(syscall("tee", SYS.tee, [fdIn, fdOut, len, flags], [String(fdIn), String(fdOut), String(len), `0x${flags.toString(16)}`]));
}

/** fstatfs(2): the filesystem's magic (f_type). */
export function fstatfsType(fd: number): number {
  const buf = new BigInt64Array(15); // struct statfs is 120 bytes; f_type comes first
  syscall("fstatfs", SYS.fstatfs, [fd, addressOf(buf)], [String(fd)]);
  return Number(BigInt.asUintN(32, buf[0] ?? 0n));
}

/**
 * kcmp(KCMP_EPOLL_TFD): whether fd `fd` of `pid1` is the file that epoll fd
 * `efd` of `pid2` watches under fd number `tfd` (`toff`: which of several
 * watches registered under that number).
 */
export function kcmpEpollTarget(pid1: number, fd: number, pid2: number, efd: number, tfd: number, toff = 0): KcmpOrder {
  const slot = new Uint32Array([efd, tfd, toff]);
  const r = syscall("kcmp", SYS.kcmp, [pid1, pid2, KCMP.EPOLL_TFD, fd, addressOf(slot)], [String(pid1), String(pid2), "KCMP_EPOLL_TFD", String(fd), `{efd ${efd}, tfd ${tfd}, toff ${toff}}`]);
  const order = KCMP_RESULT[Number(r)];
  if (!order) throw new Error(`kcmp returned ${r}`);
  return order;
}

// ---------------------------------------------------------------- calls restore makes on ckpt's own files

/** lseek(2); returns the resulting offset. */
export function lseek(fd: number, offset: bigint, whence: number): bigint {
  return syscall("lseek", SYS.lseek, [fd, offset, whence], [String(fd), String(offset), ["SEEK_SET", "SEEK_CUR", "SEEK_END"][whence] ?? String(whence)]);
}

/** ftruncate(2). */
export function ftruncate(fd: number, size: bigint): void {
  syscall("ftruncate", SYS.ftruncate, [fd, size], [String(fd), String(size)]);
}

/** fchmod(2). */
export function fchmod(fd: number, mode: number): void {
  syscall("fchmod", SYS.fchmod, [fd, mode], [String(fd), `0${mode.toString(8)}`]);
}

/** fchown(2). */
export function fchown(fd: number, uid: number, gid: number): void {
  syscall("fchown", SYS.fchown, [fd, uid, gid], [String(fd), String(uid), String(gid)]);
}

/** fchmodat(2) of a path relative to the working directory (a socket file, which cannot be opened). */
export function chmodPath(path: string, mode: number): void {
  const p = cstr(path);
  syscall("fchmodat", SYS.fchmodat, [-100, addressOf(p), mode, 0], ["AT_FDCWD", JSON.stringify(path), `0${mode.toString(8)}`]);
}

/** fchownat(2) of a path relative to the working directory, not following a final symlink. */
export function chownPath(path: string, uid: number, gid: number): void {
  const p = cstr(path);
  syscall("fchownat", SYS.fchownat, [-100, addressOf(p), uid, gid, 0x100], ["AT_FDCWD", JSON.stringify(path), String(uid), String(gid), "AT_SYMLINK_NOFOLLOW"]);
}

/** futimens(3) through utimensat(fd, NULL, times, 0): access and modification times in ns since the epoch. */
export function futimens(fd: number, atime: { sec: bigint; nsec: bigint }, mtime: { sec: bigint; nsec: bigint }): void {
  const times = new BigInt64Array([atime.sec, atime.nsec, mtime.sec, mtime.nsec]);
  syscall("utimensat", SYS.utimensat, [fd, 0, addressOf(times), 0], [String(fd), "NULL", `{${atime.sec}.${atime.nsec}, ${mtime.sec}.${mtime.nsec}}`, "0"]);
}

/** eventfd2(2): an eventfd whose counter starts at `initval` (32 bits; write(2) the rest). */
export function eventfd2(initval: number, flags: number): number {
  return Number(syscall("eventfd2", SYS.eventfd2, [initval, flags], [String(initval), `0${flags.toString(8)}`]));
}

/** signalfd4(2) creating a new signalfd (fd -1) for the signals in `mask` (bit N-1 for signal N). */
export function signalfd4(mask: bigint, flags: number): number {
  const set = new BigUint64Array([mask]);
  return Number(syscall("signalfd4", SYS.signalfd4, [-1, addressOf(set), 8, flags], ["-1", `0x${mask.toString(16)}`, "8", `0${flags.toString(8)}`]));
}

/** struct itimerspec: interval and value, seconds and nanoseconds. */
export interface Itimerspec {
  intervalSec: bigint;
  intervalNsec: bigint;
  valueSec: bigint;
  valueNsec: bigint;
}

/** timerfd_create(2). */
export function timerfdCreate(clockid: number, flags: number): number {
  return Number(syscall("timerfd_create", SYS.timerfd_create, [clockid, flags], [String(clockid), `0${flags.toString(8)}`]));
}

/** timerfd_settime(2) without asking for the old setting. */
export function timerfdSettime(fd: number, flags: number, t: Itimerspec): void {
  const spec = new BigInt64Array([t.intervalSec, t.intervalNsec, t.valueSec, t.valueNsec]);
  syscall("timerfd_settime", SYS.timerfd_settime, [fd, flags, addressOf(spec), 0], [String(fd), String(flags), `{value ${t.valueSec}.${t.valueNsec}, interval ${t.intervalSec}.${t.intervalNsec}}`]);
}

/** timerfd_gettime(2): the time left (relative) and the interval. */
export function timerfdGettime(fd: number): Itimerspec {
  const spec = new BigInt64Array(4);
  syscall("timerfd_gettime", SYS.timerfd_gettime, [fd, addressOf(spec)], [String(fd)]);
  return { intervalSec: spec[0] ?? 0n, intervalNsec: spec[1] ?? 0n, valueSec: spec[2] ?? 0n, valueNsec: spec[3] ?? 0n };
}

/** clock_gettime(2) of `clockid`. */
export function clockGettime(clockid: number): { sec: bigint; nsec: bigint } {
  const ts = new BigInt64Array(2);
  syscall("clock_gettime", SYS.clock_gettime, [clockid, addressOf(ts)], [String(clockid)]);
  return { sec: ts[0] ?? 0n, nsec: ts[1] ?? 0n };
}

/** epoll_create1(2). */
export function epollCreate1(flags: number): number {
  return Number(syscall("epoll_create1", SYS.epoll_create1, [flags], [`0${flags.toString(8)}`]));
}

/** memfd_create(2) in ckpt itself. */
export function memfdCreate(name: string, flags: number): number {
  const n = cstr(name);
  return Number(syscall("memfd_create", SYS.memfd_create, [addressOf(n), flags], [JSON.stringify(name), `0x${flags.toString(16)}`]));
}

/** A resource limit; RLIM_INFINITY is 2^64-1. */
export interface Rlimit {
  soft: bigint;
  hard: bigint;
}

/** prlimit64(2): a process's limit of `resource` (pid 0: ckpt itself), setting it to `set` when given; returns the old one. */
export function prlimit(pid: number, resource: number, set?: Rlimit): Rlimit {
  const next = set ? new BigUint64Array([set.soft, set.hard]) : null;
  const old = new BigUint64Array(2);
  syscall("prlimit64", SYS.prlimit64, [pid, resource, next ? addressOf(next) : 0, addressOf(old)], [String(pid), String(resource), set ? `{${set.soft}, ${set.hard}}` : "NULL"]);
  return { soft: old[0] ?? 0n, hard: old[1] ?? 0n };
}

/** getresuid(2): real, effective and saved uid of the calling thread. */
export function getresuid(): [number, number, number] {
  const [r, e, s] = [new Uint32Array(1), new Uint32Array(1), new Uint32Array(1)];
  syscall("getresuid", SYS.getresuid, [addressOf(r), addressOf(e), addressOf(s)], []);
  return [r[0] ?? 0, e[0] ?? 0, s[0] ?? 0];
}

/**
 * setresuid(2) as the raw system call: unlike glibc's wrapper it changes the
 * calling thread only, which is what a short switch of identity around one
 * call (F_SETOWN_EX records the caller's uids) wants. -1 keeps an id.
 */
export function setresuidThread(ruid: number, euid: number, suid: number): void {
  syscall("setresuid", SYS.setresuid, [ruid, euid, suid], [String(ruid), String(euid), String(suid)]);
}

/** inotify_init1(2). */
export function inotifyInit1(flags: number): number {
  return Number(syscall("inotify_init1", SYS.inotify_init1, [flags], [`0${flags.toString(8)}`]));
}

/** inotify_add_watch(2): the watch descriptor of `path` in instance `fd` (an existing one when it is watched already). */
export function inotifyAddWatch(fd: number, path: string, mask: number): number {
  const p = cstr(path);
  return Number(syscall("inotify_add_watch", SYS.inotify_add_watch, [fd, addressOf(p), mask >>> 0], [String(fd), JSON.stringify(path), `0x${(mask >>> 0).toString(16)}`]));
}

/** inotify_rm_watch(2). */
export function inotifyRmWatch(fd: number, wd: number): void {
  syscall("inotify_rm_watch", SYS.inotify_rm_watch, [fd, wd], [String(fd), String(wd)]);
}

/** fanotify_init(2): `flags` (FAN_*), `eventFlags` the open flags of the fds events carry. */
export function fanotifyInit(flags: number, eventFlags: number): number {
  return Number(syscall("fanotify_init", SYS.fanotify_init, [flags >>> 0, eventFlags >>> 0], [`0x${(flags >>> 0).toString(16)}`, `0${(eventFlags >>> 0).toString(8)}`]));
}

/** fanotify_mark(2) of `path` relative to the working directory. */
export function fanotifyMark(fd: number, flags: number, mask: bigint, path: string): void {
  const p = cstr(path);
  syscall("fanotify_mark", SYS.fanotify_mark, [fd, flags >>> 0, mask, -100, addressOf(p)], [String(fd), `0x${(flags >>> 0).toString(16)}`, `0x${mask.toString(16)}`, "AT_FDCWD", JSON.stringify(path)]);
}

/** symlinkat(2): a symbolic link `path` (relative to `dirfd`) holding `target`. */
export function symlinkat(target: string, dirfd: number, path: string): void {
  syscall("symlinkat", SYS.symlinkat, [addressOf(cstr(target)), dirfd, addressOf(cstr(path))], [JSON.stringify(target), String(dirfd), JSON.stringify(path)]);
}

/** sched_getscheduler(2) of thread `tid`: its policy, SCHED_RESET_ON_FORK included (/proc's stat leaves that flag out). */
export function schedGetscheduler(tid: number): number {
  return Number(syscall("sched_getscheduler", SYS.sched_getscheduler, [tid], [String(tid)]));
}

/** mknodat(2) relative to the working directory: a FIFO, say (mode with S_IFIFO). */
export function mknodPath(path: string, mode: number): void {
  const p = cstr(path);
  syscall("mknodat", SYS.mknodat, [-100, addressOf(p), mode, 0], ["AT_FDCWD", JSON.stringify(path), `0${mode.toString(8)}`, "0"]);
}
