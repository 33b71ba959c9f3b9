/** `ckpt restore`: bring a dumped process tree back from an image directory. */
import { defineCommand } from "citty";
import { rehearseRestore, type RehearsalFigures } from "../rehearsal/rehearse";
import { restore, waitForRoot } from "../restore/restore";
import { parseFileValidation, parseSeconds } from "./dump-args";
import { rejectUnknownArgs, UsageError } from "./exit";

export const restoreCommand = defineCommand({
  meta: { name: "restore", description: "Restore the process tree saved in DIR, with its original pids; waits for it to exit unless -d" },
  args: {
    "images-dir": { type: "string", alias: "D", description: "directory holding a complete image set (from ckpt dump)", required: true },
    "restore-detached": { type: "boolean", alias: "d", description: "return once the tree runs, leaving it on its own (its root is reparented to init)", default: false },
    pidfile: { type: "string", description: "write the restored root's pid to this file" },
    "shell-job": { type: "boolean", alias: "j", description: "the tree was dumped with --shell-job: give it this terminal and session", default: false },
    "file-locks": { type: "boolean", description: "as CRIU's: take again the file locks the images hold (ckpt does so whenever filelocks.img holds any, so this is accepted for CRIU's scripts)", default: false },
    "file-validation": { type: "string", description: "check open and mapped files by buildid (their size, and the ELF build-id the images record: the default, as CRIU) or filesize (the size alone)" },
    "skip-file-rwx-check": { type: "boolean", description: "as CRIU's: allow a file whose read/write/execute permission bits changed since the dump", default: false },
    "restore-in-new-pidns": {
      type: "boolean",
      description: "restore into a new pid namespace, under an init of ckpt's (pid 1 there), where every task has its dumped pid whatever holds those pids on this host; the pidfile and the output give host pids",
      default: false,
    },
    "tcp-established": { type: "boolean", description: "make the established TCP connections of a --tcp-established dump again, their packets held back until the tree runs", default: false },
    "lazy-pages": { type: "boolean", description: "restore at once and let `ckpt lazy-pages` (running for DIR) fill anonymous memory on first touch: a --lazy-pages dump's pages from its source, any other dump's from DIR", default: false },
    "wait-images": { type: "string", description: "wait up to SECONDS for DIR to hold a complete image set (every file matching the inventory's digests) before restoring: start the restore ahead of the dump, and its start-up is not downtime" },
    rehearsal: {
      type: "boolean",
      description: "with --wait-images: while waiting, dump and restore a decoy process of ckpt's own once, so that the restore runs warm code once the images are here (~2x faster); --no-rehearsal skips it",
      default: true,
    },
    json: { type: "boolean", description: "print a JSON summary instead of one line", default: false },
  },
  async run({ args, rawArgs }) {
    rejectUnknownArgs(rawArgs, ["images-dir", "D", "restore-detached", "d", "pidfile", "shell-job", "j", "file-locks", "file-validation", "skip-file-rwx-check", "restore-in-new-pidns", "lazy-pages", "tcp-established", "wait-images", "rehearsal", "json"], 0, ["images-dir", "D", "pidfile", "file-validation", "wait-images"]);
    const fileValidation = parseFileValidation(args["file-validation"]);
    const dir = String(args["images-dir"]);
    if (dir === "") throw new UsageError("-D/--images-dir needs a directory");
    const detach = Boolean(args["restore-detached"]);
    const waitImagesMs = args["wait-images"] === undefined ? undefined : parseSeconds("--wait-images", String(args["wait-images"])) * 1000;
    let rehearsal: RehearsalFigures | undefined;
    const result = await restore({
      dir, detach, shellJob: Boolean(args["shell-job"]), skipFileRwxCheck: Boolean(args["skip-file-rwx-check"]), newPidNs: Boolean(args["restore-in-new-pidns"]), lazyPages: Boolean(args["lazy-pages"]), tcpEstablished: Boolean(args["tcp-established"]),
      ...(fileValidation ? { fileValidation } : {}),
      ...(waitImagesMs !== undefined ? { waitImagesMs } : {}),
      // Started ahead of the dump: the wait is the time to rehearse.
      ...(args.rehearsal !== false ? { whileWaiting: async (arrived: () => boolean) => (rehearsal = await rehearseRestore(arrived)) } : {}),
      ...(args.pidfile !== undefined ? { pidfile: String(args.pidfile) } : {}),
    });
    if (args.json) process.stdout.write(`${JSON.stringify({ ...result, ...(rehearsal ? { rehearsal } : {}) }, null, 2)}\n`);
    else {
      const f = result.figures;
      process.stdout.write(
        `restored ${result.processes} process(es), ${result.threads} thread(s) as tree ${result.root}` +
          `${result.pidNsInit !== undefined ? ` in a new pid namespace (its init: ${result.pidNsInit})` : ""} from ${result.dir}: ` +
          `${result.pagesRestored} pages, total ${f.totalMs.toFixed(1)} ms${detach ? "" : "; waiting for it to exit"}\n`,
      );
    }
    // In a new pid namespace ckpt's child is its init, which exits as the root did once the namespace is empty.
    if (!detach) process.exitCode = waitForRoot(result.pidNsInit ?? result.root);
  },
});
