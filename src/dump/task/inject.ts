/**
 * System calls made by a ptrace-stopped thread on our behalf, without putting
 * any code into it, and without ever leaving it in a state it cannot survive
 * on its own: ckpt may be SIGKILLed at any instant, and the kernel then
 * detaches every tracee and lets it run from whatever registers it has.
 *
 * The way home. Before the first call, ckpt writes a signal frame
 * (sys/sigframe.ts) on the thread's stack below the red zone, holding the
 * thread's registers, blocked mask and FPU state, and points the thread at a
 * `mov $15, %eax; syscall` pair already in its code: the rt_sigreturn
 * trampoline (__restore_rt) every libc and the Go runtime carry. From then
 * on, whenever the thread runs without us, it executes rt_sigreturn and is
 * back where it was.
 *
 * One call: PTRACE_SYSCALL, and the thread stops at the syscall-enter stop of
 * that rt_sigreturn. There ckpt swaps the call number (orig_rax) and the
 * arguments for its own call, rip still pointing at the trampoline; another
 * PTRACE_SYSCALL runs the call and stops at its syscall-exit stop, where rax
 * holds the result. Had ckpt died in between, the call would have returned to
 * the trampoline and rt_sigreturn would have followed. No single-step and no
 * breakpoint: a thread left in a single-step trap by a dead tracer gets a
 * SIGTRAP whose default action kills the whole process, which is what the
 * injector before this one did when ckpt was killed mid-dump.
 *
 * close() takes the thread back to a PTRACE_EVENT_STOP (PTRACE_INTERRUPT,
 * then resume: the trap is taken in get_signal() before any user code runs)
 * and puts back, in this order, the blocked mask, every NT_PRSTATUS register
 * exactly as PTRACE_GETREGSET gave them at open(), and the stack bytes under
 * the frame and the scratch area. Registers set in that stop are the ones the
 * kernel's syscall-restart rules see when the thread is finally resumed, so an
 * interrupted read() or nanosleep() goes on as if nothing had happened.
 *
 * What a kill of ckpt leaves, by moment:
 * - before the frame is in place, or after the registers are back: nothing
 *   (the thread is in its own state);
 * - in between: the thread runs rt_sigreturn, possibly right after the
 *   injected call in flight. It gets its registers, mask and FPU state from
 *   the frame, with the restart rules already applied there (rt_sigreturn
 *   disables them): an interrupted call is re-issued, and one that was to be
 *   restarted through restart_syscall (nanosleep, poll with a timeout) returns
 *   EINTR instead — what CRIU's own restore gives such a call. A signal that
 *   was pending at the freeze is delivered first or after; bytes below the
 *   red zone keep the frame, as they would a signal handler's.
 * The injected call itself may have happened (close() of an fd ckpt made,
 * say); callers arrange their calls so that this is harmless (withNewFd).
 *
 * Kernel behaviour this relies on (x86_64, checked by test/inject.test.ts):
 * - At a syscall-enter stop the tracer may change orig_rax, the argument
 *   registers and rip; the call then made is the new one, returning to the new
 *   rip. A tracee in a syscall stop whose tracer dies resumes without a signal.
 * - Signals are blocked with PTRACE_SETSIGMASK while we inject, so no handler
 *   runs on injected registers; SIGKILL and SIGSTOP cannot be blocked, and a
 *   SIGSTOP that arrives meanwhile is passed on (the group stop happens).
 * - PTRACE_SETSIGMASK clears TIF_RESTORE_SIGMASK, and PTRACE_GETSIGMASK
 *   reports the saved mask when that flag is set: a thread stopped in ppoll/
 *   pselect/sigsuspend gets its real mask back (the temporary one is
 *   re-installed when the call restarts).
 *
 * Side effects that remain: the scratch and frame pages are faulted in (and
 * count as written for soft-dirty or userfaultfd write-protect tracking), and
 * a thread whose code has no rt_sigreturn trampoline, or whose stack has no
 * room for the frames (~3.6 KiB), or that runs with a shadow stack, is refused
 * rather than driven without a way home.
 */
