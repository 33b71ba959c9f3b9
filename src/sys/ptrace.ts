/**
 * ptrace(2) through the raw system call (glibc's wrapper changes the meaning of
 * the PEEK requests). Requests only work from the thread that seized the tracee:
 * all ptrace work in ckpt stays synchronous on the main thread.
 */
import { addressOf, syscall, waitpid } from "./libc";
import { NT, PTRACE, PTRACE_EVENT_STOP, SYS, W } from "./nr";
import { encodePeeksiginfoArgs, SIGINFO_SIZE, PTRACE_PEEKSIGINFO_SHARED } from "./structs";

const NT_NAME: Record<number, string> = { [NT.PRSTATUS]: "NT_PRSTATUS", [NT.PRFPREG]: "NT_PRFPREG", [NT.X86_XSTATE]: "NT_X86_XSTATE" };

/** One ptrace request; errors read `ptrace(PTRACE_X, pid, shown...)`. */
function ptrace(req: number, reqName: string, pid: number, addr: number | bigint, data: number | bigint, shown: readonly string[] = []): bigint {
  return syscall("ptrace", SYS.ptrace, [req, pid, addr, data], [reqName, String(pid), ...shown]);
}

/** Attach without stopping the task (PTRACE_SEIZE). */
export function seize(pid: number, options = 0): void {
  ptrace(PTRACE.SEIZE, "PTRACE_SEIZE", pid, 0, options);
}

/** Replace a tracee's ptrace options (PTRACE_SETOPTIONS). */
export function setOptions(pid: number, options: number): void {
  ptrace(PTRACE.SETOPTIONS, "PTRACE_SETOPTIONS", pid, 0, options, [`0x${options.toString(16)}`]);
}

/** Ask a seized task to stop; the stop is reported through waitpid. */
export function interrupt(pid: number): void {
  ptrace(PTRACE.INTERRUPT, "PTRACE_INTERRUPT", pid, 0, 0);
}

/** Detach, letting the task run on (with `sig` delivered when non-zero). */
export function detach(pid: number, sig = 0): void {
  ptrace(PTRACE.DETACH, "PTRACE_DETACH", pid, 0, sig);
}

/** The message of the event stop the task is in (PTRACE_GETEVENTMSG): for a clone, the new task's pid in the tracer's namespace. */
export function eventMsg(pid: number): number {
  const msg = new BigUint64Array(1);
  ptrace(PTRACE.GETEVENTMSG, "PTRACE_GETEVENTMSG", pid, 0, BigInt(addressOf(msg)));
  return Number(msg[0]);
}

export function cont(pid: number, sig = 0): void {
  ptrace(PTRACE.CONT, "PTRACE_CONT", pid, 0, sig);
}

/** Resume until the next syscall-enter or syscall-exit stop (PTRACE_SYSCALL). */
export function resumeToSyscall(pid: number, sig = 0): void {
  ptrace(PTRACE.SYSCALL, "PTRACE_SYSCALL", pid, 0, sig);
}

/** PTRACE_SYSCALL_INFO_* of struct ptrace_syscall_info: which kind of stop a tracee is in. */
export const SYSCALL_INFO_OP = { NONE: 0, ENTRY: 1, EXIT: 2, SECCOMP: 3 } as const;

export type SyscallStopInfo =
  | { op: typeof SYSCALL_INFO_OP.ENTRY; ip: bigint; nr: bigint }
  | { op: typeof SYSCALL_INFO_OP.EXIT; ip: bigint; rval: bigint }
  | { op: 0 | 3; ip: bigint };

const syscallInfoBuf = new Uint8Array(88);

/**
 * What the stop a tracee is in says about system calls (PTRACE_GET_SYSCALL_INFO):
 * a syscall-enter stop with the call number, a syscall-exit stop with the
 * result, or neither (a signal or event stop). `ip` is the user rip, past the
 * `syscall` instruction for the first two.
 */
export function syscallInfo(pid: number): SyscallStopInfo {
  ptrace(PTRACE.GET_SYSCALL_INFO, "PTRACE_GET_SYSCALL_INFO", pid, syscallInfoBuf.length, addressOf(syscallInfoBuf));
  const v = new DataView(syscallInfoBuf.buffer);
  const op = syscallInfoBuf[0] ?? 0;
  const ip = v.getBigUint64(8, true);
  if (op === SYSCALL_INFO_OP.ENTRY) return { op, ip, nr: v.getBigUint64(24, true) };
  if (op === SYSCALL_INFO_OP.EXIT) return { op, ip, rval: v.getBigInt64(24, true) };
  return { op: op === SYSCALL_INFO_OP.SECCOMP ? 3 : 0, ip };
}

