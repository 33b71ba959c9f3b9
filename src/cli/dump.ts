/** `ckpt dump`: checkpoint the process tree rooted at a pid into an image directory. */
import { defineCommand } from "citty";
import { dump } from "../dump/dump";
import { parseSharedDumpArgs, sharedDumpArgs } from "./dump-args";

export const dumpCommand = defineCommand({
  meta: { name: "dump", description: "Checkpoint the process tree rooted at PID into DIR (the tree is killed unless -R)" },
  args: {
    ...sharedDumpArgs,
    "leave-running": { type: "boolean", alias: "R", description: "let the tree run on after the dump", default: false },
    "shell-job": { type: "boolean", alias: "j", description: "the tree is a job of your shell: dump the terminal it uses (restore gives it the restorer's terminal)", default: false },
  },
  async run({ args, rawArgs }) {
    const shared = parseSharedDumpArgs(args, rawArgs, ["leave-running", "R", "shell-job", "j"], []);
    const result = await dump({ ...shared, leaveRunning: Boolean(args["leave-running"]), shellJob: Boolean(args["shell-job"]) });
    if (args.json) {
      process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
      return;
    }
    const f = result.figures;
    const parent = shared.prevImagesDir === undefined ? "" : ` (${f.pagesInParent} left in the parent)`;
    process.stdout.write(
      `dumped ${result.processes} process(es), ${result.threads} thread(s) of tree ${result.pid} into ${result.dir}: ` +
        `${f.pagesWritten} pages${parent}, frozen ${f.frozenMs.toFixed(1)} ms, total ${f.totalMs.toFixed(1)} ms; ` +
        `${result.leftRunning ? "the tree runs on" : "the tree was killed"}\n`,
    );
    if (result.tracking.note) process.stderr.write(`ckpt: note: ${result.tracking.note}\n`);
  },
});
