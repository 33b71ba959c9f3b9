/**
 * Fault campaign: SIGKILL ckpt at random moments, hundreds of times per
 * command, against sturdytarget (test/helpers/kill-campaign.ts: threads that
 * check their general and AVX registers, sleep, read a pipe, and memory that
 * checks itself), and count every promise a kill broke.
 *
 * Per kill, for dump -R, pre-dump chains and dump: the target must be alive,
 * untraced, not stopped, with the same threads, fds and mappings, and pass
 * its own check; an image directory with an inventory must decode whole.
 * Half the kills are aimed: a random moment of the time ckpt holds the tree
 * (from its first trace of the target to its exit, measured first); the
 * other half at a random moment of the whole run, start-up included.
 * For restore: after the kill, either nothing of the tree is left, or all of
 * it runs and passes its check.
 *
 * Each command goes on until KILLS kills have landed while ckpt ran (at
 * most 4 × KILLS tries): one that comes after ckpt finished proves nothing.
 *
 * Run: bun bench/faults.ts   (KILLS=500 per command, COMMANDS=dump-R,pre-dump,dump,restore,
 *      MIB=64 for the workload; CKPT=path of a ckpt executable, default dist/ckpt if built, else the source)
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import { alive, tempDir } from "../test/helpers/target";
import { baseline, brokenPromises, fdKinds, killDuring, timeWholeRun, startSturdy, type Baseline, type KillOutcome } from "../test/helpers/kill-campaign";
import { BenchCleanup } from "./cleanup";

const KILLS = Number(process.env.KILLS ?? 500);
const MIB = Number(process.env.MIB ?? 64);
const COMMANDS = (process.env.COMMANDS ?? "dump-R,pre-dump,dump,restore").split(",");
const ROOT = join(import.meta.dir, "..");
const CKPT = process.env.CKPT ? [process.env.CKPT] : existsSync(join(ROOT, "dist/ckpt")) ? [join(ROOT, "dist/ckpt")] : [process.execPath, join(ROOT, "src/cli/main.ts")];

const cleanup = new BenchCleanup("faults");

interface Tally {
  command: string;
  kills: number;
  /** Kills that ended ckpt before it finished. */
  landed: number;
  finished: number;
  broken: number;
  falselyComplete: number;
  reasons: Map<string, number>;
  seconds: number;
}

function newTally(command: string): Tally {
  return { command, kills: 0, landed: 0, finished: 0, broken: 0, falselyComplete: 0, reasons: new Map(), seconds: 0 };
}

function note(t: Tally, o: KillOutcome): void {
  t.kills++;
  if (o.finished === null) t.landed++;
  else t.finished++;
  if (o.broken.length > 0) t.broken++;
  if (o.falselyComplete) t.falselyComplete++;
  for (const r of [...o.broken, ...(o.falselyComplete ? ["inventory over images that do not decode"] : [])]) t.reasons.set(r, (t.reasons.get(r) ?? 0) + 1);
}

/** The median of three runs; `next` gives each its argv and target pid, `after` runs after each. */
async function measure(next: () => { argv: string[]; pid: number }, after: () => Promise<void>): Promise<{ totalMs: number; tracedMs: number }> {
  const runs: { totalMs: number; tracedMs: number }[] = [];
  for (let i = 0; i < 3; i++) {
    const { argv, pid } = next();
    runs.push(await timeWholeRun(argv, pid));
    await after();
  }
  const median = (xs: number[]): number => xs.sort((a, b) => a - b)[1]!;
  return { totalMs: median(runs.map((r) => r.totalMs)), tracedMs: median(runs.map((r) => r.tracedMs)) };
}

type Target = Awaited<ReturnType<typeof startSturdy>>;