/**
 * PTRACE_GETREGSET for note type `nt` into `buf`; returns the byte count the
 * kernel filled (it shrinks iov_len to the size of the register set).
 */
export function getRegset(pid: number, nt: number, buf: Uint8Array): number {
  const iov = new BigUint64Array([BigInt(addressOf(buf)), BigInt(buf.length)]);
  ptrace(PTRACE.GETREGSET, "PTRACE_GETREGSET", pid, nt, addressOf(iov), [NT_NAME[nt] ?? String(nt)]);
  return Number(iov[1]);
}

export function setRegset(pid: number, nt: number, buf: Uint8Array): void {
  const iov = new BigUint64Array([BigInt(addressOf(buf)), BigInt(buf.length)]);
  ptrace(PTRACE.SETREGSET, "PTRACE_SETREGSET", pid, nt, addressOf(iov), [NT_NAME[nt] ?? String(nt)]);
}


/** The blocked-signal mask of a stopped tracee (PTRACE_GETSIGMASK). */
export function getSigmask(pid: number): bigint {
  const mask = new BigUint64Array(1);
  ptrace(PTRACE.GETSIGMASK, "PTRACE_GETSIGMASK", pid, 8, addressOf(mask));
  return mask[0] ?? 0n;
}

/** Set a stopped tracee's blocked-signal mask (PTRACE_SETSIGMASK; SIGKILL and SIGSTOP stay unblocked whatever it says). */
export function setSigmask(pid: number, mask: bigint): void {
  const m = new BigUint64Array([mask]);
  ptrace(PTRACE.SETSIGMASK, "PTRACE_SETSIGMASK", pid, 8, addressOf(m), [`0x${mask.toString(16)}`]);
}

/**
 * Queued signals without dequeuing them (PTRACE_PEEKSIGINFO): the thread's own
 * queue, or the thread group's shared one. Each is a raw 128-byte siginfo_t.
 */
export function peekSiginfo(pid: number, shared: boolean): Uint8Array[] {
  const out: Uint8Array[] = [];
  const batch = 32;
  const buf = new Uint8Array(SIGINFO_SIZE * batch);
  for (;;) {
    const args = encodePeeksiginfoArgs(out.length, shared ? PTRACE_PEEKSIGINFO_SHARED : 0, batch);
    const n = Number(ptrace(PTRACE.PEEKSIGINFO, "PTRACE_PEEKSIGINFO", pid, addressOf(args), addressOf(buf), [shared ? "shared" : "thread"]));
    for (let i = 0; i < n; i++) out.push(buf.slice(i * SIGINFO_SIZE, (i + 1) * SIGINFO_SIZE));
    if (n < batch) return out;
  }
}

/** One word of tracee memory (PTRACE_PEEKDATA). */
export function peekData(pid: number, addr: bigint): bigint {
  const word = new BigUint64Array(1);
  ptrace(PTRACE.PEEKDATA, "PTRACE_PEEKDATA", pid, addr, addressOf(word), [`0x${addr.toString(16)}`]);
  return word[0] ?? 0n;
}

export function pokeData(pid: number, addr: bigint, word: bigint): void {
  ptrace(PTRACE.POKEDATA, "PTRACE_POKEDATA", pid, addr, BigInt.asIntN(64, word), [`0x${addr.toString(16)}`]);
}

// ---------------------------------------------------------------- wait statuses

export const isExited = (status: number): boolean => (status & 0x7f) === 0;
export const exitCode = (status: number): number => (status >> 8) & 0xff;
export const isSignaled = (status: number): boolean => ((status & 0x7f) + 1) >> 1 > 0 && (status & 0x7f) !== 0x7f;
export const termSig = (status: number): number => status & 0x7f;
export const isStopped = (status: number): boolean => (status & 0xff) === 0x7f;
export const stopSig = (status: number): number => (status >> 8) & 0xff;
/** The PTRACE_EVENT_* number of a ptrace stop, 0 for a plain signal stop. */
export const ptraceEvent = (status: number): number => (status >> 16) & 0xff;

/** True for the group-stop/interrupt stop that PTRACE_INTERRUPT produces under SEIZE. */
export function isInterruptStop(status: number): boolean {
  return isStopped(status) && ptraceEvent(status) === PTRACE_EVENT_STOP;
}

/** Wait for a state change of one tracee (any thread kind: __WALL). */
export function waitTracee(pid: number): number {
  return waitpid(pid, W.ALL).status;
}

/** A state change of one tracee if there is one now, else null (WNOHANG). */
export function pollTracee(pid: number): number | null {
  const r = waitpid(pid, W.ALL | W.NOHANG);
  return r.pid === 0 ? null : r.status;
}
