/** Decode an image file's bytes: head magic, image magic, then framed entries. */
import { fromBinary, type Message } from "@bufbuild/protobuf";
import { ImageError } from "./errors";
import { entrySchema, kindByMagic, MAGIC_COMMON, MAGIC_SERVICE, payloadSize, type ImageKind } from "./magic";

/** Larger entries than this are taken for corruption, not allocated. */
export const MAX_ENTRY_SIZE = 64 * 1024 * 1024;

export interface ImageEntry {
  message: Message;
  /** Raw bytes that follow the entry in images that carry them (pipe data, socket queues, ghost files). */
  payload?: Uint8Array;
}

export interface DecodedImage {
  kind: ImageKind;
  entries: ImageEntry[];
}

function u32(bytes: Uint8Array, off: number): number {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(off, true);
}

const hex = (n: number): string => `0x${n.toString(16).padStart(8, "0")}`;

/** Which image a file holds, from its first one or two magic words. */
export function decodeMagic(bytes: Uint8Array, file: string): { kind: ImageKind; headerSize: number } {
  if (bytes.length < 4) throw new ImageError(file, 0, "truncated", `too short for a magic number (${bytes.length} bytes)`);
  const first = u32(bytes, 0);
  if (first !== MAGIC_COMMON && first !== MAGIC_SERVICE) {
    const k = kindByMagic(first);
    if (k?.head === "none") return { kind: k, headerSize: 4 };
    throw new ImageError(file, 0, "bad-magic", `bad magic ${hex(first)}: neither an image head magic nor the inventory's`);
  }
  if (bytes.length < 8) throw new ImageError(file, 4, "truncated", "truncated after the head magic");
  const second = u32(bytes, 4);
  const k = kindByMagic(second);
  if (!k) throw new ImageError(file, 4, "unknown-kind", `unknown image magic ${hex(second)}`);
  const expectedHead = k.head === "service" ? MAGIC_SERVICE : MAGIC_COMMON;
  if (k.head === "none" || first !== expectedHead) {
    throw new ImageError(file, 0, "bad-magic", `bad head magic ${hex(first)} for a ${k.name} image`);
  }
  return { kind: k, headerSize: 8 };
}

/**
 * Decode a whole image. Every failure is an ImageError naming `file` and the
 * byte offset: a bad magic, a length word cut short, an entry longer than the
 * file or than MAX_ENTRY_SIZE, a body that is not valid protobuf.
 */
export function decodeImage(bytes: Uint8Array, file: string): DecodedImage {
  const { kind, headerSize } = decodeMagic(bytes, file);
  const entries: ImageEntry[] = [];
  let off = headerSize;
  while (off < bytes.length) {
    if (bytes.length - off < 4) {
      throw new ImageError(file, off, "truncated", `truncated entry length: ${bytes.length - off} of 4 bytes`);
    }
    const len = u32(bytes, off);
    if (len > MAX_ENTRY_SIZE) throw new ImageError(file, off, "absurd-length", `absurd entry length ${len} (limit ${MAX_ENTRY_SIZE})`);
    const bodyAt = off + 4;
    if (len > bytes.length - bodyAt) {
      throw new ImageError(file, off, "truncated", `truncated entry body: length says ${len}, ${bytes.length - bodyAt} bytes left`);
    }
    const schema = entrySchema(kind, entries.length);
    let message: Message;
    try {
      message = fromBinary(schema, bytes.subarray(bodyAt, bodyAt + len));
    } catch (e) {
      throw new ImageError(file, bodyAt, "bad-entry", `entry is not a valid ${schema.typeName}: ${(e as Error).message}`);
    }
    off = bodyAt + len;
    const entry: ImageEntry = { message };
    const follows = payloadSize(kind, entries.length, message as unknown as Record<string, unknown>);
    if (follows !== undefined) {
      const size = follows === "rest" ? bytes.length - off : follows;
      if (size > bytes.length - off) {
        throw new ImageError(file, off, "truncated", `truncated payload: entry says ${size} bytes, ${bytes.length - off} left`);
      }
      entry.payload = bytes.slice(off, off + size);
      off += size;
    }
    entries.push(entry);
  }
  return { kind, entries };
}
