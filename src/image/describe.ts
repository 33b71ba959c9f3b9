/**
 * Image files and image directories as JSON values, for `ckpt show`: each
 * image in crit's shape, raw pages files summarised.
 */
import { statx } from "../sys/libc";
import { listDirectory, readWholeFile } from "../sys/file";
import { AT, S_IF, S_IFMT } from "../sys/nr";
import { ImageError } from "./errors";
import { readImageFile } from "./image-file";
import { PAGES_FILE, RAW_FILE } from "./magic";
import { imageToJson, type JsonValue } from "./to-json";

/** A pages-N.img file holds raw pages; say how many rather than print them. */
function describePages(size: bigint): JsonValue {
  return { magic: "PAGES", pages: Number(size / 4096n), bytes: size };
}

/** One image file; its kind comes from its magic, or from its name for raw files. */
export function describeImageFile(path: string): JsonValue {
  const name = path.split("/").pop() ?? path;
  if (PAGES_FILE.test(name)) return describePages(statx(AT.FDCWD, path).size);
  if (RAW_FILE.test(name)) return { magic: "RAW", bytes: statx(AT.FDCWD, path).size };
  return imageToJson(readImageFile(path));
}

/** Whether a directory entry's name is one an image set uses. */
function isImageName(name: string): boolean {
  return name.endsWith(".img") || name.startsWith("stats-") || name === "irmap-cache";
}

/**
 * Every image in a directory, keyed by file name. Files that are not images
 * (logs, the `parent` link) are left out. An image of a kind ckpt does not
 * define (a CRIU set may hold cgroup, tty or netns images) is listed by its
 * magic rather than failing the whole listing; a damaged image of a known kind
 * is still an error.
 */
export function describeImageDir(dir: string): Record<string, JsonValue> {
  const out: Record<string, JsonValue> = {};
  for (const name of listDirectory(dir)) {
    const full = `${dir}/${name}`;
    if (!isImageName(name) || (statx(AT.FDCWD, full).mode & S_IFMT) !== S_IF.REG) continue;
    try {
      out[name] = describeImageFile(full);
    } catch (e) {
      if (!(e instanceof ImageError && e.code === "unknown-kind")) throw e;
      const magic = new DataView(readWholeFile(full).buffer).getUint32(4, true);
      out[name] = { magic: `0x${magic.toString(16).padStart(8, "0")}`, decoded: false };
    }
  }
  return out;
}

/** A file or a directory, whichever `path` is. */
export function describeImages(path: string): JsonValue {
  const isDir = (statx(AT.FDCWD, path).mode & S_IFMT) === S_IF.DIR;
  return isDir ? describeImageDir(path) : describeImageFile(path);
}
