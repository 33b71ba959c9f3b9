/**
 * A tracer that dies on purpose: freezes every thread of PID, starts
 * injecting, and SIGKILLs itself at MOMENT. test/kill.test.ts runs it and
 * checks that the target carries on as if nothing had happened.
 *   after-open   every thread's injector opened (frame and trampoline in place)
 *   after-calls  a few calls made in every thread (each sits at a syscall-exit stop)
 *   in-new-fd    inside withNewFd's take: an eventfd made, its close armed
 *   in-call      in the middle of a 400 ms nanosleep injected into one thread
 *   in-new-fd-call  inside withNewFd's creating call: an open() of the FIFO
 *                PATH for reading, which blocks until the test opens it for
 *                writing, after this tracer is dead
 * Usage: bun test/helpers/inject-then-die.ts PID MOMENT [PATH]
 */
import { readdirSync } from "node:fs";
import { RemoteSyscalls } from "../../src/dump/task/inject";
import { AT, O, SYS } from "../../src/sys/nr";
import * as ptrace from "../../src/sys/ptrace";

const pid = Number(process.argv[2]);
const moment = process.argv[3] ?? "";
const NANOSLEEP = 35;
const die = (): never => {
  process.kill(process.pid, "SIGKILL");
  throw new Error("still alive after SIGKILL");
};

const tids = readdirSync(`/proc/${pid}/task`).map(Number);
for (const tid of tids) ptrace.seize(tid);
for (const tid of tids) ptrace.interrupt(tid);
for (const tid of tids) {
  for (;;) {
    const status = ptrace.waitTracee(tid);
    if (ptrace.isInterruptStop(status)) break;
    ptrace.cont(tid, ptrace.stopSig(status));
  }
}
const remotes = tids.map((tid) => RemoteSyscalls.open(tid));
if (moment === "after-open") die();
if (moment === "after-calls") {
  for (const r of remotes) {
    r.check("getpid", SYS.getpid);
    r.check("rt_sigprocmask", SYS.rt_sigprocmask, [0, 0, r.scratchAt(0, 8), 8]);
  }
  die();
}
if (moment === "in-new-fd") {
  const EVENTFD2 = 290;
  remotes[0]?.withNewFd("eventfd2", EVENTFD2, [0, 0], ["0", "0"], () => die());
}
if (moment === "in-call") {
  const r = remotes[remotes.length - 1]!;
  const ts = r.scratchAt(0, 16);
  r.writeScratch(0, new Uint8Array(new BigInt64Array([0n, 400_000_000n]).buffer));
  Bun.spawn(["sh", "-c", `sleep 0.1; kill -9 ${process.pid}`], { stdout: "ignore", stderr: "ignore" });
  r.syscall(NANOSLEEP, [ts, 0]);
  die();
}
if (moment === "in-new-fd-call") {
  const r = remotes[0]!;
  const path = new TextEncoder().encode(`${process.argv[4]}\0`);
  r.writeScratch(0, path);
  Bun.spawn(["sh", "-c", `sleep 0.2; kill -9 ${process.pid}`], { stdout: "ignore", stderr: "ignore" });
  r.withNewFd("openat", SYS.openat, [AT.FDCWD, r.scratchAt(0, path.length), O.RDONLY], ["AT_FDCWD", "fifo", "O_RDONLY"], () => die());
  die();
}
throw new Error(`unknown moment "${moment}"`);
