/** What is wrong with an image file, as a stable code callers can branch on. */
export type ImageErrorCode =
  | "bad-magic"
  | "unknown-kind"
  | "truncated"
  | "absurd-length"
  | "bad-entry";

/** An image file that cannot be read: names the file, the byte offset and what is wrong. */
export class ImageError extends Error {
  override readonly name = "ImageError";
  constructor(
    readonly file: string,
    readonly offset: number,
    readonly code: ImageErrorCode,
    readonly reason: string,
  ) {
    super(`${file}: at byte ${offset}: ${reason}`);
  }
}
