/**
 * Which fds are one open file description (seed 004).
 *
 * Two fds are the same open file exactly when kcmp(KCMP_FILE) says their
 * struct file pointers are equal: dup'ed fds, fds inherited across fork, fds
 * passed over a unix socket. kcmp is a system call per pair, so it is kept for
 * the cases a cheap key cannot settle. The key ("genid") is made from what
 * fstat and fdinfo already told us — device, inode and file position — so two
 * fds with different genids are certainly different files, and only fds whose
 * genids collide are compared in the kernel.
 *
 * Each genid holds the distinct files seen with it, kept sorted by kcmp's
 * ordering (kcmp orders struct file pointers, so the order is total and
 * stable while the tree is frozen). A new fd is placed by binary search:
 * about log2(k)+1 kcmp calls when k distinct files share its genid, and one
 * call for the common case of a dup of the only file with that key. A plain
 * sorted array does the insertions; they move pointers, not kcmp calls.
 *
 * One more cheap guess comes first: a child that inherited its parent's table
 * usually holds the same file at the same fd number. When an earlier fd with
 * this genid had this number, one kcmp against it settles the common case;
 * a miss costs that one call.
 */
import { kcmp } from "../../sys/calls";
import { KCMP } from "../../sys/nr";

/** A file seen earlier, through one of its fds. */
interface Representative {
  pid: number;
  fd: number;
  id: number;
}

export interface FileIdCounters {
  /** fds whose genid was seen before (so kcmp had to decide). */
  genidCollisions: number;
  kcmpCalls: number;
  /** fds that turned out to share an open file with an earlier fd. */
  sharedFds: number;
}

/** The cheap key: fds with different genids are never the same open file. */
export function genid(dev: number, ino: bigint, pos: bigint): string {
  return `${dev}:${ino}:${pos}`;
}

export class FileIds {
  private readonly byGenid = new Map<string, Representative[]>();
  /** Per genid and fd number: the file an earlier process had at that number. */
  private readonly byNumber = new Map<string, Representative>();
  readonly counters: FileIdCounters = { genidCollisions: 0, kcmpCalls: 0, sharedFds: 0 };

  /**
   * The id of the open file behind `fd` of `pid`: an earlier id when some fd
   * seen before is the same open file, otherwise `newId()`, which is then
   * remembered. `fresh` says which, so the caller describes each file once.
   */
  identify(pid: number, fd: number, key: string, newId: () => number): { id: number; fresh: boolean } {
    const reps = this.byGenid.get(key);
    const numberKey = `${key}#${fd}`;
    if (!reps) {
      const rep = { pid, fd, id: newId() };
      this.byGenid.set(key, [rep]);
      this.byNumber.set(numberKey, rep);
      return { id: rep.id, fresh: true };
    }
    this.counters.genidCollisions++;
    const guess = this.byNumber.get(numberKey);
    if (guess && guess.pid !== pid) {
      this.counters.kcmpCalls++;
      if (kcmp(guess.pid, pid, KCMP.FILE, guess.fd, fd) === "equal") {
        this.counters.sharedFds++;
        return { id: guess.id, fresh: false };
      }
    }
    let lo = 0;
    let hi = reps.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const rep = reps[mid]!;
      this.counters.kcmpCalls++;
      const order = kcmp(rep.pid, pid, KCMP.FILE, rep.fd, fd);
      if (order === "equal") {
        this.counters.sharedFds++;
        if (!this.byNumber.has(numberKey)) this.byNumber.set(numberKey, rep);
        return { id: rep.id, fresh: false };
      }
      // "less": the representative's file sorts before this fd's file.
      if (order === "less") lo = mid + 1;
      else if (order === "greater") hi = mid;
      else throw new Error(`kcmp gave no order for fd ${rep.fd} of ${rep.pid} and fd ${fd} of ${pid}`);
    }
    const rep = { pid, fd, id: newId() };
    reps.splice(lo, 0, rep);
    if (!this.byNumber.has(numberKey)) this.byNumber.set(numberKey, rep);
    return { id: rep.id, fresh: true };
  }
}
