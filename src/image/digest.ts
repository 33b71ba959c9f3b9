/**
 * Digests of the files of an image set, which ckpt records in its
 * inventory (InventoryEntry.ckpt_digests, an extension CRIU's parsers skip)
 * so that a restore can tell a set whose bytes changed after the dump — a
 * flipped bit in a pages file, an edited area offset — from a good one:
 * CRIU's format has no checksum of its own, and such a set would otherwise
 * restore and run with wrong memory.
 *
 * The digest is xxHash64 over fixed 1 MiB blocks, each block's hash seeding
 * the next, so that it can be computed as a file is written in pieces of
 * any size and again by reading it back block by block. It guards against
 * corruption, not against someone forging a set.
 */
import { close, openat, preadFull } from "../sys/libc";
import { AT, O } from "../sys/nr";

const BLOCK = 1 << 20;

/** The digest of one file as it is written, piece by piece. */
export class FileDigest {
  private hash = 0n;
  private readonly pending = new Uint8Array(BLOCK);
  private filled = 0;
  size = 0;

  update(bytes: Uint8Array): void {
    this.size += bytes.length;
    let at = 0;
    // Whole blocks straight from the caller's buffer when nothing is pending.
    if (this.filled === 0) {
      for (; at + BLOCK <= bytes.length; at += BLOCK) this.hash = BigInt(Bun.hash.xxHash64(bytes.subarray(at, at + BLOCK), this.hash));
    }
    while (at < bytes.length) {
      const n = Math.min(BLOCK - this.filled, bytes.length - at);
      this.pending.set(bytes.subarray(at, at + n), this.filled);
      this.filled += n;
      at += n;
      if (this.filled === BLOCK) {
        this.hash = BigInt(Bun.hash.xxHash64(this.pending, this.hash));
        this.filled = 0;
      }
    }
  }

  /** The digest of everything given so far. */
  value(): bigint {
    return this.filled > 0 ? BigInt(Bun.hash.xxHash64(this.pending.subarray(0, this.filled), this.hash)) : this.hash;
  }
}

/** Size and digest of the file at `path`, read back block by block. */
export function digestOfFile(path: string): { size: number; digest: bigint } {
  const fd = openat(AT.FDCWD, path, O.RDONLY | O.CLOEXEC);
  try {
    const d = new FileDigest();
    const buf = new Uint8Array(BLOCK);
    for (let offset = 0; ; offset += BLOCK) {
      const n = preadFull(fd, buf, BigInt(offset));
      if (n > 0) d.update(buf.subarray(0, n));
      if (n < BLOCK) break;
    }
    return { size: d.size, digest: d.value() };
  } finally {
    close(fd);
  }
}
