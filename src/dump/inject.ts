/**
 * System calls made by a ptrace-stopped thread on our behalf, without putting
 * any code into it.
 *
 * How: point the thread's rip at a `syscall` instruction that is already in its
 * address space (in the vDSO, or the one it was stopped right after), load the
 * call number and arguments into registers, PTRACE_SINGLESTEP, and collect the
 * result from rax at the SIGTRAP stop the kernel reports when the call returns.
 * Output buffers live in scratch memory of the task: a stretch of its own stack
 * below the red zone (saved first, written back exactly afterwards), or, when
 * the stack has no room, one anonymous page mapped by an injected mmap and
 * unmapped again at close.
 *
 * Everything the thread can observe is put back by close(): the scratch bytes,
 * every NT_PRSTATUS register (rip, rax, orig_rax ... so an interrupted system
 * call is restarted exactly as it would have been) and the blocked-signal mask.
 *
 * Kernel behaviour this relies on (x86_64, checked by test/inject.test.ts):
 * - Signals are blocked with PTRACE_SETSIGMASK while we inject, so resuming the
 *   thread for the single-step cannot dequeue a pending signal. SIGTRAP stays
 *   unblocked: the single-step SIGTRAP is a forced signal, and the kernel resets
 *   the handler of a forced signal to SIG_DFL when the signal is blocked
 *   (force_sig_info_to_task), which would silently lose the task's SIGTRAP
 *   handler. A SIGTRAP that is already pending is therefore refused at open.
 *   SIGKILL and SIGSTOP cannot be blocked; a SIGSTOP that arrives meanwhile is
 *   passed on, so the group stop happens as it would have.
 * - The stop the caller created (PTRACE_INTERRUPT) sits in get_signal(); the
 *   kernel applies its syscall-restart rules (orig_rax >= 0 and rax one of
 *   -ERESTART*: rewind rip by 2, reload rax) only after that, on the registers
 *   as they are then. So the injected registers (orig_rax = -1, rax = nr) keep
 *   those rules away from the injected call, and the saved registers put back
 *   at close() make them apply to the task's own interrupted call when it is
 *   finally resumed: a read() or nanosleep() goes on, it does not see EINTR.
 * - PTRACE_SETSIGMASK clears TIF_RESTORE_SIGMASK, and PTRACE_GETSIGMASK reports
 *   the saved mask when that flag is set: a thread stopped in ppoll/pselect/
 *   sigsuspend gets its real mask back (the temporary one is re-installed when
 *   the call restarts).
 *
 * Side effects that remain: the scratch pages are faulted in (and count as
 * written for soft-dirty or userfaultfd write-protect tracking), an mmap'd
 * scratch page may leave the mm's VMA cache different, and the thread ends in a
 * SIGTRAP signal-delivery-stop instead of the PTRACE_EVENT_STOP it was in:
 * resume it with signal 0 (PTRACE_DETACH or PTRACE_CONT with data 0).
 */
import { SysError, errnoName, errnoText } from "../sys/errno";
import { addressOf, processVmReadv, processVmWritev, syscall as rawSyscall, waitpid } from "../sys/libc";
import { NT, PTRACE, PTRACE_EVENT_STOP, SIG, SYS, W } from "../sys/nr";
import * as ptrace from "../sys/ptrace";
import { decodeUserRegs, encodeUserRegs, setIovec, SIGINFO_SIZE, USER_REGS_SIZE, type UserRegs } from "../sys/structs";
import { readMaps, type MapArea } from "../proc/maps";
import { ProcFs } from "../proc/procfs";
import {
  MAX_ERRNO, RED_ZONE, SCRATCH_MAP_FLAGS, SCRATCH_PROT, SIGINFO_OFF, SYSCALL_INSN,
  SYSCALL_INSN_SIZE, TRAP, USER_CS_64, signalName,
} from "../sys/inject-consts";

const PAGE = 4096n;
const U64_MASK = (1n << 64n) - 1n;
/** orig_rax of "not in a system call" as the u64 the register set holds. */
const NO_SYSCALL = U64_MASK;

