/**
 * Image files and image directories as JSON values, for `ckpt show`: each
 * image in crit's shape, raw pages files summarised.
 */
import { statx } from "../sys/libc";
import { listDirectory, readWholeFile } from "../sys/file";
import { AT, S_IF, S_IFMT } from "../sys/nr";
import { ImageError } from "./errors";
import { decodeImage } from "./decode";
import { PAGES_FILE, RAW_FILE } from "./magic";
import { imageToJson, type JsonValue } from "./to-json";

/** A pages-N.img file holds raw pages; say how many rather than print them. */
function describePages(size: bigint): JsonValue {
  return { magic: "PAGES", pages: Number(size / 4096n), bytes: size };
}

/**
 * One image file of `size` bytes; its kind comes from its magic, or from its
 * name for raw files. With `listUnknown`, an image of a kind ckpt does not
 * define is described by its magic instead of being an error.
 */
function describeFile(path: string, name: string, size: bigint, listUnknown: boolean): JsonValue {
  if (PAGES_FILE.test(name)) return describePages(size);
  if (RAW_FILE.test(name)) return { magic: "RAW", bytes: size };
  const bytes = readWholeFile(path);
  try {
    return imageToJson(decodeImage(bytes, path));
  } catch (e) {
    if (!(listUnknown && e instanceof ImageError && e.code === "unknown-kind")) throw e;
    const magic = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(4, true);
    return { magic: `0x${magic.toString(16).padStart(8, "0")}`, decoded: false };
  }
}

/** One image file; its kind comes from its magic, or from its name for raw files. */
export function describeImageFile(path: string): JsonValue {
  return describeFile(path, path.split("/").pop() ?? path, statx(AT.FDCWD, path).size, false);
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
    if (!isImageName(name)) continue;
    const full = `${dir}/${name}`;
    const st = statx(AT.FDCWD, full);
    if ((st.mode & S_IFMT) !== S_IF.REG) continue;
    out[name] = describeFile(full, name, st.size, true);
  }
  return out;
}

/** A file or a directory, whichever `path` is. */
export function describeImages(path: string): JsonValue {
  const isDir = (statx(AT.FDCWD, path).mode & S_IFMT) === S_IF.DIR;
  return isDir ? describeImageDir(path) : describeImageFile(path);
}
