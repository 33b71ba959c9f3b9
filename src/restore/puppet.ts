/**
 * A task ckpt is rebuilding, driven by injected system calls.
 *
 * Unlike dump's injection, nothing of the task's own state needs keeping:
 * restore owns these tasks from their first instruction and sets every
 * register from the images at the very end. What matters here is that no
 * signal is involved at all: each call runs between a syscall-enter-stop and
 * a syscall-exit-stop (PTRACE_SYSCALL), so no forced SIGTRAP ever resets a
 * handler or unblocks a signal, and a call may even unmap the page holding
 * its own `syscall` instruction, since the task never returns to user mode
 * before ckpt has set its final registers.
 *
 * Every task is seized with PTRACE_O_EXITKILL: if ckpt dies mid-restore the
 * kernel kills every half-built task.
 */
import { errnoName, errnoText, SysError } from "../sys/errno";
import { addressOf, processVmReadv, processVmWritev, waitpid } from "../sys/libc";
import { KSIGACTION_SIZE, KSIGSET_SIZE, signalName } from "../sys/inject-consts";
import { NT, PTRACE_EVENT_STOP, SIG, SYS, W } from "../sys/nr";
import * as ptrace from "../sys/ptrace";
import { decodeUserRegs, encodeUserRegs, USER_REGS_SIZE, type UserRegs } from "../sys/structs";

/** Options every restored task is traced with (auto-attached clones inherit them). */
export const RESTORE_PTRACE_OPTIONS = 0x1 /* TRACESYSGOOD */ | 0x2 /* TRACEFORK */ | 0x4 /* TRACEVFORK */ | 0x8 /* TRACECLONE */ | 0x100000 /* EXITKILL */;

const U64_MASK = (1n << 64n) - 1n;
const MAX_ERRNO = 4095n;
/** What TRACESYSGOOD makes a syscall stop's signal. */
const SYSCALL_STOP_SIG = 5 | 0x80;

const SYSCALL_NAMES: ReadonlyMap<number, string> = new Map(Object.entries(SYS).map(([name, nr]) => [nr, name]));

export type Arg = number | bigint;

/** An injected call returned -errno. */
export class PuppetCallError extends SysError {
  constructor(readonly tid: number, call: string, args: readonly string[], errno: number) {
    super(call, args, errno);
    this.message = `${call}(${args.join(", ")}) in restored task ${tid}: ${errnoName(errno)} (${errnoText(errno)})`;
  }
}

/** A restored task stopped being drivable (it died, or stopped in a way restore did not expect). */
export class PuppetError extends Error {
  override readonly name = "PuppetError";
  constructor(message: string, readonly tid: number) {
    super(message);
  }
}

const regsBuf = new Uint8Array(USER_REGS_SIZE);

export function getRegs(tid: number): UserRegs {
  ptrace.getRegset(tid, NT.PRSTATUS, regsBuf);
  return decodeUserRegs(regsBuf);
}

export function setRegs(tid: number, regs: UserRegs): void {
  ptrace.setRegset(tid, NT.PRSTATUS, encodeUserRegs(regs, regsBuf));
}

/** Every signal blocked: nothing is delivered while restore drives the task. */
export const ALL_SIGNALS = U64_MASK;
/** PTRACE_EVENT_FORK, _VFORK and _CLONE: the stops that name a new task. */
const PTRACE_EVENT_FORK = 1;
const PTRACE_EVENT_CLONE = 3;

/**
 * Wait for the next stop of a tracee; its death is an error naming `what`
 * it was doing. Stops are counted for the stats.
 */
export function waitStop(tid: number, what: string): number {
  const { status } = waitpid(tid, W.ALL);
  puppetCounters.stops++;
  if (ptrace.isExited(status)) throw new PuppetError(`restored task ${tid} exited with status ${ptrace.exitCode(status)} ${what}`, tid);
  if (ptrace.isSignaled(status)) throw new PuppetError(`restored task ${tid} was killed by signal ${ptrace.termSig(status)} ${what}`, tid);
  return status;
}

/** Counters for the stats: injected calls and ptrace stops. */
export const puppetCounters = { calls: 0, stops: 0 };

export class Puppet {
  /** Registers the calls start from (segment selectors, flags, fs_base of the task as it is). */
  private readonly base: UserRegs;

  /**
   * The task's pid in ckpt's namespace of the last task its calls cloned
   * (from the clone event's message), 0 before any.
   */
  lastCloned = 0;

  constructor(
    /** The task's id in ckpt's pid namespace: what ptrace, /proc and kill take. */
    readonly tid: number,
    /** Address of a `syscall` instruction mapped in this task. */
    public syscallAt: bigint,
    /** The task's id as it sees itself (in a new pid namespace, the image's); what injected calls take. */
    readonly ownTid: number = tid,
  ) {
    this.base = getRegs(tid);
  }

  /** Point the task at the syscall instruction with call `nr` and its arguments loaded. */
  private load(nr: number, args: readonly Arg[]): void {
    const a = args.map((x) => BigInt.asUintN(64, BigInt(x)));
    setRegs(this.tid, {
      ...this.base, ip: this.syscallAt, ax: BigInt(nr), orig_ax: U64_MASK,
      di: a[0] ?? 0n, si: a[1] ?? 0n, dx: a[2] ?? 0n, r10: a[3] ?? 0n, r8: a[4] ?? 0n, r9: a[5] ?? 0n,
    });
    puppetCounters.calls++;
  }

