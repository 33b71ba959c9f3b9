/** An image file that cannot be read: names the file, the byte offset and what is wrong. */
export class ImageError extends Error {
  override readonly name = "ImageError";
  constructor(
    readonly file: string,
    readonly offset: number,
    readonly reason: string,
  ) {
    super(`${file}: at byte ${offset}: ${reason}`);
  }
}
