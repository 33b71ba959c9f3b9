/**
 * A one-byte "commit" from ckpt to a tiny program that outlives it (the
 * restore's guard, the dirty tracker): the program blocks in read() on the
 * pipe's read end; ckpt, the only holder of the write end, writes one byte
 * when its work is whole. If ckpt dies or gives up first, the program reads
 * the end of the pipe instead and knows the work was not finished.
 */
import { pipe2 } from "./calls";
import { close, writeAll } from "./libc";
import { O } from "./nr";

export class CommitPipe {
  private constructor(
    /** Pass this to the program, then closeReadEnd(). */
    readonly readEnd: number,
    private writeEnd: number,
  ) {}

  /** Both ends close-on-exec: the program gets the read end only through the fds it is started with. */
  static create(): CommitPipe {
    const [readEnd, writeEnd] = pipe2(O.CLOEXEC);
    return new CommitPipe(readEnd, writeEnd);
  }

  /** ckpt's copy of the read end, once the program holds its own. */
  closeReadEnd(): void {
    close(this.readEnd);
  }

  /** The work is whole: the byte, then the end of the pipe. */
  commit(): void {
    if (this.writeEnd < 0) return;
    try {
      writeAll(this.writeEnd, new Uint8Array([1]));
    } finally {
      this.abandon();
    }
  }

  /** The end of the pipe without the byte: the program takes the work as failed. */
  abandon(): void {
    if (this.writeEnd >= 0) close(this.writeEnd);
    this.writeEnd = -1;
  }
}