const SYSCALL_NAMES: ReadonlyMap<number, string> = new Map(Object.entries(SYS).map(([name, nr]) => [nr, name]));

/** A system call's name for messages: the known name, or "syscall N". */
export function syscallName(nr: number): string {
  return SYSCALL_NAMES.get(nr) ?? `syscall ${nr}`;
}

export type SyscallArg = number | bigint;

/** Where the scratch memory came from. */
export type ScratchKind = "stack" | "mmap";

export interface ScratchArea {
  /** First byte in the task. */
  address: bigint;
  size: number;
  kind: ScratchKind;
}

/** Where the `syscall` instruction the thread executes was found. */
export interface SyscallInstruction {
  address: bigint;
  source: "vdso" | "interrupted-syscall";
}

/** A signal the kernel handed to us while we were stepping, and what we did with it. */
export interface InterceptedSignal {
  signo: number;
  code: number;
  /** "passed": resumed with it, as the kernel would have acted; "reraised": sent again at close(). */
  handling: "passed" | "reraised";
}

export interface RemoteSyscallsOptions {
  /**
   * Scratch memory: "stack" below the red zone, "mmap" an injected anonymous
   * mapping, "auto" (default) the stack when it has room there, else mmap.
   */
  scratch?: "auto" | "stack" | "mmap";
  /** Bytes of scratch memory (default 4096): rounded up to 64 on the stack, to pages for mmap. */
  scratchSize?: number;
  /** "auto" (default): the vDSO's instruction, else the one before rip; or force one of them. */
  instruction?: "auto" | "vdso" | "interrupted-syscall";
  /** How long one injected call may run before the thread is interrupted and the call fails (default 10 s). */
  timeoutMs?: number;
  /** Reads /proc/TID/{maps,status}; a private ProcFs (closed again) when not given. */
  proc?: ProcFs;
}

/** An injected call returned -errno. */
export class RemoteSyscallError extends SysError {
  constructor(
    /** The thread that made the call. */
    readonly tid: number,
    call: string,
    args: readonly string[],
    errno: number,
  ) {
    super(call, args, errno);
    this.message = `remote ${call}(${args.join(", ")}) in thread ${tid}: ${errnoName(errno)} (${errnoText(errno)})`;
  }
}

/** Injection itself went wrong: the thread could not be driven, or died. */
export class InjectionError extends Error {
  override readonly name = "InjectionError";

  constructor(
    message: string,
    readonly tid: number,
    /** The thread exited or was killed: nothing is left to restore. */
    readonly taskGone = false,
  ) {
    super(message);
  }
}

const hex = (v: bigint | number): string => `0x${v.toString(16)}`;

/** True for the kernel's -errno range; `result` is the signed rax. */
export function isErrorResult(result: bigint): boolean {
  return result < 0n && result >= -MAX_ERRNO;
}

/** Read `length` bytes of another task's memory; throws unless all of them could be read. */
export function readTaskMemory(tid: number, address: bigint, length: number): Uint8Array {
  const out = new Uint8Array(length);
  if (length === 0) return out;
  const local = new BigUint64Array(2);
  const remote = new BigUint64Array(2);
  setIovec(local, 0, addressOf(out), length);
  setIovec(remote, 0, address, length);
  const n = processVmReadv(tid, local, 1, remote, 1);
  if (n !== length) throw new InjectionError(`process_vm_readv(${tid}, ${hex(address)}, ${length}): short read of ${n} bytes`, tid);
  return out;
}

/** Write all of `bytes` into another task's memory at `address`. */
export function writeTaskMemory(tid: number, address: bigint, bytes: Uint8Array): void {
  if (bytes.length === 0) return;
  const local = new BigUint64Array(2);
  const remote = new BigUint64Array(2);
  setIovec(local, 0, addressOf(bytes), bytes.length);
  setIovec(remote, 0, address, bytes.length);
  const n = processVmWritev(tid, local, 1, remote, 1);
  if (n !== bytes.length) throw new InjectionError(`process_vm_writev(${tid}, ${hex(address)}, ${bytes.length}): short write of ${n} bytes`, tid);
}

