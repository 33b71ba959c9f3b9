/** `ckpt pre-dump`: save a running tree's memory with a short freeze, for an iterative dump. */
import { defineCommand } from "citty";
import { DEFAULT_TRACK_TIMEOUT_SECONDS, preDump } from "../dump/predump";
import { rehearseDump, type RehearsalFigures } from "../rehearsal/rehearse";
import { parseSharedDumpArgs, sharedDumpArgs } from "./dump-args";
import { UsageError } from "./exit";

export const preDumpCommand = defineCommand({
  meta: { name: "pre-dump", description: "Save the memory of the tree rooted at PID into DIR and let it run on; later rounds (--prev-images-dir) save only what changed" },
  args: {
    ...sharedDumpArgs,
    "track-timeout": { type: "string", description: `seconds the write tracking stays armed if no later round claims it (default ${DEFAULT_TRACK_TIMEOUT_SECONDS})` },
  },
  async run({ args, rawArgs }) {
    const shared = parseSharedDumpArgs(args, rawArgs, ["track-timeout"], ["track-timeout"]);
    const timeoutText = args["track-timeout"] === undefined ? String(DEFAULT_TRACK_TIMEOUT_SECONDS) : String(args["track-timeout"]);
    if (!/^[1-9]\d{0,9}$/.test(timeoutText)) throw new UsageError(`--track-timeout needs a whole number of seconds, got ${JSON.stringify(timeoutText)}`);
    let rehearsal: RehearsalFigures | undefined;
    const result = await preDump({
      ...shared, trackTimeoutSeconds: Number(timeoutText),
      // The tree runs on after a pre-dump, as after dump -R.
      ...(args.rehearsal !== false ? { beforeFreeze: async () => (rehearsal = await rehearseDump(true)) } : {}),
    });
    if (args.json) {
      process.stdout.write(`${JSON.stringify({ ...result, ...(rehearsal ? { rehearsal } : {}) }, null, 2)}\n`);
      return;
    }
    const f = result.figures;
    process.stdout.write(
      `pre-dumped ${result.processes} process(es) of tree ${result.pid} into ${result.dir}: ${f.pagesWritten} pages written, ` +
        `${f.pagesInParent} left in the parent, frozen ${f.frozenMs.toFixed(1)} ms, total ${f.totalMs.toFixed(1)} ms; ` +
        `tracking writes with ${result.tracking.method} (tracker ${result.tracking.trackerStarted?.pid ?? "?"}); the tree runs on\n`,
    );
    if (result.pageServer) process.stderr.write(`ckpt: pages sent to the page server at ${result.pageServer.peer}: ${result.pageServer.pagesSent} pages, ${result.pageServer.holesSent} left in the parent round, ${(result.pageServer.bytesSent / 1048576).toFixed(1)} MiB\n`);
    if (result.tracking.note) process.stderr.write(`ckpt: note: ${result.tracking.note}\n`);
  },
});
