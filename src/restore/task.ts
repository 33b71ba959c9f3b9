/**
 * Process- and thread-wide state from the core images, put back by injected
 * calls (signal actions, timers, alternate stacks, rseq, credentials ...) or
 * from ckpt with calls that take a pid (rlimits, scheduling).
 */
import type { CoreEntry, TaskCoreEntry, ThreadCoreEntry } from "../image/gen/core_pb";
import type { CredsEntry } from "../image/gen/creds_pb";
import type { ItimerEntry } from "../image/gen/timer_pb";
import { readWholeFile } from "../sys/file";
import { addressOf, syscall } from "../sys/libc";
import { KSIGACTION_SIZE, KSIGSET_SIZE, SIGMAX, signalName } from "../sys/inject-consts";
import { AT, O, SIG, SYS } from "../sys/nr";
import { SIGINFO_SIZE } from "../sys/structs";
import type { MmEntry } from "../image/gen/mm_pb";
import type { ProcFs } from "../proc/procfs";
import type { BatchedCall, Puppet } from "./puppet";

const hex = (v: bigint | number): string => `0x${v.toString(16)}`;

export const PR = {
  SET_PDEATHSIG: 1, SET_DUMPABLE: 4, SET_NAME: 15, CAPBSET_DROP: 24, SET_SECUREBITS: 28, SET_CHILD_SUBREAPER: 36,
  SET_THP_DISABLE: 41, CAP_AMBIENT: 47,
} as const;
const PR_CAP_AMBIENT_RAISE = 2;
const SS_DISABLE = 2;
/** sizeof(stack_t): ss_sp, ss_flags (padded), ss_size. */
const STACK_T_SIZE = 24;
const SECBIT_NO_SETUID_FIXUP = 1 << 2;
const LINUX_CAPABILITY_VERSION_3 = 0x20080522;

/** Signals a task core lists actions for: 1..64 without SIGKILL and SIGSTOP, in order. */
function actionSignals(): number[] {
  const out: number[] = [];
  for (let sig = 1; sig <= SIGMAX; sig++) if (sig !== SIG.KILL && sig !== SIG.STOP) out.push(sig);
  return out;
}

/** Every signal action that is not the default one (handler 0, no flags, empty mask). */
export function restoreSigactions(p: Puppet, scratch: bigint, tc: TaskCoreEntry): void {
  const signals = actionSignals();
  if (tc.sigactions.length !== 0 && tc.sigactions.length !== signals.length) {
    throw new Error(`task core of ${p.tid} lists ${tc.sigactions.length} signal actions, expected ${signals.length}`);
  }
  const buf = new Uint8Array(KSIGACTION_SIZE);
  const v = new DataView(buf.buffer);
  tc.sigactions.forEach((sa, i) => {
    const sig = signals[i] ?? 0;
    if (sa.sigaction === 0n && sa.flags === 0n && sa.mask === 0n) return;
    v.setBigUint64(0, sa.sigaction, true);
    v.setBigUint64(8, sa.flags, true);
    v.setBigUint64(16, sa.restorer, true);
    v.setBigUint64(24, sa.mask, true);
    p.write(scratch, buf);
    p.call(SYS.rt_sigaction, [sig, scratch, 0, KSIGSET_SIZE], [signalName(sig), hex(sa.sigaction), "NULL", String(KSIGSET_SIZE)]);
  });
}

function isZero(t: ItimerEntry | undefined): boolean {
  return !t || (t.isec === 0n && t.iusec === 0n && t.vsec === 0n && t.vusec === 0n);
}

export function restoreItimers(p: Puppet, scratch: bigint, tc: TaskCoreEntry): void {
  const t = tc.timers;
  if (!t) return;
  [t.real, t.virt, t.prof].forEach((it, which) => {
    if (!it || isZero(it)) return;
    const v = new BigUint64Array([it.isec, it.iusec, it.vsec, it.vusec]);
    // A timer that had 0 left fires at once rather than never.
    if (it.vsec === 0n && it.vusec === 0n) v[3] = 1n;
    p.write(scratch, new Uint8Array(v.buffer));
    p.call(SYS.setitimer, [which, scratch, 0]);
  });
}

/**
 * Signals queued at dump time, queued again by the task to itself (the
 * kernel allows any si_code then). A SIGSTOP cannot be blocked while restore
 * drives the task, so it is not queued: the return value says one was, and
 * the caller stops the task just before letting it go.
 */
