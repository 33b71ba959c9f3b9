/**
 * The handler table's record: how ckpt recognises one kind of open file and
 * describes it in files.img (and any images of its own). Adding a kind is a
 * module exporting one of these and one line in kinds.ts.
 */
import type { FdTypes } from "../../image/gen/fdinfo_pb";
import type { ProcFs } from "../../proc/procfs";
import type { SocketTable } from "../../proc/sock-diag";
import type { Irmap } from "./irmap";
import type { FdAccess, OpenFd } from "./fd-access";
import type { FileTable } from "./file-table";
import type { TcpLock } from "../../transfer/tcp-lock";

export interface FileDumpOptions {
  /** Dump a terminal the tree uses (CRIU's --shell-job); without it a tty is refused. */
  shellJob: boolean;
  /**
   * Save established TCP connections (CRIU's --tcp-established) under this
   * network lock; without one they are refused.
   */
  tcpLock?: TcpLock;
}

/** What a kind's dump step may use. */
export interface FdDumpContext {
  proc: ProcFs;
  table: FileTable;
  access: FdAccess;
  opts: FileDumpOptions;
  /** Sockets of ckpt's network namespace (sock_diag), read once on first use. */
  sockets: SocketTable;
  /** State a kind keeps across the whole dump (e.g. the unix sockets of the netns), by kind name. */
  shared: Map<string, unknown>;
  /** Paths for the inodes inotify watches and fanotify marks name. */
  irmap: Irmap;
}

export interface FdKind {
  /** For errors and stats: "pipe", "eventfd" ... */
  name: string;
  type: FdTypes;
  /** Whether `f` is an fd of this kind (cheap: from its link text and mode, or a table lookup). */
  matches(f: OpenFd, ctx: FdDumpContext): boolean;
  /** Describe the open file behind `f` (its first fd seen) under `id`. */
  dump(f: OpenFd, id: number, ctx: FdDumpContext): void;
  /** After every process: check what needs the whole tree (e.g. socket peers). */
  finish?(ctx: Omit<FdDumpContext, "access">): void;
}