/** PTRACE_SETSIGMASK, which sys/ptrace.ts does not wrap. */
function setSigmask(tid: number, mask: bigint): void {
  const buf = new BigUint64Array([mask]);
  rawSyscall("ptrace", SYS.ptrace, [PTRACE.SETSIGMASK, tid, 8, addressOf(buf)], ["PTRACE_SETSIGMASK", String(tid), "8", hex(mask)]);
}

/** si_signo and si_code of the signal a tracee is stopped for (PTRACE_GETSIGINFO). */
function stopSiginfo(tid: number): { signo: number; code: number } {
  const info = new Uint8Array(SIGINFO_SIZE);
  rawSyscall("ptrace", SYS.ptrace, [PTRACE.GETSIGINFO, tid, 0, addressOf(info)], ["PTRACE_GETSIGINFO", String(tid)]);
  const v = new DataView(info.buffer);
  return { signo: v.getInt32(SIGINFO_OFF.signo, true), code: v.getInt32(SIGINFO_OFF.code, true) };
}

/** Pending-signal bitmasks of a thread (its own queue and its process's shared one) from /proc/TID/status. */
function pendingSignals(proc: ProcFs, tid: number): { thread: bigint; shared: bigint } {
  const text = proc.readText(tid, "status");
  const field = (name: string): bigint => {
    const m = new RegExp(`^${name}:\\s*([0-9a-f]+)$`, "m").exec(text);
    if (!m?.[1]) throw new InjectionError(`/proc/${tid}/status has no ${name} line`, tid);
    return BigInt(`0x${m[1]}`);
  };
  return { thread: field("SigPnd"), shared: field("ShdPnd") };
}

function sigbit(sig: number): bigint {
  return 1n << BigInt(sig - 1);
}

/** Offset of the first `syscall` instruction (0f 05) in `code`, or -1. */
export function findSyscallInstruction(code: Uint8Array): number {
  for (let i = 0; i + 1 < code.length; i++) {
    if (code[i] === SYSCALL_INSN[0] && code[i + 1] === SYSCALL_INSN[1]) return i;
  }
  return -1;
}

function locateInstruction(tid: number, areas: readonly MapArea[], rip: bigint, mode: "auto" | "vdso" | "interrupted-syscall"): SyscallInstruction {
  const reasons: string[] = [];
  if (mode !== "interrupted-syscall") {
    const vdso = areas.find((a) => a.path === "[vdso]");
    if (!vdso) {
      reasons.push("the task has no [vdso] mapping");
    } else {
      // Any 0f 05 pair will do, even one inside a longer instruction: the CPU
      // decodes from rip, and the single-step trap comes right after it.
      const code = readTaskMemory(tid, vdso.start, Number(vdso.end - vdso.start));
      const at = findSyscallInstruction(code);
      if (at >= 0) return { address: vdso.start + BigInt(at), source: "vdso" };
      reasons.push(`[vdso] ${hex(vdso.start)}-${hex(vdso.end)} holds no 0f 05`);
    }
  }
  if (mode !== "vdso") {
    // A thread stopped in or right after a system call has rip just past its
    // syscall instruction.
    const before = rip - SYSCALL_INSN_SIZE;
    const inExec = areas.some((a) => a.exec && a.read && a.start <= before && before + SYSCALL_INSN_SIZE <= a.end);
    if (inExec) {
      const bytes = readTaskMemory(tid, before, 2);
      if (bytes[0] === SYSCALL_INSN[0] && bytes[1] === SYSCALL_INSN[1]) return { address: before, source: "interrupted-syscall" };
      reasons.push(`the bytes before rip ${hex(rip)} are ${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join(" ")}, not 0f 05`);
    } else {
      reasons.push(`rip-2 ${hex(before)} is not in a readable executable mapping`);
    }
  }
  throw new InjectionError(`no syscall instruction to use in thread ${tid}: ${reasons.join("; ")} (ckpt does not patch code into tasks)`, tid);
}

/**
 * Remote system calls in one thread that the caller has PTRACE_SEIZE'd and
 * stopped (PTRACE_INTERRUPT, then waited for). Not re-entrant; use from the
 * thread that seized the task. Always close() it, in a finally block.
 */
