/**
 * Kernel constants used only by remote system-call injection (dump/task/inject.ts) and
 * the task-state readers built on it (dump/task/task-state.ts). x86_64 values.
 */

/** The System V x86_64 ABI lets leaf code use 128 bytes below rsp without moving rsp. */
export const RED_ZONE = 128n;

/** x86_64 user code segment selector of a 64-bit task (0x23 would be a 32-bit compat task). */
export const USER_CS_64 = 0x33n;

/** Largest errno a system call returns as -errno; results in [-4095, -1] are errors. */
export const MAX_ERRNO = 4095n;

/** ptrace requests not in sys/nr.ts. */
export const PTRACE_GET_RSEQ_CONFIGURATION = 0x420f;

/** struct ptrace_rseq_configuration { u64 rseq_abi_pointer; u32 rseq_abi_size, signature, flags, pad; }. */
export const RSEQ_CONFIGURATION_SIZE = 24;

/** Highest signal number on x86_64 Linux (_NSIG). */
export const SIGMAX = 64;
/** Size in bytes of the kernel's sigset_t, the sigsetsize argument of rt_* signal calls. */
export const KSIGSET_SIZE = 8;

/** struct sigaction as rt_sigaction(2) sees it: handler, flags, restorer, mask (u64 each). */
export const KSIGACTION_SIZE = 32;
/** struct itimerval: it_interval {tv_sec, tv_usec}, it_value {tv_sec, tv_usec}. */
export const ITIMERVAL_SIZE = 32;
/** stack_t: ss_sp (u64), ss_flags (i32 + 4 bytes padding), ss_size (u64). */
export const STACK_T_SIZE = 24;
export const STACK_T_OFF = { sp: 0, flags: 8, size: 16 } as const;

export const ITIMER = { REAL: 0, VIRTUAL: 1, PROF: 2 } as const;

/** prctl option that reports a thread's clear_child_tid address (needs CONFIG_CHECKPOINT_RESTORE). */
export const PR_GET_TID_ADDRESS = 40;

/** mmap/munmap arguments for the scratch-page fallback. */
export const SCRATCH_PROT = 0x1 | 0x2; // PROT_READ | PROT_WRITE
export const SCRATCH_MAP_FLAGS = 0x02 | 0x20; // MAP_PRIVATE | MAP_ANONYMOUS

/** Names for signals that errors and tests mention. */
const SIGNAL_NAMES: Record<number, string> = {
  1: "SIGHUP", 2: "SIGINT", 3: "SIGQUIT", 4: "SIGILL", 5: "SIGTRAP", 6: "SIGABRT", 7: "SIGBUS",
  8: "SIGFPE", 9: "SIGKILL", 10: "SIGUSR1", 11: "SIGSEGV", 12: "SIGUSR2", 13: "SIGPIPE",
  14: "SIGALRM", 15: "SIGTERM", 16: "SIGSTKFLT", 17: "SIGCHLD", 18: "SIGCONT", 19: "SIGSTOP",
  20: "SIGTSTP", 21: "SIGTTIN", 22: "SIGTTOU", 23: "SIGURG", 24: "SIGXCPU", 25: "SIGXFSZ",
  26: "SIGVTALRM", 27: "SIGPROF", 28: "SIGWINCH", 29: "SIGIO", 30: "SIGPWR", 31: "SIGSYS",
};

export function signalName(sig: number): string {
  return SIGNAL_NAMES[sig] ?? (sig >= 32 && sig <= SIGMAX ? `SIGRT${sig}` : `signal ${sig}`);
}
