/** Run ckpt from source (or a given executable) and collect what it printed. */
const MAIN = `${import.meta.dir}/../../src/cli/main.ts`;

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export function runCkpt(args: string[], opts: { exe?: string; cwd?: string } = {}): CliResult {
  const cmd = opts.exe ? [opts.exe, ...args] : [process.execPath, MAIN, ...args];
  const r = Bun.spawnSync(cmd, { cwd: opts.cwd, stdout: "pipe", stderr: "pipe" });
  return { code: r.exitCode ?? -1, stdout: r.stdout.toString(), stderr: r.stderr.toString() };
}

/**
 * JSON.parse that keeps integers beyond 2^53 exact by turning them into
 * strings first, so two documents compare equal only if their digits do.
 */
export function parseExactJson(text: string): unknown {
  return JSON.parse(text.replace(/([:\[,]\s*)(-?\d{16,})(?=\s*[,\]}])/g, '$1"$2"'));
}
