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

/** A call's name as errors give it. */
function callName(nr: number): string {
  return SYSCALL_NAMES.get(nr) ?? `syscall ${nr}`;
}

/** Arguments as errors show them when the caller gives no words for them. */
function showArgs(args: readonly Arg[]): string[] {
  return args.map((x) => (typeof x === "bigint" ? `0x${x.toString(16)}` : String(x)));
}

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

/** One call of a batch (Puppet.callBatch), with its arguments as an error shows them. */
export interface BatchedCall {
  nr: number;
  args: readonly Arg[];
  shown?: readonly string[];
}

/** A batch record: the call number and six arguments, 8 bytes each. */
const RECORD_BYTES = 56;
/** Calls per batch; a longer list runs as several. */
const BATCH_MAX = 256;
/** Where the records start in the batch area, after the runner's code. */
const RECORDS_OFFSET = 0x100;
/** Bytes the batch area takes: code, records, one result per record. */
export const BATCH_AREA_SIZE = RECORDS_OFFSET + BATCH_MAX * (RECORD_BYTES + 8);

/**
 * The batch runner: machine code that makes the calls of a table one after
 * the other and then stops the task for ckpt, so that N calls cost one
 * resume and one stop instead of N of each (~0.2 ms apiece here). Entered
 * with r12 = the records, r13 = their count, r14 = where the results go,
 * rbx = the task's own tid. It stops at the first call that fails (a result
 * from -4095 to -1), and in any case ends in tkill(rbx, SIGSTOP): a
 * signal-delivery stop ckpt takes, at a known address, then suppresses.
 * SIGSTOP and not int3: the kernel forces an int3's SIGTRAP through a
 * blocked mask by resetting the task's SIGTRAP action, which would undo a
 * restored handler. r12 (the record reached) and r15 (the last result)
 * tell ckpt how far it went.
 */
function batchRunnerCode(): { code: number[]; stopAt: number } {
  const body = [
    0x49, 0x8b, 0x04, 0x24, // mov rax, [r12]
    0x49, 0x8b, 0x7c, 0x24, 0x08, // mov rdi, [r12+8]
    0x49, 0x8b, 0x74, 0x24, 0x10, // mov rsi, [r12+16]
    0x49, 0x8b, 0x54, 0x24, 0x18, // mov rdx, [r12+24]
    0x4d, 0x8b, 0x54, 0x24, 0x20, // mov r10, [r12+32]
    0x4d, 0x8b, 0x44, 0x24, 0x28, // mov r8, [r12+40]
    0x4d, 0x8b, 0x4c, 0x24, 0x30, // mov r9, [r12+48]
    0x0f, 0x05, // syscall
    0x49, 0x89, 0x06, // mov [r14], rax
    0x49, 0x89, 0xc7, // mov r15, rax
    0x48, 0x3d, 0x01, 0xf0, 0xff, 0xff, // cmp rax, -4095
  ];
  const advance = [
    0x49, 0x83, 0xc4, RECORD_BYTES, // add r12, 56
    0x49, 0x83, 0xc6, 0x08, // add r14, 8
    0x49, 0xff, 0xcd, // dec r13
  ];
  const stop = [
    0x48, 0x89, 0xdf, // mov rdi, rbx
    0xbe, SIG.STOP, 0, 0, 0, // mov esi, SIGSTOP
    0xb8, SYS.tkill & 0xff, SYS.tkill >> 8, 0, 0, // mov eax, tkill
    0x0f, 0x05, // syscall
  ];
  // loop: test r13, r13; jz done; body; jae done; advance; jmp loop; done: stop; jmp done
  const toDoneFromJz = body.length + 2 + advance.length + 2;
  const code = [
    0x4d, 0x85, 0xed, // test r13, r13
    0x74, toDoneFromJz, // jz done
    ...body,
    0x73, advance.length + 2, // jae done
    ...advance,
  ];
  code.push(0xeb, (256 - (code.length + 2)) & 0xff); // jmp loop
  const done = code.length;
  code.push(...stop);
  const stopAt = code.length;
  code.push(0xeb, (256 - (code.length + 2 - done)) & 0xff); // jmp done: a resume without new registers stops again
  return { code, stopAt };
}

const RUNNER = batchRunnerCode();

