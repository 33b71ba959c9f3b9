/** `ckpt dump`: checkpoint the process tree rooted at a pid into an image directory. */
import { defineCommand } from "citty";
import { dump } from "../dump/dump";
import { rehearseDump, type RehearsalFigures } from "../rehearsal/rehearse";
import { parseFileValidation, parseLazyPages, parseSharedDumpArgs, parseSize, sharedDumpArgs } from "./dump-args";
import { UsageError } from "./exit";

export const dumpCommand = defineCommand({
  meta: { name: "dump", description: "Checkpoint the process tree rooted at PID into DIR (the tree is killed unless -R)" },
  args: {
    ...sharedDumpArgs,
    "leave-running": { type: "boolean", alias: "R", description: "let the tree run on after the dump", default: false },
    "ghost-limit": { type: "string", description: "refuse to save an unlinked open or mapped file larger than SIZE bytes (K, M, G suffixes; as CRIU's option, but no limit unless given)" },
    "shell-job": { type: "boolean", alias: "j", description: "the tree is a job of your shell: dump the terminal it uses (restore gives it the restorer's terminal)", default: false },
    "file-locks": { type: "boolean", description: "save the file locks (POSIX, flock, OFD) the tree holds; without it a tree holding one is refused, as CRIU does", default: false },
    "file-validation": { type: "string", description: "what restore will check open and mapped files by: buildid (size and ELF build-id, the default, as CRIU) or filesize" },
    "tcp-established": { type: "boolean", description: "save established TCP connections (repair mode, as CRIU); their packets are dropped (an nftables table) until the restore, so neither end resets them", default: false },
    "lazy-pages": { type: "boolean", description: "leave anonymous memory out of the images and serve it from the frozen tree on --address/--port to the destination's `ckpt lazy-pages`; the tree is killed once all of it has gone (or resumed, if the destination goes away first)", default: false },
    snapshot: {
      type: "boolean",
      description: "with -R: freeze only for the scan and copy memory while the tree runs, still as it was at the freeze (userfaultfd write-protection, copy-before-write); --no-snapshot copies it all while frozen",
      default: true,
    },
  },
  async run({ args, rawArgs }) {
    const shared = parseSharedDumpArgs(args, rawArgs, ["leave-running", "R", "shell-job", "j", "ghost-limit", "file-locks", "file-validation", "snapshot", "lazy-pages", "tcp-established"], ["ghost-limit", "file-validation"]);
    const fileValidation = parseFileValidation(args["file-validation"]);
    const lazyPages = parseLazyPages(args);
    if (lazyPages && args["leave-running"]) throw new UsageError("--lazy-pages cannot be used with -R: the tree stays frozen until its pages have gone, then it is killed");
    const ghostLimit = args["ghost-limit"] === undefined ? undefined : parseSize("--ghost-limit", String(args["ghost-limit"]));
    let rehearsal: RehearsalFigures | undefined;
    const result = await dump({ ...shared, exitAfter: true, leaveRunning: Boolean(args["leave-running"]), snapshot: args.snapshot !== false, shellJob: Boolean(args["shell-job"]), tcpEstablished: Boolean(args["tcp-established"]), fileLocks: Boolean(args["file-locks"]), ...(fileValidation ? { fileValidation } : {}), ...(ghostLimit !== undefined ? { ghostLimit } : {}),
      ...(args.rehearsal !== false ? { beforeFreeze: async () => (rehearsal = await rehearseDump(Boolean(args["leave-running"]))) } : {}),
      ...(lazyPages ? { lazyPages, onImagesWritten: ({ lazyPagesAt }) => process.stderr.write(`ckpt: images complete in ${shared.dir}; the tree stays frozen, serving its lazy pages on ${lazyPagesAt}\n`) } : {}),
    });
    if (args.json) {
      process.stdout.write(`${JSON.stringify({ ...result, ...(rehearsal ? { rehearsal } : {}) }, null, 2)}\n`);
      return;
    }
    const f = result.figures;
    const parent = shared.prevImagesDir === undefined ? "" : ` (${f.pagesInParent} left in the parent)`;
    process.stdout.write(
      `dumped ${result.processes} process(es), ${result.threads} thread(s) of tree ${result.pid} into ${result.dir}: ` +
        `${f.pagesWritten} pages${parent}, frozen ${f.frozenMs.toFixed(1)} ms` +
        `${result.snapshot.used ? ` (snapshot: ${result.snapshot.pagesRunning} pages copied after, ${result.snapshot.pagesOnFault} before a write)` : ""}, total ${f.totalMs.toFixed(1)} ms; ` +
        `${result.leftRunning ? "the tree runs on" : "the tree was killed"}\n`,
    );
    if (result.lazy) process.stderr.write(`ckpt: ${result.lazy.pagesServed} of ${result.lazy.pagesLazy} lazy pages fetched by ${result.lazy.peer} in ${result.lazy.requests} requests; the tree was killed\n`);
    if (result.pageServer) process.stderr.write(`ckpt: pages sent to the page server at ${result.pageServer.peer}: ${result.pageServer.pagesSent} pages, ${result.pageServer.holesSent} left in the parent round, ${(result.pageServer.bytesSent / 1048576).toFixed(1)} MiB\n`);
    if (result.tracking.note) process.stderr.write(`ckpt: note: ${result.tracking.note}\n`);
  },
});