  /** Run one system call in the task; returns the raw result (-errno on failure). */
  raw(nr: number, args: readonly Arg[]): bigint {
    this.load(nr, args);
    this.resumeUntilSyscallStop(nr); // enter
    this.resumeUntilSyscallStop(nr); // exit
    return BigInt.asIntN(64, getRegs(this.tid).ax);
  }

  /** Run a system call that must succeed; the error names the call, its arguments and the task. */
  call(nr: number, args: readonly Arg[], shown: readonly string[] = args.map((x) => (typeof x === "bigint" ? `0x${x.toString(16)}` : String(x)))): bigint {
    const r = this.raw(nr, args);
    if (r < 0n && r >= -MAX_ERRNO) throw new PuppetCallError(this.tid, SYSCALL_NAMES.get(nr) ?? `syscall ${nr}`, shown, Number(-r));
    return r;
  }

  /** Copy bytes into the task's memory (it must be writable there). */
  write(address: bigint, bytes: Uint8Array): void {
    const local = new BigUint64Array([BigInt(addressOf(bytes)), BigInt(bytes.length)]);
    const remote = new BigUint64Array([address, BigInt(bytes.length)]);
    const n = processVmWritev(this.tid, local, 1, remote, 1);
    if (n !== bytes.length) throw new PuppetError(`process_vm_writev to task ${this.tid} at 0x${address.toString(16)} wrote ${n} of ${bytes.length} bytes`, this.tid);
  }

  /** Copy `length` bytes out of the task's memory (it must be mapped and readable there). */
  read(address: bigint, length: number): Uint8Array {
    const bytes = new Uint8Array(length);
    const local = new BigUint64Array([BigInt(addressOf(bytes)), BigInt(length)]);
    const remote = new BigUint64Array([address, BigInt(length)]);
    const n = processVmReadv(this.tid, local, 1, remote, 1);
    if (n !== length) throw new PuppetError(`process_vm_readv from task ${this.tid} at 0x${address.toString(16)} read ${n} of ${length} bytes`, this.tid);
    return bytes;
  }

  /**
   * Make the last call, the one whose return leaves nothing to return to
   * (exit_group): resume into it and wait for the task to be gone.
   */
  callNoReturn(nr: number, args: readonly Arg[]): void {
    this.load(nr, args);
    ptrace.cont(this.tid);
    for (;;) {
      const { status } = waitpid(this.tid, W.ALL);
      if (ptrace.isExited(status) || ptrace.isSignaled(status)) return;
      ptrace.cont(this.tid);
    }
  }

  /**
   * End the task so that its parent's wait() reports `status` (a wait
   * status: an exit code, or a fatal signal): a zombie of the image made
   * again. A signal death drops the dumpable flag first, as CRIU does, so
   * that no core file is written (the core-dumped bit is then not set), and
   * gives the signal its default action (one ignored by ckpt stays ignored
   * across the seed's exec). `scratch`: writable memory of the task.
   */
  dieWith(status: number, scratch: bigint): void {
    const sig = status & 0x7f;
    if (sig === 0) {
      this.callNoReturn(SYS.exit_group, [(status >> 8) & 0xff]);
      return;
    }
    this.call(SYS.prctl, [4 /* PR_SET_DUMPABLE */, 0], ["PR_SET_DUMPABLE", "0"]);
    // SIGKILL's action cannot be changed (nor caught): it kills as it is.
    if (sig !== SIG.KILL) {
      this.write(scratch, new Uint8Array(KSIGACTION_SIZE));
      this.call(SYS.rt_sigaction, [sig, scratch, 0, KSIGSET_SIZE], [signalName(sig), "SIG_DFL", "NULL", String(KSIGSET_SIZE)]);
    }
    ptrace.setSigmask(this.tid, 0n);
    this.load(SYS.kill, [this.ownTid, sig]);
    ptrace.cont(this.tid);
    for (;;) {
      const { status: st } = waitpid(this.tid, W.ALL);
      if (ptrace.isExited(st) || ptrace.isSignaled(st)) return;
      // Its signal-delivery-stop: the signal goes on to do its default action.
      const deliver = ptrace.ptraceEvent(st) === 0 && ptrace.stopSig(st) === sig;
      ptrace.cont(this.tid, deliver ? sig : 0);
    }
  }

  /**
   * Leave the syscall-exit-stop of the last call for a PTRACE_EVENT_STOP in
   * get_signal(): registers set there are the ones the kernel's
   * syscall-restart rules then look at, exactly as for a task stopped by a
   * dump's PTRACE_INTERRUPT.
   */
  parkInSignalStop(): void {
    ptrace.interrupt(this.tid);
    ptrace.cont(this.tid);
    for (;;) {
      const status = waitStop(this.tid, "while parked for its registers");
      if (ptrace.ptraceEvent(status) === PTRACE_EVENT_STOP) return;
      // Anything else on the way (a syscall-stop cannot be: PTRACE_CONT) is resumed without a signal.
      ptrace.cont(this.tid);
    }
  }

  private resumeUntilSyscallStop(nr: number): void {
    ptrace.resumeToSyscall(this.tid);
    for (;;) {
      const status = waitStop(this.tid, `in ${SYSCALL_NAMES.get(nr) ?? `syscall ${nr}`}`);
      if (ptrace.stopSig(status) === SYSCALL_STOP_SIG) return;
      const event = ptrace.ptraceEvent(status);
      if (event >= PTRACE_EVENT_FORK && event <= PTRACE_EVENT_CLONE) this.lastCloned = ptrace.eventMsg(this.tid);
      // Clone events (the new task is waited for by tree.ts) and signals (all
      // blocked; only a SIGSTOP from outside can come) pass without a signal.
      ptrace.resumeToSyscall(this.tid);
    }
  }
}

