/** `ckpt show FILE|DIR`: image files as JSON in crit's shape. */
import { defineCommand } from "citty";
import { describeImages } from "../image/describe";
import { stringifyJson } from "../image/to-json";
import { rejectUnknownArgs } from "./exit";

export const show = defineCommand({
  meta: { name: "show", description: "Print image files as JSON (crit's shape: {magic, entries})" },
  args: {
    path: { type: "positional", description: "an image file, or a directory of images", required: true },
    json: { type: "boolean", description: "compact JSON on one line (default: indented)", default: false },
  },
  run({ args, rawArgs }) {
    rejectUnknownArgs(rawArgs, ["json"], 1);
    const value = describeImages(args.path);
    process.stdout.write(`${stringifyJson(value, args.json ? undefined : 4)}\n`);
  },
});
