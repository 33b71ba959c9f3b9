/**
 * The handler table: every kind of open file ckpt can dump, tried in order.
 * A kind not in the table is refused by name — never dropped.
 */
import { S_IF, S_IFMT } from "../../sys/nr";
import { eventfdKind } from "./eventfd";
import { eventpollKind } from "./eventpoll";
import { fanotifyKind } from "./fanotify";
import type { OpenFd } from "./fd-access";
import { inetSocketKind } from "./inet-socket";
import { inotifyKind } from "./inotify";
import type { FdDumpContext, FdKind } from "./kind";
import { memfdKind } from "./memfd";
import { netlinkSocketKind } from "./netlink-socket";
import { fifoKind, pipeKind } from "./pipe";
import { regularKind } from "./regular";
import { signalfdKind } from "./signalfd";
import { timerfdKind } from "./timerfd";
import { ttyKind } from "./tty";
import { unixSocketKind } from "./unix-socket";

/** memfd before regular files: a memfd looks like an unlinked regular file. */
export const FD_KINDS: readonly FdKind[] = [
  memfdKind, regularKind, pipeKind, fifoKind, eventfdKind, eventpollKind, signalfdKind, timerfdKind,
  // netlink before inet: the inet kind takes whatever socket is left.
  unixSocketKind, netlinkSocketKind, inetSocketKind, ttyKind,
  inotifyKind,
  fanotifyKind,
];

export function findKind(f: OpenFd, ctx: FdDumpContext): FdKind | undefined {
  return FD_KINDS.find((k) => k.matches(f, ctx));
}

/** A human name for an fd no kind takes, from its link text and mode. */
export function describeKind(f: OpenFd): string {
  const anon = /^anon_inode:\[?([^\]]+)\]?$/.exec(f.link);
  // "an io_uring fd", "a pidfd fd": the article by the name's first letter.
  if (anon) return `${/^[aeiou]/i.test(anon[1]!) ? "an" : "a"} ${anon[1]} fd`;
  if (f.link.startsWith("socket:")) return `a socket (${f.link})`;
  switch (f.st.mode & S_IFMT) {
    case S_IF.SOCK: return `a socket (${f.link})`;
    case S_IF.CHR: return `a character device ${f.st.rdevMajor}:${f.st.rdevMinor} (${f.link})`;
    case S_IF.BLK: return `a block device (${f.link})`;
  }
  return `an unsupported file (${f.link})`;
}
