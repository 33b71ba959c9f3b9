/**
 * The restore's injected calls in batches (Puppet.callBatch): many calls for
 * one resume of the task, stopping at the first that fails.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { batchRunner, Puppet, PuppetCallError, RESTORE_PTRACE_OPTIONS, ALL_SIGNALS, waitStop } from "../src/restore/puppet";
import { startSeed } from "../src/restore/seed";
import { kill, waitpid } from "../src/sys/libc";
import { MAP, PROT, SIG, SYS, W } from "../src/sys/nr";
import * as ptrace from "../src/sys/ptrace";

const PAGE = 0x1000n;
/** Free addresses in the seed, which maps only a page near 0x400000 and its stack. */
const CODE_AT = 0x7000_0000_0000n;
const A = 0x7100_0000_0000n;
const B = 0x7200_0000_0000n;

let seedPid = 0;
afterEach(() => {
  if (seedPid === 0) return;
  kill(seedPid, SIG.KILL);
  try {
    for (;;) if (!ptrace.isStopped(waitpid(seedPid, W.ALL).status)) break;
  } catch {
    // Collected already.
  }
  seedPid = 0;
});

/** A seed held as restore holds it, with a code page holding a `syscall` and the batch runner. */
async function heldSeed(): Promise<Puppet> {
  const seed = await startSeed(true);
  seedPid = seed.pid;
  ptrace.seize(seed.pid, RESTORE_PTRACE_OPTIONS);
  ptrace.interrupt(seed.pid);
  waitStop(seed.pid, "before the test took hold of it");
  ptrace.setSigmask(seed.pid, ALL_SIGNALS);
  const p = new Puppet(seed.pid, seed.syscallAddress);
  p.call(SYS.mmap, [CODE_AT, 16n * PAGE, PROT.READ | PROT.WRITE | PROT.EXEC, MAP.PRIVATE | MAP.ANONYMOUS | MAP.FIXED_NOREPLACE, -1, 0]);
  p.write(CODE_AT, new Uint8Array([0x0f, 0x05]));
  p.syscallAt = CODE_AT;
  p.write(CODE_AT + PAGE, batchRunner());
  p.batchAt = CODE_AT + PAGE;
  return p;
}

const mapped = (pid: number, at: bigint): boolean =>
  readFileSync(`/proc/${pid}/maps`, "utf8").split("\n").some((l) => l.startsWith(`${at.toString(16)}-`));

const mmapAt = (at: bigint): { nr: number; args: bigint[] } => ({ nr: SYS.mmap, args: [at, PAGE, BigInt(PROT.READ | PROT.WRITE), BigInt(MAP.PRIVATE | MAP.ANONYMOUS | MAP.FIXED), -1n, 0n] });

describe("batches of injected calls", () => {
  test("every call is made in order with its result; one call after the batch works as before", async () => {
    const p = await heldSeed();
    const results = p.callBatch([{ nr: SYS.getpid, args: [] }, mmapAt(A), mmapAt(B), { nr: SYS.munmap, args: [B, PAGE] }]);
    expect(results).toEqual([BigInt(p.tid), A, B, 0n]);
    expect(mapped(p.tid, A)).toBe(true);
    expect(mapped(p.tid, B)).toBe(false);
    expect(p.call(SYS.getpid, [])).toBe(BigInt(p.tid));
    // The task is still ours, stopped, and never saw the SIGSTOP it ended each batch with.
    expect(readFileSync(`/proc/${p.tid}/status`, "utf8")).toMatch(/State:\s+t/);
  });

  test("the first failing call throws with its name, arguments and errno; the calls after it are not made", async () => {
    const p = await heldSeed();
    let err: unknown;
    try {
      p.callBatch([mmapAt(A), { nr: SYS.munmap, args: [A + 1n, PAGE], shown: ["A+1", "4096"] }, mmapAt(B)]);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(PuppetCallError);
    expect((err as PuppetCallError).message).toBe(`munmap(A+1, 4096) in restored task ${p.tid}: EINVAL (Invalid argument)`);
    expect(mapped(p.tid, A)).toBe(true);
    expect(mapped(p.tid, B)).toBe(false);
    // The task goes on taking calls.
    expect(p.callBatch([mmapAt(B), { nr: SYS.getpid, args: [] }])).toEqual([B, BigInt(p.tid)]);
    expect(mapped(p.tid, B)).toBe(true);
  });
});
