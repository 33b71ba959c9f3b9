/** Image files on disk: read one, write one, list an image directory. */
import type { DescMessage, MessageShape } from "@bufbuild/protobuf";
import { readWholeFile, writeWholeFile } from "../sys/file";
import { decodeImage, type DecodedImage } from "./decode";
import { ImageEncoder } from "./encode";
import type { ImageKind } from "./magic";

export function readImageFile(path: string): DecodedImage {
  return decodeImage(readWholeFile(path), path);
}

/** Write an image whose entries are all of the kind's entry type. Image files are private (0600). */
export function writeImageFile<D extends DescMessage>(path: string, kind: ImageKind, schema: D, entries: readonly MessageShape<D>[]): void {
  const enc = new ImageEncoder(kind);
  for (const e of entries) enc.add(schema, e);
  writeEncodedImage(path, enc);
}

/** Write an image built with an ImageEncoder (mixed entry types, payloads). */
export function writeEncodedImage(path: string, enc: ImageEncoder): void {
  writeWholeFile(path, enc.bytes(), 0o600);
}
