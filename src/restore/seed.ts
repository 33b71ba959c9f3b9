/**
 * The seed: the first process of a restore, from which every restored task is
 * cloned. It must be single-threaded with a tiny address space (restore
 * replaces that address space wholesale), and it must not be a process Bun
 * spawned: Bun waits for the pids it spawns, and its wait would steal their
 * ptrace stops. (It may still become ckpt's child by reparenting, when ckpt
 * is a subreaper; Bun does not wait for pids it did not spawn.)
 *
 * No helper binary is shipped or needed: ckpt writes a 300-byte static x86_64
 * ELF into a memfd and executes it. That program forks; the parent exits at
 * once (so the child is nobody's Bun child), the child writes its pid to
 * stdout as 4 raw bytes, arms alarm(30) so that it cannot outlive a ckpt that
 * dies before taking hold of it, and waits in pause() for ckpt to seize it.
 */
import { addressOf, syscall } from "../sys/libc";
import { close, writeAll } from "../sys/libc";
import { cstr } from "../sys/libc";
import { Errno, SysError } from "../sys/errno";
import { SYS } from "../sys/nr";

/** Where the seed's one segment is loaded (a fixed ET_EXEC address). */
export const SEED_BASE = 0x400000n;
const EHDR_SIZE = 64;
const PHDR_SIZE = 56;
const CODE_OFFSET = EHDR_SIZE + PHDR_SIZE;

/** The seed's machine code, and where in it the pause() loop's `syscall` is. */
function seedCode(): { code: number[]; pauseSyscall: number } {
  const movEax = (n: number): number[] => [0xb8, n & 0xff, (n >> 8) & 0xff, 0, 0];
  const movEdi = (n: number): number[] => [0xbf, n & 0xff, 0, 0, 0];
  const sys = [0x0f, 0x05];
  const child = [
    ...movEdi(30), ...movEax(37), ...sys, // alarm(30)
    ...movEax(39), ...sys, // getpid()
    0x50, // push rax
    ...movEdi(1), 0x48, 0x89, 0xe6, 0xba, 4, 0, 0, 0, ...movEax(1), ...sys, // write(1, rsp, 4)
    ...movEdi(1), ...movEax(3), ...sys, // close(1)
  ];
  const loop = [...movEax(34), ...sys, 0xeb, 0xf7]; // pause(); jmp back to the mov
  const parent = [0x31, 0xff, ...movEax(231), ...sys]; // exit_group(0)
  const head = [...movEax(57), ...sys, 0x85, 0xc0]; // fork(); test eax, eax
  const jnz = [0x75, child.length + loop.length];
  const code = [...head, ...jnz, ...child, ...loop, ...parent];
  const pauseSyscall = head.length + jnz.length + child.length + 5;
  return { code, pauseSyscall };
}

/** The whole ELF file, and the address of a `syscall` instruction the seed is stopped right after. */
export function seedElf(): { bytes: Uint8Array; syscallAddress: bigint } {
  const { code, pauseSyscall } = seedCode();
  const size = CODE_OFFSET + code.length;
  const bytes = new Uint8Array(size);
  const v = new DataView(bytes.buffer);
  bytes.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0]); // ELF, 64-bit, little-endian, version 1, SysV
  v.setUint16(16, 2, true); // ET_EXEC
  v.setUint16(18, 62, true); // EM_X86_64
  v.setUint32(20, 1, true);
  v.setBigUint64(24, SEED_BASE + BigInt(CODE_OFFSET), true); // e_entry
  v.setBigUint64(32, BigInt(EHDR_SIZE), true); // e_phoff
  v.setUint16(52, EHDR_SIZE, true);
  v.setUint16(54, PHDR_SIZE, true);
  v.setUint16(56, 1, true); // one program header
  const ph = EHDR_SIZE;
  v.setUint32(ph, 1, true); // PT_LOAD
  v.setUint32(ph + 4, 5, true); // PF_R | PF_X
  v.setBigUint64(ph + 16, SEED_BASE, true);
  v.setBigUint64(ph + 24, SEED_BASE, true);
  v.setBigUint64(ph + 32, BigInt(size), true);
  v.setBigUint64(ph + 40, BigInt(size), true);
  v.setBigUint64(ph + 48, 0x1000n, true);
  bytes.set(code, CODE_OFFSET);
  return { bytes, syscallAddress: SEED_BASE + BigInt(CODE_OFFSET + pauseSyscall) };
}

const MFD_CLOEXEC = 1;
const MFD_EXEC = 0x10;

/** The seed ELF in a memfd of ckpt's; the caller closes it. */
function seedMemfd(bytes: Uint8Array): number {
  const name = cstr("ckpt-seed");
  let fd: number;
  try {
    fd = Number(syscall("memfd_create", SYS.memfd_create, [addressOf(name), MFD_CLOEXEC | MFD_EXEC], ['"ckpt-seed"', "MFD_CLOEXEC|MFD_EXEC"]));
  } catch (e) {
    // Kernels before 6.3 know no MFD_EXEC; their memfds are executable anyway.
    if (!(e instanceof SysError) || e.errno !== Errno.EINVAL) throw e;
    fd = Number(syscall("memfd_create", SYS.memfd_create, [addressOf(name), MFD_CLOEXEC], ['"ckpt-seed"', "MFD_CLOEXEC"]));
  }
  try {
    writeAll(fd, bytes);
  } catch (e) {
    close(fd);
    throw e;
  }
  return fd;
}

export interface Seed {
  pid: number;
  /** A `syscall` instruction in the seed (the one its pause() loop runs). */
  syscallAddress: bigint;
}

/**
 * Start a seed and return its pid once its launcher has exited. With
 * `ownSession` it runs in a new session (setsid), away from ckpt's terminal;
 * without, it stays in ckpt's session and process group (--shell-job).
 */
export async function startSeed(ownSession: boolean): Promise<Seed> {
  const { bytes, syscallAddress } = seedElf();
  const fd = seedMemfd(bytes);
  try {
    const launcher = Bun.spawn([`/proc/${process.pid}/fd/${fd}`], {
      stdin: "ignore", stdout: "pipe", stderr: "ignore", detached: ownSession,
    });
    const [out, code] = await Promise.all([new Response(launcher.stdout).arrayBuffer(), launcher.exited]);
    if (out.byteLength !== 4) throw new Error(`the restore seed did not start (launcher exit ${code}, ${out.byteLength} bytes of output)`);
    return { pid: new DataView(out).getInt32(0, true), syscallAddress };
  } finally {
    close(fd);
  }
}
