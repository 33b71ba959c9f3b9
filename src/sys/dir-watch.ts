/**
 * Waiting for files to land in a directory without polling it: an inotify
 * instance watching the directory for files created, closed after writing,
 * or moved in (a whole file, or a name, appeared). A waiter then wakes the
 * moment a copy or a dump finishes a file, and costs nothing meanwhile.
 */
import { inotifyAddWatch, inotifyInit1, poll } from "./calls";
import { Errno, SysError } from "./errno";
import { close, readInto } from "./libc";
import { IN, POLL } from "./nr";

export class DirectoryWatch {
  private readonly events = new Uint8Array(4096);

  private constructor(private fd: number) {}

  /** Watch `dir`; null when it does not exist (yet). */
  static open(dir: string): DirectoryWatch | null {
    const fd = inotifyInit1(IN.NONBLOCK | IN.CLOEXEC);
    try {
      inotifyAddWatch(fd, dir, IN.CLOSE_WRITE | IN.MOVED_TO | IN.CREATE | IN.ONLYDIR);
    } catch (e) {
      close(fd);
      if (e instanceof SysError && (e.errno === Errno.ENOENT || e.errno === Errno.ENOTDIR)) return null;
      throw e;
    }
    return new DirectoryWatch(fd);
  }

  /** Wait up to `ms` for a file to land; true when one did (the events are consumed). */
  wait(ms: number): boolean {
    const [ready] = poll([{ fd: this.fd, events: POLL.IN }], Math.max(0, Math.ceil(ms)));
    if (((ready ?? 0) & POLL.IN) === 0) return false;
    try {
      while (readInto(this.fd, this.events) > 0) {
        // Drained: what landed is looked at by the caller, not here.
      }
    } catch (e) {
      if (!(e instanceof SysError && e.errno === Errno.EAGAIN)) throw e;
    }
    return true;
  }

  close(): void {
    if (this.fd >= 0) close(this.fd);
    this.fd = -1;
  }
}