import { SysError, errnoName, errnoText } from "../../sys/errno";
import { addressOf, processVmReadv, processVmWritev, waitpid } from "../../sys/libc";
import { NT, PTRACE_EVENT_STOP, PTRACE_O, SIG, SYS, W } from "../../sys/nr";
import * as ptrace from "../../sys/ptrace";
import { encodeSigframe, placeSigframe, RT_SIGFRAME_SIZE, sigframeXstate, type SigframePlacement } from "../../sys/sigframe";
import { decodeUserRegs, encodeUserRegs, setIovec, USER_REGS_SIZE, type UserRegs } from "../../sys/structs";
import { readMaps, type MapArea } from "../../proc/maps";
import { readAllChildren } from "../../proc/task";
import { ProcFs } from "../../proc/procfs";
import { listDirectory } from "../../sys/file";
import { answerWaitingWrites, beforeStackWrite } from "./protected-memory";
import { MAX_ERRNO, RED_ZONE, SCRATCH_MAP_FLAGS, SCRATCH_PROT, USER_CS_64, signalName } from "../../sys/inject-consts";

const PAGE = 4096n;
const U64_MASK = (1n << 64n) - 1n;
/** orig_rax of "not in a system call" as the u64 the register set holds. */
const NO_SYSCALL = U64_MASK;
/** Every signal blocked while we inject (the kernel ignores the SIGKILL and SIGSTOP bits). */
const ALL_SIGNALS = U64_MASK;
/** What rax holds at a syscall-enter stop. */
const ENOSYS_RESULT = BigInt.asUintN(64, -38n);
/** Largest NT_X86_XSTATE regset (AMX makes it ~11 KiB). */
const XSTATE_MAX = 16384;

const ERESTART = { SYS: -512n, NOINTR: -513n, NOHAND: -514n, RESTARTBLOCK: -516n } as const;
const EINTR_RESULT = BigInt.asUintN(64, -4n);

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

/** The `mov $15, %eax; syscall` pair a thread returns through (see the file comment). */
export interface SigreturnTrampoline {
  address: bigint;
  length: number;
}

/** A signal the kernel handed to us while we drove the thread: passed on, as the kernel would have acted. */
export interface InterceptedSignal {
  signo: number;
  code: number;
  handling: "passed";
}

