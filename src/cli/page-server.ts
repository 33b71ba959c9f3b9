/** `ckpt page-server`: receive the pages of one dump or pre-dump sent with --page-server, into DIR. */
import { defineCommand } from "citty";
import { PageServer } from "../transfer/page-server";
import { parsePort } from "./dump-args";
import { rejectUnknownArgs, UsageError } from "./exit";

export const pageServerCommand = defineCommand({
  meta: { name: "page-server", description: "Receive the pages of one dump or pre-dump (ckpt's or CRIU's, --page-server) into DIR; exit 0 once the sender ends the stream cleanly" },
  args: {
    "images-dir": { type: "string", alias: "D", description: "directory for the pages (created 0700 if missing)", required: true },
    address: { type: "string", description: "address to listen on (IPv4 or IPv6; default every IPv4 address)" },
    port: { type: "string", description: "TCP port to listen on (0: the kernel picks one, printed on stderr)", required: true },
    "prev-images-dir": { type: "string", description: "the previous round's pages (its page server's DIR), relative to DIR unless absolute" },
    json: { type: "boolean", description: "print a JSON summary instead of one line", default: false },
  },
  run({ args, rawArgs }) {
    rejectUnknownArgs(rawArgs, ["images-dir", "D", "address", "port", "prev-images-dir", "json"], 0, ["images-dir", "D", "address", "port", "prev-images-dir"]);
    const dir = String(args["images-dir"]);
    if (dir === "") throw new UsageError("-D/--images-dir needs a directory");
    const prev = args["prev-images-dir"];
    if (prev !== undefined && String(prev) === "") throw new UsageError("--prev-images-dir needs a directory");
    const result = PageServer.serve({
      dir,
      address: args.address === undefined ? "0.0.0.0" : String(args.address),
      port: parsePort(args.port, true),
      ...(prev !== undefined ? { prevImagesDir: String(prev) } : {}),
      onListening: ({ local }) => process.stderr.write(`ckpt: page server listening on ${local}\n`),
    });
    if (args.json) {
      process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
      return;
    }
    process.stdout.write(
      `received ${result.pagesReceived} pages (${(result.bytesReceived / 1048576).toFixed(1)} MiB) in ${result.pagemaps} pagemap(s) from ${result.peer} into ${result.dir}` +
        `${result.pagesInParent > 0 ? `, ${result.pagesInParent} left in the parent round` : ""}, ${result.ms.toFixed(1)} ms\n`,
    );
  },
});
