/**
 * errno → name and text, and the one error type every failed kernel call becomes.
 *
 * The table is Linux x86_64's (asm-generic/errno-base.h and errno.h).
 */

const ERRNO: ReadonlyArray<readonly [number, string, string]> = [
  [1, "EPERM", "Operation not permitted"],
  [2, "ENOENT", "No such file or directory"],
  [3, "ESRCH", "No such process"],
  [4, "EINTR", "Interrupted system call"],
  [5, "EIO", "Input/output error"],
  [6, "ENXIO", "No such device or address"],
  [7, "E2BIG", "Argument list too long"],
  [8, "ENOEXEC", "Exec format error"],
  [9, "EBADF", "Bad file descriptor"],
  [10, "ECHILD", "No child processes"],
  [11, "EAGAIN", "Resource temporarily unavailable"],
  [12, "ENOMEM", "Cannot allocate memory"],
  [13, "EACCES", "Permission denied"],
  [14, "EFAULT", "Bad address"],
  [15, "ENOTBLK", "Block device required"],
  [16, "EBUSY", "Device or resource busy"],
  [17, "EEXIST", "File exists"],
  [18, "EXDEV", "Invalid cross-device link"],
  [19, "ENODEV", "No such device"],
  [20, "ENOTDIR", "Not a directory"],
  [21, "EISDIR", "Is a directory"],
  [22, "EINVAL", "Invalid argument"],
  [23, "ENFILE", "Too many open files in system"],
  [24, "EMFILE", "Too many open files"],
  [25, "ENOTTY", "Inappropriate ioctl for device"],
  [26, "ETXTBSY", "Text file busy"],
  [27, "EFBIG", "File too large"],
  [28, "ENOSPC", "No space left on device"],
  [29, "ESPIPE", "Illegal seek"],
  [30, "EROFS", "Read-only file system"],
  [31, "EMLINK", "Too many links"],
  [32, "EPIPE", "Broken pipe"],
  [33, "EDOM", "Numerical argument out of domain"],
  [34, "ERANGE", "Numerical result out of range"],
  [35, "EDEADLK", "Resource deadlock avoided"],
  [36, "ENAMETOOLONG", "File name too long"],
  [37, "ENOLCK", "No locks available"],
  [38, "ENOSYS", "Function not implemented"],
  [39, "ENOTEMPTY", "Directory not empty"],
  [40, "ELOOP", "Too many levels of symbolic links"],
  [42, "ENOMSG", "No message of desired type"],
  [43, "EIDRM", "Identifier removed"],
  [61, "ENODATA", "No data available"],
  [62, "ETIME", "Timer expired"],
  [71, "EPROTO", "Protocol error"],
  [75, "EOVERFLOW", "Value too large for defined data type"],
  [77, "EBADFD", "File descriptor in bad state"],
  [84, "EILSEQ", "Invalid or incomplete multibyte or wide character"],
  [88, "ENOTSOCK", "Socket operation on non-socket"],
  [92, "ENOPROTOOPT", "Protocol not available"],
  [93, "EPROTONOSUPPORT", "Protocol not supported"],
  [95, "EOPNOTSUPP", "Operation not supported"],
  [98, "EADDRINUSE", "Address already in use"],
  [99, "EADDRNOTAVAIL", "Cannot assign requested address"],
  [104, "ECONNRESET", "Connection reset by peer"],
  [106, "EISCONN", "Transport endpoint is already connected"],
  [107, "ENOTCONN", "Transport endpoint is not connected"],
  [110, "ETIMEDOUT", "Connection timed out"],
  [111, "ECONNREFUSED", "Connection refused"],
  [114, "EALREADY", "Operation already in progress"],
  [115, "EINPROGRESS", "Operation now in progress"],
  [116, "ESTALE", "Stale file handle"],
  [122, "EDQUOT", "Disk quota exceeded"],
  [125, "ECANCELED", "Operation canceled"],
  [130, "EOWNERDEAD", "Owner died"],
  [512, "ERESTARTSYS", "Restart system call (kernel-internal)"],
  [513, "ERESTARTNOINTR", "Restart system call without interruption (kernel-internal)"],
  [514, "ERESTARTNOHAND", "Restart if no handler (kernel-internal)"],
  [516, "ERESTART_RESTARTBLOCK", "Restart via restart_syscall (kernel-internal)"],
];

const byNumber = new Map<number, { name: string; text: string }>(
  ERRNO.map(([n, name, text]) => [n, { name, text }]),
);
const byName = new Map<string, number>(ERRNO.map(([n, name]) => [name, n]));

/** Symbolic name of an errno value, e.g. 2 → "ENOENT"; unknown values become "E#<n>". */
export function errnoName(errno: number): string {
  return byNumber.get(errno)?.name ?? `E#${errno}`;
}

/** Human text of an errno value, as strerror would say it. */
export function errnoText(errno: number): string {
  return byNumber.get(errno)?.text ?? `Unknown error ${errno}`;
}

/** Number of a symbolic errno name; throws on a name not in the table. */
export function errnoNumber(name: string): number {
  const n = byName.get(name);
  if (n === undefined) throw new Error(`unknown errno name ${name}`);
  return n;
}

/** Errno values by name, for comparisons in callers (`err.errno === Errno.ENOENT`). */
export const Errno = {
  EPERM: 1, ENOENT: 2, ESRCH: 3, EINTR: 4, EIO: 5, ENXIO: 6, EBADF: 9, ECHILD: 10, EAGAIN: 11,
  ENOMEM: 12, EACCES: 13, EFAULT: 14, EBUSY: 16, EEXIST: 17, ENODEV: 19, ENOTDIR: 20,
  EISDIR: 21, EINVAL: 22, ENOTTY: 25, ENOSPC: 28, ESPIPE: 29, ENOSYS: 38, ENOTEMPTY: 39,
  ELOOP: 40, ENOPROTOOPT: 92, EPROTONOSUPPORT: 93, EOVERFLOW: 75, EOPNOTSUPP: 95, EADDRINUSE: 98, ENOTCONN: 107, ECONNREFUSED: 111, ESTALE: 116,
} as const;

/**
 * A failed kernel or libc call: names the call, its key arguments and the errno.
 * `message` reads like `openat(AT_FDCWD, "/x", O_RDONLY): ENOENT (No such file or directory)`.
 */
export class SysError extends Error {
  override readonly name = "SysError";
  /** The errno symbol, e.g. "ENOENT". */
  readonly code: string;

  constructor(
    /** The call that failed, e.g. "openat". */
    readonly call: string,
    /** Its key arguments, already rendered for people. */
    readonly args: readonly string[],
    /** The raw errno value. */
    readonly errno: number,
  ) {
    super(`${call}(${args.join(", ")}): ${errnoName(errno)} (${errnoText(errno)})`);
    this.code = errnoName(errno);
  }
}