export interface RemoteSyscallsOptions {
  /**
   * Scratch memory: "stack" below the red zone, "mmap" an injected anonymous
   * mapping, "auto" (default) the stack when it has room there, else mmap.
   * The signal frame always goes on the stack.
   */
  scratch?: "auto" | "stack" | "mmap";
  /** Bytes of scratch memory (default 4096): rounded up to 64 on the stack, to pages for mmap. */
  scratchSize?: number;
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

/**
 * The registers a thread has once the kernel's syscall-restart rules have
 * acted on them with no handler to run (arch_do_signal_or_restart): an
 * interrupted call is re-issued, and one meant for restart_syscall returns
 * EINTR, since rt_sigreturn resets the restart block. orig_rax is -1 either way.
 */
export function withRestartApplied(regs: UserRegs): UserRegs {
  const out = { ...regs, orig_ax: NO_SYSCALL };
  if (BigInt.asIntN(64, regs.orig_ax) < 0n) return out;
  const ax = BigInt.asIntN(64, regs.ax);
  if (ax === ERESTART.SYS || ax === ERESTART.NOINTR || ax === ERESTART.NOHAND) return { ...out, ax: regs.orig_ax, ip: regs.ip - 2n };
  if (ax === ERESTART.RESTARTBLOCK) return { ...out, ax: EINTR_RESULT };
  return out;
}

// ------------------------------------------------------------ the code we borrow

/** `mov $15, %rax; syscall` (glibc, musl, Go) and `mov $15, %eax; syscall`. */
const TRAMPOLINES = [Uint8Array.of(0x48, 0xc7, 0xc0, 0x0f, 0, 0, 0, 0x0f, 0x05), Uint8Array.of(0xb8, 0x0f, 0, 0, 0, 0x0f, 0x05)];
/** `syscall; ret`: glibc has a dozen. */
const SYSCALL_RET = Uint8Array.of(0x0f, 0x05, 0xc3);
/** Code is read this much at a time while looking for the sequences. */
const SCAN_CHUNK = 1 << 20;
/** How much code is read, at most, for the optional `syscall; ret` once the trampoline is found. */
const SCAN_BUDGET = 16 << 20;

/** The sequences of a process's own code that injection returns through. */
export interface BorrowedCode {
  trampoline: SigreturnTrampoline;
  /** A `syscall; ret`, or null when the process has none (withNewFd then has a short window). */
  syscallRet: bigint | null;
}

/** What was found in each process (by tgid); re-checked before every use. */
const codeCache = new Map<number, BorrowedCode>();

const isLibc = (a: MapArea): boolean => /\/(libc[.-][^/]*|ld-musl[^/]*)$/.test(a.path);

function executable(a: MapArea): boolean {
  return a.exec && a.read && a.path !== "[vsyscall]";
}

function holds(tid: number, areas: readonly MapArea[], address: bigint, patterns: readonly Uint8Array[]): boolean {
  const length = Math.max(...patterns.map((p) => p.length));
  if (!areas.some((a) => executable(a) && a.start <= address && address + BigInt(length) <= a.end)) return false;
  const bytes = readTaskMemory(tid, address, length);
  return patterns.some((p) => p.every((b, i) => bytes[i] === b));
}

/**
 * Find a rt_sigreturn trampoline, and a `syscall; ret` if there is one, in the
 * executable mappings of the thread's process: libc's first, where every
 * glibc or musl process has both.
 */
export function findBorrowedCode(tid: number, tgid: number, areas: readonly MapArea[]): BorrowedCode {
  const cached = codeCache.get(tgid);
  if (cached && holds(tid, areas, cached.trampoline.address, TRAMPOLINES) && (cached.syscallRet === null || holds(tid, areas, cached.syscallRet, [SYSCALL_RET]))) return cached;
  const code = areas.filter(executable).sort((a, b) => Number(isLibc(b)) - Number(isLibc(a)));
  const overlap = Math.max(...TRAMPOLINES.map((p) => p.length)) - 1;
  let trampoline: SigreturnTrampoline | null = null;
  let syscallRet: bigint | null = null;
  let scannedAfter = 0;
  scan: for (const area of code) {
    for (let at = area.start; at < area.end; at += BigInt(SCAN_CHUNK - overlap)) {
      const length = Number(area.end - at < BigInt(SCAN_CHUNK) ? area.end - at : BigInt(SCAN_CHUNK));
      let chunk: Buffer;
      try {
        chunk = Buffer.from(readTaskMemory(tid, at, length).buffer);
      } catch {
        break; // an area that cannot be read (execute-only, or a hole in a file mapping)
      }
      const patterns: readonly Uint8Array[] = trampoline ? [] : TRAMPOLINES;
      for (const pattern of patterns) {
        const i: number = chunk.indexOf(pattern);
        if (i >= 0) {
          trampoline = { address: at + BigInt(i), length: pattern.length };
          break;
        }
      }
      if (syscallRet === null) {
        const i = chunk.indexOf(SYSCALL_RET);
        if (i >= 0) syscallRet = at + BigInt(i);
      }
      if (trampoline && syscallRet !== null) break scan;
      if (trampoline && (scannedAfter += length) > SCAN_BUDGET) break scan;
      if (at + BigInt(length) >= area.end) break;
    }
  }
  if (!trampoline) {
    throw new InjectionError(
      `thread ${tid}: no rt_sigreturn trampoline (mov $15,%eax; syscall) in the code of process ${tgid}; ckpt injects calls only into threads it can send back to their own state if ckpt itself dies`,
      tid,
    );
  }
  const found = { trampoline, syscallRet };
  codeCache.set(tgid, found);
  return found;
}

/**
 * Look for the borrowed code of the processes of the tree under `root` while
 * they still run: code does not change under a running process (the cache is
 * re-checked at use), and the search reads a megabyte or more of libc that
 * the frozen window need not wait for. Processes that come or go meanwhile
 * are searched at their first injection, as without this.
 */
export function learnBorrowedCode(proc: ProcFs, root: number): void {
  const queue = [root];
  for (let pid = queue.shift(); pid !== undefined; pid = queue.shift()) {
    try {
      findBorrowedCode(pid, pid, readMaps(proc, pid));
      queue.push(...readAllChildren(proc, pid));
    } catch {
      // Gone, or nothing to borrow: the injection itself says so, frozen.
    }
  }
}

/** The lowest fd number free in a thread's fd table: where the next new fd of the (frozen) process lands. */
function lowestFreeFd(tid: number): number | null {
  try {
    const used = new Set(listDirectory(`/proc/${tid}/fd`).map(Number));
    let fd = 0;
    while (used.has(fd)) fd++;
    return fd;
  } catch {
    return null;
  }
}

// ------------------------------------------------------------ the stack plan

/** Where the frames and (on the stack) the scratch memory go. */
interface StackPlan {
  frame: SigframePlacement;
  /** Room for a second frame below the first, for withNewFd's close chain. */
  chained: bigint;
  /** The stack scratch area, or null when it is mapped. */
  scratch: ScratchArea | null;
  /** The stack bytes [low, top) that are saved, overwritten and put back. */
  low: bigint;
  top: bigint;
}

function describeArea(area: MapArea | undefined): string {
  return area ? `${hex(area.start)}-${hex(area.end)} ${area.read ? "r" : "-"}${area.write ? "w" : "-"}${area.shared ? "s" : "p"} ${area.path}` : "no single mapping";
}

function planStack(tid: number, areas: readonly MapArea[], sp: bigint, mode: "auto" | "stack" | "mmap", size: number, xstateLength: number): StackPlan {
  if (!(size > 0)) throw new InjectionError(`scratch size must be positive, not ${size}`, tid);
  const top = (sp - RED_ZONE) & ~63n;
  // Private anonymous memory only: a shared or file-backed "stack" would let
  // other processes (or the file) see the bytes.
  const areaOf = (low: bigint): MapArea | undefined => areas.find((a) => a.start <= low && top <= a.end);
  const usable = (a: MapArea | undefined): boolean => a !== undefined && a.read && a.write && !a.shared && (a.path === "" || a.path === "[stack]" || a.path.startsWith("[anon:"));
  const framesBelow = (above: bigint): { frame: SigframePlacement; chained: bigint } => {
    const frame = placeSigframe(above, xstateLength);
    return { frame, chained: (frame.frame - BigInt(RT_SIGFRAME_SIZE)) & ~15n };
  };
  if (mode !== "mmap") {
    const scratchLow = (top - BigInt(size)) & ~63n;
    const { frame, chained } = framesBelow(scratchLow);
    if (usable(areaOf(chained))) {
      return { frame, chained, low: chained, top, scratch: { address: scratchLow, size: Number(top - scratchLow), kind: "stack" } };
    }
    if (mode === "stack") {
      throw new InjectionError(`thread ${tid}: no room for ${size} scratch bytes below rsp ${hex(sp)} (${hex(chained)}-${hex(top)} lies in ${describeArea(areaOf(chained))})`, tid);
    }
  }
  const { frame, chained } = framesBelow(top);
  if (usable(areaOf(chained))) return { frame, chained, low: chained, top, scratch: null };
  throw new InjectionError(
    `thread ${tid}: no room below rsp ${hex(sp)} for the ${Number(top - chained)}-byte signal frames that let it return to its own state if ckpt dies (${hex(chained)}-${hex(top)} lies in ${describeArea(areaOf(chained))})`,
    tid,
  );
}

function statusField(status: string, name: string): string | undefined {
  return new RegExp(`^${name}:[ \\t]*(.*)$`, "m").exec(status)?.[1];
}

// ------------------------------------------------------------ remote calls

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
  readonly trampoline: SigreturnTrampoline;
  /** A `syscall; ret` of the process's, or null (see withNewFd). */
  readonly syscallRet: bigint | null;
  /** Signals that arrived while we drove the thread. */
  readonly intercepted: InterceptedSignal[] = [];
  /** The registers the thread has between calls: at the trampoline, rsp just above the frame. */
  private readonly resting: UserRegs;
  private readonly plan: StackPlan;
  private scratchArea: ScratchArea | null;
  /** The original stack bytes under the frame and scratch area, once they are overwritten. */
  private stackSaved: Uint8Array | null = null;
  private readonly timeoutMs: number;
  private callTimedOut = false;
  private sigmaskChanged = false;
  private regsChanged = false;
  /** The thread has been resumed since open(): close() must take it back to an event stop. */
  private leftStop = false;
  private state: "open" | "closed" | "gone" = "open";

