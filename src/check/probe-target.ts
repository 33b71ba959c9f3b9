/**
 * A throw-away process for probing ptrace: ckpt itself, re-executed in a hidden
 * mode that only sleeps.
 *
 * The target must not be our own child: Bun reaps its children with wait4(),
 * which also reports ptrace stops of traced children and would steal them from
 * us. So the target is started through an intermediate ckpt that forks it
 * detached, prints its pid and exits; the target is then reparented away from
 * us, and only ptrace links us to it.
 */

/** argv[1] of the intermediate that starts the target and prints its pid. */
export const PROBE_SPAWNER_FLAG = "--internal-probe-spawner";
/**
 * argv[1] of the target itself. argv[2] is the pid of the ckpt that asked for
 * it, so a leftover probe can be traced back to its run.
 */
export const PROBE_TARGET_FLAG = "--internal-probe-target";
/** A target left behind by a killed ckpt ends itself after this long. */
const TARGET_LIFETIME_MS = 60_000;

/** The command that runs this same ckpt, compiled or from source. */
export function selfCommand(): string[] {
  // A compiled executable's entry lives in Bun's embedded file system.
  if (Bun.main.startsWith("/$bunfs/")) return [process.execPath];
  return [process.execPath, Bun.main];
}

/** Handle the hidden modes; returns true when this process was one of them. */
export async function runProbeModeIfAsked(argv: readonly string[]): Promise<boolean> {
  if (argv[0] === PROBE_TARGET_FLAG) {
    await Bun.sleep(TARGET_LIFETIME_MS);
    process.exit(0);
  }
  if (argv[0] === PROBE_SPAWNER_FLAG) {
    const child = Bun.spawn([...selfCommand(), PROBE_TARGET_FLAG, argv[1] ?? "0"], {
      stdin: "ignore", stdout: "ignore", stderr: "ignore", detached: true,
    });
    child.unref();
    process.stdout.write(`${child.pid}\n`);
    process.exit(0);
  }
  return false;
}

/** Start a detached probe target; returns its pid. The caller kills it when done. */
export async function startProbeTarget(): Promise<number> {
  const spawner = Bun.spawn([...selfCommand(), PROBE_SPAWNER_FLAG, String(process.pid)], { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  const [out, err, code] = await Promise.all([
    new Response(spawner.stdout).text(),
    new Response(spawner.stderr).text(),
    spawner.exited,
  ]);
  const pid = Number(out.trim());
  if (code !== 0 || !Number.isInteger(pid) || pid <= 0) {
    throw new Error(`could not start a probe process (exit ${code}): ${err.trim() || out.trim()}`);
  }
  return pid;
}
