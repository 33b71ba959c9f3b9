/**
 * ckpt killed at any moment leaves its target as it was (issue: a SIGKILL of
 * ckpt during a dump killed the target with SIGTRAP). The target is
 * sturdytarget (helpers/kill-campaign.ts): threads that hold values in
 * general and AVX registers, sleep, and read a pipe, all checking themselves.
 * A longer campaign, hundreds of kills per command: bench/faults.ts.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { alive, tempDir, type Target } from "./helpers/target";
import { brokenPromises, killDuring, startSturdy, type KillOutcome } from "./helpers/kill-campaign";

const MAIN = join(import.meta.dir, "../src/cli/main.ts");
const HELPER = join(import.meta.dir, "helpers/inject-then-die.ts");
const targets: Target[] = [];
afterAll(() => targets.forEach((t) => t.kill()));

async function sturdy() {
  const t = await startSturdy(16);
  targets.push(t.target);
  return t;
}

/** How long ckpt has the tree: from its first trace of the target to its exit. */
async function tracedWindow(argv: string[], pid: number): Promise<number> {
  const child = Bun.spawn(argv, { stdout: "ignore", stderr: "pipe" });
  let start = 0;
  while (start === 0 && child.exitCode === null) {
    const status = await Bun.file(`/proc/${pid}/status`).text();
    if (/^TracerPid:\s*[1-9]/m.test(status)) start = performance.now();
    else await Bun.sleep(0);
  }
  const code = await child.exited;
  if (code !== 0) throw new Error(`${argv.join(" ")} failed: ${await new Response(child.stderr).text()}`);
  return performance.now() - (start || performance.now());
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

  for (const command of [["dump", "-R"], ["pre-dump", "--track-timeout", "3"]]) {
    test(`ckpt ${command[0]} SIGKILLed at random moments while it holds the tree: the target runs on untouched, no image set looks complete`, async () => {
      const t = await sturdy();
      const argvFor = (dir: string): string[] => [process.execPath, MAIN, ...command, "-t", String(t.pid), "-D", dir];
      const window = await tracedWindow(argvFor(join(tempDir("kill"), "full")), t.pid);
      const outcomes: KillOutcome[] = [];
      for (let i = 0; i < 8; i++) {
        const dir = join(tempDir("kill"), "img");
        const o = await killDuring(argvFor(dir), dir, { afterTracedMs: Math.random() * window }, t);
        outcomes.push(o);
        expect({ i, broken: o.broken, falselyComplete: o.falselyComplete }).toEqual({ i, broken: [], falselyComplete: false });
      }
      // Most kills must have landed while ckpt ran, or the test proves little.
      expect(outcomes.filter((o) => o.finished === null).length).toBeGreaterThanOrEqual(6);
      expect(alive(t.pid)).toBe(true);
    }, 90_000);
  }
});
