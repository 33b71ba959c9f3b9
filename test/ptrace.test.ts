import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { addressOf, close, openat, preadInto, processVmReadv, processVmWritev } from "../src/sys/libc";
import { AT, NT, O } from "../src/sys/nr";
import * as ptrace from "../src/sys/ptrace";
import { decodeUserRegs, encodeUserRegs, setIovec, USER_REGS_SIZE } from "../src/sys/structs";
import { buildC, startReady, waitFor, type Target } from "./helpers/target";

// Prints the address of a 4 KiB buffer filled with a known pattern, then idles.
const IDLE_C = `
#include <stdio.h>
#include <unistd.h>
static unsigned char buf[4096];
int main(void) {
  for (int i = 0; i < 4096; i++) buf[i] = (unsigned char)(i * 3);
  printf("ready %lx\\n", (unsigned long)buf); fflush(stdout);
  for (;;) pause();
}`;

let target: Target;
let bufAddr = 0n;

beforeAll(async () => {
  const started = await startReady([buildC("idle", IDLE_C)]);
  target = started.target;
  bufAddr = BigInt(`0x${started.words[0]}`);
});

afterAll(() => target?.kill());

function memWord(pid: number, addr: bigint): bigint {
  const fd = openat(AT.FDCWD, `/proc/${pid}/mem`, O.RDONLY);
  try {
    const b = new Uint8Array(8);
    preadInto(fd, b, addr);
    return new DataView(b.buffer).getBigUint64(0, true);
  } finally {
    close(fd);
  }
}

function status(pid: number): string {
  return readFileSync(`/proc/${pid}/status`, "utf8");
}

describe("ptrace", () => {
  test("seize, interrupt, peek and poke a word, detach: the task runs on untraced", async () => {
    ptrace.seize(target.pid);
    try {
      ptrace.interrupt(target.pid);
      expect(ptrace.isInterruptStop(ptrace.waitTracee(target.pid))).toBe(true);
      expect(status(target.pid)).toMatch(/^State:\s+t/m);

      const before = ptrace.peekData(target.pid, bufAddr);
      expect(before).toBe(memWord(target.pid, bufAddr));
      expect(Number(before & 0xffn)).toBe(0);
      expect(Number((before >> 8n) & 0xffn)).toBe(3);

      const poked = 0xfedcba9876543210n;
      ptrace.pokeData(target.pid, bufAddr, poked);
      expect(ptrace.peekData(target.pid, bufAddr)).toBe(poked);
      ptrace.pokeData(target.pid, bufAddr, before);
      expect(memWord(target.pid, bufAddr)).toBe(before);
    } finally {
      ptrace.detach(target.pid);
    }
    expect(Number(/^TracerPid:\s+(\d+)/m.exec(status(target.pid))![1])).toBe(0);
    // Just detached, it may still be on its way back into its sleep (R): wait for it.
    await waitFor("the task to sleep again", () => /^State:\s+S/m.test(status(target.pid)));
  });

  test("SETREGSET changes a register; CONT resumes the task", () => {
    ptrace.seize(target.pid);
    try {
      ptrace.interrupt(target.pid);
      expect(ptrace.isInterruptStop(ptrace.waitTracee(target.pid))).toBe(true);
      const buf = new Uint8Array(USER_REGS_SIZE);
      ptrace.getRegset(target.pid, NT.PRSTATUS, buf);
      const saved = buf.slice();
      const regs = decodeUserRegs(buf);
      regs.r12 ^= 0x5a5a5a5a5a5a5a5an;
      ptrace.setRegset(target.pid, NT.PRSTATUS, encodeUserRegs(regs));
      const check = new Uint8Array(USER_REGS_SIZE);
      ptrace.getRegset(target.pid, NT.PRSTATUS, check);
      expect(decodeUserRegs(check).r12).toBe(regs.r12);
      ptrace.setRegset(target.pid, NT.PRSTATUS, saved);
      ptrace.getRegset(target.pid, NT.PRSTATUS, check);
      expect(check).toEqual(saved);

      ptrace.cont(target.pid);
      // Running again (back asleep in pause), still traced.
      const until = Date.now() + 2000;
      while (!/^State:\s+S/m.test(status(target.pid)) && Date.now() < until) Bun.sleepSync(5);
      expect(status(target.pid)).toMatch(/^State:\s+S/m);
      // A running tracee must be stopped again before it can be detached.
      ptrace.interrupt(target.pid);
      expect(ptrace.isInterruptStop(ptrace.waitTracee(target.pid))).toBe(true);
    } finally {
      ptrace.detach(target.pid);
    }
  });

  test("a request on a task we do not trace fails with ESRCH naming the request", () => {
    expect(() => ptrace.peekData(target.pid, bufAddr)).toThrow(/^ptrace\(PTRACE_PEEKDATA, \d+, 0x[0-9a-f]+\): ESRCH/);
  });

  test("process_vm_readv and process_vm_writev on another process", () => {
    const local = new Uint8Array(4096);
    const liov = new BigUint64Array(2);
    const riov = new BigUint64Array(2);
    setIovec(liov, 0, addressOf(local), local.length);
    setIovec(riov, 0, bufAddr, 4096);
    expect(processVmReadv(target.pid, liov, 1, riov, 1)).toBe(4096);
    expect(local[100]).toBe(300 & 0xff);

    const patch = new Uint8Array(16).fill(0xaa);
    const piov = new BigUint64Array(2);
    const first16 = new BigUint64Array(2);
    setIovec(piov, 0, addressOf(patch), patch.length);
    setIovec(first16, 0, bufAddr, 16);
    expect(processVmWritev(target.pid, piov, 1, first16, 1)).toBe(16);
    expect(memWord(target.pid, bufAddr)).toBe(0xaaaaaaaaaaaaaaaan);
    // Put the original bytes back.
    setIovec(piov, 0, addressOf(local), 16);
    processVmWritev(target.pid, piov, 1, first16, 1);
    expect(memWord(target.pid, bufAddr)).toBe(new DataView(local.buffer).getBigUint64(0, true));
  });
});

describe("wait status decoding", () => {
  // Values as the kernel composes them (see wait(2) and ptrace(2)).
  test("exit, death by signal, stops and ptrace event stops", () => {
    const exited3 = 3 << 8;
    expect(ptrace.isExited(exited3)).toBe(true);
    expect(ptrace.exitCode(exited3)).toBe(3);
    expect(ptrace.isSignaled(exited3)).toBe(false);
    expect(ptrace.isStopped(exited3)).toBe(false);

    const killed = 9;
    expect(ptrace.isExited(killed)).toBe(false);
    expect(ptrace.isSignaled(killed)).toBe(true);
    expect(ptrace.termSig(killed)).toBe(9);

    const stopped = (19 << 8) | 0x7f;
    expect(ptrace.isStopped(stopped)).toBe(true);
    expect(ptrace.isSignaled(stopped)).toBe(false);
    expect(ptrace.stopSig(stopped)).toBe(19);
    expect(ptrace.ptraceEvent(stopped)).toBe(0);
    expect(ptrace.isInterruptStop(stopped)).toBe(false);

    const interrupt = (128 << 16) | (5 << 8) | 0x7f;
    expect(ptrace.isInterruptStop(interrupt)).toBe(true);
    expect(ptrace.stopSig(interrupt)).toBe(5);
  });
});