async function campaign(name: string, args: (pid: number, dir: string, prev: string | null) => string[], restartsTarget: boolean): Promise<Tally> {
  const tally = newTally(name);
  const started = performance.now();
  let t: Target = await startSturdy(MIB);
  cleanup.targets.push(t.target);
  let prev: string | null = null;
  const dirFor = (): string => {
    const d = tempDir("faults");
    cleanup.dirs.push(d);
    return join(d, "img");
  };
  // Timed on the kind of run that is killed: for pre-dump, later rounds of a chain, which save only what was written since.
  if (name === "pre-dump") {
    prev = dirFor();
    await timeWholeRun([...CKPT, ...args(t.pid, prev, null)], t.pid);
  }
  let measured = "";
  const timing = await measure(
    () => ({ argv: [...CKPT, ...args(t.pid, (measured = dirFor()), prev)], pid: t.pid }),
    async () => {
      if (name === "pre-dump") prev = measured;
      if (restartsTarget) {
        // That dump killed the workload.
        t.target.kill();
        t = await startSturdy(MIB);
        cleanup.targets.push(t.target);
      }
    },
  );
  process.stderr.write(`${name}: a whole run takes ${timing.totalMs.toFixed(0)} ms, ${timing.tracedMs.toFixed(0)} ms of it holding the tree\n`);
  // Kills that land after ckpt finished prove nothing: go on until KILLS have landed mid-run.
  for (let i = 0; tally.landed < KILLS && i < 4 * KILLS; i++) {
    const dir = dirFor();
    const aimed = i % 2 === 0;
    const moment = aimed ? { afterTracedMs: Math.random() * timing.tracedMs } : { afterMs: Math.random() * timing.totalMs };
    const o = await killDuring([...CKPT, ...args(t.pid, dir, prev)], dir, moment, t);
    // A plain dump kills its tree once the image set is whole: that is its job, not a broken promise.
    if (restartsTarget && o.complete) o.broken = [];
    note(tally, o);
    if (o.broken.length > 0 || o.falselyComplete) process.stderr.write(`${name} kill ${i} (${aimed ? "aimed" : "uniform"}): ${[...o.broken, o.falselyComplete ? "falsely complete" : ""].filter(Boolean).join("; ")}\n`);
    if (name === "pre-dump" && o.finished === 0) prev = dir;
    if (o.broken.length > 0 || (restartsTarget && o.complete)) {
      t.target.kill();
      t = await startSturdy(MIB);
      cleanup.targets.push(t.target);
      prev = null;
    }
    cleanup.remove(dir.slice(0, -"/img".length));
    if ((i + 1) % 50 === 0) process.stderr.write(`${name}: ${i + 1} kills, ${tally.broken} broke a promise\n`);
  }
  t.target.kill();
  tally.seconds = (performance.now() - started) / 1000;
  return tally;
}

// ---------------------------------------------------------------- restore

function exists(pid: number): boolean {
  return existsSync(`/proc/${pid}`);
}

/**
 * Restore: dump the target once, kill it, then restore the set again and
 * again, killing ckpt at a random moment. Each time, all or nothing: no task
 * of the tree left, or the whole tree running and passing its check.
 */