export function requeueSignals(p: Puppet, scratch: bigint, tgid: number, queue: { siginfo: Uint8Array }[] | undefined, threadTid?: number): boolean {
  let stop = false;
  for (const { siginfo } of queue ?? []) {
    if (siginfo.length !== SIGINFO_SIZE) throw new Error(`a queued signal of ${p.tid} is ${siginfo.length} bytes, not a siginfo_t`);
    const signo = new DataView(siginfo.buffer, siginfo.byteOffset, 4).getInt32(0, true);
    if (signo === SIG.STOP) {
      stop = true;
      continue;
    }
    p.write(scratch, siginfo);
    if (threadTid === undefined) p.call(SYS.rt_sigqueueinfo, [tgid, signo, scratch], [String(tgid), signalName(signo), "siginfo"]);
    else p.call(SYS.rt_tgsigqueueinfo, [tgid, threadTid, signo, scratch], [String(tgid), String(threadTid), signalName(signo), "siginfo"]);
  }
  return stop;
}

/** Per-thread kernel state a thread sets on itself. */
export function restoreThreadState(p: Puppet, scratch: bigint, core: CoreEntry, tc: ThreadCoreEntry): void {
  // One batch of calls; the structs they read lie side by side in scratch: the stack_t, then the name.
  const calls: BatchedCall[] = [];
  const info = core.threadInfo;
  if (info) calls.push({ nr: SYS.set_tid_address, args: [info.clearTidAddr] });
  if (tc.futexRla !== 0n) calls.push({ nr: SYS.set_robust_list, args: [tc.futexRla, tc.futexRlaLen] });
  const sas = tc.sas;
  const arg = new Uint8Array(STACK_T_SIZE + 16);
  const v = new DataView(arg.buffer);
  if (sas && (sas.ssFlags & SS_DISABLE) === 0) {
    v.setBigUint64(0, sas.ssSp, true);
    v.setUint32(8, sas.ssFlags, true);
    v.setBigUint64(16, sas.ssSize, true);
    calls.push({ nr: SYS.sigaltstack, args: [scratch, 0], shown: [`{sp ${hex(sas.ssSp)}, size ${sas.ssSize}}`, "NULL"] });
  }
  const rseq = tc.rseqEntry;
  if (rseq && rseq.rseqAbiPointer !== 0n) calls.push({ nr: SYS.rseq, args: [rseq.rseqAbiPointer, rseq.rseqAbiSize, 0, rseq.signature] });
  if (tc.comm) {
    arg.set(new TextEncoder().encode(tc.comm).subarray(0, 15), STACK_T_SIZE);
    calls.push({ nr: SYS.prctl, args: [PR.SET_NAME, scratch + BigInt(STACK_T_SIZE)], shown: ["PR_SET_NAME", JSON.stringify(tc.comm)] });
  }
  p.write(scratch, arg);
  p.callBatch(calls);
}

/** The parent-death signal; after the credentials, whose change clears it. */
export function setPdeathSignal(p: Puppet, sig: number): void {
  p.call(SYS.prctl, [PR.SET_PDEATHSIG, sig], ["PR_SET_PDEATHSIG", signalName(sig)]);
}

/**
 * Dumpable and THP-disabled flags of the address space. Dumpable goes after
 * the credentials, whose change resets it; only 0 and 1 can be set (2, the
 * suid_dumpable mode, is what a change of credentials leaves anyway).
 */
export function restoreDumpable(p: Puppet, mm: MmEntry): void {
  if (mm.dumpable === 0 || mm.dumpable === 1) p.call(SYS.prctl, [PR.SET_DUMPABLE, mm.dumpable], ["PR_SET_DUMPABLE", String(mm.dumpable)]);
  if (mm.thpDisabled) p.call(SYS.prctl, [PR.SET_THP_DISABLE, 1, 0, 0, 0], ["PR_SET_THP_DISABLE", "1"]);
}

/** Scheduling policy, priority and nice value, set from ckpt (these calls take a tid). */
export function restoreScheduling(tid: number, tc: ThreadCoreEntry): void {
  const policy = tc.schedPolicy ?? 0;
  if (policy !== 0) {
    const param = new Int32Array([tc.schedPrio ?? 0]);
    syscall("sched_setscheduler", SYS.sched_setscheduler, [tid, policy, addressOf(param)], [String(tid), String(policy), String(tc.schedPrio ?? 0)]);
  }
  if ((tc.schedNice ?? 0) !== 0) syscall("setpriority", SYS.setpriority, [0, tid, tc.schedNice ?? 0], ["PRIO_PROCESS", String(tid), String(tc.schedNice)]);
}

export function setChildSubreaper(p: Puppet): void {
  p.call(SYS.prctl, [PR.SET_CHILD_SUBREAPER, 1], ["PR_SET_CHILD_SUBREAPER", "1"]);
}

const word64 = (w: readonly number[]): bigint => BigInt(w[0] ?? 0) | (BigInt(w[1] ?? 0) << 32n);

let lastCapKnown: number | undefined;