export class RemoteSyscalls implements Disposable {
  /** The thread's registers as they were at open(), exactly as PTRACE_GETREGSET gave them. */
  private readonly savedRegsRaw: Uint8Array;
  readonly savedRegs: Readonly<UserRegs>;
  /** The blocked mask at open() (the saved one, when the thread sits in ppoll & co.). */
  readonly savedSigmask: bigint;
  readonly instruction: SyscallInstruction;
  /** Signals that arrived while stepping; see InterceptedSignal. */
  readonly intercepted: InterceptedSignal[] = [];
  private scratchArea: ScratchArea | null = null;
  /** The original bytes under a stack scratch area. */
  private scratchSaved: Uint8Array | null = null;
  /** rsp while injecting: below the scratch area, so nothing we keep there can be overwritten. */
  private injectedSp: bigint;
  private readonly timeoutMs: number;
  private sigmaskChanged = false;
  private state: "open" | "closed" | "gone" = "open";

  private constructor(
    readonly tid: number,
    savedRegsRaw: Uint8Array,
    savedSigmask: bigint,
    instruction: SyscallInstruction,
    timeoutMs: number,
  ) {
    this.savedRegsRaw = savedRegsRaw;
    this.savedRegs = Object.freeze(decodeUserRegs(savedRegsRaw));
    this.savedSigmask = savedSigmask;
    this.instruction = instruction;
    this.timeoutMs = timeoutMs;
    this.injectedSp = (this.savedRegs.sp - RED_ZONE) & ~15n;
  }

  /** Save the thread's state, block its signals and set up scratch memory. */
  static open(tid: number, options: RemoteSyscallsOptions = {}): RemoteSyscalls {
    const ownProc = options.proc === undefined;
    const proc = options.proc ?? new ProcFs();
    try {
      return RemoteSyscalls.openWith(tid, proc, options);
    } finally {
      if (ownProc) proc.close();
    }
  }

  private static openWith(tid: number, proc: ProcFs, options: RemoteSyscallsOptions): RemoteSyscalls {
    const regsRaw = new Uint8Array(USER_REGS_SIZE);
    try {
      const filled = ptrace.getRegset(tid, NT.PRSTATUS, regsRaw);
      if (filled !== USER_REGS_SIZE) throw new InjectionError(`PTRACE_GETREGSET(${tid}, NT_PRSTATUS) gave ${filled} bytes, expected ${USER_REGS_SIZE}`, tid);
    } catch (e) {
      if (e instanceof SysError && e.code === "ESRCH") {
        throw new InjectionError(`thread ${tid} is not a stopped tracee of ours (PTRACE_SEIZE, PTRACE_INTERRUPT and wait for the stop first): ${e.message}`, tid);
      }
      throw e;
    }
    const regs = decodeUserRegs(regsRaw);
    if (regs.cs !== USER_CS_64) throw new InjectionError(`thread ${tid} runs with cs ${hex(regs.cs)}: only 64-bit tasks (cs 0x33) are supported`, tid);
    const mask = ptrace.getSigmask(tid);

    const pending = pendingSignals(proc, tid);
    if (((pending.thread | pending.shared) & sigbit(SIG.TRAP)) !== 0n) {
      throw new InjectionError(
        `thread ${tid} has a SIGTRAP pending: single-stepping would deliver or drop it (SIGTRAP cannot be blocked while stepping without the kernel resetting its handler)`,
        tid,
      );
    }
    const areas = readMaps(proc, tid);
    const instruction = locateInstruction(tid, areas, regs.ip, options.instruction ?? "auto");

    const remote = new RemoteSyscalls(tid, regsRaw, mask, instruction, options.timeoutMs ?? 10_000);
    try {
      // Everything but SIGTRAP (see the file comment); the kernel ignores the
      // SIGKILL and SIGSTOP bits.
      setSigmask(tid, U64_MASK & ~sigbit(SIG.TRAP));
      remote.sigmaskChanged = true;
      remote.setUpScratch(areas, options.scratch ?? "auto", options.scratchSize ?? 4096);
      return remote;
    } catch (e) {
      try {
        remote.close();
      } catch {
        // The first error says more than a failed undo.
      }
      throw e;
    }
  }

