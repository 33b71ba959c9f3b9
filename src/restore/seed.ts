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
 *
 * The seed holds a pidfd of ckpt at fd 3 (SEED_CKPT_PIDFD), which every task
 * cloned from it inherits: through it each task takes its files from ckpt
 * with pidfd_getfd (target-fds.ts). A task cannot open that pidfd itself
 * when it lives in a pid namespace of its own, where ckpt has no pid.
 */
import { asm, FORK_PROLOGUE_SIZE, forkThenChild, launchTinyElf, reportPid, TINY_CODE_OFFSET, TINY_ELF_BASE, tinyElf } from "../sys/tiny-elf";
import { SYS } from "../sys/nr";
import { pidfdOpen } from "../sys/calls";
import { close } from "../sys/libc";

/** The fd at which the seed, and every task cloned from it, holds a pidfd of ckpt. */
export const SEED_CKPT_PIDFD = 3;

/** Where the seed's one segment is loaded. */
export const SEED_BASE = TINY_ELF_BASE;

/** The seed's machine code, and where in it the pause() loop's `syscall` is. */
function seedCode(): { code: number[]; pauseSyscall: number } {
  const start = [...asm.movEdi(30), ...asm.movEax(SYS.alarm), ...asm.syscall, ...reportPid()];
  const loop = [...asm.movEax(SYS.pause), ...asm.syscall, 0xeb, 0xf7]; // pause(); jmp back to the mov
  const code = forkThenChild([...start, ...loop]);
  return { code, pauseSyscall: FORK_PROLOGUE_SIZE + start.length + 5 };
}

/** The whole ELF file, and the address of a `syscall` instruction the seed is stopped right after. */
export function seedElf(): { bytes: Uint8Array; syscallAddress: bigint } {
  const { code, pauseSyscall } = seedCode();
  return { bytes: tinyElf(code), syscallAddress: SEED_BASE + BigInt(TINY_CODE_OFFSET + pauseSyscall) };
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
  const ckpt = pidfdOpen(process.pid);
  try {
    return { pid: await launchTinyElf("ckpt-seed", bytes, { ownSession, fds: [ckpt] }), syscallAddress };
  } catch (e) {
    throw new Error(`the restore seed did not start: ${(e as Error).message}`, { cause: e });
  } finally {
    close(ckpt);
  }
}
