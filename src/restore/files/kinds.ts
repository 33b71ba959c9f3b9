/**
 * The handler table of restore: every kind of open file ckpt can re-create,
 * opened in this order. A type not in the table is refused by name, before
 * anything is opened.
 */
import type { FdTypes } from "../../image/gen/fdinfo_pb";
import { eventfdKind } from "./eventfd";
import { eventpollKind } from "./eventpoll";
import { fanotifyKind } from "./fanotify";
import { fifoKind } from "./fifo";
import { inetSocketKind } from "./inet-socket";
import { inotifyKind } from "./inotify";
import type { FileRestoreKind } from "./kind";
import { memfdKind } from "./memfd";
import { netlinkSocketKind } from "./netlink-socket";
import { pipeKind } from "./pipe";
import { regularKind } from "./regular";
import { signalfdKind } from "./signalfd";
import { timerfdKind } from "./timerfd";
import { ttyKind } from "./tty";
import { unixSocketKind } from "./unix-socket";

/** Kinds that fail for reasons outside ckpt (a changed file, a watched path gone, a taken name or port, no terminal) come first, before much is made. */
export const RESTORE_KINDS: readonly FileRestoreKind[] = [
  regularKind, fifoKind, inotifyKind, fanotifyKind, ttyKind, inetSocketKind, unixSocketKind, pipeKind, memfdKind,
  eventfdKind, signalfdKind, timerfdKind, netlinkSocketKind, eventpollKind,
];

const byType = new Map(RESTORE_KINDS.map((k) => [k.type, k]));

export function restoreKind(type: FdTypes): FileRestoreKind | undefined {
  return byType.get(type);
}