  private setUpScratch(areas: readonly MapArea[], mode: "auto" | "stack" | "mmap", size: number): void {
    if (!(size > 0)) throw new InjectionError(`scratch size must be positive, not ${size}`, this.tid);
    if (mode !== "mmap") {
      const top = (this.savedRegs.sp - RED_ZONE) & ~63n;
      const bottom = (top - BigInt(size)) & ~63n;
      // Private anonymous memory only: a shared or file-backed "stack" would
      // let other processes (or the file) see the scratch bytes.
      const area = areas.find((a) => a.start <= bottom && top <= a.end);
      const usable = area !== undefined && area.read && area.write && !area.shared && (area.path === "" || area.path === "[stack]" || area.path.startsWith("[anon:"));
      if (usable) {
        const length = Number(top - bottom);
        this.scratchSaved = readTaskMemory(this.tid, bottom, length);
        this.scratchArea = { address: bottom, size: length, kind: "stack" };
        this.injectedSp = (bottom - RED_ZONE) & ~15n;
        return;
      }
      if (mode === "stack") {
        const where = area ? `${hex(area.start)}-${hex(area.end)} ${area.read ? "r" : "-"}${area.write ? "w" : "-"}${area.shared ? "s" : "p"} ${area.path}` : "no single mapping";
        throw new InjectionError(`thread ${this.tid}: no room for ${size} scratch bytes below rsp ${hex(this.savedRegs.sp)} (${hex(bottom)}-${hex(top)} lies in ${where})`, this.tid);
      }
    }
    const length = ((BigInt(size) + PAGE - 1n) / PAGE) * PAGE;
    const address = this.check("mmap", SYS.mmap, [0, length, SCRATCH_PROT, SCRATCH_MAP_FLAGS, -1, 0], ["NULL", String(length), "PROT_READ|PROT_WRITE", "MAP_PRIVATE|MAP_ANONYMOUS", "-1", "0"]);
    this.scratchArea = { address: BigInt.asUintN(64, address), size: Number(length), kind: "mmap" };
  }

  /** The scratch memory in the task; throws when the injector is closed. */
  get scratch(): ScratchArea {
    this.ensureOpen("scratch");
    if (!this.scratchArea) throw new InjectionError(`thread ${this.tid}: scratch memory is not set up yet`, this.tid);
    return this.scratchArea;
  }

  /** Task address of scratch byte `offset`, checking that `length` bytes from there fit. */
  scratchAt(offset: number, length = 0): bigint {
    const area = this.scratch;
    if (offset < 0 || length < 0 || offset + length > area.size) {
      throw new RangeError(`scratch range ${offset}+${length} outside the ${area.size} scratch bytes of thread ${this.tid}`);
    }
    return area.address + BigInt(offset);
  }

  readScratch(offset: number, length: number): Uint8Array {
    return readTaskMemory(this.tid, this.scratchAt(offset, length), length);
  }

  writeScratch(offset: number, bytes: Uint8Array): void {
    writeTaskMemory(this.tid, this.scratchAt(offset, bytes.length), bytes);
  }

  get isOpen(): boolean {
    return this.state === "open";
  }

  /** The thread exited or was killed while we drove it. */
  get taskGone(): boolean {
    return this.state === "gone";
  }

  private ensureOpen(what: string): void {
    if (this.state === "gone") throw new InjectionError(`${what}: thread ${this.tid} is gone`, this.tid, true);
    if (this.state === "closed") throw new InjectionError(`${what}: the remote-syscall session of thread ${this.tid} is closed`, this.tid);
  }

