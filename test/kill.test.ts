/**
 * ckpt killed at any moment leaves its target as it was (issue: a SIGKILL of
 * ckpt during a dump killed the target with SIGTRAP). The target is
 * sturdytarget (helpers/kill-campaign.ts): threads that hold values in
 * general and AVX registers, sleep, and read a pipe, all checking themselves.
 * A longer campaign, hundreds of kills per command: bench/faults.ts.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { closeSync, existsSync, openSync, readFileSync } from "node:fs";
import { startTracker, TRACKER_COMM } from "../src/dump/tracking/tracker";
import { ProcFs } from "../src/proc/procfs";
import { TreeGuard, GUARD_COMM } from "../src/sys/tree-guard";
import { alive, startDetached, tempDir, waitFor, type Target } from "./helpers/target";
import { baseline, brokenPromises, fdKinds, killDuring, startSturdy, timeWholeRun, type KillOutcome } from "./helpers/kill-campaign";

const MAIN = join(import.meta.dir, "../src/cli/main.ts");
const HELPER = join(import.meta.dir, "helpers/inject-then-die.ts");
const GUARD_HELPER = join(import.meta.dir, "helpers/guard-then-die.ts");
const targets: Target[] = [];
afterAll(() => targets.forEach((t) => t.kill()));

async function sturdy() {
  const t = await startSturdy(16);
  targets.push(t.target);
  return t;
}

describe("ckpt killed at any moment", () => {
  test("a tracer killed after opening injectors, after calls, inside withNewFd and inside a call: every thread returns to itself", async () => {
    const t = await sturdy();
    for (const moment of ["after-open", "after-calls", "in-new-fd", "in-call"]) {
      const helper = Bun.spawn([process.execPath, HELPER, String(t.pid), moment], { stdout: "ignore", stderr: "pipe" });
      await helper.exited;
      // It must have died by its own SIGKILL at that moment, not of an error before it.
      expect({ moment, signal: helper.signalCode, stderr: await new Response(helper.stderr).text() }).toEqual({ moment, signal: "SIGKILL", stderr: "" });
      expect({ moment, broken: await brokenPromises(t.pid, t.out, t.before) }).toEqual({ moment, broken: [] });
    }
  }, 60_000);

  test("a tracer killed inside the call that makes an fd: the fd is closed by the thread itself on its way home", async () => {
    const t = await sturdy();
    const fifo = join(tempDir("kill"), "fifo");
    expect(Bun.spawnSync(["mkfifo", fifo]).exitCode).toBe(0);
    const helper = Bun.spawn([process.execPath, HELPER, String(t.pid), "in-new-fd-call", fifo], { stdout: "ignore", stderr: "pipe" });
    await helper.exited;
    expect({ signal: helper.signalCode, stderr: await new Response(helper.stderr).text() }).toEqual({ signal: "SIGKILL", stderr: "" });
    // The thread still sits in the injected open(); a writer lets it return with its new fd.
    await waitFor("the main thread to be in openat", () => readFileSync(`/proc/${t.pid}/syscall`, "utf8").startsWith("257 "));
    const writer = openSync(fifo, "w");
    try {
      expect(await brokenPromises(t.pid, t.out, t.before)).toEqual([]);
    } finally {
      closeSync(writer);
    }
  }, 30_000);

  for (const command of [["dump", "-R"], ["pre-dump", "--track-timeout", "3"]]) {
    test(`ckpt ${command[0]} SIGKILLed at random moments while it holds the tree: the target runs on untouched, no image set looks complete`, async () => {
      const t = await sturdy();
      const argvFor = (dir: string): string[] => [process.execPath, MAIN, ...command, "-t", String(t.pid), "-D", dir];
      let window = (await timeWholeRun(argvFor(join(tempDir("kill"), "full")), t.pid)).tracedMs;
      const outcomes: KillOutcome[] = [];
      const landed = (): number => outcomes.filter((o) => o.finished === null).length;
      // Kills go on until 4 have landed while ckpt ran (at most 16): the
      // timing run is often slower than later runs (cold caches, a loaded
      // machine), so a kill that came after ckpt finished narrows the window.
      for (let i = 0; i < 16 && landed() < 4; i++) {
        const dir = join(tempDir("kill"), "img");
        const o = await killDuring(argvFor(dir), dir, { afterTracedMs: Math.random() * window }, t);
        outcomes.push(o);
        expect({ i, broken: o.broken, falselyComplete: o.falselyComplete }).toEqual({ i, broken: [], falselyComplete: false });
        if (o.finished !== null) window *= 0.6;
      }
      // The kills must have landed while ckpt ran, or the test proves little.
      expect(landed()).toBeGreaterThanOrEqual(4);
      expect(alive(t.pid)).toBe(true);
    }, 90_000);
  }

  test("ckpt dump (no -R) SIGKILLed at random moments: the target runs on untouched, or the image set is whole before the tree is gone", async () => {
    let t = await sturdy();
    const argvFor = (dir: string): string[] => [process.execPath, MAIN, "dump", "-t", String(t.pid), "-D", dir];
    let window = (await timeWholeRun(argvFor(join(tempDir("kill"), "full")), t.pid)).tracedMs;
    t = await sturdy(); // that dump killed the first one
    let incomplete = 0;
    for (let i = 0; i < 16 && incomplete < 3; i++) {
      const dir = join(tempDir("kill"), "img");
      const o = await killDuring(argvFor(dir), dir, { afterTracedMs: window * Math.random() }, t);
      expect({ i, falselyComplete: o.falselyComplete }).toEqual({ i, falselyComplete: false });
      if (o.complete) {
        // The set was whole before the kill of the tree began: the tree may be gone, that is the dump's job.
        t.target.kill();
        t = await sturdy();
        // The timing run is often slower than later runs (cold caches, a
        // loaded machine): a kill that came after the set was whole narrows
        // the window, or every kill may land too late to test anything.
        window *= 0.6;
      } else {
        incomplete++;
        expect({ i, broken: o.broken }).toEqual({ i, broken: [] });
      }
    }
    expect(incomplete).toBeGreaterThan(0);
  }, 90_000);

  test("the restore guard: it kills what it guards when ckpt dies or gives up without a word, and leaves it be once told the tree is whole", async () => {
    const sleepers = async (): Promise<Target[]> => {
      const ts = [await startDetached(["sleep", "100"]), await startDetached(["sleep", "100"])];
      targets.push(...ts);
      return ts;
    };
    const gone = (pid: number): boolean => !alive(pid);
    const isGuard = (pid: number): boolean => existsSync(`/proc/${pid}/comm`) && readFileSync(`/proc/${pid}/comm`, "utf8").trim() === GUARD_COMM && alive(pid);

    // Told: the guard exits, the processes run on.
    let ts = await sleepers();
    const told = TreeGuard.launch(ts.map((t) => t.pid));
    // It reports its pid first and names itself right after.
    await waitFor("the guard to name itself", () => isGuard(told.pid));
    told.release();
    await waitFor("the guard to exit", () => !isGuard(told.pid));
    await Bun.sleep(100);
    expect(ts.map((t) => alive(t.pid))).toEqual([true, true]);
    ts.forEach((t) => t.kill());

    // Abandoned: both are killed.
    ts = await sleepers();
    const abandoned = TreeGuard.launch(ts.map((t) => t.pid));
    await waitFor("the guard to name itself", () => isGuard(abandoned.pid));
    abandoned.abandon();
    await waitFor("the guarded processes to be killed", () => ts.every((t) => gone(t.pid)));
    await waitFor("the guard to exit", () => !isGuard(abandoned.pid));

    // Its starter SIGKILLed: both are killed.
    ts = await sleepers();
    const helper = Bun.spawn([process.execPath, GUARD_HELPER, ...ts.map((t) => String(t.pid))], { stdout: "ignore", stderr: "pipe" });
    await helper.exited;
    expect({ signal: helper.signalCode, stderr: await new Response(helper.stderr).text() }).toEqual({ signal: "SIGKILL", stderr: "" });
    await waitFor("the guarded processes to be killed", () => ts.every((t) => gone(t.pid)));
  }, 30_000);

  test("ckpt restore SIGKILLed at random moments: the tree comes back whole or not at all", async () => {
    const t = await sturdy();
    const images = join(tempDir("kill"), "img");
    const dumped = Bun.spawnSync([process.execPath, MAIN, "dump", "-t", String(t.pid), "-D", images], { stderr: "pipe" });
    expect(dumped.stderr.toString()).toBe("");
    const threads = t.before.threads;
    const noneLeft = (): boolean => threads.every((tid) => !existsSync(`/proc/${tid}`));
    await waitFor("the dumped tree to be gone", noneLeft);
    // A shell in between: the restored root (CLONE_PARENT) becomes the shell's child, not this process's.
    const argv = ["sh", "-c", '"$@" & echo $!; wait $!', "sh", process.execPath, MAIN, "restore", "-d", "-D", images];
    for (let i = 0; i < 5; i++) {
      const child = Bun.spawn(argv, { stdout: "pipe", stderr: "ignore" });
      const { value } = await child.stdout.getReader().read();
      const ckpt = Number(new TextDecoder().decode(value).trim());
      // The last one is left to finish: the restore must work at all for the others to mean anything.
      const last = i === 4;
      if (last) await child.exited;
      else await Bun.sleep(150 + Math.random() * 400);
      try {
        process.kill(ckpt, "SIGKILL");
      } catch {
        // it finished first
      }
      await child.exited;
      await Bun.sleep(100);
      const left = threads.filter((tid) => existsSync(`/proc/${tid}`) && alive(t.pid));
      if (last) expect(left.length).toBe(threads.length);
      if (left.length > 0) {
        // Whole: every thread, and the workload's own check passes.
        expect({ i, left: left.length }).toEqual({ i, left: threads.length });
        const now = baseline(t.pid);
        expect(fdKinds(now.fds)).toEqual(fdKinds(t.before.fds));
        expect(await brokenPromises(t.pid, t.out, { ...now, threads })).toEqual([]);
        process.kill(t.pid, "SIGKILL");
      }
      await waitFor("the restored tree to be gone", noneLeft, 10_000);
    }
  }, 90_000);

  test("a pre-dump's tracker holds the tracking only once its round commits: given up, it ends at once; committed, it waits for the root", async () => {
    const proc = new ProcFs();
    try {
      const isTracker = (pid: number): boolean => existsSync(`/proc/${pid}/comm`) && readFileSync(`/proc/${pid}/comm`, "utf8").trim() === TRACKER_COMM && alive(pid);
      const root = await startDetached(["sleep", "100"]);
      targets.push(root);
      const abandoned = await startTracker(proc, root.pid, [], 30);
      await waitFor("the tracker to name itself", () => isTracker(abandoned.id.pid));
      abandoned.pipe.abandon();
      await waitFor("the uncommitted tracker to end", () => !isTracker(abandoned.id.pid), 2000);

      const committed = await startTracker(proc, root.pid, [], 30);
      committed.pipe.commit();
      await Bun.sleep(200);
      expect(isTracker(committed.id.pid)).toBe(true);
      root.kill();
      await waitFor("the tracker to end with the root", () => !isTracker(committed.id.pid), 2000);
    } finally {
      proc.close();
    }
  }, 30_000);
});
