/** x86_64 system call numbers and the kernel constants ckpt passes to them. */

export const SYS = {
  read: 0, write: 1, close: 3, wait4: 61, mmap: 9, munmap: 11, rt_sigaction: 13, rt_sigprocmask: 14, rt_sigreturn: 15, rt_sigtimedwait: 128,
  ioctl: 16, madvise: 28, pread64: 17, pwrite64: 18, getpid: 39, kill: 62, ptrace: 101,
  sigaltstack: 131, personality: 135, prctl: 157, arch_prctl: 158, gettid: 186,
  getdents64: 217, set_tid_address: 218, exit_group: 231, tgkill: 234, openat: 257,
  get_robust_list: 274, prlimit64: 302, name_to_handle_at: 303, open_by_handle_at: 304,
  process_vm_readv: 310, process_vm_writev: 311, kcmp: 312, userfaultfd: 323, statx: 332,
  rseq: 334, membarrier: 324, pidfd_open: 434, clone3: 435, pidfd_getfd: 438, getitimer: 36,
  brk: 12, clock_gettime: 228, sched_getparam: 143, sched_getscheduler: 145,
  fcntl: 72, flock: 73, fstatfs: 138, tee: 276, pipe2: 293,
  // Used by restore inside the tasks it rebuilds.
  mprotect: 10, mremap: 25, setitimer: 38, exit: 60, fchdir: 81, umask: 95, setpgid: 109,
  setsid: 112, setgroups: 116, setresuid: 117, setresgid: 119, setfsuid: 122, setfsgid: 123,
  capset: 126, rt_sigqueueinfo: 129, setpriority: 141, sched_setscheduler: 144, chroot: 161,
  epoll_ctl: 233, set_robust_list: 273, dup3: 292, rt_tgsigqueueinfo: 297, memfd_create: 319,
  close_range: 436,
  // The tiny programs (src/sys/tiny-elf.ts) and the dirty tracker's lifetime.
  fork: 57, clone: 56, socket: 41, bind: 49, listen: 50, socketpair: 53, chdir: 80, ppoll: 271, poll: 7, pidfd_send_signal: 424, alarm: 37, pause: 34, symlinkat: 266,
  // Used by restore to re-create open files in ckpt itself.
  lseek: 8, ftruncate: 77, fchmod: 91, fchown: 93, getresuid: 118, fchownat: 260, mknodat: 259, fchmodat: 268,
  utimensat: 280, timerfd_create: 283, timerfd_settime: 286, timerfd_gettime: 287, signalfd4: 289,
  eventfd2: 290, epoll_create1: 291, inotify_add_watch: 254, inotify_rm_watch: 255, inotify_init1: 294,
  fanotify_init: 300, fanotify_mark: 301, tkill: 200,
} as const;

/** fcntl(2) commands. F_GETOWNER_UIDS exists for checkpoint/restore (CONFIG_CHECKPOINT_RESTORE). */
export const F = {
  GETFL: 3, GETSIG: 11, GETOWN_EX: 16, GETOWNER_UIDS: 17, SETPIPE_SZ: 1031, GETPIPE_SZ: 1032,
  GET_SEALS: 1034, SETFD: 2, DUPFD_CLOEXEC: 1030, SETFL: 4, SETSIG: 10, SETOWN_EX: 15, ADD_SEALS: 1033,
} as const;

/** ioctl requests on files. */
export const FIONREAD = 0x541b;

/** Filesystem magics (statfs f_type). */
export const FS_MAGIC = { TMPFS: 0x01021994, HUGETLBFS: 0x958458f6 } as const;

/** open(2) flags. */
export const O = {
  RDONLY: 0, WRONLY: 1, RDWR: 2, ACCMODE: 3, CREAT: 0o100, EXCL: 0o200, NOCTTY: 0o400, TRUNC: 0o1000,
  APPEND: 0o2000, NONBLOCK: 0o4000, DIRECTORY: 0o200000, NOFOLLOW: 0o400000,
  CLOEXEC: 0o2000000, PATH: 0o10000000,
} as const;

/** *at() dirfd and flags. */
export const AT = {
  FDCWD: -100, SYMLINK_NOFOLLOW: 0x100, REMOVEDIR: 0x200, EMPTY_PATH: 0x1000,
} as const;

