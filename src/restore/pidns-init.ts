/**
 * The init of a pid namespace a tree is restored into (--restore-in-new-pidns).
 *
 * A pid namespace lives as long as its pid 1: when that task ends, the
 * kernel kills everything else in it. So pid 1 must outlive the tree, and
 * it must reap what is orphaned inside the namespace, which reparents to it.
 * It is a clone of the seed, the tree's root its child; once the tree runs,
 * ckpt turns it into this loop, written into its syscall page:
 *
 *   wait4(-1, &status, __WALL) until ECHILD; keep the root's status;
 *   exit_group with the root's status as a shell reports it (the exit
 *   code, or 128 + the signal that killed it).
 *
 * So its own parent (ckpt without -d, or whoever ckpt's children go to)
 * learns how the root ended, once the whole namespace has emptied.
 */
import { SYS } from "../sys/nr";
import { asm } from "../sys/tiny-elf";
import type { Puppet } from "./puppet";
import { getRegs, setRegs } from "./puppet";

const WALL = 0x40000000;
const ECHILD = 10;
/** The comm the init shows in ps. */
export const PIDNS_INIT_COMM = "ckpt-pidns-init";

/** The loop's machine code; `status` is a writable word for wait4. */
export function initLoop(rootPid: number, status: bigint): number[] {
  const wait = [
    ...asm.movEdi(-1),
    0x48, 0xbe, ...new Uint8Array(new BigUint64Array([status]).buffer), // movabs rsi, status
    ...asm.movEdx(WALL),
    ...asm.xorR10d,
    ...asm.movEax(SYS.wait4),
    ...asm.syscall,
    0x3d, ...new Uint8Array(new Int32Array([rootPid]).buffer), // cmp eax, root
    ...asm.jnz(3),
    0x44, 0x8b, 0x26, // mov r12d, [rsi]
    0x83, 0xf8, (-ECHILD) & 0xff, // cmp eax, -ECHILD
  ];
  const back = -(wait.length + 2);
  const exit = [
    0x44, 0x89, 0xe7, // mov edi, r12d
    0x83, 0xe7, 0x7f, // and edi, 0x7f
    ...asm.jz(8),
    0x81, 0xc7, 0x80, 0x00, 0x00, 0x00, // add edi, 128
    0xeb, 0x06, // jmp over the exited case
    0x44, 0x89, 0xe7, // mov edi, r12d
    0xc1, 0xef, 0x08, // shr edi, 8
    ...asm.movEax(SYS.exit_group),
    ...asm.syscall,
  ];
  return [...wait, ...asm.jnz(back & 0xff), ...exit];
}

/**
 * Turn the namespace's init (stopped in its last injected call) into the
 * reaping loop at `code`, with `status` for wait4, and let it go: it keeps
 * no fd and blocks every signal it can.
 */
export function startInit(init: Puppet, rootPid: number, code: bigint, status: bigint): void {
  const name = new Uint8Array(16);
  name.set(new TextEncoder().encode(PIDNS_INIT_COMM));
  init.write(status, name);
  init.call(SYS.prctl, [15 /* PR_SET_NAME */, status], ["PR_SET_NAME", PIDNS_INIT_COMM]);
  init.call(SYS.close_range, [0, 0xffffffff, 0], ["0", "~0", "0"]);
  init.write(code, new Uint8Array(initLoop(rootPid, status)));
  const regs = getRegs(init.tid);
  setRegs(init.tid, { ...regs, ip: code, ax: 0n, orig_ax: 0xffffffffffffffffn, r12: 0n });
}
