/**
 * Pipes and FIFOs, with the bytes still unread in them.
 *
 * The data is copied without consuming it: tee(2) duplicates the contents of
 * the pipe into a pipe of ckpt's own, from which ckpt reads. tee needs a
 * readable end; a write end of the target's is complemented by a new read end
 * opened through /proc/PID/fd/N (cheap, and gone when ckpt closes it). Data
 * is saved once per pipe (both ends and every fd share it), keyed by the
 * pipe's inode, which every end's entry carries as pipe_id.
 */
import { create } from "@bufbuild/protobuf";
import { FdTypes, FileEntrySchema } from "../../image/gen/fdinfo_pb";
import { FifoEntrySchema } from "../../image/gen/fifo_pb";
import { addFifoPath } from "./regular";
import { PipeDataEntrySchema, PipeEntrySchema } from "../../image/gen/pipe_pb";
import { fcntl, pipe2, tee } from "../../sys/calls";
import { close, ioctl, readInto } from "../../sys/libc";
import { F, FIONREAD, O, S_IF, S_IFMT } from "../../sys/nr";
import { readFown, type OpenFd } from "./fd-access";
import type { FdDumpContext, FdKind } from "./kind";

const SPLICE_F_NONBLOCK = 2;
const O_ACCMODE = 3;

const countBuf = new Int32Array(1);

/** Bytes waiting in pipe `fd`. */
function unreadBytes(fd: number): number {
  ioctl(fd, FIONREAD, new Uint8Array(countBuf.buffer), "FIONREAD");
  return countBuf[0] ?? 0;
}

/**
 * The unread contents of a pipe and its buffer size, read through `readable`
 * (an fd open for reading on it) without taking anything out.
 */
export function peekPipe(readable: number, what: string): { data: Uint8Array; size: number } {
  const size = fcntl(readable, F.GETPIPE_SZ);
  const n = unreadBytes(readable);
  if (n === 0) return { data: new Uint8Array(0), size };
  const [r, w] = pipe2(O.CLOEXEC | O.NONBLOCK);
  try {
    // tee always copies from the head of the pipe, so it must get everything
    // in one call: give ckpt's pipe at least the same capacity.
    if (fcntl(w, F.GETPIPE_SZ) < size) fcntl(w, F.SETPIPE_SZ, size);
    const copied = tee(readable, w, n, SPLICE_F_NONBLOCK);
    if (copied !== n) throw new Error(`${what}: tee copied ${copied} of the ${n} unread bytes`);
    const data = new Uint8Array(n);
    for (let off = 0; off < n;) {
      const got = readInto(r, data.subarray(off));
      if (got === 0) throw new Error(`${what}: ckpt's copy of the pipe ended at ${off} of ${n} bytes`);
      off += got;
    }
    return { data, size };
  } finally {
    close(r);
    close(w);
  }
}

/** A readable fd on the pipe behind `f`: ckpt's copy of a read end, or a new read end. */
function readableEnd(f: OpenFd, ctx: FdDumpContext): number {
  const acc = f.info.flags & O_ACCMODE;
  if (acc === O.RDONLY || acc === O.RDWR) return ctx.access.local(f.fd);
  return ctx.access.reopen(f.fd, O.RDONLY | O.NONBLOCK);
}

/** A new pipe's capacity: 16 pages. */
const DEFAULT_PIPE_SIZE = 16 * 4096;

/** Save a pipe's data into `image` unless one of its other ends did already. */
function saveData(f: OpenFd, ctx: FdDumpContext, fileName: string, kindName: string): number {
  const seen = (ctx.shared.get(fileName) as Set<bigint> | undefined) ?? new Set<bigint>();
  ctx.shared.set(fileName, seen);
  const pipeId = Number(f.st.ino);
  if (seen.has(f.st.ino)) return pipeId;
  seen.add(f.st.ino);
  const { data, size } = peekPipe(readableEnd(f, ctx), `process ${f.pid} fd ${f.fd} (${f.link})`);
  // An empty pipe too, when its capacity was changed (F_SETPIPE_SZ): the entry carries it.
  if (data.length > 0 || size !== DEFAULT_PIPE_SIZE) {
    ctx.table.image(fileName, kindName).add(PipeDataEntrySchema, create(PipeDataEntrySchema, { pipeId, bytes: data.length, size }), data);
  }
  return pipeId;
}

export const pipeKind: FdKind = {
  name: "pipe",
  type: FdTypes.PIPE,
  matches: (f) => f.link.startsWith("pipe:["),
  dump(f, id, ctx) {
    const pipeId = saveData(f, ctx, "pipes-data.img", "PIPES_DATA");
    ctx.table.add(create(FileEntrySchema, {
      type: FdTypes.PIPE, id,
      pipe: create(PipeEntrySchema, { id, pipeId, flags: f.info.flags & ~O.CLOEXEC, fown: readFown(ctx.access.local(f.fd)) }),
    }));
  },
};

/** A named pipe: a FIFO entry, plus a regular-file entry for its path. */
export const fifoKind: FdKind = {
  name: "FIFO",
  type: FdTypes.FIFO,
  matches: (f) => (f.st.mode & S_IFMT) === S_IF.FIFO && f.link.startsWith("/"),
  dump(f, id, ctx) {
    const pipeId = saveData(f, ctx, "fifo-data.img", "FIFO_DATA");
    const fown = readFown(ctx.access.local(f.fd));
    const regfId = addFifoPath(f, fown, ctx.table, () => ctx.access.local(f.fd));
    ctx.table.add(create(FileEntrySchema, { type: FdTypes.FIFO, id, fifo: create(FifoEntrySchema, { id, pipeId, regfId }) }));
  },
};