  private constructor(readonly tid: number, savedRegsRaw: Uint8Array, savedSigmask: bigint, code: BorrowedCode, plan: StackPlan, timeoutMs: number) {
    this.savedRegsRaw = savedRegsRaw;
    this.savedRegs = Object.freeze(decodeUserRegs(savedRegsRaw));
    this.savedSigmask = savedSigmask;
    this.trampoline = code.trampoline;
    this.syscallRet = code.syscallRet;
    this.plan = plan;
    this.scratchArea = plan.scratch;
    this.timeoutMs = timeoutMs;
    this.resting = { ...this.savedRegs, ip: code.trampoline.address, sp: plan.frame.frame + 8n, orig_ax: NO_SYSCALL };
  }

  /** Save the thread's state, put its way home in place, block its signals and set up scratch memory. */
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
    // Syscall stops must say which they are (PTRACE_GET_SYSCALL_INFO only
    // tells entry from exit under TRACESYSGOOD). Dump's tracees have no other
    // options: the kernel must detach them, not kill them, if ckpt dies.
    ptrace.setOptions(tid, PTRACE_O.TRACESYSGOOD);
    const status = proc.readText(tid, "status");
    const tgid = Number(statusField(status, "Tgid"));
    if (!(tgid > 0)) throw new InjectionError(`/proc/${tid}/status has no Tgid line`, tid);
    if (/\bshstk\b/.test(statusField(status, "x86_Thread_features") ?? "")) {
      throw new InjectionError(`thread ${tid} runs with a shadow stack, which rt_sigreturn would check against ckpt's frame: not supported`, tid);
    }
    const areas = readMaps(proc, tid);
    const code = findBorrowedCode(tid, tgid, areas);
    const xstateBuf = new Uint8Array(XSTATE_MAX);
    const xstate = sigframeXstate(xstateBuf.subarray(0, ptrace.getRegset(tid, NT.X86_XSTATE, xstateBuf)));
    const plan = planStack(tid, areas, regs.sp, options.scratch ?? "auto", options.scratchSize ?? 4096, xstate.length);

