/**
 * A thread's registers from its core image back into the thread: the general
 * registers (fs_base/gs_base carry the TLS of a 64-bit task) and the FPU/SSE/
 * AVX state, re-encoded into the kernel's XSAVE layout.
 */
import type { ThreadInfoX86, UserX86FpregsEntry, UserX86RegsEntry } from "../image/gen/core_x86_pb";
import { NT } from "../sys/nr";
import * as ptrace from "../sys/ptrace";
import { encodeUserRegs, USER_FPREGS_OFF, XFEATURE, XSAVE_HEADER_BV, XSAVE_SW_XCR0, type UserRegs } from "../sys/structs";

/** Largest xstate the kernel hands out (AMX makes it ~11 KiB). */
const XSTATE_MAX = 16384;

export function userRegs(g: UserX86RegsEntry): UserRegs {
  return {
    r15: g.r15, r14: g.r14, r13: g.r13, r12: g.r12, bp: g.bp, bx: g.bx, r11: g.r11, r10: g.r10,
    r9: g.r9, r8: g.r8, ax: g.ax, cx: g.cx, dx: g.dx, si: g.si, di: g.di, orig_ax: g.origAx,
    ip: g.ip, cs: g.cs, flags: g.flags, sp: g.sp, ss: g.ss, fs_base: g.fsBase, gs_base: g.gsBase,
    ds: g.ds, es: g.es, fs: g.fs, gs: g.gs,
  };
}

function putU32s(v: DataView, off: number, words: readonly number[], max: number): void {
  words.slice(0, max).forEach((w, i) => v.setUint32(off + i * 4, w, true));
}
function putU64s(v: DataView, off: number, words: readonly bigint[], max: number): void {
  words.slice(0, max).forEach((w, i) => v.setBigUint64(off + i * 8, w, true));
}

/**
 * The thread's XSAVE area with the image's values laid over the layout this
 * CPU uses (taken from the thread as it is): the legacy FXSAVE part, the
 * header's xstate_bv, and each component the image and this CPU both have.
 * A component the image holds but this CPU lacks is an error, not a loss.
 */
export function encodeXstate(current: Uint8Array, fp: UserX86FpregsEntry, tid: number): Uint8Array {
  const buf = current.slice();
  const v = new DataView(buf.buffer);
  const o = USER_FPREGS_OFF;
  v.setUint16(o.cwd, fp.cwd, true);
  v.setUint16(o.swd, fp.swd, true);
  v.setUint16(o.twd, fp.twd, true);
  v.setUint16(o.fop, fp.fop, true);
  v.setBigUint64(o.rip, fp.rip, true);
  v.setBigUint64(o.rdp, fp.rdp, true);
  v.setUint32(o.mxcsr, fp.mxcsr, true);
  v.setUint32(o.mxcsr_mask, fp.mxcsrMask, true);
  putU32s(v, o.st_space, fp.stSpace, 32);
  putU32s(v, o.xmm_space, fp.xmmSpace, 64);
  const x = fp.xsave;
  if (!x || buf.length <= XSAVE_HEADER_BV) return buf;
  const xcr0 = v.getBigUint64(XSAVE_SW_XCR0, true);
  const missing = x.xstateBv & ~xcr0 & ~3n;
  if (missing !== 0n) throw new Error(`thread ${tid}: its FPU state uses xstate features 0x${missing.toString(16)} this CPU does not enable`);
  // x87 and SSE (bits 0, 1) live in the legacy area written above.
  v.setBigUint64(XSAVE_HEADER_BV, x.xstateBv & xcr0, true);
  const fits = (f: { offset: number; bytes: number }): boolean => f.offset + f.bytes <= buf.length;
  if (fits(XFEATURE.YMM)) putU32s(v, XFEATURE.YMM.offset, x.ymmhSpace, XFEATURE.YMM.bytes / 4);
  if (fits(XFEATURE.BNDREGS)) putU64s(v, XFEATURE.BNDREGS.offset, x.bndregState, XFEATURE.BNDREGS.bytes / 8);
  if (fits(XFEATURE.BNDCSR)) putU64s(v, XFEATURE.BNDCSR.offset, x.bndcsrState, XFEATURE.BNDCSR.bytes / 8);
  if (fits(XFEATURE.OPMASK)) putU64s(v, XFEATURE.OPMASK.offset, x.opmaskReg, XFEATURE.OPMASK.bytes / 8);
  if (fits(XFEATURE.ZMM_HI256)) putU64s(v, XFEATURE.ZMM_HI256.offset, x.zmmUpper, XFEATURE.ZMM_HI256.bytes / 8);
  if (fits(XFEATURE.HI16_ZMM)) putU64s(v, XFEATURE.HI16_ZMM.offset, x.hi16Zmm, XFEATURE.HI16_ZMM.bytes / 8);
  if (fits(XFEATURE.PKRU)) putU32s(v, XFEATURE.PKRU.offset, x.pkru, XFEATURE.PKRU.bytes / 4);
  return buf;
}

const xstateBuf = new Uint8Array(XSTATE_MAX);

/** Put a thread's FPU/vector state and general registers back (the thread is in a ptrace stop). */
export function restoreRegisters(tid: number, info: ThreadInfoX86): void {
  if (!info.gpregs || !info.fpregs) throw new Error(`core image of thread ${tid} has no registers`);
  const n = ptrace.getRegset(tid, NT.X86_XSTATE, xstateBuf);
  ptrace.setRegset(tid, NT.X86_XSTATE, encodeXstate(xstateBuf.subarray(0, n), info.fpregs, tid));
  ptrace.setRegset(tid, NT.PRSTATUS, encodeUserRegs(userRegs(info.gpregs)));
}
