/** `ckpt show FILE|DIR`: image files as JSON in crit's shape. */
import { defineCommand } from "citty";
import { ImageError } from "../image/errors";
import { readImageFile } from "../image/image-file";
import { PAGES_FILE } from "../image/magic";
import { imageToJson, stringifyJson, type JsonValue } from "../image/to-json";
import { listDirectory, readWholeFile } from "../sys/file";
import { statx } from "../sys/libc";
import { AT, S_IF, S_IFMT } from "../sys/nr";
import { rejectUnknownFlags } from "./exit";

const ARGS = {
  path: { type: "positional", description: "an image file, or a directory of images", required: true },
  json: { type: "boolean", description: "one compact JSON document per line (default: indented)", default: false },
} as const;

/** A pages-N.img file holds raw pages; show says how many rather than dumping them. */
function showPages(path: string, size: bigint): { magic: string; pages: number; bytes: JsonValue } {
  return { magic: "PAGES", pages: Number(size / 4096n), bytes: size };
}

function showFile(path: string, name: string): unknown {
  if (PAGES_FILE.test(name)) return showPages(path, statx(AT.FDCWD, path).size);
  return imageToJson(readImageFile(path));
}

/**
 * In a directory, an image of a kind ckpt does not define (a CRIU set may hold
 * cgroup, tty or netns images) is listed by its magic rather than failing the
 * whole listing; a damaged image of a known kind is still an error.
 */
function showDirectoryFile(path: string, name: string): unknown {
  try {
    return showFile(path, name);
  } catch (e) {
    if (e instanceof ImageError && e.code === "unknown-kind") {
      const magic = new DataView(readWholeFile(path).buffer).getUint32(4, true);
      return { magic: `0x${magic.toString(16).padStart(8, "0")}`, decoded: false };
    }
    throw e;
  }
}

export const show = defineCommand({
  meta: { name: "show", description: "Print image files as JSON (crit's shape: {magic, entries})" },
  args: ARGS,
  run({ args, rawArgs }) {
    rejectUnknownFlags(rawArgs, ["json"]);
    const path = args.path;
    const isDir = (statx(AT.FDCWD, path).mode & S_IFMT) === S_IF.DIR;
    const indent = args.json ? undefined : 4;
    if (!isDir) {
      process.stdout.write(`${stringifyJson(showFile(path, path.split("/").pop() ?? path), indent)}\n`);
      return;
    }
    // A directory: one object per image file, keyed by file name. Files that are
    // not images (logs, a parent link) are left out.
    const out: Record<string, unknown> = {};
    for (const name of listDirectory(path)) {
      const full = `${path}/${name}`;
      const st = statx(AT.FDCWD, full);
      if ((st.mode & S_IFMT) !== S_IF.REG) continue;
      if (!name.endsWith(".img") && !name.startsWith("stats-") && name !== "irmap-cache") continue;
      out[name] = showDirectoryFile(full, name);
    }
    process.stdout.write(`${stringifyJson(out, indent)}\n`);
  },
});
