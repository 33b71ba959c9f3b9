/**
 * Per-thread and per-process state that ckpt can read from outside a stopped
 * task: registers and xstate through PTRACE_GETREGSET, TLS descriptors, the
 * blocked mask and queued signals through ptrace, and the rest from /proc and
 * system calls that take a pid (prlimit64, get_robust_list). State that only
 * the task can report is read by syscall injection (task-state.ts).
 */
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import {
  ThreadInfoX86Schema, UserDescTSchema, UserX86FpregsEntrySchema, UserX86RegsEntrySchema, UserX86XsaveEntrySchema,
  type ThreadInfoX86, type UserDescT, type UserX86XsaveEntry,
} from "../../image/gen/core_x86_pb";
import { CredsEntrySchema, type CredsEntry } from "../../image/gen/creds_pb";
import { RlimitEntrySchema, type RlimitEntry } from "../../image/gen/rlimit_pb";
import { SignalQueueEntrySchema, SiginfoEntrySchema, type SignalQueueEntry } from "../../image/gen/siginfo_pb";
import type { ProcFs } from "../../proc/procfs";
import type { ProcStatus } from "../../proc/status";
import { Errno, SysError } from "../../sys/errno";
import { addressOf, syscall } from "../../sys/libc";
import { NT, PTRACE, SYS } from "../../sys/nr";
import * as ptrace from "../../sys/ptrace";
import { withRestartApplied } from "./inject";
import { decodeUserFpregs, decodeUserRegs, USER_REGS_SIZE, XFEATURE, XSAVE_HEADER_BV, XSAVE_SW_XCR0, type UserRegs } from "../../sys/structs";

/** Largest xstate the kernel hands out (AMX tiles make it ~11 KiB); the kernel trims iov_len. */
const XSTATE_MAX = 16384;


/** Registers of one thread, raw (restore and tests want the bytes) and decoded. */
export interface ThreadRegs {
  regs: UserRegs;
  /** The NT_X86_XSTATE regset as the kernel returned it. */
  xstate: Uint8Array;
}

const regsBuf = new Uint8Array(USER_REGS_SIZE);
const xstateBuf = new Uint8Array(XSTATE_MAX);

export function readThreadRegs(tid: number): ThreadRegs {
  ptrace.getRegset(tid, NT.PRSTATUS, regsBuf);
  const n = ptrace.getRegset(tid, NT.X86_XSTATE, xstateBuf);
  return { regs: decodeUserRegs(regsBuf), xstate: xstateBuf.slice(0, n) };
}

function u64s(v: DataView, off: number, bytes: number): bigint[] {
  return Array.from({ length: bytes / 8 }, (_, i) => v.getBigUint64(off + i * 8, true));
}
function u32s(v: DataView, off: number, bytes: number): number[] {
  return Array.from({ length: bytes / 4 }, (_, i) => v.getUint32(off + i * 4, true));
}

/** The xsave part of CRIU's fpregs entry: each component the CPU has enabled (XCR0). */
export function xsaveEntry(xstate: Uint8Array): UserX86XsaveEntry | undefined {
  if (xstate.length <= XSAVE_HEADER_BV) return undefined;
  const v = new DataView(xstate.buffer, xstate.byteOffset, xstate.byteLength);
  const xcr0 = v.getBigUint64(XSAVE_SW_XCR0, true);
  const has = (f: { bit: number; offset: number; bytes: number }): boolean =>
    (xcr0 & (1n << BigInt(f.bit))) !== 0n && f.offset + f.bytes <= xstate.length;
  const e: MessageInitShape<typeof UserX86XsaveEntrySchema> & Record<string, unknown> = { xstateBv: v.getBigUint64(XSAVE_HEADER_BV, true) };
  if (has(XFEATURE.YMM)) e.ymmhSpace = u32s(v, XFEATURE.YMM.offset, XFEATURE.YMM.bytes);
  if (has(XFEATURE.BNDREGS)) e.bndregState = u64s(v, XFEATURE.BNDREGS.offset, XFEATURE.BNDREGS.bytes);
  if (has(XFEATURE.BNDCSR)) e.bndcsrState = u64s(v, XFEATURE.BNDCSR.offset, XFEATURE.BNDCSR.bytes);
  if (has(XFEATURE.OPMASK)) e.opmaskReg = u64s(v, XFEATURE.OPMASK.offset, XFEATURE.OPMASK.bytes);
  if (has(XFEATURE.ZMM_HI256)) e.zmmUpper = u64s(v, XFEATURE.ZMM_HI256.offset, XFEATURE.ZMM_HI256.bytes);
  if (has(XFEATURE.HI16_ZMM)) e.hi16Zmm = u64s(v, XFEATURE.HI16_ZMM.offset, XFEATURE.HI16_ZMM.bytes);
  if (has(XFEATURE.PKRU)) e.pkru = u32s(v, XFEATURE.PKRU.offset, XFEATURE.PKRU.bytes);
  return create(UserX86XsaveEntrySchema, e);
}