/** The runner's bytes, for restore to put into each task's syscall page (all clones then have it). */
export function batchRunner(): Uint8Array {
  return Uint8Array.from(RUNNER.code);
}

export class Puppet {
  /** Registers the calls start from (segment selectors, flags, fs_base of the task as it is). */
  private readonly base: UserRegs;

  /** Where the batch runner and its records are in the task (batchRunner()), 0 while there is none. */
  batchAt = 0n;

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
  call(nr: number, args: readonly Arg[], shown: readonly string[] = showArgs(args)): bigint {
    const r = this.raw(nr, args);
    if (r < 0n && r >= -MAX_ERRNO) throw new PuppetCallError(this.tid, callName(nr), shown, Number(-r));
    return r;
  }

  /**
   * Run calls that must all succeed, in order, with one resume per up to
   * BATCH_MAX of them (see batchRunnerCode); returns their results. The
   * first that fails throws as call() would, the ones after it not made.
   * Without a batch area, and in a pid namespace's init, one by one.
   */
  callBatch(calls: readonly BatchedCall[]): bigint[] {
    // A pid namespace's init ignores a SIGSTOP from inside its namespace, its own too: it could never stop.
    if (this.batchAt === 0n || this.ownTid === 1 || calls.length < 2) return calls.map((c) => this.call(c.nr, c.args, c.shown));
    const out: bigint[] = [];
    for (let i = 0; i < calls.length; i += BATCH_MAX) out.push(...this.runBatch(calls.slice(i, i + BATCH_MAX)));
    return out;
  }

  private runBatch(calls: readonly BatchedCall[]): bigint[] {
    const records = new BigUint64Array(calls.length * 7);
    calls.forEach((c, i) => {
      if (c.args.length > 6) throw new RangeError(`${callName(c.nr)}: ${c.args.length} arguments, a system call takes at most 6`);
      records[i * 7] = BigInt(c.nr);
      c.args.forEach((a, j) => {
        records[i * 7 + 1 + j] = BigInt.asUintN(64, BigInt(a));
      });
    });
    const recordsAt = this.batchAt + BigInt(RECORDS_OFFSET);
    const resultsAt = recordsAt + BigInt(BATCH_MAX * RECORD_BYTES);
    this.write(recordsAt, new Uint8Array(records.buffer));
    setRegs(this.tid, { ...this.base, ip: this.batchAt, orig_ax: U64_MASK, r12: recordsAt, r13: BigInt(calls.length), r14: resultsAt, bx: BigInt(this.ownTid) });
    puppetCounters.calls += calls.length;
    const stopAt = this.batchAt + BigInt(RUNNER.stopAt);
    ptrace.cont(this.tid);
    let regs: UserRegs;
    for (;;) {
      const status = waitStop(this.tid, "in a batch of calls");
      if (ptrace.ptraceEvent(status) === 0 && ptrace.stopSig(status) === SIG.STOP) {
        regs = getRegs(this.tid);
        if (regs.ip === stopAt) break;
      }
      // A SIGSTOP from outside, or the group stop it led to: passed over, as resumeUntilSyscallStop does.
      ptrace.cont(this.tid);
    }
    const made = Number((regs.r12 - recordsAt) / BigInt(RECORD_BYTES));
    if (made < calls.length) {
      const c = calls[made]!;
      throw new PuppetCallError(this.tid, callName(c.nr), c.shown ?? showArgs(c.args), Number(-BigInt.asIntN(64, regs.r15)));
    }
    const results = new BigUint64Array(this.read(resultsAt, calls.length * 8).buffer);
    return [...results].map((r) => BigInt.asIntN(64, r));
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
      const status = waitStop(this.tid, `in ${callName(nr)}`);
      if (ptrace.stopSig(status) === SYSCALL_STOP_SIG) return;
      const event = ptrace.ptraceEvent(status);
      if (event >= PTRACE_EVENT_FORK && event <= PTRACE_EVENT_CLONE) this.lastCloned = ptrace.eventMsg(this.tid);
      // Clone events (the new task is waited for by tree.ts) and signals (all
      // blocked; only a SIGSTOP from outside can come) pass without a signal.
      ptrace.resumeToSyscall(this.tid);
    }
  }
}

