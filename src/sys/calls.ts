/**
 * Typed wrappers for the system calls glibc has no (usable) wrapper for:
 * kcmp, pidfd_open, pidfd_getfd, name_to_handle_at, open_by_handle_at,
 * userfaultfd. Each throws a SysError naming the call on failure.
 */
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