/** GDT TLS slots a 64-bit task may have set with set_thread_area (CRIU saves all three). */
const TLS_ENTRIES = [12, 13, 14];

/** struct user_desc of one TLS slot (PTRACE_GET_THREAD_AREA). */
function readTls(tid: number, entry: number): UserDescT {
  const desc = new Uint32Array(4);
  syscall("ptrace", SYS.ptrace, [PTRACE.GET_THREAD_AREA, tid, entry, addressOf(desc)], ["PTRACE_GET_THREAD_AREA", String(tid), String(entry)]);
  const bits = desc[3] ?? 0;
  return create(UserDescTSchema, {
    entryNumber: desc[0] ?? entry, baseAddr: desc[1] ?? 0, limit: desc[2] ?? 0,
    seg32bit: (bits & 1) !== 0, contentsH: (bits & 4) !== 0, contentsL: (bits & 2) !== 0,
    readExecOnly: (bits & 8) !== 0, limitInPages: (bits & 16) !== 0, segNotPresent: (bits & 32) !== 0,
    usable: (bits & 64) !== 0,
  });
}

/**
 * The registers as the image holds them: with the syscall-restart rules
 * already applied (an interrupted call re-issued, one bound for
 * restart_syscall failing with EINTR), because CRIU's restorer returns into
 * the task through rt_sigreturn, which never restarts anything; orig_ax kept,
 * as CRIU keeps it. ckpt's restore sets them in a signal stop, where the
 * kernel finds no restart error in ax and leaves them be.
 */
export function imageRegs(regs: UserRegs): UserRegs {
  return { ...withRestartApplied(regs), orig_ax: regs.orig_ax };
}

/** CRIU's thread_info for x86: registers, FPU/xstate, TLS; clear_tid comes from injection. */
export function threadInfo(tid: number, r: ThreadRegs, clearTidAddr: bigint): ThreadInfoX86 {
  const fp = decodeUserFpregs(r.xstate.subarray(0, 512));
  const g = imageRegs(r.regs);
  return create(ThreadInfoX86Schema, {
    clearTidAddr,
    gpregs: create(UserX86RegsEntrySchema, {
      r15: g.r15, r14: g.r14, r13: g.r13, r12: g.r12, bp: g.bp, bx: g.bx,
      r11: g.r11, r10: g.r10, r9: g.r9, r8: g.r8, ax: g.ax, cx: g.cx,
      dx: g.dx, si: g.si, di: g.di, origAx: g.orig_ax, ip: g.ip, cs: g.cs,
      flags: g.flags, sp: g.sp, ss: g.ss, fsBase: g.fs_base, gsBase: g.gs_base,
      ds: g.ds, es: g.es, fs: g.fs, gs: g.gs,
    }),
    fpregs: create(UserX86FpregsEntrySchema, {
      cwd: fp.cwd, swd: fp.swd, twd: fp.twd, fop: fp.fop, rip: fp.rip, rdp: fp.rdp, mxcsr: fp.mxcsr,
      mxcsrMask: fp.mxcsrMask, stSpace: fp.stSpace, xmmSpace: fp.xmmSpace, padding: fp.padding,
      xsave: xsaveEntry(r.xstate),
    }),
    tls: TLS_ENTRIES.map((e) => readTls(tid, e)),
  });
}