async function restoreCampaign(): Promise<Tally> {
  const tally = newTally("restore");
  const started = performance.now();
  const t = await startSturdy(MIB);
  cleanup.targets.push(t.target);
  const images = join(tempDir("faults"), "img");
  cleanup.dirs.push(images.slice(0, -"/img".length));
  const dumped = Bun.spawnSync([...CKPT, "dump", "-t", String(t.pid), "-D", images], { stderr: "pipe" });
  if (dumped.exitCode !== 0) throw new Error(`dump for the restore campaign failed: ${dumped.stderr.toString()}`);
  const before: Baseline = t.before;
  const gone = async (): Promise<void> => {
    const until = performance.now() + 10_000;
    while (before.threads.some(exists) && performance.now() < until) await Bun.sleep(5);
  };
  await gone();
  // The restored root is a child of whoever started ckpt: a shell in between
  // leaves it to init instead of this process.
  const argv = ["sh", "-c", '"$@" & echo $!; wait $!', "sh", ...CKPT, "restore", "-d", "-D", images];
  // The median of three whole restores (the first of a set is slower: cold caches).
  const runs: number[] = [];
  for (let i = 0; i < 3; i++) {
    const s = performance.now();
    const r = Bun.spawnSync(argv, { stderr: "pipe" });
    if (r.exitCode !== 0) throw new Error(`restore failed: ${r.stderr.toString()}`);
    runs.push(performance.now() - s);
    process.kill(t.pid, "SIGKILL");
    await gone();
  }
  const timing = runs.sort((a, b) => a - b)[1]!;
  process.stderr.write(`restore: a whole run takes ${timing.toFixed(0)} ms\n`);
  for (let i = 0; tally.landed < KILLS && i < 4 * KILLS; i++) {
    const child = Bun.spawn(argv, { stdout: "pipe", stderr: "ignore" });
    const reader = child.stdout.getReader();
    const { value } = await reader.read();
    const ckpt = Number(new TextDecoder().decode(value).trim());
    await Bun.sleep(Math.random() * timing);
    try {
      process.kill(ckpt, "SIGKILL");
    } catch {
      // finished already
    }
    const code = await child.exited;
    const o: KillOutcome = { finished: code === 128 + 9 ? null : code, falselyComplete: false, complete: false, broken: [] };
    await Bun.sleep(50);
    const left = before.threads.filter((tid) => exists(tid) && alive(t.pid));
    if (left.length > 0) {
      if (left.length !== before.threads.length) o.broken.push(`partial tree: ${left.length} of ${before.threads.length} threads`);
      else {
        // A restored tree is judged on its own: running, untraced, its threads all there, its check passing.
        const now = baseline(t.pid);
        if (fdKinds(now.fds).join() !== fdKinds(before.fds).join()) o.broken.push("restored: fds differ from the dumped ones");
        const broken = await brokenPromises(t.pid, t.out, { ...now, threads: before.threads });
        o.broken.push(...broken.map((b) => `restored: ${b}`));
      }
      try {
        process.kill(t.pid, "SIGKILL");
      } catch {
        // gone
      }
    }
    await gone();
    if (before.threads.some(exists)) o.broken.push("a task of the tree outlived SIGKILL by 10 s");
    note(tally, o);
    if (o.broken.length > 0) process.stderr.write(`restore kill ${i}: ${o.broken.join("; ")}\n`);
    if ((i + 1) % 50 === 0) process.stderr.write(`restore: ${i + 1} kills, ${tally.broken} broke a promise\n`);
  }
  tally.seconds = (performance.now() - started) / 1000;
  return tally;
}

// ---------------------------------------------------------------- main

const tallies: Tally[] = [];
const line = (t: Tally): string => `| ${t.command} | ${t.kills} | ${t.landed} | ${t.finished} | ${t.broken} | ${t.falselyComplete} | ${t.seconds.toFixed(0)} |`;
for (const command of COMMANDS) {
  if (command === "dump-R") tallies.push(await campaign("dump -R", (pid, dir) => ["dump", "-R", "-t", String(pid), "-D", dir], false));
  else if (command === "pre-dump") tallies.push(await campaign("pre-dump", (pid, dir, prev) => ["pre-dump", "--track-timeout", "5", "-t", String(pid), "-D", dir, ...(prev ? ["--prev-images-dir", prev] : [])], false));
  else if (command === "dump") tallies.push(await campaign("dump", (pid, dir) => ["dump", "-t", String(pid), "-D", dir], true));
  else if (command === "restore") tallies.push(await restoreCampaign());
  else throw new Error(`unknown command ${command} (dump-R, pre-dump, dump, restore)`);
  process.stderr.write(`done: ${line(tallies[tallies.length - 1]!)}\n`);
}
cleanup.killAll();

console.log(`\nckpt SIGKILLed at random moments (${CKPT.join(" ")}, ${MIB} MiB sturdytarget)\n`);
console.log("| command | kills | landed mid-run | finished first | promises broken | falsely complete | seconds |");
console.log("|---|---:|---:|---:|---:|---:|---:|");
for (const t of tallies) console.log(line(t));
for (const t of tallies) for (const [reason, n] of t.reasons) console.log(`${t.command}: ${n} × ${reason}`);
