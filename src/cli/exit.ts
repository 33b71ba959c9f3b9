/**
 * Exit codes and the one-line error report. Stable and documented in the README:
 *   0  success
 *   1  the operation failed (kernel refused, bad image, a check found a missing feature)
 *   2  usage error (unknown command or flag, missing argument)
 */
export const EXIT_OK = 0;
export const EXIT_FAILURE = 1;
export const EXIT_USAGE = 2;

/** Wrong command-line use; reported with exit code 2. */
export class UsageError extends Error {
  override readonly name = "UsageError";
}

/**
 * Throw a UsageError for any --flag or -f in `rawArgs` that `known` does not
 * list, and for more positional arguments than the command takes.
 * `valued` lists the flags (long names and one-letter aliases) that take a
 * value: the word after such a flag is its value, unless it came as --flag=value.
 */
export function rejectUnknownArgs(rawArgs: readonly string[], known: readonly string[], positionals: number, valued: readonly string[] = []): void {
  let seen = 0;
  let onlyPositionals = false;
  for (let i = 0; i < rawArgs.length; i++) {
    const arg = rawArgs[i] ?? "";
    if (!onlyPositionals && arg === "--") {
      onlyPositionals = true;
      continue;
    }
    if (onlyPositionals || !arg.startsWith("-") || arg === "-") {
      if (++seen > positionals) throw new UsageError(`unexpected argument ${JSON.stringify(arg)}`);
      continue;
    }
    const name = arg.replace(/^--?/, "").split("=")[0] ?? "";
    const bare = name.startsWith("no-") ? name.slice(3) : name;
    if (!known.includes(name) && !known.includes(bare)) throw new UsageError(`unknown option ${arg}`);
    if (valued.includes(name) && !arg.includes("=")) {
      if (i + 1 >= rawArgs.length) throw new UsageError(`option ${arg} needs a value`);
      i++;
    }
  }
}

/**
 * Every value given for a repeatable option (`--name V` or `--name=V`, under
 * any of `names`), in order; citty keeps only the last. `valued` is as for
 * rejectUnknownArgs, so the value of another option is never taken for one.
 */
export function flagValues(rawArgs: readonly string[], names: readonly string[], valued: readonly string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < rawArgs.length; i++) {
    const arg = rawArgs[i] ?? "";
    if (arg === "--") break;
    if (!arg.startsWith("-") || arg === "-") continue;
    const [name = "", ...value] = arg.replace(/^--?/, "").split("=");
    const inline = arg.includes("=");
    if (names.includes(name)) out.push(inline ? value.join("=") : (rawArgs[i + 1] ?? ""));
    if (valued.includes(name) && !inline) i++;
  }
  return out;
}

/** Print `ckpt: message` on stderr, one line. */
export function reportError(e: unknown): void {
  const msg = e instanceof Error ? e.message : String(e);
  process.stderr.write(`ckpt: ${msg.replace(/\s*\n\s*/g, " ")}\n`);
}
