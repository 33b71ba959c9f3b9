/**
 * The x86_64 signal frame that rt_sigreturn(2) reads (struct rt_sigframe of
 * arch/x86/include/asm/sigframe.h), built by hand so that a thread can be
 * sent back to a saved register set, blocked mask and FPU state by nothing
 * more than executing `rt_sigreturn` with rsp just above the frame.
 *
 * Layout, from the frame's first byte F (rt_sigreturn finds it at rsp - 8):
 *   F + 0    pretcode (the return address a handler's `ret` popped; unused here)
 *   F + 8    struct ucontext: uc_flags, uc_link, uc_stack (stack_t),
 *            uc_mcontext (struct sigcontext, 256 bytes), uc_sigmask
 *   F + 312  struct siginfo (128 bytes; rt_sigreturn does not read it)
 *   then the XSAVE area the sigcontext's fpstate points at, 64-byte aligned
 *   (XRSTOR faults on anything less), followed by FP_XSTATE_MAGIC2.
 */
import type { UserRegs } from "./structs";
import { XSAVE_HEADER_BV, XSAVE_SW_XCR0 } from "./structs";

export const RT_SIGFRAME_SIZE = 440;
const UC = 8;
const UC_OFF = { flags: 0, link: 8, stack: 16, mcontext: 40, sigmask: 296 } as const;
/** stack_t inside uc_stack: ss_sp, ss_flags (int), ss_size. */
const STACK_OFF = { sp: 0, flags: 8, size: 16 } as const;
/** struct sigcontext: these 18 registers as u64, in this order, from offset 0. */
const SIGCONTEXT_REGS = [
  "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "di", "si", "bp", "bx", "dx", "ax", "cx", "sp", "ip", "flags",
] as const;
const SC_OFF = { cs: 144, gs: 146, fs: 148, ss: 150, fpstate: 184 } as const;

/** uc_flags: the frame carries XSAVE state and a meaningful ss, to be restored as it is. */
const UC_FP_XSTATE = 1n;
const UC_SIGCONTEXT_SS = 2n;
const UC_STRICT_RESTORE_SS = 4n;

/**
 * An ss_flags value do_sigaltstack() rejects with EINVAL before changing
 * anything (neither 0, SS_ONSTACK nor SS_DISABLE), and restore_altstack()
 * ignores that error: the thread keeps the alternate stack it has, whatever
 * it is, without ckpt having to ask it first.
 */
const SS_KEEP = 3;

/** struct _fpx_sw_bytes in the FXSAVE area's software-reserved bytes (464..511). */
const FPX_SW = { magic1: 464, extendedSize: 468, xfeatures: 472, xstateSize: 480, end: 512 } as const;
const FP_XSTATE_MAGIC1 = 0x46505853;
const FP_XSTATE_MAGIC2 = 0x46505845;
const MAGIC2_SIZE = 4;
/** AMX tile data: the one xstate component a process only gets after asking for it (arch_prctl). */
const XTILEDATA_BIT = 18n;
const XTILEDATA_BYTES = 8192;

/**
 * The XSAVE area for a signal frame from a thread's NT_X86_XSTATE regset.
 * The regset is in the standard layout XRSTOR wants, but its software bytes
 * hold gdb's XCR0 word where a signal frame has _fpx_sw_bytes; without those
 * the kernel restores only the legacy FP/SSE part and resets AVX and the rest.
 * A process that never asked for AMX has a kernel buffer without tile data,
 * and the kernel refuses a frame that claims more than that buffer: such an
 * area ends before the tile data (which is then in its initial state anyway).
 */
export function sigframeXstate(regset: Uint8Array): Uint8Array {
  const v = new DataView(regset.buffer, regset.byteOffset, regset.byteLength);
  let size = regset.length;
  let features = size > XSAVE_SW_XCR0 + 8 ? v.getBigUint64(XSAVE_SW_XCR0, true) : 3n;
  const bv = size >= XSAVE_HEADER_BV + 8 ? v.getBigUint64(XSAVE_HEADER_BV, true) : 0n;
  const tileBit = 1n << XTILEDATA_BIT;
  if ((features & tileBit) !== 0n && (bv & tileBit) === 0n && size - XTILEDATA_BYTES > XSAVE_HEADER_BV + 64) {
    size -= XTILEDATA_BYTES;
    features &= ~tileBit;
  }
  const out = new Uint8Array(size + MAGIC2_SIZE);
  out.set(regset.subarray(0, size));
  const o = new DataView(out.buffer);
  if (size < FPX_SW.end) throw new RangeError(`an xstate regset of ${regset.length} bytes is shorter than the FXSAVE area`);
  out.fill(0, FPX_SW.magic1, FPX_SW.end);
  o.setUint32(FPX_SW.magic1, FP_XSTATE_MAGIC1, true);
  o.setUint32(FPX_SW.extendedSize, size + MAGIC2_SIZE, true);
  o.setBigUint64(FPX_SW.xfeatures, features, true);
  o.setUint32(FPX_SW.xstateSize, size, true);
  o.setUint32(size, FP_XSTATE_MAGIC2, true);
  return out;
}

/** Where the parts of a frame go, for a frame whose region must end at or below `top`. */
export interface SigframePlacement {
  /** First byte of the region (the frame itself); rsp for rt_sigreturn is this + 8. */
  frame: bigint;
  /** The 64-byte aligned XSAVE area. */
  fpstate: bigint;
  /** Bytes from `frame` to the end of the XSAVE area and its magic. */
  length: number;
}

export function placeSigframe(top: bigint, xstateLength: number): SigframePlacement {
  const fpstate = (top - BigInt(xstateLength)) & ~63n;
  const frame = (fpstate - BigInt(RT_SIGFRAME_SIZE)) & ~15n;
  return { frame, fpstate, length: Number(fpstate - frame) + xstateLength };
}

/**
 * The bytes of a frame at `at` that rt_sigreturn turns into `regs` (the 18
 * general registers, cs and ss; fs_base/gs_base are not part of a frame),
 * `mask` as the blocked set, and the XSAVE area at `at.fpstate` as the FPU
 * state: `xstate` (from sigframeXstate) is written there, or, when null, the
 * frame points at one another frame already holds. rt_sigreturn also sets
 * orig_rax to -1, so no syscall restart follows. `pretcode`, which
 * rt_sigreturn never reads, may hold a return address for code that `ret`s
 * into the frame's rt_sigreturn.
 */
export function encodeSigframe(at: SigframePlacement, regs: UserRegs, mask: bigint, xstate: Uint8Array | null, pretcode = 0n): Uint8Array {
  const out = new Uint8Array(xstate ? at.length : RT_SIGFRAME_SIZE);
  const v = new DataView(out.buffer);
  v.setBigUint64(0, pretcode, true);
  const uc = UC;
  v.setBigUint64(uc + UC_OFF.flags, UC_FP_XSTATE | UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS, true);
  v.setInt32(uc + UC_OFF.stack + STACK_OFF.flags, SS_KEEP, true);
  const sc = uc + UC_OFF.mcontext;
  SIGCONTEXT_REGS.forEach((name, i) => v.setBigUint64(sc + i * 8, regs[name], true));
  v.setUint16(sc + SC_OFF.cs, Number(regs.cs & 0xffffn), true);
  v.setUint16(sc + SC_OFF.ss, Number(regs.ss & 0xffffn), true);
  v.setBigUint64(sc + SC_OFF.fpstate, at.fpstate, true);
  v.setBigUint64(uc + UC_OFF.sigmask, mask, true);
  if (xstate) out.set(xstate, Number(at.fpstate - at.frame));
  return out;
}
