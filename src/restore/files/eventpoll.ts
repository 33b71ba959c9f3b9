/**
 * eventpoll: a new epoll instance with the recorded status flags. Its watches
 * name files by their fd numbers in the restored process, so ckpt cannot add
 * them in its own table: they are handed to the engine (epollWatches), which
 * adds them with epoll_ctl inside the first restored process holding the
 * epoll fd, once that process has its fds.
 */
import { FdTypes } from "../../image/gen/fdinfo_pb";
import { epollCreate1 } from "../../sys/calls";
import { EPOLL_CLOEXEC } from "../../sys/nr";
import { standaloneKind } from "./standalone";

export const eventpollKind = standaloneKind({
  name: "eventpoll",
  type: FdTypes.EVENTPOLL,
  part: (e) => e.epfd,
  field: "epfd",
  make(ep, ctx, e) {
    const fd = ctx.own(epollCreate1(EPOLL_CLOEXEC));
    ctx.setWatches(e.id, ep.tfd.map((t) => ({ tfd: t.tfd, events: t.events, data: t.data })));
    return fd;
  },
});
