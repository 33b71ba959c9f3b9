/**
 * eventpoll: the watched files, from fdinfo's "tfd:" lines. A watch names its
 * file by the fd number it was added under; restore re-adds it by that
 * number, so each one is checked with kcmp(KCMP_EPOLL_TFD) to still be that
 * fd's file in the process — a watch whose fd was closed or reused would
 * otherwise come back watching something else, or nothing.
 */
import { create } from "@bufbuild/protobuf";
import { EventpollFileEntrySchema, EventpollTfdEntrySchema } from "../../image/gen/eventpoll_pb";
import { FdTypes, FileEntrySchema } from "../../image/gen/fdinfo_pb";
import { kcmpEpollTarget } from "../../sys/calls";
import { SysError } from "../../sys/errno";
import { O } from "../../sys/nr";
import { readFown } from "./fd-access";
import { UnsupportedFileError } from "./file-table";
import type { FdKind } from "./kind";

export const eventpollKind: FdKind = {
  name: "eventpoll",
  type: FdTypes.EVENTPOLL,
  matches: (f) => f.link === "anon_inode:[eventpoll]",
  dump(f, id, ctx) {
    const seen = new Map<number, number>();
    const tfd = f.info.epoll.map((w) => {
      const toff = seen.get(w.tfd) ?? 0;
      seen.set(w.tfd, toff + 1);
      let same = false;
      try {
        same = kcmpEpollTarget(f.pid, w.tfd, f.pid, f.fd, w.tfd, toff) === "equal";
      } catch (e) {
        if (!(e instanceof SysError)) throw e;
      }
      if (!same) throw new UnsupportedFileError(f.pid, f.fd, `an eventpoll watching a file that is no longer open as fd ${w.tfd}`);
      return create(EventpollTfdEntrySchema, { id, tfd: w.tfd, events: w.events, data: w.data, dev: w.sdev, inode: w.ino, pos: w.pos });
    });
    ctx.table.add(create(FileEntrySchema, {
      type: FdTypes.EVENTPOLL, id,
      epfd: create(EventpollFileEntrySchema, { id, flags: f.info.flags & ~O.CLOEXEC, fown: readFown(ctx.access.local(f.fd)), tfd }),
    }));
  },
};