/** statx mask bits. */
export const STATX = {
  TYPE: 0x1, MODE: 0x2, NLINK: 0x4, UID: 0x8, GID: 0x10, INO: 0x100, SIZE: 0x200,
  BASIC_STATS: 0x7ff, MNT_ID: 0x1000,
} as const;

/** File type bits of st_mode. */
export const S_IFMT = 0o170000;
export const S_IF = {
  SOCK: 0o140000, LNK: 0o120000, REG: 0o100000, BLK: 0o060000, DIR: 0o040000,
  CHR: 0o020000, FIFO: 0o010000,
} as const;

/** waitpid options. */
export const W = { NOHANG: 1, UNTRACED: 2, ALL: 0x40000000 } as const;

/** Signals used by ckpt. */
export const SIG = { KILL: 9, CONT: 18, STOP: 19, TRAP: 5, CHLD: 17, TERM: 15, INT: 2 } as const;

/** ptrace requests. */
export const PTRACE = {
  PEEKDATA: 2, POKEDATA: 5, CONT: 7, KILL: 8, SINGLESTEP: 9, GETREGS: 12, SETREGS: 13,
  GETFPREGS: 14, DETACH: 17, SETOPTIONS: 0x4200, GETEVENTMSG: 0x4201, GETSIGINFO: 0x4202,
  GETREGSET: 0x4204, SETREGSET: 0x4205, SEIZE: 0x4206, INTERRUPT: 0x4207, LISTEN: 0x4208,
  PEEKSIGINFO: 0x4209, GETSIGMASK: 0x420a, SETSIGMASK: 0x420b, GET_SYSCALL_INFO: 0x420e,
  GET_THREAD_AREA: 25, GET_RSEQ_CONFIGURATION: 0x420f, SYSCALL: 24,
} as const;

/** PTRACE_EVENT_* numbers of the stops TRACEFORK/TRACEVFORK/TRACECLONE report. */
export const PTRACE_EVENT = { FORK: 1, VFORK: 2, CLONE: 3, EXEC: 4, EXIT: 6 } as const;

/** ptrace options (PTRACE_O_*). */
export const PTRACE_O = { TRACESYSGOOD: 1, TRACEFORK: 2, TRACEVFORK: 4, TRACECLONE: 8, EXITKILL: 0x100000 } as const;

/** The event number ptrace puts in bits 16.. of a wait status on a group-stop under SEIZE. */
export const PTRACE_EVENT_STOP = 128;

/** ELF note types for PTRACE_GETREGSET. */
export const NT = { PRSTATUS: 1, PRFPREG: 2, X86_XSTATE: 0x202, X86_SHSTK: 0x204 } as const;

/** kcmp(2) comparison types. */
export const KCMP = { FILE: 0, VM: 1, FILES: 2, FS: 3, SIGHAND: 4, IO: 5, SYSVSEM: 6, EPOLL_TFD: 7 } as const;

/** mmap(2) protections and flags. */
export const PROT = { NONE: 0, READ: 1, WRITE: 2, EXEC: 4 } as const;
export const MAP = { SHARED: 1, PRIVATE: 2, DROPPABLE: 0x08, FIXED: 0x10, LOCKED: 0x2000, FIXED_NOREPLACE: 0x100000, ANONYMOUS: 0x20, GROWSDOWN: 0x100, NORESERVE: 0x4000, POPULATE: 0x8000 } as const;

/** madvise(2) advice values. */
export const MADV_NOHUGEPAGE = 15;

/** PAGEMAP_SCAN ioctl on /proc/PID/pagemap (Linux 6.7+): _IOWR('f', 16, struct pm_scan_arg). */
export const PAGEMAP_SCAN = 0xc0606610;
/** Page categories reported by PAGEMAP_SCAN. */
export const PAGE_IS = {
  WPALLOWED: 1 << 0, WRITTEN: 1 << 1, FILE: 1 << 2, PRESENT: 1 << 3, SWAPPED: 1 << 4,
  PFNZERO: 1 << 5, HUGE: 1 << 6, SOFT_DIRTY: 1 << 7, GUARD: 1 << 8,
} as const;
/** pm_scan_arg.flags. */
export const PM_SCAN = { WP_MATCHING: 1, CHECK_WPASYNC: 2 } as const;

