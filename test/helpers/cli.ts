/** Run ckpt from source (or a given executable) and collect what it printed. */
const MAIN = `${import.meta.dir}/../../src/cli/main.ts`;

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** `env`: variables to set for the run, over the test's own. */
export function runCkpt(args: string[], opts: { exe?: string; cwd?: string; env?: Record<string, string> } = {}): CliResult {
  const r = Bun.spawnSync(ckptArgv(args, opts.exe), { cwd: opts.cwd, stdout: "pipe", stderr: "pipe", ...(opts.env ? { env: { ...process.env, ...opts.env } } : {}) });
  return { code: r.exitCode ?? -1, stdout: r.stdout.toString(), stderr: r.stderr.toString() };
}

/** The command line that runs ckpt with `args`: from source, or `exe`. */
export function ckptArgv(args: string[], exe?: string): string[] {
  return exe ? [exe, ...args] : [process.execPath, MAIN, ...args];
}

/**
 * JSON.parse that keeps integers beyond 2^53 exact by turning them into
 * strings first, so two documents compare equal only if their digits do.
 */
export function parseExactJson(text: string): unknown {
  return JSON.parse(text.replace(/([:\[,]\s*)(-?\d{16,})(?=\s*[,\]}])/g, '$1"$2"'));
}
