#!/usr/bin/env bun
/** ckpt's entry point: parses the command line and dispatches to one command. */
import { defineCommand, runCommand, showUsage, type CommandDef } from "citty";
import pkg from "../../package.json" with { type: "json" };
import { runProbeModeIfAsked } from "../check/probe-target";
import { runTcpLockHolderIfAsked } from "../transfer/tcp-lock";
import { check } from "./check";
import { dumpCommand } from "./dump";
import { lazyPagesCommand } from "./lazy-pages";
import { pageServerCommand } from "./page-server";
import { preDumpCommand } from "./pre-dump";
import { restoreCommand } from "./restore";
import { EXIT_FAILURE, EXIT_USAGE, reportError, UsageError } from "./exit";
import { show } from "./show";

const main = defineCommand({
  meta: { name: "ckpt", version: pkg.version, description: "Checkpoint a Linux process tree into CRIU-format images" },
  subCommands: { dump: dumpCommand as CommandDef, "pre-dump": preDumpCommand as CommandDef, "page-server": pageServerCommand as CommandDef, "lazy-pages": lazyPagesCommand as CommandDef, restore: restoreCommand as CommandDef, show: show as CommandDef, check: check as CommandDef },
});

function isCittyUsageError(e: unknown): boolean {
  return e instanceof Error && e.name === "CLIError";
}

async function run(argv: string[]): Promise<void> {
  if (await runProbeModeIfAsked(argv)) return;
  if (await runTcpLockHolderIfAsked(argv)) return;
  if (argv.length === 0) {
    await showUsage(main);
    process.exitCode = EXIT_USAGE;
    return;
  }
  if (argv.length === 1 && (argv[0] === "--version" || argv[0] === "-v")) {
    process.stdout.write(`${pkg.version}\n`);
    return;
  }
  const sub = argv[0] ?? "";
  const subCmd = (main.subCommands as Record<string, CommandDef> | undefined)?.[sub];
  if (argv.includes("--help") || argv.includes("-h")) {
    await showUsage(subCmd ?? main, subCmd ? main : undefined);
    return;
  }
  if (sub.startsWith("-")) throw new UsageError(`unknown option ${sub}`);
  if (!subCmd) throw new UsageError(`unknown command ${JSON.stringify(sub)} (try ckpt --help)`);
  await runCommand(main, { rawArgs: argv });
}

// No top-level await: the executable is compiled to bytecode, which needs CommonJS.
run(process.argv.slice(2)).catch((e: unknown) => {
  reportError(e);
  process.exitCode = e instanceof UsageError || isCittyUsageError(e) ? EXIT_USAGE : EXIT_FAILURE;
});
