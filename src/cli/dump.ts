/** `ckpt dump`: checkpoint the process tree rooted at a pid into an image directory. */
import { defineCommand } from "citty";
import { dump } from "../dump/dump";
import { rejectUnknownArgs, UsageError } from "./exit";

const PAGE_SCANS = ["auto", "ioctl", "pagemap"] as const;
type PageScan = (typeof PAGE_SCANS)[number];

export const dumpCommand = defineCommand({
  meta: { name: "dump", description: "Checkpoint the process tree rooted at PID into DIR (the tree is killed unless -R)" },
  args: {
    tree: { type: "string", alias: "t", description: "PID of the root of the tree to dump", required: true },
    "images-dir": { type: "string", alias: "D", description: "directory for the images (created 0700 if missing; must not hold an image set)", required: true },
    "leave-running": { type: "boolean", alias: "R", description: "let the tree run on after the dump", default: false },
    "page-scan": { type: "string", description: "how to find the pages to save: auto, ioctl (PAGEMAP_SCAN) or pagemap (read /proc/PID/pagemap)", default: "auto" },
    "shell-job": { type: "boolean", alias: "j", description: "the tree is a job of your shell: dump the terminal it uses (restore gives it the restorer's terminal)", default: false },
    json: { type: "boolean", description: "print a JSON summary (stats, syscall counts) instead of one line", default: false },
  },
  async run({ args, rawArgs }) {
    rejectUnknownArgs(rawArgs, ["tree", "t", "images-dir", "D", "leave-running", "R", "page-scan", "shell-job", "j", "json"], 0, ["tree", "t", "images-dir", "D", "page-scan"]);
    const pidText = String(args.tree);
    if (!/^[1-9]\d*$/.test(pidText)) throw new UsageError(`-t/--tree needs a process id, got ${JSON.stringify(pidText)}`);
    const dir = String(args["images-dir"]);
    if (dir === "") throw new UsageError("-D/--images-dir needs a directory");
    const pageScan = String(args["page-scan"]);
    if (!(PAGE_SCANS as readonly string[]).includes(pageScan)) throw new UsageError(`--page-scan must be one of ${PAGE_SCANS.join(", ")}`);
    const result = await dump({ pid: Number(pidText), dir, leaveRunning: Boolean(args["leave-running"]), pageScan: pageScan as PageScan, shellJob: Boolean(args["shell-job"]) });
    if (args.json) {
      process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
      return;
    }
    const f = result.figures;
    process.stdout.write(
      `dumped ${result.processes} process(es), ${result.threads} thread(s) of tree ${result.pid} into ${result.dir}: ` +
        `${f.pagesWritten} pages, frozen ${f.frozenMs.toFixed(1)} ms, total ${f.totalMs.toFixed(1)} ms; ` +
        `${result.leftRunning ? "the tree runs on" : "the tree was killed"}\n`,
    );
  },
});