    const remote = new RemoteSyscalls(tid, regsRaw, mask, code, plan, options.timeoutMs ?? 10_000);
    try {
      beforeStackWrite(tgid, plan.low, plan.top);
      remote.installWayHome(xstate);
      if (!remote.scratchArea) remote.mapScratch(options.scratchSize ?? 4096);
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

  /**
   * The frame first, then the resting registers, then the mask: at every
   * step in between, the thread resumed without us would be in its own state
   * or return to it through the frame.
   */
  private installWayHome(xstate: Uint8Array): void {
    const { low, top, frame } = this.plan;
    this.stackSaved = readTaskMemory(this.tid, low, Number(top - low));
    // pretcode: where a `ret` onto the frame goes, the trampoline (withNewFd's chain).
    writeTaskMemory(this.tid, frame.frame, encodeSigframe(frame, withRestartApplied(this.savedRegs), this.savedSigmask, xstate, this.trampoline.address));
    ptrace.setRegset(this.tid, NT.PRSTATUS, encodeUserRegs(this.resting));
    this.regsChanged = true;
    ptrace.setSigmask(this.tid, ALL_SIGNALS);
    this.sigmaskChanged = true;
  }

  private mapScratch(size: number): void {
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
    const what = this.describeCall(nr, args);
    this.enterTrampoline(what);
    this.load(nr, args);
    return this.finishCall(what);
  }

  /**
   * One call in each of several threads (each its own injector), made side
   * by side: every thread is resumed before any is waited for, so that
   * their stops overlap instead of adding up (two per call, each a wake-up
   * of another thread). Every thread goes through exactly the states
   * syscall() takes it through, so a ckpt that dies meanwhile leaves each of
   * them on its way home. Returns the results in order.
   */
  static syscallEach(calls: readonly { remote: RemoteSyscalls; nr: number; args?: readonly SyscallArg[] }[]): bigint[] {
    const whats = calls.map((c) => c.remote.describeCall(c.nr, c.args ?? []));
    // Threads resumed and not yet seen stopped: waited for before an error leaves here.
    const running = new Set<RemoteSyscalls>();
    const resume = (r: RemoteSyscalls): void => {
      r.resumeForStop(0);
      running.add(r);
    };
    const awaitStop = (r: RemoteSyscalls, what: string): ptrace.SyscallStopInfo => {
      running.delete(r);
      return r.awaitSyscallStop(what);
    };
    try {
      for (const c of calls) {
        c.remote.callTimedOut = false;
        resume(c.remote);
      }
      calls.forEach((c, i) => c.remote.checkTrampolineEntry(awaitStop(c.remote, whats[i]!), whats[i]!));
      for (const c of calls) {
        c.remote.load(c.nr, c.args ?? []);
        resume(c.remote);
      }
      return calls.map((c, i) => c.remote.callResult(awaitStop(c.remote, whats[i]!), whats[i]!));
    } finally {
      for (const r of running) {
        try {
          r.awaitSyscallStop("the stop of a call made beside one that failed");
        } catch {
          // close() copes with a thread in any state; the first error says more.
        }
      }
    }
  }

  /** The call as errors name it, after checking the injector is open and the arguments fit. */
  private describeCall(nr: number, args: readonly SyscallArg[]): string {
    this.ensureOpen(syscallName(nr));
    if (args.length > 6) throw new RangeError(`${syscallName(nr)}: ${args.length} arguments, a system call takes at most 6`);
    return `injected ${syscallName(nr)}(${args.map(String).join(", ")})`;
  }

  /**
   * syscall(), throwing a RemoteSyscallError that names the call, its
   * arguments (`shown`, or the raw values) and the errno when the call fails.
   */
  check(name: string, nr: number, args: readonly SyscallArg[] = [], shown?: readonly string[]): bigint {
    return this.checkResult(name, this.syscall(nr, args), args, shown);
  }

  /** A call's result, or the RemoteSyscallError naming it when it failed (see check()). */
  checkResult(name: string, result: bigint, args: readonly SyscallArg[], shown?: readonly string[]): bigint {
    if (isErrorResult(result)) {
      throw new RemoteSyscallError(this.tid, name, shown ?? args.map((v) => (typeof v === "bigint" ? hex(v) : String(v))), Number(-result));
    }
    return result;
  }

  /**
   * Make a call that creates an fd in the thread and let `take` use that fd
   * (pidfd_getfd it, typically); the fd is closed in the thread whatever
   * `take` does, and whenever ckpt dies.
   *
   * The fd number is known before the call: the lowest free one (the process
   * is frozen). So the call runs with rsp on a second frame whose registers
   * are "close(that fd)" at the process's `syscall; ret`, with rsp on the
   * first frame, whose pretcode holds the trampoline: should ckpt die once
   * the call has begun, the thread returns to the trampoline, rt_sigreturn
   * loads the second frame, close() runs, `ret` lands on the trampoline, and
   * rt_sigreturn loads the first frame — home, without the fd. ckpt itself
   * arms the same close() at the next stop and lets `take` run before it.
   * Without a `syscall; ret` in the process, or if the fd lands elsewhere
   * than predicted, the moment between the call's return and the armed close
   * (one stop of the thread) is left open.
   */
  withNewFd<T>(name: string, nr: number, args: readonly SyscallArg[], shown: readonly string[], take: (fd: number) => T): T {
    this.ensureOpen(name);
    const what = `injected ${name}(${shown.join(", ")})`;
    const predicted = this.syscallRet === null ? null : lowestFreeFd(this.tid);
    this.enterTrampoline(what);
    if (predicted !== null && this.syscallRet !== null) {
      const chain = { frame: this.plan.chained, fpstate: this.plan.frame.fpstate, length: RT_SIGFRAME_SIZE };
      const closing: UserRegs = { ...this.resting, ip: this.syscallRet, ax: BigInt(SYS.close), di: BigInt(predicted), sp: this.plan.frame.frame };
      writeTaskMemory(this.tid, chain.frame, encodeSigframe(chain, closing, ALL_SIGNALS, null));
      this.load(nr, args, this.plan.chained + 8n);
    } else {
      this.load(nr, args);
    }
    const created = this.finishCall(what);
    if (predicted !== null && created !== BigInt(predicted)) {
      // Not the fd the chain closes (or no fd at all): back to the plain way home at once.
      ptrace.setRegset(this.tid, NT.PRSTATUS, encodeUserRegs(this.resting));
    }
    const fd = Number(this.checkResult(name, created, args, shown));
    const closing = `injected close(${fd}) of the ${name} fd`;
    this.enterTrampoline(closing);
    this.load(SYS.close, [fd]);
    let result: T | undefined;
    let failure: unknown;
    try {
      result = take(fd);
    } catch (e) {
      failure = e;
    }
    const closed = this.finishCall(closing);
    if (failure !== undefined) throw failure;
    this.checkResult("close", closed, [fd]);
    return result as T;
  }

  /** Resume the thread into the trampoline's rt_sigreturn and stop at its entry. */
  private enterTrampoline(what: string): void {
    this.callTimedOut = false;
    this.checkTrampolineEntry(this.resumeToSyscallStop(what), what);
  }

  /** That `stop` is the entry of the trampoline's rt_sigreturn, where a call can be loaded. */
  private checkTrampolineEntry(stop: ptrace.SyscallStopInfo, what: string): void {
    const expectedIp = this.trampoline.address + BigInt(this.trampoline.length);
    if (stop.op !== ptrace.SYSCALL_INFO_OP.ENTRY || stop.nr !== BigInt(SYS.rt_sigreturn) || stop.ip !== expectedIp) {
      const seen = stop.op === ptrace.SYSCALL_INFO_OP.ENTRY ? `the entry of ${syscallName(Number(stop.nr))}` : stop.op === ptrace.SYSCALL_INFO_OP.EXIT ? "a syscall exit" : "a stop that is no syscall stop";
      throw new InjectionError(`thread ${this.tid}: before ${what} it stopped at ${seen} at rip ${hex(stop.ip)}, expected the entry of rt_sigreturn at ${hex(expectedIp)}`, this.tid);
    }
  }

  /**
   * At the trampoline's syscall-enter stop: make the call about to run ours,
   * returning to the trampoline, with rsp just above the first frame (or `sp`).
   */
  private load(nr: number, args: readonly SyscallArg[], sp = this.resting.sp): void {
    const a = (i: number): bigint => BigInt.asUintN(64, BigInt(args[i] ?? 0));
    ptrace.setRegset(this.tid, NT.PRSTATUS, encodeUserRegs({
      ...this.resting, sp,
      orig_ax: BigInt(nr), ax: ENOSYS_RESULT,
      di: a(0), si: a(1), dx: a(2), r10: a(3), r8: a(4), r9: a(5),
    }));
  }

  /** Run the loaded call to its syscall-exit stop; returns its signed result. */
  private finishCall(what: string): bigint {
    return this.callResult(this.resumeToSyscallStop(what), what);
  }

  /** The signed result of the loaded call, from the stop it ran to. */
  private callResult(stop: ptrace.SyscallStopInfo, what: string): bigint {
    if (stop.op !== ptrace.SYSCALL_INFO_OP.EXIT) throw new InjectionError(`thread ${this.tid}: ${what} did not come back to a syscall-exit stop (rip ${hex(stop.ip)})`, this.tid);
    const result = stop.rval;
    const r = BigInt.asIntN(64, result);
    if (r === ERESTART.SYS || r === ERESTART.NOINTR || r === ERESTART.NOHAND || r === ERESTART.RESTARTBLOCK) {
      // The restart rules would rewind rip by two bytes, to before the
      // trampoline, should the thread leave this stop without us.
      ptrace.setRegset(this.tid, NT.PRSTATUS, encodeUserRegs(this.resting));
    }
    if (this.callTimedOut) {
      throw new InjectionError(`thread ${this.tid}: ${what} did not return within ${this.timeoutMs} ms; interrupted, it returned ${r}${isErrorResult(r) ? ` (${errnoName(Number(-r))})` : ""}`, this.tid);
    }
    return r;
  }

  /**
   * PTRACE_SYSCALL until the next syscall stop. Group stops and our own
   * timeout interrupt are resumed through; a SIGSTOP is passed on.
   */
  private resumeToSyscallStop(what: string): ptrace.SyscallStopInfo {
    this.resumeForStop(0);
    return this.awaitSyscallStop(what);
  }

  /** PTRACE_SYSCALL, with `sig` to deliver (0: none). */
  private resumeForStop(sig: number): void {
    ptrace.resumeToSyscall(this.tid, sig);
    this.leftStop = true;
  }

  /** The resumed thread's next syscall stop, resuming it through the stops on the way. */
  private awaitSyscallStop(what: string): ptrace.SyscallStopInfo {
    for (let stops = 0; stops < 100; stops++) {
      const status = this.waitStop(what);
      const event = ptrace.ptraceEvent(status);
      const sig = ptrace.stopSig(status);
      if (event === PTRACE_EVENT_STOP) {
        this.resumeForStop(0);
        continue;
      }
      if (event !== 0) throw new InjectionError(`thread ${this.tid}: unexpected ptrace event ${event} (stop signal ${signalName(sig)}) during ${what}`, this.tid);
      if ((sig & 0x7f) === SIG.TRAP) {
        const info = ptrace.syscallInfo(this.tid);
        if (info.op === ptrace.SYSCALL_INFO_OP.ENTRY || info.op === ptrace.SYSCALL_INFO_OP.EXIT) return info;
      }
      if (sig === SIG.STOP) {
        // Unblockable; resuming with it starts the group stop as the kernel would have.
        this.intercepted.push({ signo: sig, code: 0, handling: "passed" });
        this.resumeForStop(sig);
        continue;
      }
      // Every other signal is blocked, so this is one the kernel forced (a
      // fault): nothing safe can follow.
      throw new InjectionError(`thread ${this.tid}: ${signalName(sig)} during ${what} at rip ${hex(this.currentRegs().ip)}`, this.tid);
    }
    throw new InjectionError(`thread ${this.tid}: ${what} kept stopping without finishing (100 stops)`, this.tid);
  }

  /**
   * Wait for the next stop of the thread. Polls so that a call that blocks in
   * the task cannot hang us: after the timeout the thread is interrupted once
   * (the call then returns, usually -ERESTARTSYS, and the call finishes).
   */
  private waitStop(what: string): number {
    const start = performance.now();
    for (;;) {
      const r = waitpid(this.tid, W.ALL | W.NOHANG);
      if (r.pid === this.tid) {
        const status = r.status;
        if (ptrace.isExited(status) || ptrace.isSignaled(status)) {
          this.state = "gone";
          const how = ptrace.isExited(status) ? `exited with code ${ptrace.exitCode(status)}` : `was killed by ${signalName(ptrace.termSig(status))}`;
          throw new InjectionError(`thread ${this.tid} ${how} during ${what}`, this.tid, true);
        }
        if (ptrace.isStopped(status)) return status;
        continue;
      }
      answerWaitingWrites();
      const elapsed = performance.now() - start;
      if (!this.callTimedOut && elapsed > this.timeoutMs) {
        ptrace.interrupt(this.tid);
        this.callTimedOut = true;
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
   * From a syscall stop back to a PTRACE_EVENT_STOP in get_signal(), the kind
   * of stop the thread was in at open(): PTRACE_INTERRUPT, then resume; the
   * trap is taken before the thread could return to user mode. Resumed with
   * PTRACE_SYSCALL all the same, so that if it ever did, it would stop at the
   * trampoline's rt_sigreturn, which is let through: that lands on the
   * frame's registers, and the event stop follows at its exit.
   */
  private returnToEventStop(): void {
    ptrace.interrupt(this.tid);
    let resumeSignal = 0;
    for (let stops = 0; stops < 100; stops++) {
      ptrace.resumeToSyscall(this.tid, resumeSignal);
      resumeSignal = 0;
      const status = this.waitStop("the return to its stop");
      if (ptrace.ptraceEvent(status) === PTRACE_EVENT_STOP) return;
      if (ptrace.stopSig(status) === SIG.STOP && ptrace.ptraceEvent(status) === 0) {
        this.intercepted.push({ signo: SIG.STOP, code: 0, handling: "passed" });
        resumeSignal = SIG.STOP;
      }
    }
    throw new InjectionError(`thread ${this.tid}: did not come back to an event stop (100 stops)`, this.tid);
  }

  /**
   * Put everything back: unmap a mapped scratch page, return to an event
   * stop, then the blocked mask, every register and the stack bytes.
   * Idempotent; a thread that is gone is not an error. Throws after trying
   * every step when one failed.
   */
  close(): void {
    if (this.state !== "open") return;
    const problems: string[] = [];
    const attempt = (step: () => void): void => {
      if (this.state !== "open") return;
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
    if (area?.kind === "mmap") attempt(() => void this.check("munmap", SYS.munmap, [area.address, area.size], [hex(area.address), String(area.size)]));
    if (this.leftStop) attempt(() => this.returnToEventStop());
    // The mask before the registers: with the registers back first, a kill of
    // ckpt in between would leave the thread running with every signal blocked.
    if (this.sigmaskChanged) attempt(() => ptrace.setSigmask(this.tid, this.savedSigmask));
    if (this.regsChanged) {
      attempt(() => {
        ptrace.setRegset(this.tid, NT.PRSTATUS, this.savedRegsRaw);
        this.regsChanged = false;
      });
    }
    // The frame goes last, and only once nothing points at it any more.
    const saved = this.stackSaved;
    if (saved && !this.regsChanged) attempt(() => writeTaskMemory(this.tid, this.plan.low, saved));
    if (this.state === "open") this.state = "closed";
    this.scratchArea = null;
    this.stackSaved = null;
    if (problems.length > 0) throw new InjectionError(`thread ${this.tid}: could not restore its state: ${problems.join("; ")}`, this.tid);
  }

  [Symbol.dispose](): void {
    this.close();
  }
}
