/**
 * Test workloads: small C programs built with gcc, started detached so that
 * Bun's child reaping never sees (and steals) their ptrace stops.
 */
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const BUILD_DIR = join(tmpdir(), `ckpt-test-bin-${process.getuid?.() ?? 0}`);

/** Compile `source` once per content; returns the executable's path. */
export function buildC(name: string, source: string): string {
  mkdirSync(BUILD_DIR, { recursive: true });
  const hash = Bun.hash(source).toString(16);
  const exe = join(BUILD_DIR, `${name}-${hash}`);
  if (existsSync(exe)) return exe;
  const src = `${exe}.c`;
  writeFileSync(src, source);
  const r = Bun.spawnSync(["gcc", "-O1", "-pthread", "-o", exe, src]);
  if (r.exitCode !== 0) throw new Error(`gcc ${name}: ${r.stderr.toString()}`);
  return exe;
}

export interface Target {
  pid: number;
  /** SIGKILL the target (ignoring one that is gone already). */
  kill(): void;
}

/**
 * Start argv detached: a shell starts it in the background, prints its pid and
 * exits, so the target is reparented away from the test process.
 * The target's stdout goes to `stdoutFile` when given.
 */
export async function startDetached(argv: string[], stdoutFile = "/dev/null"): Promise<Target> {
  const sh = Bun.spawn(["sh", "-c", 'out="$1"; shift; "$@" </dev/null >"$out" 2>&1 & echo $!', "sh", stdoutFile, ...argv], {
    stdout: "pipe",
    stderr: "pipe",
  });
  const [out, code] = await Promise.all([new Response(sh.stdout).text(), sh.exited]);
  const pid = Number(out.trim());
  if (code !== 0 || !(pid > 0)) throw new Error(`could not start ${argv.join(" ")}`);
  return killablePid(pid);
}

/** The process runs (a zombie or a dead one does not). */
export function alive(pid: number): boolean {
  try {
    const state = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]?.[0];
    return state !== "Z" && state !== "X";
  } catch {
    return false;
  }
}

/** The pids of processes for which `matches` holds (false when it throws: the process went away meanwhile). */
export function processesWhere(matches: (pid: number) => boolean): number[] {
  return readdirSync("/proc").filter((n) => /^\d+$/.test(n)).map(Number).filter((pid) => {
    try {
      return matches(pid);
    } catch {
      return false;
    }
  });
}

/** Restore seeds alive now: a restore that waits or fails must leave none behind. */
export function restoreSeeds(): number[] {
  return processesWhere((pid) => readlinkSync(`/proc/${pid}/exe`).includes("memfd:ckpt-seed"));
}

/** A Target for a process known by pid (a workload's child, say). */
export function killablePid(pid: number): Target {
  return {
    pid,
    kill() {
      // A target that died (a dump that killed it, a restore that failed) may
      // have its pid taken by now, in a pid namespace of a few thousand pids
      // soon: never the test runner, its parents or its own helpers.
      if (ownProcesses().has(pid)) return;
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // already gone
      }
    },
  };
}

/** This process, its ancestors and its children: pids a test must never kill. */
function ownProcesses(): Set<number> {
  const own = new Set<number>([process.pid]);
  for (let pid = process.ppid; pid > 1 && !own.has(pid); pid = parentOf(pid)) own.add(pid);
  try {
    for (const task of readdirSync(`/proc/${process.pid}/task`)) {
      for (const child of readFileSync(`/proc/${process.pid}/task/${task}/children`, "utf8").split(" ")) {
        if (child.trim()) own.add(Number(child));
      }
    }
  } catch {
    // no children file: the ancestors are the ones that matter
  }
  return own;
}

/** The parent's pid, or 0 once the process is gone. */
function parentOf(pid: number): number {
  try {
    return Number(readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]?.split(" ")[1] ?? 0);
  } catch {
    return 0;
  }
}

/**
 * Start a workload detached and wait for it to print a line starting with
 * "ready"; returns the target and the words after "ready" on that line (the
 * addresses or pids the workload reports about itself).
 */
export async function startReady(argv: string[]): Promise<{ target: Target; words: string[]; out: string }> {
  const out = join(tempDir("out"), "out");
  writeFileSync(out, "");
  const target = await startDetached(argv, out);
  // Whole lines only: a line still being written could lack its last words.
  const readyLine = (): string | undefined => readFileSync(out, "utf8").split("\n").slice(0, -1).find((l) => l.startsWith("ready"));
  // Generous: a workload filling hundreds of MiB first-touches every page,
  // which takes seconds on this kind of VM when the other core is busy.
  try {
    await waitFor(`${argv[0]} to print "ready"`, () => readyLine() !== undefined, 30000);
  } catch (e) {
    // The caller never learns of this target, so nothing else would kill it.
    target.kill();
    throw e;
  }
  return { target, words: readyLine()!.split(" ").slice(1), out };
}

/** Wait until `pred` holds, polling; throws after `ms`. */
export async function waitFor(what: string, pred: () => boolean, ms = 5000): Promise<void> {
  const until = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(5);
  }
}

const madeDirs: string[] = [];

/** Remove every directory tempDir made so far (bun test: test/helpers/cleanup.ts, preloaded; a bench or script: at exit). */
export function removeTempDirs(): void {
  for (const d of madeDirs.splice(0)) rmSync(d, { recursive: true, force: true });
}

/** A fresh private temporary directory, removed after the tests or at exit (image sets run to GiBs). */
export function tempDir(prefix: string): string {
  if (madeDirs.length === 0) process.once("exit", removeTempDirs);
  const dir = mkdtempSync(join(tmpdir(), `ckpt-${prefix}-`));
  madeDirs.push(dir);
  return dir;
}