  /**
   * Run system call `nr` with up to six arguments in the thread; returns rax
   * as a signed value (-errno on failure, as the kernel returns it).
   */
  syscall(nr: number, args: readonly SyscallArg[] = []): bigint {
    this.ensureOpen(syscallName(nr));
    if (args.length > 6) throw new RangeError(`${syscallName(nr)}: ${args.length} arguments, a system call takes at most 6`);
    const a = (i: number): bigint => BigInt.asUintN(64, BigInt(args[i] ?? 0));
    const regs: UserRegs = {
      ...this.savedRegs,
      ip: this.instruction.address,
      ax: BigInt(nr),
      di: a(0), si: a(1), dx: a(2), r10: a(3), r8: a(4), r9: a(5),
      // "Not in a system call". The restart rules that run when the thread
      // leaves its stop need orig_rax >= 0 and rax = -ERESTART*; rax = nr
      // already fails the second test, -1 fails the first one too, whatever
      // rax holds. (The syscall entry sets orig_rax = nr itself afterwards.)
      orig_ax: NO_SYSCALL,
      sp: this.injectedSp,
    };
    ptrace.setRegset(this.tid, NT.PRSTATUS, encodeUserRegs(regs));
    const result = this.stepOverSyscall(nr, args);
    return BigInt.asIntN(64, result);
  }

  /**
   * syscall(), throwing a RemoteSyscallError that names the call, its
   * arguments (`shown`, or the raw values) and the errno when the call fails.
   */
  check(name: string, nr: number, args: readonly SyscallArg[] = [], shown?: readonly string[]): bigint {
    const result = this.syscall(nr, args);
    if (isErrorResult(result)) {
      throw new RemoteSyscallError(this.tid, name, shown ?? args.map((v) => (typeof v === "bigint" ? hex(v) : String(v))), Number(-result));
    }
    return result;
  }

  /** Single-step the prepared registers through the syscall instruction; returns rax. */
  private stepOverSyscall(nr: number, args: readonly SyscallArg[]): bigint {
    const what = `injected ${syscallName(nr)}(${args.map(String).join(", ")})`;
    const done = this.instruction.address + SYSCALL_INSN_SIZE;
    let resumeSignal = 0;
    let timedOut = false;
    for (let stops = 0; stops < 100; stops++) {
      ptrace.singlestep(this.tid, resumeSignal);
      resumeSignal = 0;
      const wait = this.waitStop(what, timedOut);
      timedOut = wait.timedOut;
      const status = wait.status;
      const sig = ptrace.stopSig(status);
      const event = ptrace.ptraceEvent(status);
      if (event === PTRACE_EVENT_STOP) {
        // A group stop (someone sent SIGSTOP) or our own timeout interrupt: keep
        // stepping. After PTRACE_DETACH the kernel puts a thread of a stopped
        // group back into the group stop.
        continue;
      }
      if (event !== 0) throw new InjectionError(`thread ${this.tid}: unexpected ptrace event ${event} (stop signal ${signalName(sig)}) during ${what}`, this.tid);
      const info = stopSiginfo(this.tid);
      if (sig === SIG.TRAP) {
        const regs = this.currentRegs();
        const ours = info.code === TRAP.BRKPT || info.code === TRAP.TRACE;
        if (!ours) this.intercepted.push({ signo: sig, code: info.code, handling: "reraised" });
        if (regs.ip === done) {
          if (timedOut) {
            const rax = BigInt.asIntN(64, regs.ax);
            throw new InjectionError(`thread ${this.tid}: ${what} did not return within ${this.timeoutMs} ms; interrupted, it returned ${rax}${isErrorResult(rax) ? ` (${errnoName(Number(-rax))})` : ""}`, this.tid);
          }
          return regs.ax;
        }
        if (regs.ip === this.instruction.address && !ours) continue; // a foreign SIGTRAP came before our instruction ran
        throw new InjectionError(`thread ${this.tid}: after ${what} rip is ${hex(regs.ip)}, expected ${hex(done)} (SIGTRAP si_code ${info.code})`, this.tid);
      }
      if (sig === SIG.STOP) {
        // Unblockable; resuming with it starts the group stop as the kernel would have.
        this.intercepted.push({ signo: sig, code: info.code, handling: "passed" });
        resumeSignal = sig;
        continue;
      }
      // Every other signal is blocked, so this is a fault the kernel forced
      // (e.g. SIGSEGV from the instruction fetch): it has already replaced the
      // task's handler by SIG_DFL, nothing safe can follow.
      throw new InjectionError(`thread ${this.tid}: ${signalName(sig)} (si_code ${info.code}) during ${what} at rip ${hex(this.currentRegs().ip)}`, this.tid);
    }
    throw new InjectionError(`thread ${this.tid}: ${what} kept stopping without finishing (100 stops)`, this.tid);
  }