/** The highest capability this kernel knows (read once, not per thread). */
function lastCap(): number {
  lastCapKnown ??= Number.parseInt(new TextDecoder().decode(readWholeFile("/proc/sys/kernel/cap_last_cap")), 10);
  if (!Number.isInteger(lastCapKnown)) throw new Error("/proc/sys/kernel/cap_last_cap does not hold a number");
  return lastCapKnown;
}

/**
 * A thread's credentials, in the order that keeps the privileges each step
 * needs: keep capabilities across the uid change (NO_SETUID_FIXUP), set
 * groups and ids, drop the bounding set (needs CAP_SETPCAP), set the real
 * securebits, then the capability sets, then raise ambient ones.
 */
export function restoreCreds(p: Puppet, scratch: bigint, c: CredsEntry): void {
  // One batch of calls, in this order; what capset and setgroups read lies in
  // scratch: the capability header and data first, the groups after them.
  const eff = word64(c.capEff);
  const prm = word64(c.capPrm);
  const inh = word64(c.capInh);
  const caps = new Uint32Array([
    LINUX_CAPABILITY_VERSION_3, 0,
    Number(eff & 0xffffffffn), Number(prm & 0xffffffffn), Number(inh & 0xffffffffn),
    Number(eff >> 32n), Number(prm >> 32n), Number(inh >> 32n),
  ]);
  const groupsAt = scratch + BigInt(caps.byteLength);
  const arg = new Uint8Array(caps.byteLength + c.groups.length * 4);
  arg.set(new Uint8Array(caps.buffer));
  arg.set(new Uint8Array(new Uint32Array(c.groups).buffer), caps.byteLength);
  p.write(scratch, arg);
  const calls: BatchedCall[] = [
    { nr: SYS.prctl, args: [PR.SET_SECUREBITS, SECBIT_NO_SETUID_FIXUP], shown: ["PR_SET_SECUREBITS", "NO_SETUID_FIXUP"] },
    { nr: SYS.setgroups, args: [c.groups.length, c.groups.length ? groupsAt : 0], shown: [String(c.groups.length), `[${c.groups.join(",")}]`] },
    { nr: SYS.setresgid, args: [c.gid, c.egid, c.sgid] },
    { nr: SYS.setfsgid, args: [c.fsgid] },
    { nr: SYS.setresuid, args: [c.uid, c.euid, c.suid] },
    { nr: SYS.setfsuid, args: [c.fsuid] },
  ];
  const bnd = word64(c.capBnd);
  const last = lastCap();
  for (let cap = 0; cap <= last; cap++) {
    if ((bnd & (1n << BigInt(cap))) === 0n) calls.push({ nr: SYS.prctl, args: [PR.CAPBSET_DROP, cap], shown: ["PR_CAPBSET_DROP", String(cap)] });
  }
  calls.push({ nr: SYS.prctl, args: [PR.SET_SECUREBITS, c.secbits], shown: ["PR_SET_SECUREBITS", hex(c.secbits)] });
  calls.push({ nr: SYS.capset, args: [scratch, scratch + 8n], shown: ["v3", `eff ${hex(eff)} prm ${hex(prm)} inh ${hex(inh)}`] });
  const amb = word64(c.capAmb);
  for (let cap = 0; cap <= last; cap++) {
    if ((amb & (1n << BigInt(cap))) !== 0n) calls.push({ nr: SYS.prctl, args: [PR.CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0], shown: ["PR_CAP_AMBIENT_RAISE", String(cap)] });
  }
  p.callBatch(calls);
}

/**
 * The audit login uid, which children inherit. Only the task itself may
 * write its own (a fresh task's is unset, which needs no privilege), so the
 * write is made inside it; skipped when the inherited value is the dumped one.
 */
export function restoreLoginuid(p: Puppet, proc: ProcFs, scratch: bigint, loginuid: number): void {
  const want = String(loginuid >>> 0);
  if (proc.readText(p.tid, "loginuid").trim() === want) return;
  const path = "/proc/self/loginuid";
  p.write(scratch, new TextEncoder().encode(`${path}\0${want}`));
  const fd = p.call(SYS.openat, [AT.FDCWD, scratch, O.WRONLY | O.CLOEXEC], ["AT_FDCWD", path, "O_WRONLY|O_CLOEXEC"]);
  try {
    p.call(SYS.write, [fd, scratch + BigInt(path.length + 1), want.length], [String(fd), want, String(want.length)]);
  } finally {
    p.call(SYS.close, [fd]);
  }
}

/**
 * membarrier(2) registrations: the mask holds one bit per REGISTER_* command
 * the process had issued; each is issued again in the task (they belong to
 * its address space).
 */
export function restoreMembarrier(p: Puppet, mask: number): void {
  for (let bit = 0; bit < 32; bit++) {
    const cmd = (1 << bit) >>> 0;
    if ((mask & cmd) !== 0) p.call(SYS.membarrier, [cmd, 0]);
  }
}
