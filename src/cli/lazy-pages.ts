/** `ckpt lazy-pages`: fill a lazily restored tree's memory, from the images or from the source (`dump --lazy-pages`). */
import { defineCommand } from "citty";
import { LazyPagesDaemon } from "../transfer/lazy-pages";
import { parsePort, parseSeconds } from "./dump-args";
import { rejectUnknownArgs, UsageError } from "./exit";

export const lazyPagesCommand = defineCommand({
  meta: {
    name: "lazy-pages",
    description: "Serve `ckpt restore --lazy-pages -D DIR`: place each page on first touch and the rest in the background, read from DIR's images (and their parents) or, with --page-server, fetched from the source (`ckpt dump --lazy-pages`); exit 0 when all are in place",
  },
  args: {
    "images-dir": { type: "string", alias: "D", description: "the image directory the restore reads (the socket lazy-pages.socket is made there)", required: true },
    "page-server": { type: "boolean", description: "fetch the pages a --lazy-pages dump left at its source from --address/--port (as CRIU's option)", default: false },
    address: { type: "string", description: "the source's IPv4 or IPv6 address" },
    port: { type: "string", description: "the source's TCP port" },
    "wait-source": { type: "string", description: "keep trying for up to SECONDS while nothing listens at --address/--port yet: start the destination ahead of the dump" },
    json: { type: "boolean", description: "print a JSON summary instead of one line", default: false },
  },
  run({ args, rawArgs }) {
    rejectUnknownArgs(rawArgs, ["images-dir", "D", "page-server", "address", "port", "wait-source", "json"], 0, ["images-dir", "D", "address", "port", "wait-source"]);
    const dir = String(args["images-dir"]);
    if (dir === "") throw new UsageError("-D/--images-dir needs a directory");
    const remote = args.address !== undefined || args.port !== undefined || args["wait-source"] !== undefined;
    if (args["page-server"] && (args.address === undefined || args.port === undefined)) {
      throw new UsageError("--page-server fetches the pages from the source: give --address SOURCE --port N");
    }
    if (!args["page-server"] && remote) throw new UsageError("--address, --port and --wait-source name the source of a --lazy-pages dump: give --page-server with them");
    const result = LazyPagesDaemon.run({
      dir,
      ...(args["page-server"] ? { source: { address: String(args.address), port: parsePort(args.port) } } : {}),
      onReady: (path) => process.stderr.write(`ckpt: lazy-pages ready for the restore at ${path}\n`),
      ...(args["wait-source"] !== undefined ? { waitSourceMs: parseSeconds("--wait-source", String(args["wait-source"])) * 1000 } : {}),
    });
    if (args.json) {
      process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
      return;
    }
    process.stdout.write(
      `filled ${result.pagesOnFault + result.pagesInBackground} lazy pages of ${result.processes} process(es) from ${result.source}: ` +
        `${result.pagesOnFault} on ${result.faults} fault(s), ${result.pagesInBackground} in the background, ${result.pagesFromImages} read from the images, ${result.zeroPages} zero page(s), ${result.ms.toFixed(1)} ms\n`,
    );
  },
});