/** userfaultfd API handshake: _IOWR(0xAA, 0x3F, struct uffdio_api). */
export const UFFDIO_API = 0xc018aa3f;
/** Register a range with a userfaultfd: _IOWR(0xAA, 0x00, struct uffdio_register). */
export const UFFDIO_REGISTER = 0xc020aa00;
export const UFFDIO_REGISTER_MODE_MISSING = 1;
export const UFFDIO_REGISTER_MODE_WP = 2;
/** Fill missing pages (and wake their waiters): _IOWR(0xAA, 3, struct uffdio_copy), _IOWR(0xAA, 4, struct uffdio_zeropage). */
export const UFFDIO_COPY = 0xc028aa03;
export const UFFDIO_ZEROPAGE = 0xc020aa04;
export const UFFD_API = 0xaa;
export const UFFD_USER_MODE_ONLY = 1;
export const UFFD_FEATURE = { PAGEFAULT_FLAG_WP: 1 << 0, EVENT_FORK: 1 << 1, EVENT_REMAP: 1 << 2, EVENT_REMOVE: 1 << 3, EVENT_UNMAP: 1 << 6, WP_UNPOPULATED: 1 << 13, WP_ASYNC: 1 << 15 } as const;
/** UFFDIO_WRITEPROTECT: _IOWR(0xAA, 6, struct uffdio_writeprotect { range; mode }). */
export const UFFDIO_WRITEPROTECT = 0xc018aa06;
export const UFFDIO_WRITEPROTECT_MODE_WP = 1;
/** struct uffd_msg: 32 bytes; its event, and the events a snapshot asks for. */
export const UFFD_MSG_SIZE = 32;
export const UFFD_EVENT = { PAGEFAULT: 0x12, FORK: 0x13, REMAP: 0x14, REMOVE: 0x15, UNMAP: 0x16 } as const;

/** poll(2) events. */
export const POLL = { IN: 0x1, PRI: 0x2, OUT: 0x4, ERR: 0x8, HUP: 0x10, NVAL: 0x20 } as const;

/** Size of one page on x86_64. */
export const PAGE_SIZE = 4096;

/** Flags of eventfd2, signalfd4, timerfd_create, epoll_create1 and memfd_create (each CLOEXEC is O_CLOEXEC). */
export const EFD = { SEMAPHORE: 1, NONBLOCK: 0o4000, CLOEXEC: 0o2000000 } as const;
export const SFD = { NONBLOCK: 0o4000, CLOEXEC: 0o2000000 } as const;
export const TFD = { NONBLOCK: 0o4000, CLOEXEC: 0o2000000, TIMER_ABSTIME: 1, TIMER_CANCEL_ON_SET: 2 } as const;
export const EPOLL_CLOEXEC = 0o2000000;
export const MFD = { CLOEXEC: 1, ALLOW_SEALING: 2, HUGETLB: 4, NOEXEC_SEAL: 8, EXEC: 0x10 } as const;

/** inotify_init1 flags and the inotify_add_watch bits restore adds or reads back. */
export const IN = { NONBLOCK: 0o4000, CLOEXEC: 0o2000000, DONT_FOLLOW: 0x02000000, IGNORED: 0x8000, CLOSE_WRITE: 0x8, MOVED_TO: 0x80, CREATE: 0x100, ONLYDIR: 0x01000000 } as const;

/** fanotify_init flags and fanotify_mark flags (FAN_MARK_*). */
export const FAN = { CLOEXEC: 1, NONBLOCK: 2 } as const;
export const FAN_MARK = {
  ADD: 1, REMOVE: 2, DONT_FOLLOW: 4, ONLYDIR: 8, MOUNT: 0x10, IGNORED_MASK: 0x20, IGNORED_SURV_MODIFY: 0x40,
  FILESYSTEM: 0x100, EVICTABLE: 0x200, IGNORE: 0x400,
} as const;

/** memfd seals (F_ADD_SEALS / F_GET_SEALS). */
export const F_SEAL = { SEAL: 1, SHRINK: 2, GROW: 4, WRITE: 8, FUTURE_WRITE: 0x10, EXEC: 0x20 } as const;

/** TFD_IOC_SET_TICKS: _IOW('T', 0, u64), sets a timerfd's expiration count (CONFIG_CHECKPOINT_RESTORE). */
export const TFD_IOC_SET_TICKS = 0x40085400;

/** lseek(2) whence. */
export const SEEK = { SET: 0, CUR: 1, END: 2, DATA: 3, HOLE: 4 } as const;

/** prlimit(2) resources ckpt sets on itself. */
export const RLIMIT_NOFILE = 7;