  /**
   * Wait for the next stop of the thread. Polls so that a call that blocks in
   * the task cannot hang us: after the timeout the thread is interrupted once
   * (the call then returns, usually -ERESTARTSYS, and the step finishes).
   */
  private waitStop(what: string, alreadyTimedOut: boolean): { status: number; timedOut: boolean } {
    const start = performance.now();
    let timedOut = alreadyTimedOut;
    for (let polls = 0; ; polls++) {
      const r = waitpid(this.tid, W.ALL | W.NOHANG);
      if (r.pid === this.tid) {
        const status = r.status;
        if (ptrace.isExited(status) || ptrace.isSignaled(status)) {
          this.state = "gone";
          const how = ptrace.isExited(status) ? `exited with code ${ptrace.exitCode(status)}` : `was killed by ${signalName(ptrace.termSig(status))}`;
          throw new InjectionError(`thread ${this.tid} ${how} during ${what}`, this.tid, true);
        }
        if (ptrace.isStopped(status)) return { status, timedOut };
        continue;
      }
      const elapsed = performance.now() - start;
      if (!timedOut && elapsed > this.timeoutMs) {
        ptrace.interrupt(this.tid);
        timedOut = true;
      }
      // Most calls are back within microseconds: spin briefly, then sleep.
      if (elapsed > 2) Bun.sleepSync(1);
    }
  }

  private currentRegs(): UserRegs {
    const buf = new Uint8Array(USER_REGS_SIZE);
    ptrace.getRegset(this.tid, NT.PRSTATUS, buf);
    return decodeUserRegs(buf);
  }

  /**
   * Put everything back: the scratch memory (or unmap the scratch page), then
   * every register and the signal mask. Idempotent; a thread that is gone is
   * not an error. Throws after trying every step when one failed.
   */
  close(): void {
    if (this.state !== "open") return;
    const problems: string[] = [];
    const attempt = (step: () => void): void => {
      try {
        step();
      } catch (e) {
        if (e instanceof InjectionError && e.taskGone) return;
        if (e instanceof SysError && e.code === "ESRCH") {
          this.state = "gone";
          return;
        }
        problems.push(e instanceof Error ? e.message : String(e));
      }
    };
    const area = this.scratchArea;
    if (area?.kind === "stack" && this.scratchSaved) {
      const saved = this.scratchSaved;
      attempt(() => writeTaskMemory(this.tid, area.address, saved));
    } else if (area?.kind === "mmap") {
      attempt(() => {
        this.check("munmap", SYS.munmap, [area.address, area.size], [hex(area.address), String(area.size)]);
      });
    }
    if (this.state === "open") attempt(() => ptrace.setRegset(this.tid, NT.PRSTATUS, this.savedRegsRaw));
    if (this.state === "open" && this.sigmaskChanged) attempt(() => setSigmask(this.tid, this.savedSigmask));
    if (this.state === "open") {
      // A SIGTRAP someone else sent while we stepped was consumed by our wait;
      // send it again now that the thread has its own mask and handlers back.
      for (const s of this.intercepted) {
        if (s.handling === "reraised") attempt(() => void rawSyscall("tgkill", SYS.tgkill, [tgidOf(this.tid), this.tid, s.signo], ["tgid", String(this.tid), signalName(s.signo)]));
      }
    }
    if (this.state === "open") this.state = "closed";
    this.scratchArea = null;
    this.scratchSaved = null;
    if (problems.length > 0) throw new InjectionError(`thread ${this.tid}: could not restore its state: ${problems.join("; ")}`, this.tid);
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** The thread group of a thread, from /proc/TID/status. */
function tgidOf(tid: number): number {
  const proc = new ProcFs();
  try {
    const m = /^Tgid:\s*(\d+)$/m.exec(proc.readText(tid, "status"));
    if (!m?.[1]) throw new InjectionError(`/proc/${tid}/status has no Tgid line`, tid);
    return Number(m[1]);
  } finally {
    proc.close();
  }
}