/** Queued signals as CRIU stores them: raw siginfo_t blobs. */
export function signalQueue(tid: number, shared: boolean): SignalQueueEntry {
  return create(SignalQueueEntrySchema, {
    signals: ptrace.peekSiginfo(tid, shared).map((siginfo) => create(SiginfoEntrySchema, { siginfo })),
  });
}

/** The robust-futex list head of a thread (get_robust_list takes a tid). */
export function robustList(tid: number): { head: bigint; len: number } {
  const head = new BigUint64Array(1);
  const len = new BigUint64Array(1);
  syscall("get_robust_list", SYS.get_robust_list, [tid, addressOf(head), addressOf(len)], [String(tid)]);
  return { head: head[0] ?? 0n, len: Number(len[0] ?? 0n) };
}

/** RLIMIT_* count CRIU saves (RLIM_NLIMITS on Linux). */
const RLIM_NLIMITS = 16;

const RLIM_INFINITY = (1n << 64n) - 1n;

/**
 * Every resource limit of a process, read from outside with
 * prlimit64(pid, r, NULL, &old). The kernel refuses that for a process with
 * other uids unless ckpt has CAP_SYS_RESOURCE (which some containers drop);
 * /proc/PID/limits then gives the same values, one line per limit in
 * RLIMIT_* order.
 */
export function rlimits(proc: ProcFs, pid: number): RlimitEntry[] {
  const old = new BigUint64Array(2);
  const out: RlimitEntry[] = [];
  try {
    for (let r = 0; r < RLIM_NLIMITS; r++) {
      syscall("prlimit64", SYS.prlimit64, [pid, r, 0, addressOf(old)], [String(pid), String(r), "NULL"]);
      out.push(create(RlimitEntrySchema, { cur: old[0] ?? 0n, max: old[1] ?? 0n }));
    }
    return out;
  } catch (e) {
    if (!(e instanceof SysError) || e.errno !== Errno.EPERM) throw e;
  }
  const value = (w: string): bigint => (w === "unlimited" ? RLIM_INFINITY : BigInt(w));
  const lines = proc.readText(pid, "limits").split("\n").slice(1).filter((l) => l.trim() !== "");
  if (lines.length < RLIM_NLIMITS) throw new Error(`process ${pid}: /proc/${pid}/limits lists ${lines.length} limits, expected ${RLIM_NLIMITS}`);
  return lines.slice(0, RLIM_NLIMITS).map((line) => {
    // "Max open files            1024                 4096                 files"
    const [cur = "", max = ""] = line.slice(26).trim().split(/\s+/);
    return create(RlimitEntrySchema, { cur: value(cur), max: value(max) });
  });
}

/** A 64-bit capability set as CRIU's two u32 words. */
function capWords(set: bigint): number[] {
  return [Number(set & 0xffffffffn), Number(set >> 32n)];
}

/** Credentials of one thread from its status file; securebits come from injection. */
export function credsEntry(st: ProcStatus, secbits: number): CredsEntry {
  return create(CredsEntrySchema, {
    uid: st.uids[0], euid: st.uids[1], suid: st.uids[2], fsuid: st.uids[3],
    gid: st.gids[0], egid: st.gids[1], sgid: st.gids[2], fsgid: st.gids[3],
    capInh: capWords(st.capInh), capPrm: capWords(st.capPrm), capEff: capWords(st.capEff),
    capBnd: capWords(st.capBnd), capAmb: capWords(st.capAmb), secbits, groups: st.groups,
  });
}

/** A small /proc/PID file holding one number (decimal, or hex for personality). */
export function readProcNumber(proc: ProcFs, pid: number, name: string, radix = 10): number {
  return Number.parseInt(proc.readText(pid, name).trim(), radix);
}

/** Whether an error is the kernel saying the task is gone. */
export function isGone(e: unknown): boolean {
  return e instanceof SysError && (e.errno === Errno.ESRCH || e.errno === Errno.ENOENT);
}
